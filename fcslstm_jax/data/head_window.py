"""Training windows around the head: a 2D run trains on a window of each slice sequence that
holds the head, not on the whole field of view.

Slices are zero-padded up to a multiple of 32 inside the network (five poolings:
:func:`fcslstm_jax.model.networks.pad_to_multiple`), so a field of view of 130 x 145 costs
160 x 160 per time point, while the head may fill 91 x 106 of it (``data/cohort``). nnU-Net
crops every image to its nonzero region before training (Isensee et al., Nature Methods 2021,
"Cropping"); here one window size serves the whole training set, so that the train step
compiles once: the box of every training slice's nonzero voxels and tissue labels, grown by
``margin`` pixels on each side and rounded up to the multiple, placed at a random position
around the box each step (a small translation, as nnU-Net's patch sampling). The paper
trains on whole slices; evaluation still segments the whole field of view.

Only background leaves the loss: the window always holds the box (every tissue label and
every nonzero voxel). The class weights are counted on the whole slices as before.

Layout: ``images [N, T, H, W, C]``, ``labels`` / ``label_mask [N, T, H, W]`` (the window
cuts H and W); ``valid [N, T]`` is not cut.
"""

import dataclasses
from typing import Optional

import numpy as np

# The batch arrays with the slice's H, W after the two leading axes [N, T].
SPATIAL_KEYS = ("images", "labels", "label_mask")


@dataclasses.dataclass(frozen=True)
class Window:
  """A training window of ``size`` (rows, columns) inside slices of ``shape`` (H, W); it
  always holds rows ``lo[0]..hi[0]`` and columns ``lo[1]..hi[1]`` (inclusive: the box and
  its margin, clipped to the slice)."""

  size: tuple
  shape: tuple
  lo: tuple
  hi: tuple

  def describe(self, multiple: int) -> str:
    padded = [_padded(n, multiple) for n in self.shape]
    return (
      f"training windows of {self.size[0]} x {self.size[1]} around the head (rows "
      f"{self.lo[0]}-{self.hi[0]}, columns {self.lo[1]}-{self.hi[1]}) instead of the "
      f"{self.shape[0]} x {self.shape[1]} slices (padded to {padded[0]} x {padded[1]})"
    )


def _padded(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def head_box(images, labels, label_mask, eps: float = 1e-3) -> Optional[tuple]:
  """``(lo, hi)``: the first and last row and column (inclusive) where any slice of any
  sequence and time point has a voxel with ``|image| > eps`` or a tissue label (label > 0
  under the mask); None where there is none."""
  seen = (np.abs(images) > eps).any(axis=(0, 1, 4)) | ((labels > 0) & (label_mask > 0)).any(
    axis=(0, 1)
  )
  rows, cols = np.flatnonzero(seen.any(1)), np.flatnonzero(seen.any(0))
  if not rows.size:
    return None
  return (int(rows[0]), int(cols[0])), (int(rows[-1]), int(cols[-1]))


def union(boxes) -> Optional[tuple]:
  """The smallest box that holds every box of ``boxes`` (None entries skipped); None when
  there is none."""
  boxes = [b for b in boxes if b is not None]
  if not boxes:
    return None
  lo = tuple(min(b[0][i] for b in boxes) for i in range(2))
  hi = tuple(max(b[1][i] for b in boxes) for i in range(2))
  return lo, hi


def plan(box, shape, margin: int, multiple: int) -> Optional[Window]:
  """The :class:`Window` that holds ``box`` grown by ``margin`` (clipped to ``shape``), its
  size rounded up to ``multiple``; None where it would not be smaller than the padded
  slice on either axis (nothing to gain) or there is no box."""
  if box is None:
    return None
  lo = tuple(max(0, b - margin) for b in box[0])
  hi = tuple(min(n - 1, b + margin) for b, n in zip(box[1], shape))
  size = tuple(min(_padded(b - a + 1, multiple), n) for a, b, n in zip(lo, hi, shape))
  if all(_padded(s, multiple) >= _padded(n, multiple) for s, n in zip(size, shape)):
    return None
  return Window(size=size, shape=tuple(shape), lo=lo, hi=hi)


def start(window: Window, rng: np.random.Generator) -> tuple:
  """A random top-left corner ``(row, column)`` of ``window``: the window holds its box and
  lies inside the slice."""
  corner = []
  for s, n, a, b in zip(window.size, window.shape, window.lo, window.hi):
    first, last = max(0, b + 1 - s), min(a, n - s)
    corner.append(int(rng.integers(first, last + 1)))
  return tuple(corner)


def crop(batch: dict, corner, size) -> dict:
  """``batch`` with its slices (:data:`SPATIAL_KEYS`) cut to ``size`` at ``corner``."""
  (r, c), (h, w) = corner, size
  return {k: v[:, :, r : r + h, c : c + w] if k in SPATIAL_KEYS else v for k, v in batch.items()}
