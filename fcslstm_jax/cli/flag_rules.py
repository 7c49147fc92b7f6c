"""Prints the flag rules evaluate.py uses: the defaults, or those a ``--flags`` file gives
(:mod:`fcslstm_jax.outputs.flags`).

    python -m fcslstm_jax.cli.flag_rules [--check FILE]
"""

import argparse
import json
import sys

from fcslstm_jax.errors import ConfigError
from fcslstm_jax.outputs.flags import load


def main(argv=None) -> int:
  """Prints the default rules as JSON (or FILE's, with ``--check FILE``)."""
  p = argparse.ArgumentParser(
    prog="python -m fcslstm_jax.cli.flag_rules", description=__doc__.split("\n")[0]
  )
  p.add_argument("--check", help="read this --flags file and print the rules it gives")
  args = p.parse_args(argv)
  try:
    rules = load(args.check)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(rules.to_json(), indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
