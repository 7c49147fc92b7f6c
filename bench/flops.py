"""FLOPs of one Bi-FCSLSTM train step, the machine's float32 matmul peak, fraction achieved.

Run: ``python bench/flops.py`` (a few minutes on 2 CPU cores). FLOPs come from XLA's
``cost_analysis()`` of the step lowered with the time loop fully unrolled (on a while loop
``cost_analysis()`` counts the loop body once). The peak is the best of several
``jnp.dot`` (and ``torch.mm``) float32 products of 2048x2048 matrices. Step times of JAX and
PyTorch eager are measured interleaved; both do the same arithmetic, so the same FLOP count
is used for both. Writes ``bench/results/flops.json``.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import jax
import jax.numpy as jnp
import train_step


def step_flops(batch, steps, size, stages=None):
  """FLOPs of one train step (forward, backward, update), time loop unrolled."""
  model = common.jax_model("bi-fcslstm", "none", steps, stages)
  lowered = common.lower_train_step(model, batch, steps, size)
  cost = lowered.cost_analysis()
  if not cost:  # the GPU backend only reports it for the compiled program
    cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


def matmul_peak(n=None, reps=10):
  """Best float32 GFLOP/s of an n x n matmul, JAX and (if installed) torch.

  ``n`` defaults to 2048 on CPU and 8192 on an accelerator (2048 leaves a GPU mostly idle).
  Each framework's default float32 precision is used (on NVIDIA GPUs both may use TF32).
  """
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  fns = {"jnp.dot": lambda: dot(a, a).block_until_ready()}
  if train_step.have_torch():
    import torch

    dev = common.torch_device()
    ta = torch.randn(n, n, device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    torch.mm(ta, ta)
    fns["torch.mm"] = lambda: (torch.mm(ta, ta), sync())
  best = {k: float("inf") for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      best[k] = min(best[k], time.perf_counter() - t0)
  return {k: 2 * n**3 / t / 1e9 for k, t in best.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--time-steps", type=int, default=5)
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--steps", type=int, default=5, help="timed steps")
  p.add_argument("--tiny", action="store_true", help="tiny channel widths (smoke test)")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "flops.json"))
  args = p.parse_args(argv)
  stages = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1)) if args.tiny else None

  flops = step_flops(args.batch, args.time_steps, args.size, stages)
  print(f"step FLOPs: {flops / 1e9:.1f} G", flush=True)
  batch = common.make_batch(args.batch, args.time_steps, args.size)
  runners = {"JAX Bi-FCSLSTM": train_step.jax_runner("bi-fcslstm", "none", None, batch, stages)[0]}
  if train_step.have_torch():
    runners["PyTorch eager Bi-FCSLSTM"] = train_step.torch_runner(True, batch, False, stages)[0]
  for fn in runners.values():
    fn()
  times = {k: [] for k in runners}
  peaks = []
  for _ in range(args.steps):
    peaks.append(matmul_peak(reps=3))
    for k, fn in runners.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  peak = {k: max(pk[k] for pk in peaks) for k in peaks[0]}
  ref_peak = peak["jnp.dot"]
  rows = []
  for k, ts in times.items():
    med = statistics.median(ts)
    rows.append(
      {
        "config": k,
        "median_s": med,
        "gflops_per_s": flops / med / 1e9,
        "fraction_of_jnp_dot_peak": flops / med / 1e9 / ref_peak,
      }
    )
  result = {
    "shape_BTHWC": [args.batch, args.time_steps, args.size, args.size, common.IN_CHANNELS],
    "step_flops": flops,
    "matmul_peak_gflops": peak,
    "rows": rows,
    "machine": common.machine(),
    "torch_device": common.torch_device() if train_step.have_torch() else None,
  }
  return common.write_result(result, args.out, table)


def table(result):
  peak = result["matmul_peak_gflops"]
  lines = [
    f"Bi-FCSLSTM train step `{result['shape_BTHWC']}`: "
    f"{result['step_flops'] / 1e9:.1f} GFLOP; float32 matmul peak "
    + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items())
    + f" ({common.describe(result['machine'])})",
    "",
    "| implementation | median step (s) | GFLOP/s | fraction of jnp.dot peak |",
    "| --- | ---: | ---: | ---: |",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['config']} | {r['median_s']:.2f} | {r['gflops_per_s']:.1f} | "
      f"{r['fraction_of_jnp_dot_peak']:.0%} |"
    )
  return "\n".join(lines)


if __name__ == "__main__":
  main()
