"""Median train-step time, JAX vs PyTorch, interleaved in one process.

Run: ``python bench/train_step.py`` (about 10 min on 2 CPU cores; ``--no-compile`` skips
``torch.compile``, ``--steps``/``--batch``/``--size`` change the problem, ``--chunk-pixels``
the models' chunking). Each timed round
runs one step of every configuration in turn, so that the load of a shared machine falls on
all of them alike; the table reports medians and their ratios to JAX Bi-FCSLSTM and to the
PyTorch runs. Writes ``bench/results/train_step.json``.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import jax
import numpy as np

JAX_ROWS = {  # name -> (label, model, remat, unroll, dtype) given T
  "fcn": lambda t: ("JAX FCN", "fcn", "none", None, None),
  "uni": lambda t: ("JAX FCSLSTM", "fcslstm", "none", None, None),
  "bi": lambda t: ("JAX Bi-FCSLSTM", "bi-fcslstm", "none", None, None),
  "bi-remat": lambda t: ("JAX Bi-FCSLSTM + remat", "bi-fcslstm", "full", None, None),
  "bi-lean": lambda t: ("JAX Bi-FCSLSTM + remat lean", "bi-fcslstm", "lean", None, None),
  "bi-unrolled": lambda t: ("JAX Bi-FCSLSTM unrolled", "bi-fcslstm", "none", t, None),
  "bi-bf16": lambda t: ("JAX Bi-FCSLSTM bf16", "bi-fcslstm", "none", None, jax.numpy.bfloat16),
}


def jax_runner(name, remat, unroll, batch, stages=None, dtype=None, chunk_pixels=None):
  model = common.jax_model(
    name,
    remat,
    unroll,
    stages,
    chunk_pixels=chunk_pixels,
    **({} if dtype is None else {"dtype": dtype}),
  )
  step, _ = common.jax_train_step(model)
  params, opt_state = common.jax_state(model)
  t0 = time.perf_counter()
  compiled = step.lower(params, opt_state, *batch).compile()
  compile_s = time.perf_counter() - t0
  state = [params, opt_state]

  def run():
    state[0], state[1], loss = compiled(state[0], state[1], *batch)
    return float(loss)  # waits for the step (the training loop reads it every N steps)

  return run, compile_s


def torch_runner(bidirectional, batch, compile_model=False, stages=None):
  import torch
  import torch_reference

  dev = common.torch_device()
  x, labels, mask, class_weights = (torch.from_numpy(np.array(a)).to(dev) for a in batch)
  labels = labels.long()
  kw = {} if stages is None else {"stages": stages}
  model = torch_reference.FCSLSTM(common.NUM_CLASSES, common.IN_CHANNELS, bidirectional, **kw).to(
    dev
  )
  opt = torch_reference.rmsprop(model.parameters())
  fwd = torch.compile(model) if compile_model else model

  def run():
    opt.zero_grad(set_to_none=True)
    loss = torch_reference.weighted_cross_entropy(fwd(x), labels, mask, class_weights)
    loss.backward()
    opt.step()
    return loss.item()

  t0 = time.perf_counter()
  run()  # the first call compiles (torch.compile) or allocates
  return run, time.perf_counter() - t0


def have_torch():
  try:
    import torch  # noqa: F401 (only whether it is installed)

    return True
  except ImportError:
    return False


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
  p.add_argument("--time-steps", type=int, default=5, help="T")
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument(
    "--jax",
    nargs="+",
    choices=sorted(JAX_ROWS),
    default=["uni", "bi", "bi-remat"],
    help="JAX rows: also fcn, bi-unrolled (time loop fully unrolled, the CPU "
    "default), bi-bf16 (bfloat16 convolutions, --precision bf16) and "
    "bi-lean (remat lean)",
  )
  p.add_argument(
    "--chunk-pixels",
    type=int,
    help="the models' chunk_pixels for every JAX "
    "row (default: the model's own default; 0: one call per stage)",
  )
  p.add_argument("--tiny", action="store_true", help="tiny channel widths (smoke test)")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "train_step.json"))
  args = p.parse_args(argv)
  stages = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1)) if args.tiny else None
  batch = common.make_batch(args.batch, args.time_steps, args.size)
  shape = [args.batch, args.time_steps, args.size, args.size, common.IN_CHANNELS]

  runners, setup_s = {}, {}
  configs = [JAX_ROWS[k](args.time_steps) for k in args.jax]
  for label, name, remat, unroll, dtype in configs:
    runners[label], setup_s[label] = jax_runner(
      name, remat, unroll, batch, stages, dtype, args.chunk_pixels
    )
    print(f"compiled {label} in {setup_s[label]:.1f} s", flush=True)
  torch_ok = have_torch() and not args.no_torch
  if torch_ok:
    import torch

    torch.manual_seed(0)
    for label, bi, comp in (
      ("PyTorch eager FCSLSTM", False, False),
      ("PyTorch eager Bi-FCSLSTM", True, False),
      ("torch.compile Bi-FCSLSTM", True, True),
    ):
      if comp and args.no_compile:
        continue
      try:
        runners[label], setup_s[label] = torch_runner(bi, batch, comp, stages)
        print(f"set up {label} in {setup_s[label]:.1f} s", flush=True)
      except Exception as e:  # torch.compile needs a C++ compiler; report, don't fail
        print(f"{label} failed: {type(e).__name__}: {e}", flush=True)
  else:
    print("torch not installed (pip install -r bench/requirements.txt): JAX rows only")

  for fn in runners.values():
    for _ in range(args.warmup):
      fn()
  times = {k: [] for k in runners}
  for _ in range(args.steps):  # interleaved rounds
    for k, fn in runners.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  med = {k: statistics.median(v) for k, v in times.items()}

  ref = "JAX Bi-FCSLSTM" if "JAX Bi-FCSLSTM" in med else next(iter(med))
  rows = []
  for k in runners:
    row = {
      "config": k,
      "median_s": med[k],
      "times_s": times[k],
      "setup_s": setup_s[k],
      "vs_reference": med[k] / med[ref],
    }
    rows.append(row)
  ratios = {}
  for other in ("PyTorch eager Bi-FCSLSTM", "torch.compile Bi-FCSLSTM"):
    if other in med:
      for label, key in (
        ("JAX Bi-FCSLSTM", "jax_bi"),
        ("JAX Bi-FCSLSTM + remat", "jax_bi_remat"),
        ("JAX Bi-FCSLSTM bf16", "jax_bi_bf16"),
      ):
        if label in med:
          ratios[f"{key} / {other}"] = med[label] / med[other]
  if "PyTorch eager FCSLSTM" in med and "JAX FCSLSTM" in med:
    ratios["jax_uni / PyTorch eager FCSLSTM"] = med["JAX FCSLSTM"] / med["PyTorch eager FCSLSTM"]
  result = {
    "shape_BTHWC": shape,
    "steps": args.steps,
    "chunk_pixels": args.chunk_pixels,
    "machine": common.machine(),
    "rows": rows,
    "ratios": ratios,
    "torch": _torch_version(),
    "torch_device": common.torch_device() if torch_ok else None,
    "reference": ref,
  }
  return common.write_result(result, args.out, table)


def _torch_version():
  try:
    import torch

    return torch.__version__
  except ImportError:
    return None


def table(result):
  lines = [
    f"Train step, `{result['shape_BTHWC']}` (B, T, H, W, C), median of "
    f"{result['steps']} interleaved steps, {common.describe(result['machine'])}",
    "",
    f"| configuration | median step (s) | × {result['reference']} | setup (s) |",
    "| --- | ---: | ---: | ---: |",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['config']} | {r['median_s']:.2f} | {r['vs_reference']:.2f} | {r['setup_s']:.0f} |"
    )
  lines += ["", "| ratio | value |", "| --- | ---: |"]
  lines += [f"| {k} | {v:.2f} |" for k, v in result["ratios"].items()]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
