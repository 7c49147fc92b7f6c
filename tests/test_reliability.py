"""Failure handling end to end: SIGKILL / SIGINT / SIGTERM, corrupt checkpoints, bad inputs
through the CLIs, read-only and full disks, the NaN guard.

Cost: XLA:CPU compilation dominates. Every training run here uses test_train.py's tiny
dataset and config, so the train and predict programs are compiled once per session and
then read from the on-disk cache (tests/conftest.py) by every run, in process or not.
Bad-input cases fail before the model is built and never compile anything.

Tolerance: resumed runs must end with parameters *bit-identical* to an uninterrupted run
(same batches, same ``fold_in(rng, step)`` keys, the same cached XLA program on CPU).
"""

import dataclasses
import gzip
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import nibabel as nib
import numpy as np
import pytest
import test_study  # the loader tests' helpers for writing (bad) NIfTI files
from helpers import train_args

import evaluate
import train
from fcslstm_jax.config import Config
from fcslstm_jax.config import get_config
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.infer import pipeline
from fcslstm_jax.run_record import RunRecord
from fcslstm_jax.synthetic import bric_like
from fcslstm_jax.train import loop

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_DATA = bric_like.TINY
EPOCHS = 6  # one step per epoch (2 sequences, batch 2): a checkpoint per step
TIMEOUT = 300  # seconds for one subprocess to reach a point (a cold compile under load)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
  """An uninterrupted run (in process)."""
  workdir = tmp_path_factory.mktemp("runs") / "reference"
  assert train.main(train_args(dataset, workdir, EPOCHS)) == 0
  return workdir


# ----------------------------------------------------------------------------- helpers


def checkpoint_steps(workdir):
  """Complete checkpoints (orbax renames a step's temporary folder when it is done)."""
  folder = pathlib.Path(workdir) / "checkpoints"
  return (
    sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) if folder.is_dir() else []
  )


def partial_checkpoints(workdir):
  return sorted(
    p.name for p in (pathlib.Path(workdir) / "checkpoints").glob("*.orbax-checkpoint-tmp*")
  )


def final_params(workdir):
  config = Config.from_json(json.loads((pathlib.Path(workdir) / "run.json").read_text())["config"])
  _, params, step = pipeline.restore_params(str(workdir), config, 4, 2)
  return params, step


def assert_identical(workdir_a, workdir_b):
  (a, step_a), (b, step_b) = final_params(workdir_a), final_params(workdir_b)
  assert step_a == step_b
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # tolerance: 0 (bitwise)


def launch(args, log):
  env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
  with open(log, "w") as f:
    return subprocess.Popen(
      [sys.executable, str(REPO / "train.py"), *map(str, args)],
      cwd=REPO,
      env=env,
      stdout=f,
      stderr=subprocess.STDOUT,
    )


def wait_for(condition, proc, what):
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    assert proc.poll() is None, f"train.py exited ({proc.returncode}) before {what}"
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.001)


def stop(proc, signum=signal.SIGKILL):
  proc.send_signal(signum)
  return proc.wait(TIMEOUT)


def resumed_step(log):
  match = re.search(r"Resuming from .* at step (\d+)", pathlib.Path(log).read_text())
  return int(match.group(1)) if match else None


# ------------------------------------------------------------------------- kill / signals


@pytest.mark.slow
def test_sigkill_at_three_points_then_rerun_gives_identical_parameters(
  dataset, reference, tmp_path, capsys
):
  rng = random.Random(7)  # kill points: observed progress plus a seeded random delay
  workdir, log = tmp_path / "killed", tmp_path / "train.log"
  args = train_args(dataset, workdir, EPOCHS)

  # 1. While the model is built and compiled: run.json is written, no checkpoint yet.
  proc = launch(args, log)
  wait_for(lambda: (workdir / "run.json").exists(), proc, "run.json")
  time.sleep(rng.uniform(0.0, 1.0))
  assert stop(proc) == -signal.SIGKILL
  assert checkpoint_steps(workdir) == []

  # 2. During a checkpoint write, once an earlier checkpoint is complete.
  proc = launch(args, log)
  wait_for(
    lambda: checkpoint_steps(workdir) and partial_checkpoints(workdir), proc, "a checkpoint write"
  )
  assert stop(proc) == -signal.SIGKILL
  assert partial_checkpoints(workdir), "the kill missed the checkpoint write"
  complete = checkpoint_steps(workdir)

  # 3. Anywhere a few steps later.
  proc = launch(args, log)
  wait_for(lambda: checkpoint_steps(workdir)[-1] >= complete[-1] + 2, proc, "two more steps")
  assert resumed_step(log) == complete[-1]  # the last complete checkpoint
  time.sleep(rng.uniform(0.0, 0.1))
  assert stop(proc) == -signal.SIGKILL, "finished before the kill"
  complete = checkpoint_steps(workdir)

  assert train.main(args) == 0  # the same command (in process: no second interpreter start)
  log.write_text(capsys.readouterr().out)
  assert resumed_step(log) == complete[-1]
  assert_identical(workdir, reference)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(1, EPOCHS + 1))  # no duplicate epochs
  assert partial_checkpoints(workdir) == []


