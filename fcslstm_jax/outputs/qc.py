"""How far to trust a segmentation: voxel-wise uncertainty and a per-session QC score.

Layout: probabilities ``[..., c]`` channels-last (a session ``[X, Y, Z, c]`` on its own
canonical grid), uncertainty and labels ``[...]`` (``[X, Y, Z]``). Pure numpy functions.

The uncertainty of a voxel is the entropy of its class probabilities (averaged over flips
and ensemble members, where used) divided by ``log(c)``: 0 where one class has probability
1, 1 where all ``c`` classes are equally likely. A session's QC score is the mean
uncertainty over its predicted brain (every voxel not labeled background): background is
most of a volume and nearly always certain, so averaging over it would hide a doubtful
brain. A session with no brain voxel at all scores 1, the worst: nothing in it can be
trusted (and the empty-class flag names it).
"""

import numpy as np

EMPTY_BRAIN_SCORE = 1.0


def normalized_entropy(probs) -> np.ndarray:
  """``float32 [...]`` in [0, 1]: entropy of ``probs [..., c]`` over ``log(c)``
  (``0 log 0 = 0``)."""
  p = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
  c = p.shape[-1]
  logs = np.log(np.where(p > 0, p, 1.0))
  h = -np.sum(p * logs, axis=-1) / np.log(c)
  return np.clip(h, 0.0, 1.0).astype(np.float32)


def qc_score(uncertainty, labels) -> float:
  """Mean ``uncertainty`` over the voxels where ``labels`` (same shape) is not background;
  :data:`EMPTY_BRAIN_SCORE` when there is none."""
  brain = np.asarray(labels) > 0
  if not brain.any():
    return EMPTY_BRAIN_SCORE
  return float(np.asarray(uncertainty, np.float64)[brain].mean())


def worst_first(rows) -> list:
  """``rows`` (objects with a ``qc`` score) highest (least trusted) first; stable."""
  return sorted(rows, key=lambda r: -r.qc)
