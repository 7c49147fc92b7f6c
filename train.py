"""Train FCN / FCSLSTM / Bi-FCSLSTM on longitudinal MRI and evaluate the held-out time point.

    python train.py --dataset bric                      # built-in data, paper protocol
    python train.py --data-dir DIR                      # your study (DIR/protocol.json)

The tool lives in :mod:`fcslstm_jax.cli.train` (installed: ``fcslstm-train``); ``--help``
lists every flag and config field.
"""

import sys

from fcslstm_jax.cli.train import main

if __name__ == "__main__":
  sys.exit(main())
