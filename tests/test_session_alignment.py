"""experiments/session_alignment.py: the Dice of consecutive sessions and its mean."""

import numpy as np

from experiments import session_alignment as sa


def test_tissue_dice_counts_only_voxels_both_sessions_cover():
  a = np.array([1, 2, 3, 3, 2, sa.OUTSIDE], np.uint8)
  b = np.array([1, 2, 2, 3, sa.OUTSIDE, 3], np.uint8)
  d = sa.tissue_dice(a, b)
  # Voxels 0-3 count: CSF agrees, GM 1 of (1 + 2), WM 1 of (2 + 1).
  assert d["CSF"] == 1.0
  np.testing.assert_allclose([d["GM"], d["WM"]], [2 / 3, 2 / 3])
  assert np.isnan(sa.tissue_dice(a[:1], b[:1])["GM"])  # no GM in either: undefined


def test_summary_is_the_mean_over_subjects_that_have_the_pair():
  one = {m: {"0-1": {"CSF": 0.2, "GM": 0.6, "WM": 0.8}} for m in sa.METHODS}
  two = {
    m: {"0-1": {"CSF": 0.4, "GM": 0.8, "WM": 0.6}, "1-2": dict.fromkeys(("CSF", "GM", "WM"), 0.5)}
    for m in sa.METHODS
  }
  s = sa.summary({"01": one, "02": two})
  assert s["rigid"]["0-1"] == {"CSF": 0.3, "GM": 0.7, "WM": 0.7}
  assert s["none"]["1-2"] == {"CSF": 0.5, "GM": 0.5, "WM": 0.5}


def test_a_method_measured_on_some_subjects_only_is_summarized_over_them():
  """``--methods moments`` on a record whose subjects hold the others: each method's mean is
  over the subjects that have it; a method nobody has is left out."""
  old = {m: {"0-1": {"CSF": 0.2, "GM": 0.6, "WM": 0.8}} for m in ("none", "rigid")}
  new = dict(old, moments={"0-1": {"CSF": 0.4, "GM": 0.8, "WM": 0.9}})
  s = sa.summary({"01": old, "02": new})
  assert s["moments"]["0-1"] == {"CSF": 0.4, "GM": 0.8, "WM": 0.9}
  assert s["rigid"]["0-1"] == {"CSF": 0.2, "GM": 0.6, "WM": 0.8}
  assert "affine" not in s
