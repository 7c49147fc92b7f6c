"""3D + time end to end on the real data path: train.py --spatial-dims 3, resume, evaluate.py."""

import json
import types

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from helpers import assert_predictions_on_input_grids
from helpers import train_args

import evaluate
import train
from fcslstm_jax.config import Config
from fcslstm_jax.data import intensity
from fcslstm_jax.data import protocol
from fcslstm_jax.data import study
from fcslstm_jax.infer import pipeline
from fcslstm_jax.outputs import writer
from fcslstm_jax.synthetic import bric_like
from fcslstm_jax.train import scoring

# 12 slices: windows of depth 8 slide along z (starts 0 and 4); 32 in-plane: one window.
# FCSLSTM: Bi-FCSLSTM's grouped 3D convolutions are slow on XLA:CPU (docs/model.md, "3D + time").
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
  # Resumed with another scoring interval (allowed: it changes no training): epoch 2 is not
  # scored, the last epoch always is.
  assert (
    train.main(train_args(dataset3d, trained, 3, *FLAGS) + ["--set", "score_every_epochs=3"]) == 0
  )
  assert "Resuming" in capsys.readouterr().out
  records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) for r in records)
  assert [r["train_mpa"] is None for r in records] == [False, True, False]
  assert all(0 <= r["train_mpa"] <= 1 for r in (records[0], records[2]))
  results = json.loads((trained / "results.json").read_text())
  assert results["step"] == 3 and 0.0 <= results["test"]["mpa"] <= 1.0
  _, params, step = pipeline.restore_params(str(trained), config, 4, 2)
  assert step == 3
  assert params["slstm1"]["psi_x"]["conv1"]["kernel"].shape[:3] == (3, 3, 3)
  assert params["backend"]["deconv6"]["kernel"].shape[:3] == (4, 4, 4)


def test_3d_evaluate_writes_predictions_on_the_input_grid(dataset3d, trained, tmp_path):
  out = tmp_path / "pred"
  assert evaluate.main(["--workdir", str(trained), "--out", str(out), "--batch-size", "2"]) == 0
  assert_predictions_on_input_grids(
    dataset3d, out, bric_like.TINY_3D.num_subjects * len(bric_like.TINY_3D.ages)
  )
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["metrics_available"] and len(metrics["per_timepoint"]) == 5


def test_3d_path_writes_each_voxel_where_it_was_read(dataset3d, tmp_path):
  """Orientation of the 3D path, as tests/test_train.py checks the 2D one, but exact and
  independent of how well a tiny run learned: a stand-in model whose class is a function
  of each voxel's T1w value goes through sliding windows, the session grid and the writer;
  the file must equal that function of the stored T1w voxel by voxel. Square in-plane
  grids stored LAS: an X/Y swap or a flip anywhere fails it."""

  def classes(t1):
    return jnp.clip(jnp.floor(t1 * 4), 0, 3).astype(jnp.int32)

  fn = jax.jit(lambda params, x, valid: jax.nn.one_hot(classes(x[..., 0]), 4))
  proto = protocol.BRIC
  (subject, *_) = study.load_study(dataset3d, proto, spacing="native").subjects
  assert subject.grid.shape[0] == subject.grid.shape[1]
  _, probs = pipeline.segment_subject([fn], [None], subject, proto, 2, [((8, 32, 32), 0.5)])
  for t, session in enumerate(subject.timepoints):
    native, labels, unc = pipeline.session_outputs(np.moveaxis(probs[:, t], 0, 2), subject, session)
    writer.write_session(
      str(tmp_path), "x", subject.subject_id, session, native, labels, unc, False
    )
    stored = np.asarray(nib.load(session.paths["T1w"]).dataobj).astype(np.float32)
    expected = np.asarray(classes(intensity.normalize_intensity(stored)))
    written = nib.load(
      writer.output_path(str(tmp_path), subject.subject_id, session.label, "x", "dseg")
    )
    assert nib.aff2axcodes(written.affine) == ("L", "A", "S")
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    assert len(np.unique(expected)) > 1 and not np.array_equal(
      expected, expected.transpose(1, 0, 2)
    )


def test_scoring_interval_keeps_scoring_a_fifth_of_training():
  """Auto (null), in 2D and 3D: the fewest epochs N for which one scoring's
  windows (a forward pass each, a third of a patch's training step) cost at most 20 % of N
  epochs' patches; an explicit value wins. Windows: non-overlapping tiles of each slab, a
  set whose images another set already holds counted once."""
  auto3d = Config(spatial_dims=3)
  assert scoring.scoring_interval(Config(), 39, 30) == 3  # 2D: the cohort's 39 sequences
  assert scoring.scoring_interval(Config(), 6, 30) == 1
  assert scoring.scoring_interval(auto3d, 90, 10) == 15  # 90 / 3 <= 0.2 * 15 * 10
  assert scoring.scoring_interval(auto3d, 6, 10) == 1
  assert scoring.scoring_interval(auto3d.replace(score_every_epochs=4), 90, 10) == 4

  def slabs(n):
    return types.SimpleNamespace(images=np.zeros((n, 5, 8, 96, 112, 2), np.float32))

  train_slabs, test_slabs = slabs(4), slabs(4)
  assert scoring.scoring_windows([train_slabs, test_slabs], (8, 32, 32)) == 4 * 3 * 4
  test_slabs.images[0, 0, 0, 0, 0] = 1.0
  assert scoring.scoring_windows([train_slabs, test_slabs], (8, 32, 32)) == 2 * 4 * 3 * 4
