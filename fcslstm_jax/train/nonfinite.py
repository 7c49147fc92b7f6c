"""A loss that became NaN or Inf: which scans of the batch hold non-finite images, or that
training diverged; the error the loop stops with (the last good checkpoint is kept)."""

import numpy as np

from fcslstm_jax.data.sequences import SliceSet
from fcslstm_jax.errors import FcslstmError


class NonFiniteLoss(FcslstmError):
  """The loss became NaN or Inf; the last good checkpoint is kept."""


def describe_nonfinite(data: SliceSet, indices) -> str:
  """Names the scans (``sub-<id> ses-<label>``) of a batch whose images hold NaN or Inf, and
  the fix; or says that every input is finite (the optimization itself diverged)."""
  images = data.images[indices]
  finite = np.isfinite(images).all(axis=tuple(range(2, images.ndim)))  # [B, T]
  labels = data.session_labels
  scans = sorted(
    {
      f"sub-{data.subject_ids[indices[b]]} "
      + (f"ses-{labels[indices[b], t]}" if labels is not None else f"time point {t + 1}")
      for b, t in zip(*np.nonzero(~finite))
    }
  )
  if scans:
    return f"NaN or Inf in the input images of {', '.join(scans)}. Fix or remove those scans"
  subjects = ", ".join(sorted({f"sub-{data.subject_ids[j]}" for j in indices}))
  return (
    f"the batch's input images ({subjects}) are all finite, so training diverged. "
    "Lower the learning rate"
  )


def first_nonfinite(losses) -> int | None:
  """Index of the first NaN or Inf in ``losses``, or None when all are finite."""
  bad = np.flatnonzero(~np.isfinite(np.asarray(losses, np.float64)))
  return int(bad[0]) if bad.size else None


def nonfinite_error(run, epoch: int, step: int, value: float, indices):
  kept = run.ckpt.steps()
  kept = (
    f"the last good checkpoint, step {kept[-1]}, is kept"
    if kept
    else ("no checkpoint was written yet")
  )
  return NonFiniteLoss(
    f"loss became {value} at step {step} (epoch {epoch + 1}): "
    f"{describe_nonfinite(run.train_set, indices)}, then rerun the same command "
    f"({run.ckpt.directory}: {kept})."
  )