@pytest.mark.slow
def test_sigint_and_sigterm_save_a_checkpoint_and_say_how_to_resume(
  dataset, reference, tmp_path, capsys
):
  workdir, log = tmp_path / "signals", tmp_path / "train.log"
  args = train_args(dataset, workdir, EPOCHS)
  saved = 0
  for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, then a scheduler's preemption
    proc = launch(args, log)
    wait_for(
      lambda: checkpoint_steps(workdir) and checkpoint_steps(workdir)[-1] > saved, proc, "a step"
    )
    assert stop(proc, signum) == 130
    out = log.read_text()
    match = re.search(
      rf"{signum.name}: saved a checkpoint at step (\d+)\. Rerun the same "
      r"command to resume",
      out,
    )
    assert match, out
    assert "Traceback" not in out
    saved = int(match.group(1))
    assert saved in checkpoint_steps(workdir)

  assert train.main(args) == 0
  log.write_text(capsys.readouterr().out)
  assert resumed_step(log) == saved
  assert_identical(workdir, reference)


def test_sigterm_outside_the_training_steps_exits_cleanly(tmp_path, capsys, monkeypatch):
  """A preemption while the data is prepared or the model compiles: nothing to save yet."""
  root = good_dataset(tmp_path / "ds")
  make_sequences = sequences.make_sequences

  def preempted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return make_sequences(*args, **kwargs)

  monkeypatch.setattr(sequences, "make_sequences", preempted)
  handler = signal.getsignal(signal.SIGTERM)
  assert train.main(train_args(root, tmp_path / "run", EPOCHS)) == 130
  err = capsys.readouterr().err
  assert "Rerun the same command to resume" in err and "Traceback" not in err
  assert signal.getsignal(signal.SIGTERM) is handler  # restored
  assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- checkpoints


