"""Memory of the 3D Bi-FCSLSTM train step against the number of time points T.

Run: ``python bench/memory3d.py`` (compiles only, nothing runs or is allocated; ``--time N``
also runs each step N times on random data and records its seconds). For
T = 1, 2, 3, 5, 8 at one patch (default 32x64x64, batch 1, the 3D default widths
``stages_3d``, VGG-16 / 8), with remat ``none`` on the while loop (``unroll=1``) and
``lean`` (Ψx inside the rematerialized step, while loop; ``fcslstm_jax.model.networks``), it
compiles
training's own step (``bench/common.py``: ``loop.train_step``, augmentation off) and
reads XLA's ``memory_analysis()`` (both directions of a Bi layer vmapped, the accelerator
default, unless ``--batching loop``): temp (activations, gradients, workspace) and total
(temp + parameters, optimizer state and batch + outputs - aliased donations). Then the same
at a 128^3 patch for T = 5 and 8 (``--large``), against the paper's 12 GB GPU. Writes
``bench/results/memory3d.json`` and prints a markdown table.

The question it answers (issue 14): with remat on the while-loop path, does memory grow far
slower than T, and does a 128^3 patch with T = 5 (and 8) fit in 12 GB?
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import jax
import jax.numpy as jnp

GIB = 2**30
BUDGET = 12 * GIB


def lower_3d_step(model, batch, steps, patch):
  """Training's step for ``[batch, steps, *patch, 2]`` lowered from shapes only."""
  step, tx = common.jax_train_step(model)
  params = jax.eval_shape(lambda: common.networks.init_params(model, common.IN_CHANNELS, size=8))
  opt_state = jax.eval_shape(tx.init, params)
  shape = (batch, steps) + tuple(patch)
  data = (
    jax.ShapeDtypeStruct(shape + (common.IN_CHANNELS,), jnp.float32),
    jax.ShapeDtypeStruct(shape, jnp.int32),
    jax.ShapeDtypeStruct(shape, jnp.float32),
    jax.ShapeDtypeStruct((common.NUM_CLASSES,), jnp.float32),
  )
  return step.lower(params, opt_state, *data)


def measure(batch, steps, patch, remat, unroll, stages, batching="vmap", timed_steps=0):
  model = common.networks.create_model(
    "bi-fcslstm", common.NUM_CLASSES, remat=remat, unroll=unroll, spatial_dims=3
  ).clone(stages=stages, batching=batching)
  t0 = time.perf_counter()
  compiled = lower_3d_step(model, batch, steps, patch).compile()
  ma = compiled.memory_analysis()
  out = {
    "batch": batch,
    "time_steps": steps,
    "patch": list(patch),
    "remat": remat,
    "unroll": unroll,
    "batching": batching,
    "compile_s": round(time.perf_counter() - t0, 1),
    "temp_bytes": ma.temp_size_in_bytes,
    "argument_bytes": ma.argument_size_in_bytes,
    "output_bytes": ma.output_size_in_bytes,
    "alias_bytes": ma.alias_size_in_bytes,
  }
  out["total_bytes"] = (
    out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
  )
  if timed_steps:
    out["step_s"] = time_steps(compiled, model, batch, steps, patch, timed_steps)
  return out


