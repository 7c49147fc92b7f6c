"""Memory of one Bi-FCSLSTM train step: XLA's compiled plan vs PyTorch's peak RSS.

Run: ``python bench/memory.py`` (under 10 min on 2 CPU cores). For batch 1, 4, 8 at
256x256, T = 5, for the remat policies none, full and lean (``fcslstm_jax.model.networks``;
lean runs its time loop as a while loop whatever ``--unroll`` says, unless given), and the
memory-lean setting (remat lean with each batch run in 2 parts, ``Config.microbatches``), it
compiles (does not run) the JAX train step and reads ``memory_analysis()``: temp
(activations, gradients, workspace), arguments (params, optimizer state, batch) and outputs
(aliased to the donated arguments). For PyTorch it runs one eager step per batch size in a
fresh process and reports the rise of peak memory over the memory before the step (peak RSS
on CPU; ``torch.cuda.max_memory_allocated`` on a GPU). The largest batch that fits in 12 GiB
comes from a straight-line fit of total bytes against batch (memory is linear in batch).
Writes ``bench/results/memory.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import numpy as np

GIB = 2**30
BUDGET = 12 * GIB  # the paper's 12 GB GPU


def jax_memory(batch, steps, size, remat, stages=None, unroll=None, microbatches=1):
  model = common.jax_model("bi-fcslstm", remat, unroll, stages)
  config = common.CONFIG.replace(batch_size=batch, microbatches=microbatches)
  t0 = time.perf_counter()
  compiled = common.lower_train_step(model, batch, steps, size, config).compile()
  ma = compiled.memory_analysis()
  out = {
    "batch": batch,
    "remat": remat,
    "unroll": unroll,
    "microbatches": microbatches,
    "compile_s": time.perf_counter() - t0,
    "temp_bytes": ma.temp_size_in_bytes,
    "argument_bytes": ma.argument_size_in_bytes,
    "output_bytes": ma.output_size_in_bytes,
    "alias_bytes": ma.alias_size_in_bytes,
  }
  out["total_bytes"] = (
    out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
  )
  return out


TORCH_CHILD = r"""
import os, resource, sys, json
sys.path.insert(0, {bench!r})
import torch, torch_reference
torch.manual_seed(0)
b, t, s, stages = {batch}, {steps}, {size}, {stages!r}
kw = {{}} if stages is None else {{"stages": stages}}
dev = "cuda" if torch.cuda.is_available() else "cpu"
model = torch_reference.FCSLSTM(4, 2, True, **kw).to(dev)
opt = torch_reference.rmsprop(model.parameters())
x = torch.randn(b, t, s, s, 2, device=dev); labels = torch.randint(0, 4, (b, t, s, s), device=dev)
mask = torch.ones(b, t, s, s, device=dev); cw = torch.tensor([0.5, 1.0, 1.5, 2.0], device=dev)
def rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = torch.cuda.memory_allocated() if dev == "cuda" else rss()
loss = torch_reference.weighted_cross_entropy(model(x), labels, mask, cw)
loss.backward(); opt.step()
if dev == "cuda":
  torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated()
else:
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"batch": b, "device": dev, "before_bytes": before, "peak_bytes": peak,
                  "step_bytes": peak - before}}))
