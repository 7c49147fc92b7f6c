"""experiments/trajectories.py: the seed summary of issue 29's ablation."""

import numpy as np

from experiments import trajectories


def row(lever, seed, held_wm, mpa, growth_gm=None):
  tissues = {"CSF": 0.9, "GM": 0.8, "WM": held_wm}
  whole = {"heldout": {"dice": dict(tissues, background=0.99)}}
  if growth_gm is not None:
    whole["growth_error"] = {"labeled_subjects": {"error": {"GM": growth_gm}}}
  return {"lever": lever, "seed": seed, "metrics": {"whole_volume": whole, "test": {"mpa": mpa}}}


def test_seed_summary_is_mean_and_sample_sd_per_lever_with_two_seeds_or_more():
  rows = [
    row("paper", 0, 0.2, 0.70, 1.0),
    row("paper", 1, 0.4, 0.80, 2.0),
    row("paper", 2, 0.9, 0.75),  # no growth: the growth value is left out of the mean
    row("age", 0, 0.5, 0.7),  # one seed: no summary line
  ]
  ((lever, n, stats),) = trajectories.seed_summary(rows)
  assert (lever, n) == ("paper", 3)
  np.testing.assert_allclose(stats["dice heldout WM"], (0.5, np.std([0.2, 0.4, 0.9], ddof=1)))
  np.testing.assert_allclose(stats["mpa"], (0.75, 0.05))
  assert "dice heldout background" not in stats and "growth GM" not in stats
  lines = trajectories.summary_lines(rows)
  assert any(
    line.startswith("| paper | 3 | 0.900 ± 0.000 / 0.800 ± 0.000 / 0.500 ± 0.361") for line in lines
  )
  assert trajectories.summary_lines(rows[-1:]) == []
