"""3D + time end to end on the real data path: train.py --spatial-dims 3, resume, evaluate.py."""

import json

import numpy as np
import pytest

import evaluate
import train
from helpers import assert_predictions_on_input_grids, train_args
from fcslstm_jax.synthetic import bric_like as bric
from fcslstm_jax.infer import evaluate as inference
from fcslstm_jax.config import Config

# 12 slices: windows of depth 8 slide along z (starts 0 and 4); 32 in-plane: one window.
# FCSLSTM: Bi-FCSLSTM's grouped 3D convolutions are slow on XLA:CPU (README "3D + time").
# 2 subjects, batch 2: one step per epoch. Resume is bit-exact in 2D (tests/test_train.py);
# a 3D run's patches are a function of (seed, epoch, step) (tests/test_patches.py).
FLAGS = ("--spatial-dims", "3", "--model", "fcslstm", "--set", "patch_size=[8,32,32]")


@pytest.fixture(scope="module")
def trained(dataset3d, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("runs3d") / "run"
  assert train.main(train_args(dataset3d, workdir, 1, *FLAGS)) == 0
  return workdir


def test_3d_run_trains_records_and_resumes(dataset3d, trained, capsys):
  config = Config.from_json(json.loads((trained / "run.json").read_text())["config"])
  assert config.spatial_dims == 3 and config.patch_size == (8, 32, 32)
  assert train.main(train_args(dataset3d, trained, 2, *FLAGS)) == 0
  assert "Resuming" in capsys.readouterr().out
  records = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert all(np.isfinite(r["loss"]) and 0 <= r["train_mpa"] <= 1 for r in records)
  results = json.loads((trained / "results.json").read_text())
  assert results["step"] == 2 and 0.0 <= results["test"]["mpa"] <= 1.0
  _, params, step = inference.restore_params(str(trained), config, 4, 2)
  assert step == 2
  assert params["slstm1"]["psi_x"]["conv1"]["kernel"].shape[:3] == (3, 3, 3)
  assert params["backend"]["deconv6"]["kernel"].shape[:3] == (4, 4, 4)


def test_3d_evaluate_writes_predictions_on_the_input_grid(dataset3d, trained, tmp_path):
  out = tmp_path / "pred"
  assert evaluate.main(["--workdir", str(trained), "--out", str(out), "--batch-size", "2"]) == 0
  assert_predictions_on_input_grids(dataset3d, out,
                                    bric.TINY_3D.num_subjects * len(bric.TINY_3D.ages))
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["metrics_available"] and len(metrics["per_timepoint"]) == 5
