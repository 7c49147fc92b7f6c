"""experiments/trajectories.py: the seed summary; levers that reuse a training."""

import json
import os

import numpy as np
import pytest

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
  shapes training differs (the prior correction changes no training step; fewer epochs stop
  it earlier, from a source that keeps every epoch; evaluate.py's arguments,
  ``EVALUATE_ARGS``, change none) and the study is loaded the same way (``LOADER_ARGS``)."""
  for lever, source in trajectories.SAME_TRAINING.items():
    mine, theirs = trajectories.LEVERS[lever][1], trajectories.LEVERS[source][1]
    differ = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
    if "epochs" in differ:
      assert source in trajectories.KEEP_EVERY_EPOCH and mine["epochs"] < 30, (lever, source)
    allowed = set() if lever in trajectories.EVALUATE_ARGS else {"prior_correction"}
    assert differ - {"epochs"} == allowed, (lever, source, differ)
    loader = trajectories.LOADER_ARGS
    assert loader.get(lever) == loader.get(source), (lever, source)  # the same study as loaded


def finished_run(folder, steps_kept, epochs=4, steps_per_epoch=3):
  """A finished lever run as train.py leaves it: run.json, metrics.jsonl, results.json and
  the checkpoint folders of ``steps_kept``."""
  folder.mkdir(parents=True)
  (folder / "run.json").write_text(json.dumps({"config": {"epochs": epochs}}))
  (folder / "results.json").write_text("{}")
  lines = [{"epoch": e, "step": e * steps_per_epoch} for e in range(1, epochs + 1)]
  (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  for step in steps_kept:
    (folder / "checkpoints" / str(step) / "default").mkdir(parents=True)


def test_a_lever_with_fewer_epochs_starts_from_the_checkpoint_of_its_last_epoch(
  tmp_path, monkeypatch
):
  """The copy holds the checkpoints up to the lever's last epoch (the newest is what
  train.py restores) and that epoch's metrics; a source without that checkpoint is refused
  with its name, never scored at another epoch."""
  levers = dict(trajectories.LEVERS, short=("", {"epochs": 2, "prior_correction": "fitted"}))
  monkeypatch.setattr(trajectories, "LEVERS", levers)
  monkeypatch.setattr(trajectories, "SAME_TRAINING", {"short": "long"})
  finished_run(tmp_path / "s" / "long-seed0", steps_kept=[3, 6, 9, 12])
  workdir = tmp_path / "s" / "short-seed0"
  workdir.mkdir()
  trajectories.reuse_training("s", "short", 0, str(tmp_path), str(workdir), str(tmp_path / "log"))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  epochs = [json.loads(x)["epoch"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert epochs == [1, 2]
  assert json.loads((workdir / "run.json").read_text())["config"] == levers["short"][1]

  finished_run(tmp_path / "s" / "long-seed1", steps_kept=[9, 12])  # the default's two latest
  (tmp_path / "s" / "short-seed1").mkdir()
  with pytest.raises(SystemExit, match="long-seed1, which did not keep it"):
    trajectories.reuse_training(
      "s", "short", 1, str(tmp_path), str(tmp_path / "s" / "short-seed1"), str(tmp_path / "log")
    )


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
