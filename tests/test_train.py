"""End to end on the real data path: generate a tiny dataset, train.py, resume, evaluate.py."""

import json
import os
import shutil

import jax
import nibabel as nib
import numpy as np
import pytest
from helpers import assert_predictions_on_input_grids
from helpers import train_args
from helpers import validator_errors

import evaluate
import train
from fcslstm_jax import run_record
from fcslstm_jax.cli import bids_app
from fcslstm_jax.config import Config
from fcslstm_jax.infer import pipeline
from fcslstm_jax.infer import prior
from fcslstm_jax.synthetic import bric_like
from fcslstm_jax.train import loop

TINY_DATA = bric_like.TINY
EPOCHS = 4


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("runs") / "straight"
  assert train.main(train_args(dataset, workdir, EPOCHS)) == 0
  return workdir


@pytest.mark.parametrize("begin", [0, 1, 3])
def test_learning_rate_decays_from_the_epoch_after_begin(begin):
  """Paper Sec. 3: "decays after 20 epochs with factor 0.97": epoch 21 is the first decayed."""
  from fcslstm_jax.train import loop

  config = Config(learning_rate=1.0, lr_decay_rate=0.5, lr_decay_begin_epoch=begin)
  schedule = loop.lr_schedule(config, steps_per_epoch=4)
  for epoch in range(1, 7):  # 1-based
    expected = 0.5 ** max(0, epoch - begin)
    for step in range(4 * (epoch - 1), 4 * epoch):
      assert float(schedule(step)) == pytest.approx(expected), (epoch, step)


def final_state(workdir):
  with open(os.path.join(workdir, "run.json")) as f:
    config = Config.from_json(json.load(f)["config"])
  _, params, step = pipeline.restore_params(str(workdir), config, 4, 2)
  return params, step


