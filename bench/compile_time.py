"""Compile time of a tiny Bi-FCSLSTM gradient (32², T = 3) under XLA:CPU flag sets.

Run: ``python bench/compile_time.py`` (about 1 min on 2 CPU cores). Each flag set compiles in
its own interpreter (XLA_FLAGS are read once per process); prints a table and writes
``bench/results/compile_time.json``. Why: the test suite spends its time compiling, and
``tests/conftest.py`` picks its XLA flags from this (docs/performance.md).
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

FLAG_SETS = {
  "XLA defaults": "",
  "LLVM level 0": "--xla_backend_optimization_level=0",
  "LLVM level 0 + classic fusion emitter (the tests')": (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
  ),
}
CHILD = """
import json, time, jax, jax.numpy as jnp
from fcslstm_jax.model import networks
m = networks.FCSLSTM(3, bidirectional=True, stages=((4, 1), (4, 1), (6, 1), (6, 1), (8, 1)))
x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 32, 32, 2))
p = networks.init_params(m, 2)
f = jax.jit(jax.grad(lambda p, x: jnp.mean(m.apply({"params": p}, x) ** 2)))
t0 = time.perf_counter(); lowered = f.lower(p, x); t1 = time.perf_counter()
lowered.compile(); t2 = time.perf_counter()
print(json.dumps({"lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2)}))
"""


def main():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rows = []
  for name, flags in FLAG_SETS.items():
    env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=repo, JAX_ENABLE_COMPILATION_CACHE="false")
    out = subprocess.run(
      [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    rows.append({"flags": name, "xla_flags": flags, **json.loads(out.stdout.splitlines()[-1])})
  print("| XLA flags | lower s | compile s |\n|---|---|---|")
  for r in rows:
    print(f"| {r['flags']} | {r['lower_s']} | {r['compile_s']} |")
  path = os.path.join(common.RESULTS, "compile_time.json")
  with open(path, "w") as f:
    json.dump({"machine": common.machine(), "rows": rows}, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
