"""experiments/trajectories.py: the seed summary; levers that reuse a training."""

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


def test_a_lever_that_reuses_a_training_differs_from_it_only_in_how_it_segments():
  """``SAME_TRAINING`` copies another lever's finished run: valid only where no setting that
  shapes training differs (the prior correction changes no training step) and the study is
  loaded the same way (``LOADER_ARGS``)."""
  for lever, source in trajectories.SAME_TRAINING.items():
    mine, theirs = trajectories.LEVERS[lever][1], trajectories.LEVERS[source][1]
    differ = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
    assert differ == {"prior_correction"}, (lever, source, differ)
    loader = trajectories.LOADER_ARGS
    assert loader.get(lever) == loader.get(source), (lever, source)  # the same study as loaded


def timepoints(dice_by_age):
  return [
    {"timepoint": i + 1, "age": age, "role": "train", "dice": dice}
    for i, (age, dice) in enumerate(dice_by_age)
  ]


def test_a_study_without_a_held_out_time_point_still_names_its_tissues_and_ages():
  """``cohort-all`` trains on every time point: no ``heldout`` group, no held-out mPA. Its
  cells are still filled from the other groups, and the per-time-point table shows the
  isointense sessions that have no held-out column to appear in."""
  dice = {"background": 0.99, "CSF": 0.91, "GM": 0.82, "WM": 0.75}
  r = {
    "lever": "prior",
    "seed": 0,
    "train_seconds": 60.0,
    "evaluate_seconds": 60.0,
    "metrics": {
      "whole_volume": {"heldout": None, "train_timepoints": {"dice": dice}},
      "test": None,
      "per_timepoint": timepoints([(0, dice), (6, dict(dice, WM=0.5))]),
    },
  }
  assert trajectories.tissue_names(r) == ["CSF", "GM", "WM"]
  cells = trajectories.row_cells(r)
  assert cells[2] == "n/a / n/a / n/a" and cells[3] == "0.910 / 0.820 / 0.750"
  assert cells[11] == "n/a"  # no held-out labeled slices to take the mPA of
  lines = trajectories.timepoint_lines([r])
  assert lines[3] == "| lever | seed | 0 mo (train) | 6 mo (train) |"
  assert lines[-1] == "| prior | 0 | 0.910 / 0.820 / 0.750 | 0.910 / 0.820 / 0.500 |"
  assert trajectories.timepoint_lines([dict(r, metrics={})]) == []
