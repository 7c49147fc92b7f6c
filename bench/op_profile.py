"""Where the time of one Bi-FCSLSTM train step goes on XLA:CPU, from XLA's own trace.

Run: ``python bench/op_profile.py`` (about 1 min on 2 CPU cores; ``[2, 5, 128, 128, 2]`` by
default). It turns on XLA:CPU's per-operation trace events (``--xla_cpu_enable_xprof_traceme``,
set here before JAX starts), traces ``--steps`` steps with ``jax.profiler.trace``, and joins
each event to the instruction of the compiled program it ran. It reports the traced step time,
how busy each XLA thread was, and the thread time per kind of operation: convolutions (split
into weight gradients, recognised by their kernel-shaped output, and the rest), layout copies,
the max-pool gradient (XLA:CPU expands it into iotas, reduce-windows and scatters) and other
(mostly elementwise) fusions. Thread times of operations that run at once on two threads add
up, so the kinds are shares of busy time, not of the step. Tracing slows the step a little.
Writes ``bench/results/op_profile.json``.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import jax
import memory_breakdown

KINDS = (
  "convolution, weight gradient",
  "convolution, other",
  "layout copies (transposes)",
  "max-pool gradient",
  "other fusions",
)


def computations(hlo_text):
  """``{computation name: its text}`` of an HLO module."""
  out, name = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{$", line)
    if m:
      name, out[m.group(1)] = m.group(1), ""
    elif name:
      out[name] += line + "\n"
  return out


def kind(name, shape, hlo_line, comps):
  """One of :data:`KINDS` for the entry instruction ``name``."""
  called = re.search(r"calls=%([\w.\-]+)", hlo_line)
  body = comps.get(called.group(1), "") if called else ""
  if "convolution(" in body or " convolution(" in hlo_line:
    kernel_shaped = re.match(r"f32\[\d+,[1-7],[1-7],\d+\]", shape)
    return KINDS[0] if kernel_shaped else KINDS[1]
  if name.startswith("transpose_copy_fusion"):
    return KINDS[2]
  if re.search(r"iota|reduce-window|select-and-scatter|scatter", name + body):
    return KINDS[3]
  return KINDS[4]


def trace_events(logdir):
  path = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile(batch, steps, size, timed_steps, stages=None):
  model = common.jax_model("bi-fcslstm", stages=stages)
  step, _ = common.jax_train_step(model)
  params, opt_state = common.jax_state(model)
  data = common.make_batch(batch, steps, size)
  compiled = step.lower(params, opt_state, *data).compile()
  flops = common.lower_train_step(model, batch, steps, size).cost_analysis()["flops"]
  hlo = compiled.as_text()
  comps = computations(hlo)
  lines = {
    m.group(1): (m.group(2), line)
    for line in hlo.splitlines()
    for m in [re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+)", line)]
    if m
  }
  entry = {i[0] for i in memory_breakdown.entry_instructions(hlo)}
  state = [params, opt_state]
  for _ in range(2):  # warm-up
    state[0], state[1], loss = compiled(state[0], state[1], *data)
    float(loss)
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      t0 = time.perf_counter()
      for _ in range(timed_steps):
        state[0], state[1], loss = compiled(state[0], state[1], *data)
        float(loss)
      wall = (time.perf_counter() - t0) / timed_steps
    events = trace_events(logdir)
  per_kind, per_thread = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e["name"] in entry:
      shape, line = lines[e["name"]]
      per_kind[kind(e["name"], shape, line, comps)] += e["dur"] / 1e6 / timed_steps
      per_thread[(e["pid"], e["tid"])] += e["dur"] / 1e6 / timed_steps
  if not per_kind:
    raise RuntimeError(
      "no XLA operation events in the trace: was JAX started before this "
      "script could set --xla_cpu_enable_xprof_traceme?"
    )
  busy = sum(per_kind.values())
  conv = per_kind[KINDS[0]] + per_kind[KINDS[1]]
  return {
    "shape_BTHWC": [batch, steps, size, size, common.IN_CHANNELS],
    "timed_steps": timed_steps,
    "traced_step_s": wall,
    "step_flops": flops,
    "thread_busy_s": sorted(per_thread.values(), reverse=True),
    "thread_busy_fraction": [v / wall for v in sorted(per_thread.values(), reverse=True)],
    "kind_thread_s": {k: per_kind[k] for k in KINDS},
    "kind_share_of_busy": {k: per_kind[k] / busy for k in KINDS},
    "conv_gflops_per_thread_s": flops / conv / 1e9 if conv else None,
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--time-steps", type=int, default=5)
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--steps", type=int, default=3, help="traced steps")
  p.add_argument("--tiny", action="store_true", help="tiny channel widths (smoke test)")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "op_profile.json"))
  args = p.parse_args(argv)
  stages = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1)) if args.tiny else None
  result = profile(args.batch, args.time_steps, args.size, args.steps, stages)
  result["machine"] = common.machine()
  return common.write_result(result, args.out, table)


def table(r):
  busy = ", ".join(f"{100 * f:.0f} %" for f in r["thread_busy_fraction"])
  lines = [
    f"Bi-FCSLSTM train step `{r['shape_BTHWC']}`, {common.describe(r['machine'])}: traced "
    f"step {r['traced_step_s']:.2f} s; XLA threads busy {busy} of it; "
    f"{r['step_flops'] / 1e9:.0f} GFLOP per step",
    "",
    "| kind of operation | thread time per step (s) | share of busy time |",
    "| --- | ---: | ---: |",
  ]
  for k in KINDS:
    lines.append(
      f"| {k} | {r['kind_thread_s'][k]:.3f} | {100 * r['kind_share_of_busy'][k]:.0f} % |"
    )
  if r["conv_gflops_per_thread_s"]:
    lines += [
      "",
      f"All FLOPs of the step over the convolutions' thread time: "
      f"{r['conv_gflops_per_thread_s']:.0f} GFLOP/s per thread",
    ]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
