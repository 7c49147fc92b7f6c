"""Data parallelism (fcslstm_jax/train/parallel.py): 1 vs 2 devices, two processes, bfloat16.

The device-count and multi-process runs need fresh interpreters (XLA_FLAGS and
jax.distributed must be set before JAX touches a device): tests/parallel_worker.py runs in
subprocesses, all started at once by one module fixture so that their compilations overlap,
and killed in a ``finally`` block whatever happens. They compile with conftest.py's
fast-compile XLA:CPU flags; the numbers compared are computed under the same flags on both
sides.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from helpers import train_args

from fcslstm_jax.errors import ConfigError
from fcslstm_jax.synthetic import bric_like
from fcslstm_jax.train import parallel

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "parallel_worker.py"
TINY_DATA = bric_like.TINY
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
TIMEOUT_S = 240  # all three; the two-process run must end within 120 s
REFUSED_TIMEOUT_S = 90  # a refused two-process run: start-up and the data, no compilation
EPOCHS_2P = 8  # two-process runs: one step per epoch
# 1 vs 2 devices: float32 sums split over two devices round differently; measured
# differences are ~1e-6 (loss) and ~2e-7 (parameters, which move ~4e-3 per step).
LOSS_RTOL, PARAM_ATOL = 1e-5, 1e-6


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(args, log, nice=0, **env):
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **env)
  flags = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = " ".join(
    filter(
      None, (flags, "" if FAST_COMPILE in flags else FAST_COMPILE, env.pop("EXTRA_XLA_FLAGS", ""))
    )
  )
  return subprocess.Popen(
    [sys.executable, str(WORKER), *map(str, args)],
    cwd=ROOT,
    env=env,
    stdout=log,
    stderr=subprocess.STDOUT,
    preexec_fn=(lambda: os.nice(nice)) if nice else None,
  )


def two_process_args(data, workdir, port, *extra):
  # FCN: the cheapest model to compile (the LSTM runs sharded in the 1-vs-2-device worker).
  return train_args(
    data,
    workdir,
    EPOCHS_2P,
    "--protocol",
    "ibis",
    "--model",
    "fcn",
    "--coordinator-address",
    f"127.0.0.1:{port}",
    "--num-processes",
    "2",
    *extra,
  )


def run_jobs(tmp, specs, timeout, while_running=None):
  """Starts ``specs`` (name, worker args, nice, env) at once, waits for all (killing what is
  left after ``timeout`` s); ``while_running(jobs)`` is called once they are started.
  Returns ``{name: {"rc", "log", npz contents...}}`` and ``"seconds"``."""
  jobs, logs, seconds, t0 = {}, {}, {}, time.time()
  try:
    for name, args, nice, env in specs:
      logs[name] = open(tmp / f"{name}.log", "w")
      jobs[name] = start(args, logs[name], nice, **env)
    if while_running:
      while_running(jobs)
    for name, job in jobs.items():
      job.wait(timeout=max(1.0, timeout - (time.time() - t0)))
      seconds[name] = time.time() - t0
  except subprocess.TimeoutExpired:
    pass
  finally:
    for job in jobs.values():
      if job.poll() is None:
        job.kill()
        job.wait()
    for f in logs.values():
      f.close()
  out = {"seconds": seconds}
  for name, job in jobs.items():
    out[name] = {"rc": job.returncode, "log": (tmp / f"{name}.log").read_text()}
    if job.returncode == 0:
      out[name].update(np.load(tmp / f"{name}.npz"))
  return out


def pair_specs(tmp, prefix, args, port):
  return [
    (
      f"{prefix}{i}",
      ["train", tmp / f"{prefix}{i}.npz", *args, "--process-id", i],
      0,
      {"JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}"},
    )
    for i in (0, 1)
  ]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  return bric_like.generate(
    tmp_path_factory.mktemp("parallel-data") / "data", seed=0, config=TINY_DATA
  )


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
  """Starts the 1-vs-2-device worker and a two-process train.py run; returns their outputs."""
  tmp = tmp_path_factory.mktemp("parallel")
  data = tiny_data
  workdir, port = tmp / "run", free_port()
  # The two processes get the CPU first; the 1-vs-2-device worker fills their idle time.
  out = run_jobs(
    tmp,
    pair_specs(tmp, "process", two_process_args(data, workdir, port), port)
    + [
      (
        "mesh",
        ["mesh", tmp / "mesh.npz"],
        10,
        {"EXTRA_XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
      )
    ],
    TIMEOUT_S,
  )
  return dict(out, workdir=workdir, data=data)


@pytest.fixture(scope="module")
def stopped(runs, tmp_path_factory):
  """The same two-process run with SIGTERM sent to process 1 alone once the step-1
  checkpoint exists, then rerun to the end. Starts after ``runs``: its programs are cached."""
  tmp = tmp_path_factory.mktemp("stopped")
  workdir = tmp / "run"

  def sigterm_to_process1(jobs):
    deadline = time.time() + TIMEOUT_S
    while not (workdir / "checkpoints" / "1").is_dir():
      assert time.time() < deadline and all(j.poll() is None for j in jobs.values()), (
        "no step-1 checkpoint"
      )
      time.sleep(0.01)
    jobs["first1"].send_signal(signal.SIGTERM)

  outs = {}
  for prefix, hook in (("first", sigterm_to_process1), ("again", None)):
    port = free_port()
    args = two_process_args(runs["data"], workdir, port, "--set", "log_every_steps=1")
    outs.update(run_jobs(tmp, pair_specs(tmp, prefix, args, port), TIMEOUT_S, hook))
  return dict(outs, workdir=workdir)


def check_ok(run):
  assert run["rc"] == 0, (
    f"exit {run['rc']} (negative: killed after {TIMEOUT_S} s)\n{run['log'][-3000:]}"
  )


def params_of(run, prefix=""):
  return {k[len(prefix) :]: v for k, v in run.items() if k.startswith(prefix + "['")}


def test_two_devices_match_one_device(runs):
  run = runs["mesh"]
  check_ok(run)
  np.testing.assert_allclose(run["loss2"], run["loss1"], rtol=LOSS_RTOL)
  one, two = params_of(run, "p1"), params_of(run, "p2")
  assert one.keys() == two.keys() and len(one) > 10
  for k in one:
    np.testing.assert_allclose(two[k], one[k], atol=PARAM_ATOL, rtol=0, err_msg=k)


def test_two_devices_match_one_device_in_3d(runs):
  """3D + time: train steps on volume patches and sliding-window predictions of a volume
  (four windows, two per call: one per device) agree on 1 and 2 devices."""
  run = runs["mesh"]
  check_ok(run)
  np.testing.assert_allclose(run["loss3d2"], run["loss3d1"], rtol=LOSS_RTOL)
  one, two = params_of(run, "q1"), params_of(run, "q2")
  assert one.keys() == two.keys() and len(one) > 10
  assert one["['backend']['deconv6']['kernel']"].ndim == 5  # a 3D model
  for k in one:
    np.testing.assert_allclose(two[k], one[k], atol=PARAM_ATOL, rtol=0, err_msg=k)
  assert run["volume_proba1"].shape == (1, 2, 16, 24, 24)
  np.testing.assert_allclose(run["volume_proba2"], run["volume_proba1"], atol=1e-6)


def test_bfloat16_step_convolutions_and_finite_loss(runs):
  run = runs["mesh"]
  check_ok(run)
  assert np.isfinite(run["bf16_loss"])
  # Parameters and optimizer state stay float32 (the step counter is int32).
  assert set(run["bf16_state_dtypes"].tolist()) == {"float32", "int32"}
  lowered = [line for line in str(run["bf16_lowered"]).splitlines() if " convolution(" in line]
  assert lowered and all(line.split("=", 1)[1].lstrip().startswith("bf16[") for line in lowered)
  # XLA:CPU has no bfloat16 convolution kernels: its float normalization computes them in
  # float32 between converts, so on CPU the compiled program holds bf16 values, not bf16
  # convolutions. (On GPU the compiled convolutions stay bf16.)
  compiled = str(run["bf16_compiled"])
  assert "bf16[" in compiled and " convolution(" in compiled


def test_two_processes_end_identical_with_one_checkpoint(runs):
  p0, p1 = runs["process0"], runs["process1"]
  check_ok(p0)
  check_ok(p1)
  assert int(p0["process_count"]) == int(p1["process_count"]) == 2
  # 2 subjects, one per process, one sequence each, global batch 2: one step per epoch.
  assert int(p0["step"]) == int(p1["step"]) == EPOCHS_2P
  a, b = params_of(p0), params_of(p1)
  assert a.keys() == b.keys() and len(a) > 10
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # One checkpoint folder per step, written once, the newest holding the final parameters.
  assert bool(p0["ckpt_matches"]) and bool(p1["ckpt_matches"])
  assert int(p0["ckpt_step"]) == int(p1["ckpt_step"]) == EPOCHS_2P
  ckpt_dir = runs["workdir"] / "checkpoints"
  entries = sorted(p.name for p in ckpt_dir.iterdir())
  assert all(e.isdigit() for e in entries) and str(EPOCHS_2P) in entries, entries  # no temp
  # Process 0 alone logs and writes the run's text files.
  assert "training sequences" in p0["log"] and "training sequences" not in p1["log"]
  assert (runs["workdir"] / "results.json").is_file()
  lines = (runs["workdir"] / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == EPOCHS_2P, lines  # (how long it took is not asserted: it varies with load)


def test_sigterm_to_one_process_stops_both_at_the_same_step(runs, stopped):
  """SIGTERM reaches process 1 only: both agree to stop at the same step and save it once
  (no process waits in a collective for one that stopped); rerun, they end bit-identical
  to the run that was never interrupted."""
  first0, first1 = stopped["first0"], stopped["first1"]
  for run in (first0, first1):
    assert run["rc"] == 0 and int(run["rc_train"]) == 130, run["log"][-3000:]
  step = int(first0["step"])
  assert int(first1["step"]) == step and 1 < step < EPOCHS_2P
  assert int(first0["ckpt_step"]) == int(first1["ckpt_step"]) == step
  assert f"SIGTERM: saved a checkpoint at step {step}." in first0["log"]
  again0, again1 = stopped["again0"], stopped["again1"]
  check_ok(again0)
  check_ok(again1)
  assert "Resuming from" in again0["log"] and f"at step {step}." in again0["log"]
  assert int(again0["step"]) == int(again1["step"]) == EPOCHS_2P
  reference = params_of(runs["process0"])
  for run in (again0, again1):
    resumed = params_of(run)
    assert resumed.keys() == reference.keys()
    for k in reference:
      np.testing.assert_array_equal(resumed[k], reference[k], err_msg=k)  # bitwise


def refused_pair(tiny_data, workdir, tmp_path, name):
  """Two training processes on ``workdir`` that must both refuse the run: ``(runs, [the
  error line of process 0, of process 1])``; each exits 2 with exactly one error line."""
  port = free_port()
  out = run_jobs(
    tmp_path,
    pair_specs(tmp_path, name, two_process_args(tiny_data, workdir, port), port),
    REFUSED_TIMEOUT_S,
  )
  errors = []
  for i in (0, 1):
    run = out[f"{name}{i}"]
    assert run["rc"] == 0 and int(run["rc_train"]) == 2, run["log"][-3000:]
    lines = [line for line in run["log"].splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, run["log"][-3000:]
    errors += lines
  return out, errors


def test_a_refused_run_stops_both_processes_with_one_error_line(tiny_data, tmp_path):
  """The work directory holds another run's run.json, which only process 0 reads: both
  processes agree on the error before the first collective and exit with one line each
  (before, process 1 waited in a collective for process 0, which had stopped)."""
  from fcslstm_jax.config import get_config
  from fcslstm_jax.data import protocol
  from fcslstm_jax.files import write_json

  workdir = tmp_path / "other"
  write_json(
    workdir / "run.json",
    {
      "config": get_config("tiny", model="fcn", seed=7).to_json(),
      "dataset": str(tiny_data),
      "protocol": protocol.builtin("ibis").to_json(),
    },
  )
  out, errors = refused_pair(tiny_data, workdir, tmp_path, "refused")
  for error in errors:
    assert "holds a different run" in error
    assert str(workdir / "run.json") in error
  assert "process 0 stopped the run" in out["refused1"]["log"]
  assert sorted(p.name for p in workdir.iterdir()) == ["run.json"]  # nothing written


# ------------------------------------------------------------------ no device needed


def test_distributed_args_from_flags_env_or_none():
  assert parallel.distributed_args(environ={}) is None
  assert parallel.distributed_args(num_processes=1, environ={}) is None
  assert parallel.distributed_args("h:1234", 2, 1, environ={}) == {
    "coordinator_address": "h:1234",
    "num_processes": 2,
    "process_id": 1,
  }
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert parallel.distributed_args(environ=env)["process_id"] == 3
  assert parallel.distributed_args(process_id=0, environ=env)["process_id"] == 0  # flag wins
  slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}
  assert parallel.distributed_args(environ=slurm) == {}  # JAX detects the rest


def test_distributed_args_incomplete_is_a_clear_error():
  with pytest.raises(ConfigError, match="--num-processes, --process-id"):
    parallel.distributed_args("h:1234", environ={})
  with pytest.raises(ConfigError, match="--process-id 2 must lie in 0..1"):
    parallel.distributed_args("h:1234", 2, 2, environ={})


def test_batch_not_divisible_by_devices_names_the_flag():
  mesh = types.SimpleNamespace(size=4)
  assert parallel.process_batch_size(8, mesh) == 8
  with pytest.raises(
    ConfigError,
    match=r"--batch-size 6 is not divisible by the 4 devices.*"
    r"--batch-size 4 or 8",
  ):
    parallel.process_batch_size(6, mesh)


def test_subject_shard_covers_every_subject_once():
  subjects = [f"sub-{i:02d}" for i in range(7)]
  shards = [parallel.subject_shard(subjects, p, 3) for p in range(3)]
  assert sorted(sum(shards, [])) == subjects
  assert shards[1] == ["sub-01", "sub-04"]
  with pytest.raises(ConfigError, match="2 subjects cannot be shared by 3 processes"):
    parallel.subject_shard(subjects[:2], 0, 3)


def test_mesh_of_more_devices_than_exist_is_a_clear_error():
  import jax

  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
  with pytest.raises(ConfigError, match="--mesh 99"):
    parallel.make_mesh(99)


def test_an_unwritable_run_json_stops_both_processes_with_one_error_line(tiny_data, tmp_path):
  """Only process 0 writes run.json. When that write fails (a read-only or full work
  directory; here its parent is a regular file, since the tests may run as root, for whom
  no directory is read-only), both processes stop with one error line each (before, process
  1 waited in the next collective until the coordinator died)."""
  blocker = tmp_path / "not-a-folder"
  blocker.write_text("")
  workdir = blocker / "run"
  out, errors = refused_pair(tiny_data, workdir, tmp_path, "unwritable")
  for error in errors:
    assert "run.json" in error or str(workdir) in error, error
  assert "process 0 stopped the run" in out["unwritable1"]["log"]
