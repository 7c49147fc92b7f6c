"""The README's performance table, made from the JSON files in ``bench/results/`` (issue 30).

    python bench/readme_table.py            # prints the table
    python bench/readme_table.py --write    # and puts it into README.md between its markers

Every row names the machine of its JSON file (``machine`` as :func:`common.machine` records
it): the table mixes files measured on different machines and days, and says so.
``tests/test_docs.py`` checks that README.md holds exactly what this prints.
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
README = os.path.join(REPO, "README.md")
BEGIN = "<!-- performance table: python bench/readme_table.py --write -->"
END = "<!-- end of performance table -->"
GIB = 2**30


def load(name):
  path = os.path.join(RESULTS, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def machine(m) -> str:
  if m is None:
    return "not recorded"
  if isinstance(m, str):
    return m
  if m.get("backend", "cpu") != "cpu":
    return f"{m.get('device_kind', m['backend'])}, jax {m['jax']}"
  cpu = m["cpu"].replace("(R)", "").replace(" Processor", "")
  return f"{cpu}, {m['cores']} cores, jax {m['jax']}"


def by_config(rows) -> dict:
  return {r["config"]: r for r in rows}


def train_step_rows(d, source):
  if d is None:
    return []
  shape = "x".join(str(v) for v in d["shape_BTHWC"])
  rows = by_config(d["rows"])
  out = []
  for kind in ("Bi-FCSLSTM", "FCSLSTM"):
    mine = [k for k in rows if k.startswith(f"JAX {kind}")]
    if not mine:
      continue
    jax_row = rows[mine[0]]
    parts = [
      f"{mine[0].removesuffix(' ' + kind).replace(' ' + kind, '')} {jax_row['median_s']:.3g} s"
    ]
    for other in (f"PyTorch eager {kind}", f"torch.compile {kind}"):
      if other in rows:
        ratio = jax_row["median_s"] / rows[other]["median_s"]
        name = other.removesuffix(" " + kind)
        parts.append(f"{name} {rows[other]['median_s']:.3g} s (JAX {ratio:.2f}x its time)")
    what = f"{kind} train step `[{shape}]`, median (`{source}`)"
    out.append((what, machine(d["machine"]), "; ".join(parts)))
  return out


def flops_rows(d, source):
  if d is None:
    return []
  parts = [
    f"{r['config'].split(' Bi-FCSLSTM')[0]} {100 * r['fraction_of_jnp_dot_peak']:.2g} %"
    for r in d["rows"]
  ]
  return [
    (f"fraction of the float32 matmul peak (`{source}`)", machine(d["machine"]), "; ".join(parts))
  ]


def memory_rows(d):
  if d is None:
    return []
  batch = max(r["batch"] for r in d["jax"])
  temp = {
    r["remat"]
    + (f" in {r['microbatches']} microbatches" if r.get("microbatches", 1) > 1 else ""): r[
      "temp_bytes"
    ]
    / GIB
    for r in d["jax"]
    if r["batch"] == batch and r.get("unroll") is None
  }
  parts = [f"remat {k} {v:.2f} GiB" for k, v in temp.items()]
  shape = f"{d['size']}², T = {d['time_steps']}, batch {batch}"
  return [
    (
      f"compiled temp memory, Bi-FCSLSTM {shape} (`bench/memory.py`)",
      machine(d["machine"]),
      "; ".join(parts),
    )
  ]


def inference_rows(d):
  if d is None:
    return []
  this, *base = d["results"]
  same = d["same_labels"]["baseline_vs_this"] if base else d["same_labels"]["warm_vs_cold"]
  cold, warm = this["cold"], this["warm"]
  text = (
    f"{cold['sessions']} sessions: {cold['wall']:.0f} s with an empty compilation cache, "
    f"{warm['wall']:.0f} s warm ({warm['programs_compiled']} programs compiled)"
  )
  speedups = d.get("baselines") or (
    [{"speedup_cold_wall": d["speedup_cold_wall"], "speedup_warm_wall": d["speedup_warm_wall"]}]
    if base
    else []
  )
  for b, s in zip(base, speedups):
    text += (
      f"; {b['commit']}: {b['cold']['wall']:.0f} s cold "
      f"({s['speedup_cold_wall']:.2f}x), {b['warm']['wall']:.0f} s warm "
      f"({s['speedup_warm_wall']:.2f}x)"
    )
  if len(base) > 1:  # e.g. "0 / 0 of 18,997,793 voxels differ": one count per baseline
    counts = [b["same_labels"] for b in d["baselines"]]
    differing = " / ".join(str(c["differing"]) for c in counts)
    same = {"differing": differing, "voxels": max(c["voxels"] for c in counts)}
  text += f"; {same['differing']} of {same['voxels']:,} voxels differ"
  if "work" in d:
    w = d["work"]
    text += (
      f"; its forward passes ({w['gflop'] / 1000:.1f} TFLOP) would take "
      f"{w['seconds_at_peak']:.0f} s at the matmul peak"
    )
  return [
    (
      f"`evaluate.py` on `data/cohort` at {this['commit']} (`bench/inference.py`)",
      machine(d["machine"]),
      text,
    )
  ]


def table() -> str:
  rows = (
    train_step_rows(load("train_step.json"), "bench/train_step.py")
    + train_step_rows(load("gpu-h200/train_step_bf16.json"), "bench/gpu_bench.py, bfloat16")
    + flops_rows(load("flops.json"), "bench/flops.py")
    + memory_rows(load("memory.json"))
    + inference_rows(load("inference.json"))
  )
  lines = ["| measurement | machine | result |", "| --- | --- | --- |"]
  lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
  return "\n".join(lines)


def with_table(text: str, new: str) -> str:
  """``text`` (README.md) with the part between the markers replaced by ``new``."""
  start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
  return text[:start] + "\n" + new + "\n" + text[end:]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--write", action="store_true", help="put the table into README.md")
  args = p.parse_args(argv)
  made = table()
  print(made)
  if args.write:
    with open(README) as f:
      text = f.read()
    with open(README, "w") as f:
      f.write(with_table(text, made))
  return 0


if __name__ == "__main__":
  sys.exit(main())
