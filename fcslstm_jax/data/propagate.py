"""Within-subject label propagation (issue 33; ours, not the paper's): each session's labeled
plane, carried to the same plane of the subject's other sessions as a weighted pseudo-label.

A subject's sessions share one working grid (:mod:`fcslstm_jax.data.study`: resampled, and
rigidly registered with ``--register rigid``), so working slice ``z`` is one anatomical plane
in every session. One labeled slice per session at its own ``z`` then gives up to T labeled
planes per volume: the plane a session has labels for is labeled, with another session's
labels, in every session that has none there. No cross-sectional tool has this; it is what
a longitudinal study adds. It is not exact: tissue grows between sessions (a 0-month brain
is smaller than a 12-month one), the head moves (unless registered), and a working slice's
image may lie up to half a slice from the labeled plane. So:

- the labels come from the nearest session in age that has labels on that slice (the least
  growth in between);
- only each tissue region's interior is carried: a voxel whose labels within ``erosion``
  voxels in-plane are not all its own class is left out (the boundaries are where growth and
  motion move the labels);
- the carried voxels weigh ``weight`` in the loss (a manual label weighs 1;
  ``Config.propagate_labels``).

Only labels of the training time points are carried (the held-out time point's never), into
any session of the subject, the held-out one included: its image is training input in the
paper's protocol already, and it now gets labels from the other sessions, never its own.

Layout: ``labels [N, T, H, W]`` int32 and ``mask [N, T, H, W]`` float32 as in
:class:`fcslstm_jax.data.sequences.SliceSet`; ``valid [N, T]`` and ``ages [T]``.
"""

import numpy as np
from scipy import ndimage


def interior(labels, mask, erosion: int) -> np.ndarray:
  """``bool [H, W]``: the labeled voxels whose neighbours within ``erosion`` voxels (in-plane,
  a square) are labeled with the same class."""
  if erosion <= 0:
    return mask > 0
  structure = np.ones((2 * erosion + 1,) * 2, bool)
  keep = np.zeros(labels.shape, bool)
  for c in np.unique(labels[mask > 0]):
    region = (labels == c) & (mask > 0)
    keep |= ndimage.binary_erosion(region, structure, border_value=0)
  return keep


def propagate(labels, mask, valid, ages, sources, weight: float, erosion: int):
  """``(labels, mask)`` with each slice's labels carried to the time points that have none
  there and whose session covers it (``valid``; see the module docstring). ``sources``: the
  time points whose labels may be carried (the training ones)."""
  labels, mask = labels.copy(), mask.copy()
  ages = np.asarray(ages, np.float64)
  for n in range(labels.shape[0]):
    own = [t for t in range(labels.shape[1]) if mask[n, t].any()]
    donors = [t for t in own if t in sources]
    if not donors:
      continue
    for t in range(labels.shape[1]):
      if not valid[n, t] or t in own:
        continue
      s = min(donors, key=lambda d: (abs(ages[d] - ages[t]), d))
      keep = interior(labels[n, s], mask[n, s], erosion)
      labels[n, t] = np.where(keep, labels[n, s], 0)
      mask[n, t] = np.where(keep, np.float32(weight), 0.0)
  return labels, mask