def truncate_files(folder):
  for path in pathlib.Path(folder).rglob("*"):
    if path.is_file():
      os.truncate(path, path.stat().st_size // 2)


def test_truncated_latest_checkpoint_falls_back_with_a_warning(
  dataset, reference, tmp_path, capsys, caplog
):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  newest, previous = checkpoint_steps(workdir)[-1], checkpoint_steps(workdir)[-2]
  truncate_files(workdir / "checkpoints" / str(newest))
  assert train.main(train_args(dataset, workdir, EPOCHS)) == 0
  out, err = capsys.readouterr()
  warnings = caplog.text
  assert f"checkpoints/{newest} is unreadable" in warnings, warnings
  assert f"using checkpoint {workdir / 'checkpoints' / str(previous)}" in warnings
  assert f"at step {previous}." in out and "Traceback" not in err + warnings
  assert_identical(workdir, reference)  # the unreadable step was retrained and rewritten


def test_no_readable_checkpoint_is_one_error_line(dataset, reference, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  for step in checkpoint_steps(workdir):
    truncate_files(workdir / "checkpoints" / str(step))
  assert train.main(train_args(dataset, workdir, EPOCHS)) == 2
  err = capsys.readouterr().err
  assert_one_error_line(err, str(workdir / "checkpoints"), "no checkpoint could be read")


# ------------------------------------------------------------------------------ NaN guard


def test_nan_in_a_batch_names_subject_and_session(
  dataset, reference, tmp_path, capsys, monkeypatch
):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  make_sequences = sequences.make_sequences

  def poisoned(subjects, proto, split, *args, **kwargs):
    seqs = make_sequences(subjects, proto, split, *args, **kwargs)
    if split != "train":
      return seqs
    images = seqs.images.copy()
    images[1, 3, 16, 16, 0] = np.nan  # sequence 1 = sub-02; time point 3 = 9 months
    return dataclasses.replace(seqs, images=images)

  monkeypatch.setattr(sequences, "make_sequences", poisoned)
  assert train.main(train_args(dataset, workdir, EPOCHS + 2)) == 2  # resumes, step 7 is NaN
  err = capsys.readouterr().err
  assert_one_error_line(err, "sub-02 ses-09mo", "loss became nan at step 7")
  assert f"step {EPOCHS}, is kept" in err
  assert checkpoint_steps(workdir)[-1] == EPOCHS
  assert_identical(workdir, reference)  # the last good checkpoint is untouched
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == EPOCHS


# ------------------------------------------------------------------------------ bad inputs


def assert_one_error_line(err, *fragments):
  """Apart from the progress bar (tqdm, on stderr), exactly one line: the error."""
  lines = [
    line
    for line in re.split(r"[\r\n]+", err)
    if line.strip() and not re.match(r"epoch \d+/\d+:", line.strip())
  ]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert "Traceback" not in err
  for fragment in fragments:
    assert str(fragment) in lines[0], (fragment, lines[0])


def files_under(folder):
  return sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*") if p.is_file())


def t2(root, ses="06mo"):
  return test_study._t1(root, ses).with_name(f"sub-01_ses-{ses}_T2w.nii.gz")


def header_only(path, shape):
  """A gzipped NIfTI header claiming ``shape`` float32, without the data."""
  header = nib.Nifti1Header()
  header.set_data_shape(shape)
  header.set_data_dtype(np.float32)
  header.set_sform(test_study.AFFINE, code=1)
  header["vox_offset"] = 352
  path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))


def _no_subjects(root):
  shutil.rmtree(root / "sub-01")
  shutil.rmtree(root / "sub-02")
  return root


def _missing_modality(root):
  t2(root).unlink()
  return t2(root)


def _modality_elsewhere(root):
  shifted = test_study.AFFINE.copy()
  shifted[0, 3] += 300.0
  test_study.write(t2(root), test_study.canonical_image(1), affine=shifted)
  return t2(root)


def _labels_off_grid(root):
  test_study.write(test_study._dseg(root, "12mo"), np.zeros((9, 9, 6), np.uint8))
  return test_study._dseg(root, "12mo")


def _two_sessions_one_timepoint(root):
  for mod in ("T1w", "T2w"):
    test_study.write(
      test_study._t1(root, "07mo").with_name(f"sub-01_ses-07mo_{mod}.nii.gz"),
      test_study.canonical_image(5),
    )
  return root / "sub-01"


def _bad_voxel(value):
  def mutate(root):
    img = test_study.canonical_image(0)
    img[2, 2, 2] = value
    test_study.write(test_study._t1(root), img)
    return test_study._t1(root)

  return mutate


def _bad_label(value, dtype):
  def mutate(root):
    labels = test_study.canonical_labels(0).astype(dtype)
    labels[0, 0, 2] = value
    test_study.write(test_study._dseg(root), labels)
    return test_study._dseg(root)

  return mutate


def _not_nifti(root):
  test_study._t1(root).write_bytes(b"this is not a NIfTI file at all" * 20)
  return test_study._t1(root)


def _other_format(root):  # an MGH volume under a NIfTI name
  nib.save(nib.MGHImage(test_study.canonical_image(0), np.eye(4)), str(root / "x.mgz"))
  (root / "x.mgz").rename(test_study._t1(root))
  return test_study._t1(root)


