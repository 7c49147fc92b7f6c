"""Self-training: the model's own confident predictions on unlabeled slices and sessions as
extra, down-weighted labels (``Config.pseudo_label_epochs``; ours, not the paper's).

With one labeled axial slice per volume, the slices and sessions nobody labeled are most of
the data; trained on the labeled ones alone, the model is good there and wrong elsewhere,
and tissue volumes over age take the wrong shape (issue 33). For the last
``pseudo_label_epochs`` epochs, every step adds as many sequences of the *pool* (every axial
slice of every subject, labeled or not, :func:`fcslstm_jax.data.sequences.make_sequences`
with ``every_slice``) as it trains labeled ones. Their labels: the manual ones of the
training time points where there are any (weight 1), elsewhere the model's argmax where its
probability reaches ``pseudo_label_confidence`` (weight ``pseudo_label_weight``), nothing
elsewhere. They are made once, by the model at the first self-training epoch, and saved in
the run folder (``pseudo_labels.p<process>.npz``, with what they belong to), so a resumed run
trains on the same ones.

The held-out time point's labels never enter (the pool carries the training split's labels
only); its images do, as they already do as the Bi-LSTM's input at every step: they are
unlabeled data, used transductively.

Layout: a :class:`~fcslstm_jax.data.sequences.SliceSet` ``[N, T, H, W]``; its ``label_mask``
holds the per-voxel loss weights.
"""

import dataclasses
import os
import zipfile

import jax
import numpy as np

from fcslstm_jax import files
from fcslstm_jax.data.sequences import SliceSet
from fcslstm_jax.errors import DataError


def file_name() -> str:
  """This process's file (each process labels its own share of the subjects)."""
  return f"pseudo_labels.p{jax.process_index()}.npz"


def label_pool(pool: SliceSet, sure: np.ndarray, predicted: np.ndarray, weight: float) -> SliceSet:
  """``pool`` with pseudo-labels (see the module docstring): ``predicted [N, T, H, W]`` the
  argmax, ``sure`` where its probability reached the confidence. Missing sessions and slices
  outside a session's view stay unlabeled."""
  manual = pool.label_mask > 0
  sure = sure & pool.valid[:, :, None, None]
  labels = np.where(manual, pool.labels, predicted).astype(np.int32)
  mask = np.where(manual, pool.label_mask, np.where(sure, np.float32(weight), 0.0))
  return dataclasses.replace(pool, labels=labels, label_mask=mask.astype(np.float32))


def predict_confident(proba_fn, params, pool: SliceSet, batch_size: int, confidence: float):
  """``(sure bool, argmax int32 [N, T, H, W])`` batch by batch (never all probabilities at
  once); the last batch padded so that one compiled program serves every batch."""
  n = len(pool)
  sure = np.zeros(pool.labels.shape, bool)
  predicted = np.zeros(pool.labels.shape, np.int32)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % n
    probs = np.asarray(proba_fn(params, pool.images[idx], pool.valid[idx]))
    keep = slice(0, min(batch_size, n - start))
    sure[start : start + batch_size] = (probs.max(-1) >= confidence)[keep]
    predicted[start : start + batch_size] = probs.argmax(-1)[keep]
  return sure, predicted


def fingerprint(pool: SliceSet, made_at_epoch: int) -> np.ndarray:
  """What the saved labels belong to: the pool's sequences and the epoch they were made at."""
  text = f"{made_at_epoch};" + ";".join(
    f"{s}:{z}" for s, z in zip(pool.subject_ids, pool.slice_index)
  )
  return np.frombuffer(text.encode(), np.uint8)


def read(path: str, pool: SliceSet, made_at_epoch: int) -> SliceSet | None:
  """The saved pseudo-labels if they belong to ``pool`` and ``made_at_epoch``, else None."""
  try:
    with np.load(path) as saved:
      if not np.array_equal(saved["fingerprint"], fingerprint(pool, made_at_epoch)):
        return None
      return dataclasses.replace(
        pool,
        labels=saved["labels"].astype(np.int32),
        label_mask=saved["label_mask"].astype(np.float32),
      )
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    raise DataError(
      f"{path}: unreadable pseudo-labels ({e}). Delete the file; the run makes "
      "them again from its checkpoint."
    ) from None


def make_or_load(
  workdir: str, pool: SliceSet, proba_fn, params, config, batch_size: int, log=print
) -> SliceSet:
  """The pool's pseudo-labels: read from this process's file in ``workdir`` if an earlier
  attempt of this run made them for the same sequences and epoch, else made with
  ``params`` (the model at the first self-training epoch) and saved atomically."""
  path = os.path.join(workdir, file_name())
  made_at = config.epochs - config.pseudo_label_epochs
  if os.path.exists(path):
    saved = read(path, pool, made_at)
    if saved is not None:
      return saved
    log(f"{path}: made for other sequences or another epoch; making them again")
  sure, predicted = predict_confident(
    proba_fn, params, pool, batch_size, config.pseudo_label_confidence
  )
  labeled = label_pool(pool, sure, predicted, config.pseudo_label_weight)
  share = float((labeled.label_mask > 0).mean())
  log(
    f"self-training: pseudo-labels on {len(pool)} slice sequences, {100 * share:.0f} % of "
    f"their voxels labeled (manual or confident); saved to {path}"
  )
  with files.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(
        f,
        labels=labeled.labels.astype(np.uint8),
        label_mask=labeled.label_mask,  # float32: a resume trains alike
        fingerprint=fingerprint(pool, made_at),
      )
  return labeled
