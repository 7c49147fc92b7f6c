"""What is alive at the peak of the compiled Bi-FCSLSTM train step's memory.

Run: ``python bench/memory_breakdown.py`` (about 1 min on 2 CPU cores; 256x256, T = 5, batch
8 by default). ``memory_analysis()`` gives one number; this script reads the compiled,
scheduled program (``compiled.as_text()``), walks its entry computation in schedule order,
keeps each buffer alive from the instruction that defines it to its last use (bitcasts and
tuple elements share their source's buffer; parameters are not temp), and lists what is alive
where the total peaks, grouped by what made it (``op_name`` metadata, else the fusion kind).
It approximates XLA's heap simulator (no buffer sharing or in-place reuse beyond that), so
its peak is compared with ``memory_analysis()``'s temp size in the output. Only the entry
computation is walked: with the time loop as a while loop (``--unroll 1``, the accelerator
default) the loop body's buffers are not seen, and the script says so. The groups are
heuristics for XLA:CPU's programs (e.g. ``transpose_copy_fusion`` is its name for layout
copies; every int32 buffer is counted as max-pool index arrays). Writes
``bench/results/memory_breakdown.json``; ``--remat full --out
bench/results/memory_breakdown_remat_full.json`` wrote the remat file.
"""

import argparse
import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

GIB = 2**30
BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "bf16": 2,
  "f16": 2,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "f64": 8,
  "s64": 8,
}
ALIASES = ("bitcast", "get-tuple-element")  # share the buffer of their first operand
NOT_TEMP = ("parameter", "constant", "tuple")


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape such as ``f32[8,5,256,256]{...}`` or a tuple of them."""
  total = 0
  for dtype in re.findall(r"\b(\w+)\[", shape):
    if dtype not in BYTES:
      raise ValueError(f"unknown element type {dtype!r} in HLO shape {shape!r}")
  for dtype, dims in re.findall(r"\b(" + "|".join(BYTES) + r")\[([\d,]*)\]", shape):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * BYTES[dtype]
  return total


def entry_instructions(hlo_text: str):
  """``(name, shape, opcode, operands, op_name)`` of the entry computation, in order."""
  entry = re.search(r"\nENTRY [^\n]*\{\n(.*?)\n\}", hlo_text, re.S)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  body = entry.group(1)
  out = []
  for line in body.split("\n"):
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$", line)
    if not m:
      continue
    name, shape, op, rest = m.groups()
    args = rest.split("), ")[0]
    op_name = re.search(r'op_name="([^"]+)"', line)
    out.append(
      (name, shape, op, re.findall(r"%([\w.\-]+)", args), op_name.group(1) if op_name else "")
    )
  if not out:
    raise ValueError("no instructions parsed from the ENTRY computation (HLO format changed?)")
  return out


def live_at_peak(instrs):
  """``(peak_bytes, index, {buffer: bytes})``: the most bytes alive at once and which."""
  owner, size = {}, {}
  for name, shape, op, args, _ in instrs:
    owner[name] = owner.get(args[0], name) if op in ALIASES and args else name
    if owner[name] == name:
      size[name] = 0 if op in NOT_TEMP else shape_bytes(shape)
  last = {}
  for i, (_, _, _, args, _) in enumerate(instrs):
    for a in args:
      if a in owner:
        last[owner[a]] = i
  alive, live, best = {}, 0, (0, 0, {})
  for i, (name, _, _, args, _) in enumerate(instrs):
    if owner[name] == name and size[name]:
      alive[name] = size[name]
      live += size[name]
    if live > best[0]:
      best = (live, i, dict(alive))
    for b in {owner[a] for a in args if a in owner}:
      if b in alive and last.get(b) == i:
        live -= alive.pop(b)
  return best


def category(name: str, shape: str, op_name: str) -> str:
  """A coarse label for a buffer, from the op that made it."""
  if name.startswith("while"):  # a time loop's state: carry, stacked residuals and outputs
    return "LSTM time loops (while: carry, per-step residuals, outputs)"
  if name.startswith("transpose_copy_fusion"):
    return "layout copies (transposes) made for weight gradients"
  if "s32[" in shape:  # XLA:CPU's select-and-scatter expansion: iotas and argmax indices
    return "max-pool gradient index arrays (int32)"
  if re.search(r"/(vmap\()?scan\)?/", op_name):  # the merged Bi layer's scan is vmap(scan)
    return "LSTM time steps (gates, cell, Ψh)"
  if "psi_x" in op_name:
    return "Ψx conv stage outputs"
  if "concatenate" in op_name:
    return "layer outputs (both directions concatenated)"
  return "other"


def breakdown(batch, steps, size, remat="none", stages=None, unroll=None):
  model = common.jax_model("bi-fcslstm", remat, unroll, stages)
  t0 = time.perf_counter()
  compiled = common.lower_train_step(model, batch, steps, size).compile()
  compile_s = time.perf_counter() - t0
  instrs = entry_instructions(compiled.as_text())
  loops = sorted({op for _, _, op, _, _ in instrs if op in ("while", "call", "conditional")})
  if loops:
    print(
      f"note: the entry computation has {', '.join(loops)}: buffers inside them are not counted",
      flush=True,
    )
  peak, index, alive = live_at_peak(instrs)
  info = {name: (shape, op_name) for name, shape, _, _, op_name in instrs}
  groups = collections.Counter()
  for name, nbytes in alive.items():
    groups[category(name, *info[name])] += nbytes
  return {
    "batch": batch,
    "time_steps": steps,
    "size": size,
    "remat": remat,
    "unroll": unroll,
    "compile_s": compile_s,
    "xla_temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
    "simulated_peak_bytes": peak,
    "peak_at": f"{index}/{len(instrs)} {instrs[index][0]}",
    "peak_op_name": info[instrs[index][0]][1],
    "alive_at_peak_bytes": dict(groups.most_common()),
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--time-steps", type=int, default=5)
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--remat", default="none", choices=common.networks.REMAT_POLICIES)
  p.add_argument("--unroll", type=int, help="time-loop unroll (default: the backend's)")
  p.add_argument("--tiny", action="store_true", help="tiny channel widths (smoke test)")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "memory_breakdown.json"))
  args = p.parse_args(argv)
  stages = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1)) if args.tiny else None
  result = breakdown(args.batch, args.time_steps, args.size, args.remat, stages, args.unroll)
  result["machine"] = common.machine()
  return common.write_result(result, args.out, table)


def table(r):
  lines = [
    f"Alive at the peak of the Bi-FCSLSTM train step, {r['size']}x{r['size']}, "
    f"T = {r['time_steps']}, batch {r['batch']}, remat {r['remat']} "
    f"({common.describe(r['machine'])})",
    "",
    f"simulated peak {r['simulated_peak_bytes'] / GIB:.2f} GiB at {r['peak_at']} "
    f"({r['peak_op_name'] or 'no op_name'}); memory_analysis() temp "
    f"{r['xla_temp_bytes'] / GIB:.2f} GiB",
    "",
    "| alive at the peak | GiB | share |",
    "| --- | ---: | ---: |",
  ]
  for k, v in r["alive_at_peak_bytes"].items():
    lines.append(f"| {k} | {v / GIB:.2f} | {100 * v / r['simulated_peak_bytes']:.0f} % |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