def test_training_lowers_the_loss(trained):
  with open(trained / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
  assert records[-1]["loss"] < records[0]["loss"], records
  results = json.loads((trained / "results.json").read_text())
  assert 0.0 <= results["test"]["mpa"] <= 1.0
  assert (trained / "tensorboard").is_dir()


def test_run_json_records_what_was_compiled_and_the_class_weights(trained):
  """The backend's compile choices are resolved once, when the run is set up, and recorded
  (issue 34); so are the loss's class weights, which the prior correction divides out."""
  from fcslstm_jax.model import psi

  record = json.loads((trained / "run.json").read_text())
  config, steps = record["config"], record["protocol"]["num_timepoints"]
  assert config["model"] == "bi-fcslstm"
  expected = (steps, psi.default_chunk_pixels(), "loop") if jax.default_backend() == "cpu" else None
  if expected:
    assert (config["unroll"], config["chunk_pixels"], config["batching"]) == expected
  assert None not in (config["unroll"], config["chunk_pixels"], config["batching"])
  weights = record["class_weights"]
  assert len(weights) == 4 and min(weights) > 0
  assert config["prior_correction"] == "fitted" and record["prior_strength"] in (
    0,
    0.25,
    0.5,
    0.75,
    1,
  )


def test_resume_gives_identical_parameters(dataset, trained, tmp_path, capsys):
  """A run stopped by its time budget (``--max-minutes``, here spent before the first step
  ends), then continued in two more commands, ends bit for bit where one run ends."""
  workdir = tmp_path / "resumed"
  assert train.main(train_args(dataset, workdir, EPOCHS // 2, "--max-minutes", "1e-6")) == 0
  out = capsys.readouterr().out
  assert "time budget: saved a checkpoint at step 1." in out
  assert not (workdir / "results.json").exists()
  # Segmented as a finished run would be: the prior correction is fitted at the checkpoint.
  assert "prior correction fitted" in out
  assert run_record.read(str(workdir)).prior_strength in prior.STRENGTHS
  assert train.main(train_args(dataset, workdir, EPOCHS // 2)) == 0
  assert train.main(train_args(dataset, workdir, EPOCHS)) == 0
  assert "Resuming" in capsys.readouterr().out
  (a, step_a), (b, step_b) = final_state(trained), final_state(workdir)
  assert step_a == step_b == EPOCHS
  # Bit for bit: same batches, same augmentation keys, same XLA program on CPU.
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_evaluate_writes_predictions_on_the_input_grid(dataset, trained, tmp_path):
  out = tmp_path / "pred"
  assert evaluate.main(["--workdir", str(trained), "--out", str(out)]) == 0
  assert_predictions_on_input_grids(dataset, out, TINY_DATA.num_subjects * len(TINY_DATA.ages))
  (t1,) = sorted(dataset.glob("sub-*/ses-*/anat/*_T1w.nii*"))[:1]
  assert nib.aff2axcodes(nib.load(t1).affine) == ("L", "A", "S")
  metrics = json.loads((out / "metrics.json").read_text())
  assert len(metrics["per_timepoint"]) == len(TINY_DATA.ages)
  assert [p["role"] for p in metrics["per_timepoint"]] == [
    "train",
    "train",
    "test",
    "train",
    "train",
  ]
  tc = metrics["temporal_consistency"]
  assert len(tc["prediction"]) == len(tc["ground_truth"]) == len(TINY_DATA.ages) - 1
  assert all(0.0 <= v <= 1.0 for v in tc["prediction"] + tc["ground_truth"])
  assert (out / "segmentation.png").stat().st_size > 0
  assert validator_errors(out) == []


def test_bids_app_segments_the_chosen_participants(dataset, trained, tmp_path):
  out = tmp_path / "derivative"
  argv = [str(dataset), str(out), "participant", "--model-dir", str(trained), "--no-report"]
  assert bids_app.main([*argv, "--participant-label", "sub-02"]) == 0
  assert {p.parts[-4] for p in out.rglob("*_dseg.nii.gz")} == {"sub-02"}
  assert validator_errors(out) == []
  assert bids_app.main(argv) == 2  # all participants: another selection, refused


def test_evaluated_labels_follow_the_input_orientation(dataset, trained, tmp_path):
  """The saved prediction of a voxel is the model's class at that voxel (no flipped axes):
  each session's file, read in canonical (RAS) order, is exactly the class map the pipeline
  computes for it, although the dataset stores its images LAS (x flipped). (Comparing with
  the truth instead would need a model far better than a 4-epoch tiny one: a flipped truth
  agrees with its segmentation about as well, within 0.01.)"""
  out = tmp_path / "pred"
  assert evaluate.main(["--workdir", str(trained), "--out", str(out), "--no-prior-correction"]) == 0
  run = run_record.read(str(trained))
  loaded, proto = pipeline.load_for_evaluation(run)
  members = pipeline.load_members([(str(trained), run)], proto, prior_correction=False)
  subject, _, probs, _ = next(pipeline.segment_study(loaded, members, (), batch_size=8))
  checked = 0
  for t, session in enumerate(subject.timepoints):
    if session is None:
      continue
    _, labels, _ = pipeline.session_outputs(np.moveaxis(probs[:, t], 0, 2), subject, session)
    (path,) = (out / f"sub-{subject.subject_id}").glob(f"*/anat/*{session.label}*_dseg.nii.gz")
    stored = nib.load(path)
    assert nib.aff2axcodes(stored.affine)[0] == "L"  # stored x runs the other way
    assert not np.array_equal(labels, labels[::-1])  # a flip would show
    np.testing.assert_array_equal(np.asarray(nib.as_closest_canonical(stored).dataobj), labels)
    checked += 1
  assert checked == len(subject.timepoints) == 5


@pytest.mark.parametrize("inside", ["sub-01/x", "derivatives/manual/x", "derivatives"])
def test_refuses_outputs_inside_the_input_dataset(dataset, trained, capsys, inside):
  """Inside the dataset, only a new (or this tool's) ``derivatives/<name>`` may take outputs:
  never a subject's folder or a label pipeline's."""
  out = dataset / inside
  existed = out.exists()
  assert evaluate.main(["--workdir", str(trained), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "inside the input dataset" in err and "Traceback" not in err
  assert out.exists() == existed


def test_any_config_field_can_be_set_and_is_recorded(dataset, tmp_path):
  """``flip_prob`` has no flag of its own: ``--set`` reaches it, and run.json records it."""
  workdir = tmp_path / "run"
  assert (
    train.main(train_args(dataset, workdir, 1) + ["--model", "fcn", "--set", "flip_prob=0.25"]) == 0
  )
  config = json.loads((workdir / "run.json").read_text())["config"]
  assert config["flip_prob"] == 0.25 and config["model"] == "fcn"


@pytest.mark.parametrize(
  "flags,message",
  [
    (["--batch-size", "0"], "--set batch_size=0: batch_size must be >= 1."),
    (["--epochs", "-1"], "--set epochs=-1: epochs must be >= 1."),
    (["--set", "flip_prob=1.5"], "flip_prob must be <= 1."),
    (["--set", "augment=maybe"], "augment must be bool."),
    (["--set", "nope=1"], "expected NAME=VALUE with NAME one of model, epochs"),
    (["--model", "unet"], "choose one of fcn, fcslstm, bi-fcslstm."),
  ],
)
def test_bad_config_values_are_one_error_line(dataset, tmp_path, capsys, flags, message):
  workdir = tmp_path / "run"
  assert train.main(train_args(dataset, workdir, 1) + flags) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
  assert not workdir.exists()


def test_help_lists_every_config_field(capsys):
  import dataclasses

  with pytest.raises(SystemExit):
    train.main(["--help"])
  out = capsys.readouterr().out
  for f in dataclasses.fields(Config):
    assert f"  {f.name}=" in out, f.name


def test_training_on_forgets_a_strength_fitted_at_an_earlier_checkpoint(trained, tmp_path):
  """A budget stop fits the prior correction at its checkpoint; a run that then trains on
  and is killed before it fits again must not segment its newer checkpoint with it."""
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  assert run_record.read(str(workdir)).prior_strength is not None
  loop.forget_prior_strength(str(workdir))
  record = run_record.read(str(workdir))
  assert record.prior_strength is None and record.class_weights is not None
