"""Segment whole 4D scans with a trained run (or an ensemble); write what a study needs.

    python evaluate.py --workdir runs/bric-bi-fcslstm-quick
    python evaluate.py --workdir runs/X --data-dir NEW_DATA --out predictions/

The tool lives in :mod:`fcslstm_jax.cli.evaluate` (installed: ``fcslstm-evaluate``); ``--help``
lists its flags and the files it writes.
"""

import sys

from fcslstm_jax.cli.evaluate import main

if __name__ == "__main__":
  sys.exit(main())
