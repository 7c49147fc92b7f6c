"""Where evaluate.py's time goes: load, compile, run, write, per session; with and without a
warm compilation cache, and against another checkout of the code (issue 30).

    python bench/inference.py --workdir runs/X                         # this checkout
    git worktree add /tmp/old e0e3821
    python bench/inference.py --workdir runs/X --baseline /tmp/old     # ... and older ones

For each checkout, ``evaluate.py`` runs as its own process on the run's study (``--data-dir``
to segment another), twice on one fresh compilation cache (``cold``, then ``warm``), each
into a fresh output folder. Its ``metrics.json`` splits the time: ``load`` (study, resampling,
checkpoints), ``segment`` (forward passes; with ``compile``: getting the XLA programs),
``write`` (the rest of the evaluation: files, tables, scores), and ``start`` (the process's
wall time before and after: Python, imports). A checkout without those fields (older code)
reports what it has. Writes ``bench/results/inference.json`` and prints a table.

``work`` (this checkout's model, in-process): the arithmetic of the forward passes that
``evaluate.py`` runs (XLA's ``cost_analysis()`` of one batch, times the batches: subjects of
one bucketed shape share batches) and the seconds they would take at this machine's float32
matmul peak (``bench/flops.py``): a floor for ``run`` that no scheduling can beat.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results", "inference.json")


def evaluate_once(repo: str, workdir: str, data_dir, cache: str, out: str) -> dict:
  """One ``evaluate.py`` of ``repo`` in a fresh process; its times in seconds."""
  env = dict(
    os.environ,
    FCSLSTM_COMPILE_CACHE=cache,
    JAX_COMPILATION_CACHE_DIR=cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  command = [
    sys.executable,
    os.path.join(repo, "evaluate.py"),
    "--workdir",
    workdir,
    "--out",
    out,
    "--no-report",
  ] + (["--data-dir", data_dir] if data_dir else [])
  started = time.monotonic()
  subprocess.run(command, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
  wall = time.monotonic() - started
  with open(os.path.join(out, "metrics.json")) as f:
    m = json.load(f)
  sessions = m.get("predictions") or 1
  compiled = m.get("compilations") or {}
  load = m.get("load_seconds")
  segment = m.get("segment_seconds")
  row = {
    "wall": round(wall, 1),
    "evaluate": m.get("seconds"),
    "load": load,
    "segment": segment,
    "compile": compiled.get("seconds"),
    "programs_compiled": compiled.get("compiled"),
    "programs_from_cache": compiled.get("from_cache"),
    "sessions": sessions,
  }
  if load is not None and segment is not None and m.get("seconds") is not None:
    row["write"] = round(m["seconds"] - load - segment, 1)
  if row["compile"] is not None and segment is not None:
    row["run"] = round(segment - row["compile"], 1)
  row["start"] = round(wall - (m.get("seconds") or 0.0), 1)
  row["wall_per_session"] = round(wall / sessions, 2)
  return row


def cpu_name() -> str:
  sys.path.insert(0, os.path.join(REPO, "bench"))
  from common import cpu_name as name

  return name() or platform.machine()


def git_commit(repo: str) -> str:
  try:
    return subprocess.check_output(
      ["git", "rev-parse", "--short", "HEAD"], cwd=repo, text=True
    ).strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def measure(repo: str, workdir: str, data_dir, outs: str) -> dict:
  """Cold then warm ``evaluate.py`` of ``repo`` on one fresh cache, into ``outs/cold|warm``."""
  cache = tempfile.mkdtemp(prefix="bench-cache-")
  try:
    return {
      "checkout": os.path.abspath(repo),
      "commit": git_commit(repo),
      **{
        name: evaluate_once(repo, workdir, data_dir, cache, os.path.join(outs, name))
        for name in ("cold", "warm")
      },
    }
  finally:
    shutil.rmtree(cache, ignore_errors=True)


def compare_labels(a: str, b: str) -> dict:
  """The ``*_dseg`` files of two output folders, voxel by voxel (same relative paths)."""
  import nibabel as nib
  import numpy as np

  names = sorted(
    os.path.relpath(os.path.join(d, f), a)
    for d, _, fs in os.walk(a)
    for f in fs
    if f.endswith("_dseg.nii.gz")
  )
  differing, total, missing = 0, 0, 0
  for name in names:
    other = os.path.join(b, name)
    if not os.path.exists(other):
      missing += 1
      continue
    x = np.asarray(nib.load(os.path.join(a, name)).dataobj)
    y = np.asarray(nib.load(other).dataobj)
    differing += int(np.sum(x != y)) if x.shape == y.shape else x.size
    total += x.size
  return {"files": len(names), "missing": missing, "voxels": total, "differing": differing}


COLUMNS = (
  "wall",
  "load",
  "segment",
  "compile",
  "run",
  "write",
  "start",
  "programs_compiled",
  "programs_from_cache",
  "wall_per_session",
)


def forward_work(workdir: str, data_dir, batch_size: int = 8) -> dict:
  """FLOPs of the forward passes evaluate.py runs on the study, and their time at the
  machine's float32 matmul peak."""
  import collections

  import numpy as np

  sys.path[:0] = [os.path.join(REPO, "bench"), REPO]
  from flops import matmul_peak

  from fcslstm_jax.data import sequences
  from fcslstm_jax.infer import ensemble
  from fcslstm_jax.infer import pipeline
  from fcslstm_jax.infer import predict
  from fcslstm_jax.infer import tta

  runs = pipeline.read_runs([workdir])
  loaded, proto = pipeline.load_for_evaluation(runs[0][1], data_dir)
  members = pipeline.load_members(runs, proto, log=lambda line: None)
  fn = ensemble.predict_fns(members, tta.flip_variants(()))[0]
  batch_shapes = collections.Counter()  # the batches evaluation runs, by shape

  def count(x, v):  # predict_stream's own batching, without the forward passes
    batch_shapes[x.shape] += 1
    return np.zeros(len(x))

  subjects = pipeline.segmentable(loaded.subjects, log=lambda line: None)
  inputs = sequences.Inputs.of(members[0].config)
  parts = (
    (None, seq.images, seq.valid)
    for seq in (
      pipeline.bucketed(sequences.make_sequences([s], proto, "all", inputs=inputs))
      for s in subjects
    )
  )
  collections.deque(predict.predict_stream(count, parts, batch_size), maxlen=0)
  flops = 0.0
  for shape, n in batch_shapes.items():
    x = np.zeros(shape, np.float32)
    cost = fn.lower(members[0].params, x, np.ones(shape[:2], bool)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops += float(cost["flops"]) * n
  batches = sum(batch_shapes.values())
  peak = matmul_peak()["jnp.dot"]
  return {
    "batches": batches,
    "batch_size": batch_size,
    "gflop": round(flops / 1e9, 3),
    "matmul_peak_gflops": round(peak, 1),
    "seconds_at_peak": round(flops / 1e9 / peak, 3),
  }


def table(results) -> str:
  lines = ["| checkout | cache | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
  for r in results:
    for name in ("cold", "warm"):
      cells = ["n/a" if r[name].get(k) is None else str(r[name][k]) for k in COLUMNS]
      lines.append(f"| {r['commit']} | {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a run folder written by train.py")
  p.add_argument("--data-dir", help="segment this dataset instead of the run's own")
  p.add_argument(
    "--baseline", nargs="+", default=[], help="other checkouts of the code (e.g. git worktrees)"
  )
  p.add_argument("--out", default=RESULTS)
  p.add_argument("--no-work", action="store_true", help="skip the FLOP count (forward_work)")
  args = p.parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  repos = [REPO] + args.baseline
  outs = [tempfile.mkdtemp(prefix="bench-out-") for _ in repos]
  try:
    results = [measure(repo, workdir, args.data_dir, out) for repo, out in zip(repos, outs)]
    # Same predictions? This checkout's cold and warm runs, and this one against each baseline.
    same = {"warm_vs_cold": compare_labels(*(os.path.join(outs[0], n) for n in ("cold", "warm")))}
    baselines = [
      {
        "commit": r["commit"],
        "speedup_cold_wall": round(r["cold"]["wall"] / results[0]["cold"]["wall"], 2),
        "speedup_warm_wall": round(r["warm"]["wall"] / results[0]["warm"]["wall"], 2),
        "same_labels": compare_labels(os.path.join(outs[0], "cold"), os.path.join(out, "cold")),
      }
      for r, out in zip(results[1:], outs[1:])
    ]
  finally:
    for out in outs:
      shutil.rmtree(out, ignore_errors=True)
  record = {
    "workdir": workdir,
    "data_dir": args.data_dir,
    "machine": f"{cpu_name()}, {os.cpu_count()} cores",
    "load_average": [round(v, 2) for v in os.getloadavg()],
    "results": results,
    "same_labels": same,
  }
  if not args.no_work:
    record["work"] = forward_work(workdir, args.data_dir)
  if baselines:  # the first baseline's numbers also at the top level, as before
    record["baselines"] = baselines
    same["baseline_vs_this"] = baselines[0]["same_labels"]
    record["speedup_cold_wall"] = baselines[0]["speedup_cold_wall"]
    record["speedup_warm_wall"] = baselines[0]["speedup_warm_wall"]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(record, f, indent=1)
  print(table(results))
  c = same["warm_vs_cold"]
  print(
    f"labels warm vs cold: {c['differing']} of {c['voxels']} voxels differ ({c['files']} files)"
  )
  for b in baselines:
    c = b["same_labels"]
    print(
      f"against {b['commit']}: {b['speedup_cold_wall']}x cold, {b['speedup_warm_wall']}x warm; "
      f"labels: {c['differing']} of {c['voxels']} voxels differ ({c['files']} files)"
    )
  if "work" in record:
    w, run = record["work"], results[0]["warm"].get("run")
    print(
      f"forward passes: {w['batches']} batches of {w['batch_size']}, {w['gflop']} GFLOP: "
      f"{w['seconds_at_peak']} s at the matmul peak ({w['matmul_peak_gflops']} GFLOP/s); "
      f"warm run {run} s"
    )
  print(f"wrote {args.out} (seconds; load average {record['load_average']})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
