"""Similarity registration between a subject's sessions from the outline of the head (ours).

An infant's head grows by about a quarter in every direction over the first year, so one
subject's sessions do not line up voxel by voxel even after rigid registration, and the
LSTM, which carries each voxel's state from one session to the next, can carry tissue over
time only where they do. Intensity-based registration (mutual information) has to cope with
the contrast inversion between ages and costs minutes per subject. How well each method
aligns a study, and its seconds per subject: ``experiments/session_alignment.py``
(``results/alignment-<study>.md``; docs/data.md).

The head's outline does not invert: head against air is bright against dark at every age and
in every modality. This fits the 7-parameter similarity (shift, rotation about the slice
axis, one scale) that maps the reference session's head mask onto each session's, from their
in-plane second moments, cheaply (no optimization):

* the head mask (:func:`head_mask`): voxels above a fifth of the robust maximum of any
  modality, the largest connected part, holes filled slice by slice;
* the in-plane centroid and the ``2 x 2`` covariance of the mask's voxel centres, in world mm,
  over the slices that both sessions' masks reach (a slab's slices shrink towards the crown,
  so comparing different parts of the head would read as growth);
* scale ``s = (det C_moving / det C_reference) ** (1/4)``; rotation: the angle between the
  principal axes (none where the outline is nearly round); no shift along the slice axis
  (the head's centre along it is not observable in a slab: the slices' extent sets it).

Assumptions, said plainly: the head grows by one factor in every direction (the in-plane
factor is used along the slice axis too) and rotates about the slice axis only (tilts are
left alone). Real infant heads grow roughly, not exactly, like that; the built-in generators
grow them exactly like that, so the alignment measured on them is the method's best case.
"""

import numpy as np
from scipy import ndimage

# Mask threshold: this fraction of each modality's 99th percentile.
THRESHOLD = 0.2
# Below this ratio of the principal variances the outline is round: no rotation is read.
ROUND = 1.05
# What growth and head motion between two sessions can give (an infant head grows by about
# 1.3 from birth to two years); outside them the outline was misread (a cropped or empty
# view, a mask that took in the neck or a coil), and the session is placed by its affine.
SCALES = (0.6, 1.6)
MAX_TURN_DEG = 30.0


def head_mask(image) -> np.ndarray:
  """``bool [X, Y, Z]``: the head in ``image`` (``[X, Y, Z]`` or ``[X, Y, Z, C]``)."""
  image = np.asarray(image, np.float32)
  channels = image[..., None] if image.ndim == 3 else image
  mask = np.zeros(channels.shape[:3], bool)
  for c in range(channels.shape[-1]):
    x = channels[..., c]
    mask |= x > THRESHOLD * np.percentile(x, 99)
  labels, n = ndimage.label(mask)
  if n > 1:
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    mask = labels == 1 + int(np.argmax(sizes))
  for z in range(mask.shape[2]):
    mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
  return mask


def _world_points(mask, affine) -> np.ndarray:
  idx = np.argwhere(mask).astype(np.float64)
  return idx @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def _in_plane_moments(points) -> tuple:
  """``(centroid [2], covariance [2, 2])`` of the points' x, y."""
  xy = points[:, :2]
  return xy.mean(axis=0), np.cov(xy, rowvar=False)


def _axis_angle(cov) -> tuple:
  """``(angle of the principal axis (rad), ratio of the principal variances)``."""
  values = np.linalg.eigvalsh(cov)
  angle = 0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])
  return angle, values[1] / max(values[0], 1e-12)


def similarity_from_masks(static_mask, static_affine, moving_mask, moving_affine) -> np.ndarray:
  """``[4, 4]`` map from the static session's world to the moving one's (module docstring):
  a point of the reference head lies at ``map @ point`` in the moving session."""
  fixed = _world_points(static_mask, static_affine)
  moving = _world_points(moving_mask, moving_affine)
  if len(fixed) < 10 or len(moving) < 10:
    return np.eye(4)
  c_f, cov_f = _in_plane_moments(fixed)
  c_m, cov_m = _in_plane_moments(moving)
  scale = (np.linalg.det(cov_m) / max(np.linalg.det(cov_f), 1e-12)) ** 0.25
  # Compare like with like along the slice axis: only the slices (scaled into the reference's
  # frame) that both masks reach.
  z_center = 0.5 * (fixed[:, 2].min() + fixed[:, 2].max())
  lo = max(fixed[:, 2].min(), z_center + (moving[:, 2].min() - z_center) / scale)
  hi = min(fixed[:, 2].max(), z_center + (moving[:, 2].max() - z_center) / scale)
  if hi > lo:
    keep_f = (fixed[:, 2] >= lo) & (fixed[:, 2] <= hi)
    z_m = z_center + (moving[:, 2] - z_center) / scale
    keep_m = (z_m >= lo) & (z_m <= hi)
    if keep_f.sum() >= 10 and keep_m.sum() >= 10:
      c_f, cov_f = _in_plane_moments(fixed[keep_f])
      c_m, cov_m = _in_plane_moments(moving[keep_m])
      scale = (np.linalg.det(cov_m) / max(np.linalg.det(cov_f), 1e-12)) ** 0.25
  angle_f, round_f = _axis_angle(cov_f)
  angle_m, round_m = _axis_angle(cov_m)
  turn = 0.0
  if min(round_f, round_m) >= ROUND:
    turn = (angle_m - angle_f + np.pi / 2) % np.pi - np.pi / 2
  cos, sin = np.cos(turn), np.sin(turn)
  linear = scale * np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
  center_f = np.array([c_f[0], c_f[1], z_center])
  center_m = np.array([c_m[0], c_m[1], z_center])
  out = np.eye(4)
  out[:3, :3] = linear
  out[:3, 3] = center_m - linear @ center_f
  return out


def register_moments(static, static_grid, moving, moving_grid) -> np.ndarray:
  """:func:`similarity_from_masks` of two sessions' images (``[X, Y, Z]`` or ``[X, Y, Z,
  C]`` on their grids, :class:`fcslstm_jax.data.grids.Grid`): ``[4, 4]`` map from the static
  session's world to the moving one's, as ``grids.register_rigid`` returns."""
  return similarity_from_masks(
    head_mask(static), static_grid.affine, head_mask(moving), moving_grid.affine
  )


def implausible(world_map) -> str | None:
  """Why ``world_map`` (:func:`register_moments`) is not a head's growth and motion between
  sessions (None: it is)."""
  linear = np.asarray(world_map)[:3, :3]
  scale = abs(np.linalg.det(linear)) ** (1 / 3)
  turn = np.degrees(np.arctan2(linear[1, 0], linear[0, 0]))
  if not SCALES[0] <= scale <= SCALES[1]:
    return f"the head outline reads as scaled by {scale:.2f} (outside {SCALES[0]}-{SCALES[1]})"
  if abs(turn) > MAX_TURN_DEG:
    return f"the head outline reads as turned by {turn:.0f} degrees (over {MAX_TURN_DEG:.0f})"
  return None
