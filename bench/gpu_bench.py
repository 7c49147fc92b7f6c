"""The GPU benchmark in one call: JAX vs PyTorch eager vs torch.compile, memory, peak fractions.

Run from the repository root on a GPU machine, with the jax, flax, optax and torch it already
has (nothing is installed; the JSON records the versions)::

    python3 bench/gpu_bench.py --out runs/gpu     # [8, 5, 256, 256, 2], inside --budget-s 450
    bash bench/gpu.sh                             # the same, with nvidia-smi and a log in $OUT

What it measures, for FCSLSTM and Bi-FCSLSTM at ``[B, T, H, W, C]`` = ``[8, 5, 256, 256, 2]``
(channels-last, as the models), in float32 and in bfloat16:

* the train step (forward, backward, RMSprop update; ``bench/common.py``) of JAX, PyTorch eager
  and ``torch.compile`` (``bench/torch_reference.py``): the median of ``--steps`` steps, each
  waited for, and the mean step of the same number run back to back (one wait at the end);
* the compiled temp memory (``memory_analysis()``) of the JAX Bi-FCSLSTM step for each remat
  policy (``fcslstm_jax.model.networks.REMAT_POLICIES``);
* the fraction of the card's dense tensor peak and of its memory-bandwidth roofline.

How it stays inside the budget. Every row is its own subprocess with its own timeout, and no
row starts once the budget is spent, so one slow row cannot eat the others; results are
written after every row. Phase 1 runs in parallel lanes what needs no clean GPU timing: it
compiles the JAX programs that phase 2 times into a persistent compilation cache (so phase 2
loads them), warms ``torch.compile``'s caches with one step of each model, and measures memory
and cost (that lane compiles with XLA's GPU autotuning off, so that it does not disturb the
others' autotuning; those programs are not the timed ones). Phase 2 times the rows one after
another, the Bi-FCSLSTM rows first.

How FLOPs are counted: from the jaxpr of the JAX train step (remat ``none``), two per
multiply-add of every convolution and matrix product in the forward and backward pass, the
whole kernel window counted at the borders too (:func:`jaxpr_flops`; elementwise work and the
update are not counted; bench/README.md compares it with XLA's CPU count). XLA's
``cost_analysis()`` on a GPU leaves out the convolutions, which are cuDNN calls. The same count
serves the PyTorch rows, which do the same arithmetic. Fraction of peak: FLOPs / step time /
the card's dense peak, in bfloat16 for the bf16 rows and in TF32 for the float32 rows (cuDNN
convolutions use TF32 by default in both frameworks: JAX's default precision, and
``torch.backends.cudnn.allow_tf32``, recorded). Roofline: ``cost_analysis()``'s "bytes
accessed" of the JAX step compiled with the time loop unrolled (on a while loop it counts the
loop body once) / step time / the card's memory bandwidth. The peaks are :data:`PEAKS`, the
vendor's datasheet numbers; the matrix-product rate measured in the same call is recorded
beside them.

``--tiny --size 32 --batch 1 --time-steps 2`` runs the whole plan at a tiny size on CPU
(``tests/test_bench.py``); without torch its rows are skipped with the reason. Writes
``OUT/gpu_bench.json`` and prints the table (bench/README.md, "GPU").
"""

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
GIB = 2**30
TINY = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1))
DTYPES = ("float32", "bfloat16")
MODELS = {"bi": "bi-fcslstm", "uni": "fcslstm"}
FRAMEWORKS = ("jax", "torch-eager", "torch-compile")

# Dense (no 2:4 sparsity) tensor-core peaks and memory bandwidth, per device name, SXM parts.
# H100 SXM5 and H200 share the GH100 compute (BF16 989.4 and TF32 494.7 TFLOP/s dense, half
# the datasheets' "with sparsity" figures); memory: H100 3.35 TB/s HBM3, H200 4.8 TB/s HBM3e.
# Sources: NVIDIA H100 and H200 Tensor Core GPU datasheets; the H100 table of
# glennklockwood.com/garden/processors/h100 (from NVIDIA's Hopper whitepaper).
PEAKS = {
  "H200": {"bfloat16": 989.4e12, "tf32": 494.7e12, "bytes_per_s": 4.8e12},
  "H100": {"bfloat16": 989.4e12, "tf32": 494.7e12, "bytes_per_s": 3.35e12},
}