def _truncated(root):
  raw = test_study._t1(root).read_bytes()
  test_study._t1(root).write_bytes(raw[: len(raw) * 2 // 3])
  return test_study._t1(root)


def _four_d(root):
  test_study.write(test_study._t1(root), np.ones(test_study.SHAPE + (3,), np.float32))
  return test_study._t1(root)


def _huge_header(root):
  header_only(test_study._t1(root), (2048, 2048, 2048))  # 32 GiB of float32, over the 1 GiB limit
  return test_study._t1(root)


BAD_INPUTS = {
  "no subjects": (_no_subjects, "no subjects found"),
  "session missing a modality": (_missing_modality, "missing"),
  "modality outside the first one's view": (_modality_elsewhere, "does not overlap"),
  "labels off their image's grid": (_labels_off_grid, "must lie on their session's image"),
  "two sessions at one time point": (_two_sessions_one_timepoint, "both fit time point 3"),
  "NaN voxels": (_bad_voxel(np.nan), "NaN or Inf"),
  "Inf voxels": (_bad_voxel(np.inf), "NaN or Inf"),
  "labels above c-1": (_bad_label(4, np.uint8), "outside 0..3"),
  "negative labels": (_bad_label(-1, np.int16), "outside 0..3"),
  "non-integer labels": (_bad_label(0.5, np.float32), "not integers"),
  "unreadable file": (_not_nifti, "unreadable NIfTI"),
  "non-NIfTI format": (_other_format, "unreadable NIfTI"),
  "truncated file": (_truncated, "truncated"),
  "4D image": (_four_d, "expected a 3D volume"),
  "header over the memory limit": (_huge_header, "limit"),
}


def good_dataset(root):
  test_study.make_dataset(root, subjects=("01", "02"))
  return root


def fake_run(workdir, dataset):
  """A work directory as train.py writes it, without checkpoints (evaluate fails before)."""
  workdir.mkdir()
  (workdir / "run.json").write_text(
    json.dumps(
      {
        "config": get_config("tiny", epochs=EPOCHS, batch_size=2).to_json(),
        "config_name": "tiny",
        "dataset": str(pathlib.Path(dataset).resolve()),
        "data_seed": 0,
        "protocol": "bric",
      }
    )
  )
  return workdir


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line_from_both_clis(case, tmp_path, capsys):
  mutate, message = BAD_INPUTS[case]
  root = good_dataset(tmp_path / "ds")
  culprit = mutate(root)
  workdir = tmp_path / "run"
  assert train.main(train_args(root, workdir, EPOCHS)) == 2
  assert_one_error_line(capsys.readouterr().err, culprit, message)
  assert not workdir.exists()  # nothing written

  run = fake_run(tmp_path / "trained", root)
  out = tmp_path / "pred"
  assert evaluate.main(["--workdir", str(run), "--data-dir", str(root), "--out", str(out)]) == 2
  assert_one_error_line(capsys.readouterr().err, culprit, message)
  assert not out.exists() and files_under(run) == ["run.json"]


def test_debug_shows_the_traceback(tmp_path):
  root = good_dataset(tmp_path / "ds")
  _missing_modality(root)
  with pytest.raises(study.DataError):
    train.main(train_args(root, tmp_path / "run", EPOCHS, "--debug"))


def test_resume_accepts_another_chunk_size_only(tmp_path):
  """``chunk_pixels`` changes speed, not the function: resuming with another one is fine."""
  record = RunRecord(config=Config(), dataset="bric", protocol=protocol.BRIC)
  loop.check_run_dir(str(tmp_path), record)

  def with_config(**c):
    return dataclasses.replace(record, config=record.config.replace(**c))

  loop.check_run_dir(str(tmp_path), with_config(chunk_pixels=0))
  with pytest.raises(ConfigError, match="seed"):
    loop.check_run_dir(str(tmp_path), with_config(seed=1))


@pytest.mark.parametrize(
  "flags,field",
  [(["--model", "fcn"], "model"), (["--seed", "1"], "seed"), (["--config", "quick"], "stages")],
)
def test_refuses_a_workdir_of_another_run(flags, field, tmp_path, capsys):
  root = good_dataset(tmp_path / "ds")
  run = fake_run(tmp_path / "run", root)
  before = (run / "run.json").read_text()
  assert train.main(train_args(root, run, EPOCHS, *flags)) == 2
  assert_one_error_line(
    capsys.readouterr().err, run / "run.json", "holds a different run", f"{field}:", "--workdir"
  )
  assert files_under(run) == ["run.json"] and (run / "run.json").read_text() == before


def test_refuses_outputs_inside_the_input_dataset(tmp_path, capsys):
  root = good_dataset(tmp_path / "ds")
  inside = root / "derivatives" / "manual" / "run"  # a label pipeline's folder
  assert train.main(train_args(root, inside, EPOCHS)) == 2
  assert_one_error_line(capsys.readouterr().err, inside, "inside the input dataset", "--workdir")
  run = fake_run(tmp_path / "run", root)
  inside = root / "sub-01" / "pred"  # (ROOT/derivatives/<name> is where BIDS puts outputs)
  assert evaluate.main(["--workdir", str(run), "--data-dir", str(root), "--out", str(inside)]) == 2
  assert_one_error_line(capsys.readouterr().err, inside, "inside the input dataset", "--out")
  assert not inside.exists()


# ---------------------------------------------------------------------- read-only, full disk


def mount_tmpfs(path, options):
  path.mkdir(parents=True, exist_ok=True)
  result = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
  )
  if result.returncode:
    pytest.skip(f"cannot mount a tmpfs ({options}): {result.stderr.strip() or 'not root'}")


@pytest.fixture
def tmpfs(tmp_path):
  mounted = []

  def mount(name, options):
    path = tmp_path / name
    mount_tmpfs(path, options)
    mounted.append(path)
    return path

  yield mount
  for path in mounted:  # lazily: a failed in-process run may still hold a file open there
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_output_folders(tmpfs, tmp_path, capsys):
  readonly = tmpfs("ro", "ro,size=64k")
  root = good_dataset(tmp_path / "ds")
  assert train.main(train_args(root, readonly / "run", EPOCHS)) == 2
  assert_one_error_line(
    capsys.readouterr().err, readonly / "run", "Read-only file system", "--workdir"
  )
  run = fake_run(tmp_path / "run", root)
  assert (
    evaluate.main(["--workdir", str(run), "--data-dir", str(root), "--out", str(readonly / "pred")])
    == 2
  )
  assert_one_error_line(
    capsys.readouterr().err, readonly / "pred", "Read-only file system", "--out"
  )


def test_full_disk_during_training(dataset, tmpfs, capsys):
  full = tmpfs("full", "size=128k")  # run.json and logs fit, a checkpoint does not
  workdir = full / "run"
  assert train.main(train_args(dataset, workdir, EPOCHS)) == 2
  assert_one_error_line(
    capsys.readouterr().err,
    workdir / "checkpoints",
    "could not write checkpoint 1 (No space left on device",
    "--workdir",
  )
  assert checkpoint_steps(workdir) == [] and partial_checkpoints(workdir) == []
  assert not (workdir / "results.json").exists()


def test_full_disk_during_evaluation(reference, tmpfs, capsys):
  full = tmpfs("full", "size=4k")
  (full / "filler").write_bytes(b"\0" * 4096)
  out = full / "pred"
  assert evaluate.main(["--workdir", str(reference), "--out", str(out)]) == 2
  assert_one_error_line(capsys.readouterr().err, out, "No space left on device", "--out")
  assert files_under(full) == ["filler"]  # no partial prediction, figure or metrics


def test_cut_short_run_json_is_one_error_line(dataset, reference, tmp_path, capsys):
  """A run.json cut short (disk full, an editor): both CLIs say so in one line."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  text = (workdir / "run.json").read_text()
  (workdir / "run.json").write_text(text[: len(text) // 2])
  assert evaluate.main(["--workdir", str(workdir), "--out", str(tmp_path / "pred")]) == 2
  assert_one_error_line(capsys.readouterr().err, workdir / "run.json", "not valid JSON")
  assert train.main(train_args(dataset, workdir, EPOCHS)) == 2
  assert_one_error_line(capsys.readouterr().err, workdir / "run.json", "not valid JSON")
  assert not (tmp_path / "pred").exists()


def test_a_cut_short_metrics_line_is_dropped_on_resume(
  dataset, reference, tmp_path, capsys, caplog
):
  """A kill while metrics.jsonl was being appended leaves half a line: the resumed run drops
  it with a warning and goes on (the epoch is retrained and logged again)."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:20])
  assert train.main(train_args(dataset, workdir, EPOCHS + 1)) == 0
  assert f"line {len(lines) + 1} is unreadable" in caplog.text
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(1, EPOCHS + 2))
