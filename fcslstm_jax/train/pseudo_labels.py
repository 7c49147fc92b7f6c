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
the run folder (``pseudo_labels.npz``), so a resumed run trains on the same ones.

The held-out time point's labels never enter (the pool carries the training split's labels
only); its images do, as they already do as the Bi-LSTM's input at every step: they are
unlabeled data, used transductively.

Layout: a :class:`~fcslstm_jax.data.sequences.SliceSet` ``[N, T, H, W]``; its ``label_mask``
holds the per-voxel loss weights.
"""

import dataclasses
import os

import numpy as np

from fcslstm_jax import files
from fcslstm_jax.data.sequences import SliceSet
from fcslstm_jax.infer.predict import predict_all

FILE = "pseudo_labels.npz"


def label_pool(pool: SliceSet, probs: np.ndarray, confidence: float, weight: float) -> SliceSet:
  """``pool`` with pseudo-labels from class probabilities ``probs [N, T, H, W, c]`` (see the
  module docstring). Missing sessions and slices outside a session's view stay unlabeled."""
  manual = pool.label_mask > 0
  sure = (probs.max(axis=-1) >= confidence) & pool.valid[:, :, None, None]
  labels = np.where(manual, pool.labels, np.argmax(probs, axis=-1)).astype(np.int32)
  mask = np.where(manual, pool.label_mask, np.where(sure, np.float32(weight), 0.0))
  return dataclasses.replace(pool, labels=labels, label_mask=mask.astype(np.float32))


def make_or_load(workdir: str, pool: SliceSet, proba_fn, params, config, batch_size: int,
                 log=print) -> SliceSet:
  """The pool's pseudo-labels: read from ``workdir/pseudo_labels.npz`` if an earlier attempt
  of this run made them, else made with ``params`` and saved (atomically)."""
  path = os.path.join(workdir, FILE)
  if os.path.exists(path):
    with np.load(path) as saved:
      if saved["labels"].shape == pool.labels.shape:
        return dataclasses.replace(pool, labels=saved["labels"].astype(np.int32),
                                   label_mask=saved["label_mask"].astype(np.float32))
    log(f"{path}: made for another pool of sequences; making them again")
  probs = predict_all(proba_fn, params, pool, batch_size)
  labeled = label_pool(pool, probs, config.pseudo_label_confidence, config.pseudo_label_weight)
  share = float((labeled.label_mask > 0).mean())
  log(f"self-training: pseudo-labels on {len(pool)} slice sequences, {100 * share:.0f} % of "
      f"their voxels labeled (manual or confident); saved to {path}")
  with files.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, labels=labeled.labels.astype(np.uint8),
                          label_mask=labeled.label_mask.astype(np.float16))
  return labeled
