"""Neighbouring slices as input channels (2.5D, Config.context_slices; issue 33)."""

import json

import jax
import numpy as np
import pytest
from helpers import train_args

import evaluate
import train
from fcslstm_jax import run_record
from fcslstm_jax.config import Config
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.errors import DataError
from fcslstm_jax.infer import ensemble
from fcslstm_jax.train import augment


def test_with_context_stacks_each_slices_neighbours_slice_major_and_repeats_the_ends():
  x, y, z, c = 3, 2, 5, 2
  image = np.arange(x * y * z * c, dtype=np.float32).reshape(x, y, z, c)
  out = sequences.with_context(image, np.array([0, 2, 4]), 1)
  assert out.shape == (3, x, y, 3 * c)
  for n, zc in enumerate([0, 2, 4]):
    for s, dz in enumerate((-1, 0, 1)):
      want = image[:, :, min(max(zc + dz, 0), z - 1)]
      np.testing.assert_array_equal(out[n, ..., s * c : (s + 1) * c], want)
  np.testing.assert_array_equal(sequences.with_context(image, np.array([3]), 0)[0], image[:, :, 3])


@pytest.fixture(scope="module")
def loaded(study_dir):
  proto = protocol.get_protocol(None, study_dir)
  return proto, study.load_study(study_dir, proto, spacing="native")


def test_sequences_hold_the_working_slices_above_and_below(loaded):
  proto, data = loaded
  plain = sequences.make_sequences(data.subjects, proto, "all")
  wide = sequences.make_sequences(data.subjects, proto, "all", inputs=sequences.Inputs(context=1))
  c = len(proto.modalities)
  assert wide.images.shape == plain.images.shape[:-1] + (3 * c,)
  own = wide.images[..., wide.own_channels(c)]
  np.testing.assert_array_equal(own, plain.images)  # the slice itself, where figures read it
  subject = np.asarray(plain.subject_ids)
  for n in range(len(plain)):
    same = subject == subject[n]
    above = np.flatnonzero(same & (plain.slice_index == plain.slice_index[n] + 1))
    if above.size:  # its neighbour's sequence holds the slice above
      np.testing.assert_array_equal(wide.images[n, ..., 2 * c :], plain.images[above[0]])
  train_set = sequences.make_sequences(
    data.subjects, proto, "train", inputs=sequences.Inputs(context=1, ages=True)
  )
  assert train_set.images.shape[-1] == 3 * c + 1 == sequences.Inputs(True, 1).channels(c)


def test_a_study_loaded_with_its_labeled_slices_only_is_refused(study_dir, loaded):
  proto, _ = loaded
  labeled = study.load_study(study_dir, proto, spacing="native", keep="labeled")
  with pytest.raises(DataError, match="need every slice"):
    sequences.make_sequences(labeled.subjects, proto, "train", inputs=sequences.Inputs(context=1))


def test_a_modalitys_neighbouring_slices_share_its_intensity_draws():
  rng = np.random.default_rng(0)
  images = rng.uniform(0.1, 1.0, (4, 3, 8, 8, 3 * 2)).astype(np.float32)
  batch = dict(
    images=images,
    labels=np.zeros((4, 3, 8, 8), np.int32),
    label_mask=np.ones((4, 3, 8, 8), np.float32),
  )
  config = Config(context_slices=1, flip_prob=0.0, intensity_scale=0.3, gamma=0.0)
  out = np.asarray(augment.augment(jax.random.PRNGKey(1), batch, config)["images"])
  ratio = (out / images).reshape(4, 3, 8, 8, 3, 2)[:, 0, 0, 0]  # [B, S, C]
  np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=1e-5)
  assert np.ptp(ratio[:, 0, 0]) > 0.01 and np.abs(ratio[:, 0, 0] - ratio[:, 0, 1]).max() > 1e-3


def test_context_is_2d_only_off_by_default_and_older_records_load():
  assert Config().context_slices == 0
  assert Config.from_json({"model": "bi-fcslstm"}).context_slices == 0
  with pytest.raises(ConfigError, match="context_slices=1: neighbouring slices"):
    Config(context_slices=1, spatial_dims=3)


def test_a_run_with_neighbouring_slices_trains_segments_and_is_no_ensemble_member_of_one_without(
  study_dir, study_run, tmp_path
):
  """The real path: train.py loads every slice, the network takes 3x the channels, and
  evaluate.py feeds the same neighbours; a run without them cannot join its ensemble."""
  run = tmp_path / "run"
  assert train.main(train_args(study_dir, run, 1, "--set", "context_slices=1")) == 0
  record = json.loads((run / "run.json").read_text())
  assert record["config"]["context_slices"] == 1
  out = tmp_path / "pred"
  argv = ["--workdir", str(run), "--data-dir", str(study_dir), "--out", str(out), "--no-report"]
  assert evaluate.main(argv) == 0
  assert list(out.glob("sub-01/ses-*/anat/*_dseg.nii.gz"))
  runs = [(str(run), run_record.read(run)), (str(study_run), run_record.read(study_run))]
  with pytest.raises(ConfigError, match="context_slices is 0"):
    ensemble.check_compatible(runs)


def test_the_figure_shows_each_slices_own_image(loaded, monkeypatch, tmp_path):
  from fcslstm_jax.outputs import figures
  from fcslstm_jax.outputs import writer

  proto, data = loaded
  subject = data.subjects[0]
  plain = sequences.make_sequences([subject], proto, "all")
  wide = sequences.make_sequences([subject], proto, "all", inputs=sequences.Inputs(context=1))
  shown = {}
  monkeypatch.setattr(figures, "montage", lambda path, columns, *a, **k: shown.update(c=columns))
  pred = np.zeros(wide.labels.shape, np.int32)
  for seq in (plain, wide):
    writer.save_figure(tmp_path / "f.png", subject, seq, pred, proto, "m")
    images = [[p for p in col[2] if p is not None] for col in shown["c"][: len(proto.modalities)]]
    if seq is plain:
      want = images
  assert any(len(col) for col in want)
  for got_col, want_col in zip(images, want):
    for got, expected in zip(got_col, want_col):
      np.testing.assert_array_equal(got, expected)