def time_steps(compiled, model, batch, steps, patch, n):
  """Seconds of each of ``n`` runs of the compiled step on random data, after one untimed
  run (this allocates and runs; the memory rows above do not)."""
  params = common.networks.init_params(model, common.IN_CHANNELS, size=8)
  opt_state = common.rmsprop().init(params)
  data = common.make_batch(batch, steps, tuple(patch))
  out = []
  for i in range(n + 1):
    t0 = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, *data)
    loss.block_until_ready()
    if i:
      out.append(round(time.perf_counter() - t0, 3))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--time-steps", type=int, nargs="+", default=[1, 2, 3, 5, 8])
  p.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument(
    "--remat", nargs="+", default=["none", "lean"], choices=common.networks.REMAT_POLICIES
  )
  p.add_argument(
    "--unroll",
    type=int,
    default=1,
    help="time-loop unroll of the non-lean policies (1: the while loop)",
  )
  p.add_argument(
    "--large",
    type=int,
    nargs="*",
    default=[5, 8],
    help="T values measured at the --large-patch too (none: skip)",
  )
  p.add_argument("--large-patch", type=int, nargs=3, default=[128, 128, 128])
  p.add_argument(
    "--batching",
    default="vmap",
    choices=("vmap", "loop"),
    help="how a Bi layer runs its two directions (slstm.resolve_batching): vmap, "
    "the accelerator default (the table in bench/README.md), or loop (CPU's)",
  )
  p.add_argument(
    "--time",
    type=int,
    default=0,
    metavar="N",
    help="also run each step N times and record the seconds (default: compile only)",
  )
  p.add_argument("--tiny", action="store_true", help="tiny channel widths (smoke test)")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "memory3d.json"))
  args = p.parse_args(argv)
  stages = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1)) if args.tiny else common.networks.VGG16_EIGHTH
  runs = [(tuple(args.patch), t) for t in args.time_steps]
  runs += [(tuple(args.large_patch), t) for t in args.large]
  rows = []
  for patch, t in runs:
    for remat in args.remat:
      unroll = None if remat == "lean" else args.unroll  # lean: its own while loop
      r = measure(args.batch, t, patch, remat, unroll, stages, args.batching, args.time)
      rows.append(r)
      print(
        f"patch {'x'.join(map(str, patch))} T={t} remat={remat}: temp "
        f"{r['temp_bytes'] / GIB:.3f} GiB, total {r['total_bytes'] / GIB:.3f} GiB "
        f"(compiled in {r['compile_s']:.0f} s)"
        + (f", step {min(r['step_s']):.2f} s" if r.get("step_s") else ""),
        flush=True,
      )
  model = common.networks.create_model("bi-fcslstm", common.NUM_CLASSES, spatial_dims=3)
  params = common.networks.count_params(
    jax.eval_shape(
      lambda: common.networks.init_params(model.clone(stages=stages), common.IN_CHANNELS, size=8)
    )
  )
  result = {
    "model": "bi-fcslstm",
    "spatial_dims": 3,
    "stages": [list(s) for s in stages],
    "parameters": params,
    "batch": args.batch,
    "batching": args.batching,
    "budget_bytes": BUDGET,
    "machine": common.machine(),
    "rows": rows,
  }
  return common.write_result(result, args.out, table)


def table(result):
  lines = [
    f"3D Bi-FCSLSTM train step, batch {result['batch']}, widths "
    f"{[s[0] for s in result['stages']]} ({result['parameters']:,} parameters; "
    f"{common.describe(result['machine'])})",
    "",
    "| patch | T | remat | temp (GiB) | total (GiB) | temp / temp at T=1 | compile (s) |",
    "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
  ]
  first = {}
  for r in result["rows"]:
    key = (tuple(r["patch"]), r["remat"])
    first.setdefault(key, (r["time_steps"], r["temp_bytes"]))
    t0, temp0 = first[key]
    ratio = f"{r['temp_bytes'] / temp0:.2f}" if t0 == 1 else ""
    loop = "while loop" if r["unroll"] in (None, 1) else f"unroll={r['unroll']}"
    lines.append(
      f"| {'x'.join(map(str, r['patch']))} | {r['time_steps']} | {r['remat']} "
      f"({loop}) | {r['temp_bytes'] / GIB:.3f} | {r['total_bytes'] / GIB:.3f} | "
      f"{ratio} | {r['compile_s']:.0f} |"
    )
  timed = [r for r in result["rows"] if r.get("step_s")]
  if timed:
    lines += [
      "",
      "| patch | T | remat | batching | median step (s) |",
      "| --- | ---: | --- | --- | ---: |",
    ]
    lines += [
      f"| {'x'.join(map(str, r['patch']))} | {r['time_steps']} | {r['remat']} | "
      f"{r.get('batching', result['batching'])} | "
      f"{sorted(r['step_s'])[len(r['step_s']) // 2]:.2f} |"
      for r in timed
    ]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