"""


def torch_memory(batch, steps, size, stages=None):
  code = TORCH_CHILD.format(
    bench=os.path.dirname(os.path.abspath(__file__)),
    batch=batch,
    steps=steps,
    size=size,
    stages=stages,
  )
  t0 = time.perf_counter()
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  res = json.loads(out.stdout.strip().splitlines()[-1])
  res["run_s"] = time.perf_counter() - t0
  return res


def largest_batch(points, budget=BUDGET):
  """Largest integer batch with fitted bytes <= budget, from (batch, bytes) points."""
  b, y = np.array(points, float).T
  if len(b) < 2:
    return int(budget // (y[0] / b[0]))
  slope, intercept = np.polyfit(b, y, 1)
  return int((budget - intercept) // slope) if slope > 0 else None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
  p.add_argument(
    "--torch-batches",
    type=int,
    nargs="*",
    default=[1, 4],
    help="PyTorch runs a real step: batch 8 takes minutes on 2 cores",
  )
  p.add_argument("--time-steps", type=int, default=5)
  p.add_argument("--size", type=int, default=256)
  p.add_argument(
    "--remat", nargs="+", default=["none", "full", "lean"], choices=common.networks.REMAT_POLICIES
  )
  p.add_argument(
    "--unroll",
    type=int,
    help="time-loop unroll (default: the backend's, full on CPU, 1 = while loop on accelerators)",
  )
  p.add_argument(
    "--lean-microbatches",
    type=int,
    default=2,
    help="also remat lean with each batch run in this many parts (Config.microbatches; "
    "the memory-lean setting); 1: not",
  )
  p.add_argument("--tiny", action="store_true", help="tiny channel widths (smoke test)")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "memory.json"))
  args = p.parse_args(argv)
  stages = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1)) if args.tiny else None

  settings = [(remat, 1) for remat in args.remat]
  if args.lean_microbatches > 1:
    settings.append(("lean", args.lean_microbatches))
  jax_rows = []
  for remat, parts in settings:
    for b in args.batches:
      if b % parts:
        continue
      r = jax_memory(b, args.time_steps, args.size, remat, stages, args.unroll, parts)
      jax_rows.append(r)
      print(
        f"JAX {setting_name(r)} batch={b}: temp {r['temp_bytes'] / GIB:.2f} GiB, total "
        f"{r['total_bytes'] / GIB:.2f} GiB (compiled in {r['compile_s']:.0f} s)",
        flush=True,
      )
  torch_rows = []
  try:
    import torch  # noqa: F401 (only whether it is installed)

    for b in args.torch_batches:
      r = torch_memory(b, args.time_steps, args.size, stages)
      torch_rows.append(r)
      print(
        f"PyTorch batch={b}: step peak {r['step_bytes'] / GIB:.2f} GiB ({r['run_s']:.0f} s)",
        flush=True,
      )
  except ImportError:
    print("torch not installed (pip install -r bench/requirements.txt): JAX rows only")

  fits = {}
  for name in dict.fromkeys(setting_name(r) for r in jax_rows):
    pts = [(r["batch"], r["total_bytes"]) for r in jax_rows if setting_name(r) == name]
    loop = "" if args.unroll is None else f", unroll={args.unroll}"
    fits[f"JAX {name}{loop}"] = largest_batch(pts)
  if torch_rows:
    fits["PyTorch eager"] = largest_batch([(r["batch"], r["step_bytes"]) for r in torch_rows])
  result = {
    "model": "bi-fcslstm",
    "time_steps": args.time_steps,
    "size": args.size,
    "budget_bytes": BUDGET,
    "machine": common.machine(),
    "jax": jax_rows,
    "torch": torch_rows,
    "largest_batch_in_12GiB": fits,
  }
  return common.write_result(result, args.out, table)


def setting_name(row) -> str:
  """``remat=lean`` or ``remat=lean, 2 microbatches``."""
  parts = row.get("microbatches", 1)
  return f"remat={row['remat']}" + (f", {parts} microbatches" if parts > 1 else "")


def table(result):
  s = result["size"]
  lines = [
    f"Bi-FCSLSTM train step, {s}x{s}, T = {result['time_steps']} "
    f"({common.describe(result['machine'])})",
    "",
    "| implementation | batch | temp (GiB) | total (GiB) |",
    "| --- | ---: | ---: | ---: |",
  ]
  for r in result["jax"]:
    loop = "" if r.get("unroll") is None else f", unroll={r['unroll']}"
    loop = loop or (" (while loop)" if r["remat"] == "lean" else "")
    lines.append(
      f"| JAX {setting_name(r)}{loop} | {r['batch']} | {r['temp_bytes'] / GIB:.2f} | "
      f"{r['total_bytes'] / GIB:.2f} |"
    )
  for r in result["torch"]:
    what = "alloc" if r.get("device") == "cuda" else "RSS"
    lines.append(
      f"| PyTorch eager (step peak {what}) | {r['batch']} | | {r['step_bytes'] / GIB:.2f} |"
    )
  lines += ["", "| implementation | largest batch in 12 GiB |", "| --- | ---: |"]
  lines += [f"| {k} | {v} |" for k, v in result["largest_batch_in_12GiB"].items()]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
