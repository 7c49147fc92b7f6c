"""train/pseudo_labels: self-training on every slice and session, on the real data path."""

import numpy as np
import pytest
from helpers import train_args

import train
from fcslstm_jax.config import Config
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import DataError
from fcslstm_jax.train import pseudo_labels


def test_label_pool_keeps_manual_labels_and_takes_only_confident_predictions():
  n, t, h, w, c = 2, 3, 4, 4, 3
  rng = np.random.default_rng(0)
  manual = np.zeros((n, t, h, w), np.float32)
  manual[0, 1] = 1.0
  pool = sequences.SliceSet(
    images=np.zeros((n, t, h, w, 1), np.float32),
    labels=np.where(manual > 0, 2, 0).astype(np.int32),
    label_mask=manual,
    valid=np.array([[True, True, True], [True, False, True]]),
    subject_ids=("a", "b"),
    slice_index=np.arange(n, dtype=np.int32),
  )
  probs = rng.dirichlet(np.ones(c) * 0.3, size=(n, t, h, w)).astype(np.float32)

  def fn(params, images, valid):
    return probs  # one batch of all n sequences

  sure, predicted = pseudo_labels.predict_confident(fn, None, pool, n, 0.8)
  out = pseudo_labels.label_pool(pool, sure, predicted, weight=0.5)
  np.testing.assert_array_equal(out.labels[0, 1], 2)  # manual labels win
  np.testing.assert_array_equal(out.label_mask[0, 1], 1.0)
  assert not out.label_mask[1, 1].any()  # a missing session gets none
  sure = probs.max(-1) >= 0.8
  other = (manual == 0) & pool.valid[:, :, None, None]
  np.testing.assert_array_equal(out.label_mask[other], np.where(sure[other], 0.5, 0.0))
  np.testing.assert_array_equal(out.labels[other & sure], probs.argmax(-1)[other & sure])


def test_the_pool_holds_every_slice_but_never_the_held_out_labels(study_dir):
  proto = protocol.get_protocol(None, study_dir)
  subjects = study.load_dataset(study_dir, proto)
  pool = sequences.make_sequences(subjects, proto, "train", every_slice=True)
  depth = sum(s.sessions[0].image.shape[2] for s in subjects if s.grid is not None)
  assert len(pool) == depth
  assert not pool.label_mask[:, list(proto.test_timepoints)].any()
  train_set = sequences.make_sequences(subjects, proto, "train")
  assert pool.label_mask.sum() == train_set.label_mask.sum()  # the same manual labels


def test_self_training_runs_saves_its_labels_and_a_resume_reads_them(dataset, tmp_path):
  workdir = tmp_path / "self"
  assert (
    train.main(
      train_args(
        dataset,
        workdir,
        2,
        "--set",
        "pseudo_label_epochs=1",
        "--set",
        "pseudo_label_confidence=0.3",
      )
    )
    == 0
  )
  saved = np.load(workdir / pseudo_labels.file_name())
  assert saved["labels"].ndim == 4 and (saved["label_mask"] == 0.5).any()
  proto = protocol.get_protocol(None, dataset)
  pool = sequences.make_sequences(
    study.load_dataset(dataset, proto), proto, "train", every_slice=True
  )
  assert pool.labels.shape == saved["labels"].shape

  def boom(*args):
    raise AssertionError("a resumed run must not predict its pseudo-labels again")

  config = Config(epochs=2, pseudo_label_epochs=1, pseudo_label_confidence=0.3)
  again = pseudo_labels.make_or_load(str(workdir), pool, boom, None, config, 2)
  np.testing.assert_array_equal(again.labels, saved["labels"])
  np.testing.assert_array_equal(again.label_mask, saved["label_mask"])
  # Extended by one epoch, the run would self-train from another model: they are made again.
  made = []

  def fn(params, images, valid):
    return made.append(1) or np.full(images.shape[:-1] + (4,), 0.25, np.float32)

  pseudo_labels.make_or_load(str(workdir), pool, fn, None, config.replace(epochs=3), 2, log=str)
  assert made
  (workdir / pseudo_labels.file_name()).write_bytes(b"not a zip")
  with pytest.raises(DataError, match=pseudo_labels.file_name()):
    pseudo_labels.make_or_load(str(workdir), pool, boom, None, config, 2)
