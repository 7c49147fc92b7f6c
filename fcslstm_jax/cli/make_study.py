"""Writes a study that looks like a real cohort (:mod:`fcslstm_jax.synthetic.cohort`).

python -m fcslstm_jax.cli.make_study --out data/cohort       # the README's study (~1 min)
python -m fcslstm_jax.cli.make_study --out data/x --seed 3 --set skull_strip=true
python -m fcslstm_jax.cli.make_study --out data/uneven --preset uneven   # 6 / 12 / 24 months
"""

import argparse
import dataclasses
import json
import pathlib

from fcslstm_jax.synthetic import cohort

PRESETS = {"cohort": cohort.CohortConfig(), "uneven": cohort.UNEVEN}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="data/cohort", help="output folder (must not exist)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--preset",
    default="cohort",
    choices=sorted(PRESETS),
    help="cohort: 0-12 months every 3 (BRIC); uneven: 6 / 12 / 24 months, jittered ages, "
    "missed visits (IBIS-like)",
  )
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
  config = dataclasses.replace(PRESETS[args.preset], **changes)
  if pathlib.Path(args.out).exists():
    p.error(f"{args.out} exists; choose another --out or delete it")
  print(f"wrote {cohort.generate(args.out, args.seed, config)}")


if __name__ == "__main__":
  main()
