"""Parameter counts of the models (:mod:`fcslstm_jax.model.networks`).

python -m fcslstm_jax.cli.summary --summary [--spatial-dims 3]
"""

import argparse

from fcslstm_jax.config import SPATIAL_DIMS
from fcslstm_jax.model.networks import summary


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--summary", action="store_true", help="print parameter counts")
  parser.add_argument("--classes", type=int, default=4)
  parser.add_argument("--channels", type=int, default=2)
  parser.add_argument("--spatial-dims", type=int, default=2, choices=SPATIAL_DIMS)
  args = parser.parse_args(argv)
  if args.summary:
    print(
      f"{'model':<12}{'parameters':>12}   (n={args.channels} channels, c={args.classes} "
      f"classes, {args.spatial_dims}D)"
    )
    for name, n in summary(args.classes, args.channels, args.spatial_dims).items():
      print(f"{name:<12}{n:>12,}")


if __name__ == "__main__":
  main()
