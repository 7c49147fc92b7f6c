"""The 2D-vs-3D comparison's inter-slice consistency (the runs themselves: README numbers)."""

import numpy as np

from experiments import compare3d


def test_inter_slice_consistency_counts_head_pairs_along_z():
  seg = np.zeros((2, 1, 4), np.int32)
  seg[0, 0] = [1, 1, 2, 2]  # pairs: same, different, same
  seg[1, 0] = [0, 0, 3, 0]  # only (z1, z2) and (z2, z3) touch the head: both different
  head = seg > 0
  assert compare3d.inter_slice_consistency(seg, head) == (2, 5)
  # Along the last axis only: a segmentation constant along z but not along x is consistent.
  seg = np.arange(3)[:, None, None] * np.ones((3, 2, 5), np.int32)
  assert compare3d.inter_slice_consistency(seg, np.ones(seg.shape, bool)) == (24, 24)
