"""Writes a study that looks like a real cohort (:mod:`fcslstm_jax.synthetic.cohort`).

python -m fcslstm_jax.cli.make_study --out data/cohort       # the README's study (~1 min)
python -m fcslstm_jax.cli.make_study --out data/x --seed 3 --set skull_strip=true
"""

import argparse
import dataclasses
import json
import pathlib

from fcslstm_jax.synthetic.cohort import CohortConfig
from fcslstm_jax.synthetic.cohort import generate


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="data/cohort", help="output folder (must not exist)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--set",
    nargs="*",
    default=[],
    metavar="KEY=VALUE",
    help="CohortConfig fields as JSON values, e.g. labels='\"subject\"' "
    "skull_strip=true fov_mm=[192,224,96]",
  )
  args = p.parse_args(argv)
  changes = {}
  for item in args.set:
    key, _, value = item.partition("=")
    value = json.loads(value)
    changes[key] = tuple(value) if isinstance(value, list) else value
  config = dataclasses.replace(CohortConfig(), **changes)
  if pathlib.Path(args.out).exists():
    p.error(f"{args.out} exists; choose another --out or delete it")
  print(f"wrote {generate(args.out, args.seed, config)}")


if __name__ == "__main__":
  main()