# ----------------------------------------------------------------------------- FLOP count


def _sub_jaxprs(params):
  """The jaxprs inside an equation's parameters (duck-typed: JAX versions move the classes)."""
  for v in params.values():
    for item in v if isinstance(v, (tuple, list)) else (v,):
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(item, "jaxpr") and hasattr(getattr(item, "jaxpr"), "eqns"):
        yield item.jaxpr


def _size(shape):
  n = 1
  for d in shape:
    n *= int(d)
  return n


def conv_flops(eqn) -> int:
  """2 x multiply-adds of a ``conv_general_dilated``: each output element contracts the
  kernel's spatial window and its input features (``prod(rhs) / out_features``)."""
  rhs = eqn.invars[1].aval.shape
  out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
  return 2 * _size(eqn.outvars[0].aval.shape) * (_size(rhs) // out_features)


def dot_flops(eqn) -> int:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return 2 * _size(eqn.outvars[0].aval.shape) * _size([lhs[d] for d in lhs_contract])


def jaxpr_flops(jaxpr) -> int:
  """FLOPs of the convolutions and matrix products of ``jaxpr`` (a scan body times its length)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += conv_flops(eqn)
    elif name == "dot_general":
      total += dot_flops(eqn)
    times = int(eqn.params.get("length", 1)) if name == "scan" else 1
    total += times * sum(jaxpr_flops(sub) for sub in _sub_jaxprs(eqn.params))
  return total


# ----------------------------------------------------------------------------- child rows


def _jax_setup(args, remat="none", unroll=None, dtype="float32", model=None):
  import common
  import jax.numpy as jnp

  stages = TINY if args.tiny else None
  m = common.jax_model(
    MODELS[model or args.model],
    remat,
    unroll,
    stages,
    dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
  )
  return common, m


def _emit(record):
  print(json.dumps(record), flush=True)


def time_steps(run, wait_for, args) -> dict:
  """Median of ``args.steps`` timed calls of ``run()`` (each waited for) after
  ``args.warmup`` untimed ones, and the mean of as many calls issued back to back (only the
  last waited for, with ``wait_for(result)``): the second shows what host round trips cost."""
  for _ in range(args.warmup):
    run()
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    last = run(wait=False)
  wait_for(last)
  return {
    "median_s": statistics.median(times),
    "times_s": times,
    "back_to_back_s": (time.perf_counter() - t0) / args.steps,
  }


def child_jax_step(args):
  """Compile (from the persistent cache when phase 1 filled it) and time one JAX step."""
  import jax

  common, model = _jax_setup(args, dtype=args.dtype)
  batch = common.make_batch(args.batch, args.time_steps, args.size)
  step, _ = common.jax_train_step(model)
  params, opt_state = common.jax_state(model)
  t0 = time.perf_counter()
  compiled = step.lower(params, opt_state, *batch).compile()
  record = {
    "compile_s": time.perf_counter() - t0,
    "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
  }
  if args.compile_only:
    return _emit(record)
  state = [params, opt_state]

  def run(wait=True):
    state[0], state[1], loss = compiled(state[0], state[1], *batch)
    return loss.block_until_ready() if wait else loss

  record.update(time_steps(run, jax.block_until_ready, args))
  _emit(record)


def child_torch_step(args):
  """One PyTorch eager or ``torch.compile`` row; bfloat16 through ``torch.autocast``."""
  import common  # first: it sets OMP_WAIT_POLICY before torch starts (see common.py)

  try:
    import torch
  except ImportError as e:
    return _emit({"skipped": f"torch not importable ({e}): pip install -r bench/requirements.txt"})
  import contextlib

  import numpy as np
  import torch_reference

  dev = common.torch_device()
  torch.manual_seed(0)
  x, labels, mask, cw = (
    torch.from_numpy(np.array(a)).to(dev)
    for a in common.make_batch(args.batch, args.time_steps, args.size)
  )
  labels = labels.long()
  kw = {"stages": TINY} if args.tiny else {}
  model = torch_reference.FCSLSTM(
    common.NUM_CLASSES, common.IN_CHANNELS, args.model == "bi", **kw
  ).to(dev)
  opt = torch_reference.rmsprop(model.parameters())
  fwd = torch.compile(model, backend=args.torch_compile_backend) if args.compile else model
  cast = (
    torch.autocast(dev, dtype=torch.bfloat16)
    if args.dtype == "bfloat16"
    else contextlib.nullcontext()
  )
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

  def run(wait=True):
    opt.zero_grad(set_to_none=True)
    with cast:
      logits = fwd(x)
    loss = torch_reference.weighted_cross_entropy(logits.float(), labels, mask, cw)
    loss.backward()
    opt.step()
    if wait:
      sync()

  t0 = time.perf_counter()
  run()  # compiles (torch.compile) or allocates
  record = {
    "setup_s": time.perf_counter() - t0,
    "device": dev,
    "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
    "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
  }
  if args.compile_only:
    return _emit(record)
  record.update(time_steps(run, lambda _: sync(), args))
  if dev == "cuda":
    record["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
  _emit(record)


def child_memory(args):
  """Compiled temp memory of the JAX Bi-FCSLSTM step, one line per remat policy."""
  for remat in args.remats:
    common, model = _jax_setup(args, remat=remat, model="bi")
    t0 = time.perf_counter()
    compiled = common.lower_train_step(model, args.batch, args.time_steps, args.size).compile()
    ma = compiled.memory_analysis()
    _emit(
      {
        "remat": remat,
        "compile_s": time.perf_counter() - t0,
        "temp_bytes": ma.temp_size_in_bytes,
        "argument_bytes": ma.argument_size_in_bytes,
        "output_bytes": ma.output_size_in_bytes,
        "alias_bytes": ma.alias_size_in_bytes,
      }
    )


def child_cost(args):
  """FLOPs from the jaxpr and XLA's bytes accessed of the unrolled step, per model and dtype."""
  import jax

  for model_key in args.models:
    for dtype in args.dtypes:
      common, model = _jax_setup(args, unroll=args.time_steps, dtype=dtype, model=model_key)
      step, tx = common.jax_train_step(model)
      params = jax.eval_shape(lambda m=model: common.networks.init_params(m, common.IN_CHANNELS))
      opt_state = jax.eval_shape(tx.init, params)
      data = jax.eval_shape(lambda: common.make_batch(args.batch, args.time_steps, args.size))
      flops = jaxpr_flops(jax.make_jaxpr(step)(params, opt_state, *data))
      t0 = time.perf_counter()
      cost = step.lower(params, opt_state, *data).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      _emit(
        {
          "model": model_key,
          "dtype": dtype,
          "jaxpr_flops": flops,
          "compile_s": time.perf_counter() - t0,
          "xla_flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        }
      )


def child_matmul(args):
  """Best rate of an n x n matrix product in bfloat16 and in float32 (JAX's default precision)."""
  import jax
  import jax.numpy as jnp

  n = 512 if args.tiny else 8192
  for dtype in DTYPES:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = float("inf")
    for _ in range(10):
      t0 = time.perf_counter()
      dot(a, a).block_until_ready()
      best = min(best, time.perf_counter() - t0)
    _emit({"dtype": dtype, "n": n, "flops_per_s": 2 * n**3 / best})


def child_versions(args):
  del args
  import flax
  import jax
  import optax

  out = {
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "devices": [str(d) for d in jax.devices()],
  }
  try:
    import torch

    out.update(
      torch=torch.__version__,
      torch_cuda=torch.version.cuda,
      torch_sees_gpu=torch.cuda.is_available(),
    )
  except ImportError as e:
    out["torch"] = f"not importable ({e})"
  _emit(out)


CHILDREN = {
  "jax-step": child_jax_step,
  "torch-step": child_torch_step,
  "memory": child_memory,
  "cost": child_cost,
  "matmul": child_matmul,
  "versions": child_versions,
}


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Row:
  name: str
  child: str
  timeout_s: float
  flags: list = dataclasses.field(default_factory=list)
  env: dict = dataclasses.field(default_factory=dict)


def size_flags(args):
  flags = [
    "--batch",
    str(args.batch),
    "--time-steps",
    str(args.time_steps),
    "--size",
    str(args.size),
    "--steps",
    str(args.steps),
    "--warmup",
    str(args.warmup),
    "--torch-compile-backend",
    args.torch_compile_backend,
  ]
  return flags + (["--tiny"] if args.tiny else [])


def step_row(framework, model, dtype, args, compile_only=False):
  """The row that times (or, ``compile_only``, prepares) one configuration."""
  label = {"jax": "JAX", "torch-eager": "PyTorch eager", "torch-compile": "torch.compile"}
  name = f"{label[framework]} {'Bi-FCSLSTM' if model == 'bi' else 'FCSLSTM'} {dtype}"
  flags = ["--model", model, "--dtype", dtype] + (["--compile-only"] if compile_only else [])
  if framework == "jax":
    return Row(name, "jax-step", args.jax_timeout_s, flags)
  compile_flag = ["--compile"] if framework == "torch-compile" else []
  timeout = args.torch_compile_timeout_s if compile_flag else args.torch_timeout_s
  return Row(name, "torch-step", timeout, flags + compile_flag)


def make_plan(args):
  """``(phase-1 lanes, phase-2 rows)``; Bi-FCSLSTM first, then FCSLSTM."""
  configs = [(m, d) for m in args.models for d in args.dtypes]
  frameworks = [f for f in args.frameworks if f == "jax" or not args.no_torch]
  no_autotune = {"XLA_FLAGS_EXTRA": "--xla_gpu_autotune_level=0"} if args.gpu else {}
  analysis = [
    Row("versions", "versions", 60),
    Row(
      "temp memory per remat policy",
      "memory",
      args.memory_timeout_s,
      ["--remats", *args.remats],
      no_autotune,
    ),
    Row(
      "FLOPs and bytes accessed",
      "cost",
      args.memory_timeout_s,
      ["--models", *args.models, "--dtypes", *args.dtypes],
      no_autotune,
    ),
  ]
  jax_prep = [step_row("jax", m, d, args, True) for m, d in configs] if "jax" in frameworks else []
  torch_prep = [
    step_row("torch-compile", m, d, args, True) for m, d in configs if "torch-compile" in frameworks
  ]
  lanes = [analysis, jax_prep] + [
    torch_prep[i :: max(1, args.lanes - 2)] for i in range(max(1, args.lanes - 2))
  ]
  for lane in lanes:
    for row in lane:
      row.name = f"prepare: {row.name}" if "--compile-only" in row.flags else row.name
  timed = [Row("matrix-product rate", "matmul", 60)]
  timed += [step_row(f, m, d, args) for m, d in configs for f in frameworks]
  return [lane for lane in lanes if lane], timed


def run_row(row, args, deadline):
  """Runs ``row`` in a subprocess, bounded by its timeout and the deadline; never raises."""
  left = deadline - time.monotonic()
  if left < 5:
    return {"row": row.name, "status": "skipped", "reason": "budget spent"}
  timeout = min(row.timeout_s, left)
  env = dict(
    os.environ,
    PYTHONUNBUFFERED="1",
    XLA_PYTHON_CLIENT_PREALLOCATE="false",
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  env.setdefault("JAX_COMPILATION_CACHE_DIR", args.cache_dir)
  if row.env.get("XLA_FLAGS_EXTRA"):
    env["XLA_FLAGS"] = " ".join(filter(None, (env.get("XLA_FLAGS"), row.env["XLA_FLAGS_EXTRA"])))
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    "--child",
    row.child,
    *size_flags(args),
    *row.flags,
  ]
  t0 = time.monotonic()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    stdout, stderr = proc.stdout, proc.stderr
  except subprocess.TimeoutExpired as e:
    status = f"timeout after {timeout:.0f} s"
    stdout, stderr = (
      x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr)
    )
  records = []
  for line in stdout.splitlines():
    if line.startswith("{"):
      try:
        records.append(json.loads(line))
      except ValueError:
        pass
  out = {"row": row.name, "status": status, "seconds": time.monotonic() - t0, "records": records}
  if any("skipped" in r for r in records):
    out["status"] = "skipped"
    out["reason"] = records[0]["skipped"]
  if status != "ok":
    out["stderr_tail"] = stderr[-2000:]
  return out


def run_plan(args):
  start = time.monotonic()
  deadline = start + args.budget_s
  lanes, timed = make_plan(args)
  results = {"phase1": [], "phase2": []}
  lock = threading.Lock()

  def save():
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
      json.dump(dict(results, args=vars(args)), f, indent=1)

  def lane_worker(lane, phase_deadline):
    for row in lane:
      res = run_row(row, args, phase_deadline)
      with lock:
        results["phase1"].append(res)
        save()
        print(
          f"[{time.monotonic() - start:5.0f} s] {res['row']}: {res['status']}"
          + (f" ({res['reason']})" if res.get("reason") else ""),
          flush=True,
        )

  phase1_deadline = start + args.phase1_fraction * args.budget_s
  threads = [threading.Thread(target=lane_worker, args=(lane, phase1_deadline)) for lane in lanes]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  for row in timed:
    res = run_row(row, args, deadline)
    results["phase2"].append(res)
    save()
    print(
      f"[{time.monotonic() - start:5.0f} s] {res['row']}: {res['status']}"
      + (f" ({res['reason']})" if res.get("reason") else "")
      + (
        f" ({res['records'][0]['median_s'] * 1e3:.1f} ms)"
        if res["records"] and "median_s" in res["records"][0]
        else ""
      ),
      flush=True,
    )
  results["wall_s"] = time.monotonic() - start
  return results


# ----------------------------------------------------------------------------- summary


def _find(rows, name):
  return next((r for r in rows if r["row"] == name), None)


def summarize(results):
  """Step times, ratios to JAX, fractions of the peaks, memory per remat policy."""
  p1, p2 = results["phase1"], results["phase2"]
  versions = (_find(p1, "versions") or {}).get("records", [{}])
  versions = versions[0] if versions else {}
  kind = versions.get("device_kind", "")
  peak = next((v for k, v in PEAKS.items() if k in kind), None)
  cost = {
    (r["model"], r["dtype"]): r
    for r in (_find(p1, "FLOPs and bytes accessed") or {}).get("records", [])
  }
  matmul = {
    r["dtype"]: r["flops_per_s"]
    for r in (_find(p2, "matrix-product rate") or {}).get("records", [])
  }
  steps = []
  for res in p2:
    if res["row"] == "matrix-product rate":
      continue
    framework, model_name, dtype = res["row"].rsplit(" ", 2)
    model = "bi" if model_name == "Bi-FCSLSTM" else "uni"
    rec = res["records"][0] if res["records"] else {}
    row = {
      "row": res["row"],
      "framework": framework,
      "model": model,
      "dtype": dtype,
      "status": res["status"],
      "median_s": rec.get("median_s"),
      "back_to_back_s": rec.get("back_to_back_s"),
    }
    c = cost.get((model, dtype))
    if row["median_s"] and c:
      rate = c["jaxpr_flops"] / row["median_s"]
      row["tflop_per_s"] = rate / 1e12
      if peak:
        row["fraction_of_peak"] = rate / peak["bfloat16" if dtype == "bfloat16" else "tf32"]
        if framework == "JAX":
          row["fraction_of_bandwidth"] = c["bytes_accessed"] / row["median_s"] / peak["bytes_per_s"]
    steps.append(row)
  for row in steps:
    jax_row = next(
      (
        r
        for r in steps
        if r["framework"] == "JAX" and r["model"] == row["model"] and r["dtype"] == row["dtype"]
      ),
      None,
    )
    if row["median_s"] and jax_row and jax_row["median_s"]:
      row["jax_speedup"] = row["median_s"] / jax_row["median_s"]
  memory = (_find(p1, "temp memory per remat policy") or {}).get("records", [])
  return {
    "versions": versions,
    "peak": peak,
    "peak_source": "bench/gpu_bench.py PEAKS",
    "matmul_flops_per_s": matmul,
    "cost": list(cost.values()),
    "steps": steps,
    "memory": memory,
    "wall_s": results.get("wall_s"),
  }


def table(summary, shape):
  v = summary["versions"]
  lines = [
    f"Train step `{shape}` (B, T, H, W, C) on {v.get('device_kind', '?')}: jax "
    f"{v.get('jax', '?')}, torch {v.get('torch', '?')}",
    "",
    "| configuration | status | median step (ms) | back to back (ms) | × JAX | "
    "TFLOP/s | of dense peak | of HBM roofline |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]

  def fmt(x, f):
    return "" if x is None else f.format(x)

  for r in summary["steps"]:
    lines.append(
      f"| {r['row']} | {r['status']} | {fmt(r['median_s'] and r['median_s'] * 1e3, '{:.1f}')} | "
      f"{fmt(r['back_to_back_s'] and r['back_to_back_s'] * 1e3, '{:.1f}')} | "
      f"{fmt(r.get('jax_speedup'), '{:.2f}')} | {fmt(r.get('tflop_per_s'), '{:.1f}')} | "
      f"{fmt(r.get('fraction_of_peak'), '{:.1%}')} | "
      f"{fmt(r.get('fraction_of_bandwidth'), '{:.1%}')} |"
    )
  lines += ["", "| JAX Bi-FCSLSTM float32, remat | temp (GiB) |", "| --- | ---: |"]
  lines += [f"| {m['remat']} | {m['temp_bytes'] / GIB:.2f} |" for m in summary["memory"]]
  lines += [
    "",
    "| model, dtype | FLOPs per step (jaxpr) | bytes accessed (XLA, unrolled) |",
    "| --- | ---: | ---: |",
  ]
  lines += [
    f"| {c['model']}, {c['dtype']} | {c['jaxpr_flops'] / 1e9:.1f} G | "
    f"{c['bytes_accessed'] / 1e9:.1f} GB |"
    for c in summary["cost"]
  ]
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--time-steps", type=int, default=5)
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--steps", type=int, default=10, help="timed steps per row")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--tiny", action="store_true", help="tiny channel widths (smoke test)")
  p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["bi", "uni"])
  p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
  p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
  p.add_argument("--remats", nargs="+", default=None, help="default: every remat policy")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument(
    "--torch-compile-backend",
    default="inductor",
    help="'eager' checks the torch.compile path quickly (smoke test)",
  )
  p.add_argument("--budget-s", type=float, default=450, help="the whole call, both phases")
  p.add_argument(
    "--phase1-fraction", type=float, default=0.45, help="share of the budget phase 1 may use"
  )
  p.add_argument("--lanes", type=int, default=4, help="parallel lanes of phase 1 (>= 3)")
  p.add_argument("--jax-timeout-s", type=float, default=90)
  p.add_argument("--torch-timeout-s", type=float, default=60)
  p.add_argument("--torch-compile-timeout-s", type=float, default=150)
  p.add_argument("--memory-timeout-s", type=float, default=200)
  p.add_argument(
    "--cache-dir", default=os.path.join(tempfile.gettempdir(), "fcslstm-gpu-bench-cache")
  )
  p.add_argument("--out", default=os.path.join(BENCH, "results", "gpu"))
  # Child rows (run by the parent, not by hand):
  p.add_argument("--child", choices=sorted(CHILDREN))
  p.add_argument("--model", choices=sorted(MODELS), default="bi")
  p.add_argument("--dtype", choices=DTYPES, default="float32")
  p.add_argument("--compile", action="store_true")
  p.add_argument("--compile-only", action="store_true")
  args = p.parse_args(argv)
  if args.child:
    sys.path.insert(0, BENCH)
    if args.remats is None:
      args.remats = []
    CHILDREN[args.child](args)
    return None
  if args.remats is None:
    sys.path.insert(0, os.path.dirname(BENCH))
    from fcslstm_jax.model.networks import REMAT_POLICIES  # imports jax; no device is touched

    args.remats = list(REMAT_POLICIES)
  args.gpu = shutil.which("nvidia-smi") is not None
  os.makedirs(args.out, exist_ok=True)
  results = run_plan(args)
  summary = summarize(results)
  results["summary"] = summary
  shape = [args.batch, args.time_steps, args.size, args.size, 2]
  results["shape_BTHWC"] = shape
  with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
    json.dump(dict(results, args=vars(args)), f, indent=1)
  print(table(summary, shape))
  return results


if __name__ == "__main__":
  main()
