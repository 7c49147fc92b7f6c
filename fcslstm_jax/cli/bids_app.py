"""The BIDS-App command: ``fcslstm BIDS_DIR OUTPUT_DIR {group,participant}``.

As the BIDS-Apps (fMRIPrep, nibabies, QSIPrep) are called::

    fcslstm /data/study /data/study/derivatives/fcslstm group           # train
    fcslstm /data/study /data/study/derivatives/fcslstm participant \\
        --participant-label 01 02                                        # segment

``group`` trains one model on every labeled participant (:mod:`fcslstm_jax.cli.train`) into
``--model-dir`` (default ``OUTPUT_DIR/sourcedata/model``, which BIDS tools skip);
``participant`` segments the chosen participants (default all) with that model into
OUTPUT_DIR, a BIDS derivative dataset (:mod:`fcslstm_jax.outputs.bids`). Flags it does not
know go to ``train.py`` (group: ``--config quick``, ``--epochs 30``, ``--set ...``) or
``evaluate.py`` (participant: ``--probabilities``, ``--tta-flips x,y``). OUTPUT_DIR may be
``BIDS_DIR/derivatives/<name>``; inputs are never written, and this tool's outputs there are
never read as labels.
"""

import argparse
import os
import sys

from fcslstm_jax.cli import evaluate
from fcslstm_jax.cli import train


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    prog="fcslstm",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    allow_abbrev=False,  # "--model fcn" goes to train.py, not to --model-dir
  )
  p.add_argument("bids_dir", help="the BIDS dataset (sub-<id>/ses-<label>/anat/...)")
  p.add_argument(
    "output_dir", help="the derivative dataset to write (may be BIDS_DIR/derivatives/<name>)"
  )
  p.add_argument(
    "analysis_level", choices=("participant", "group"), help="participant: segment; group: train"
  )
  p.add_argument(
    "--participant-label",
    nargs="+",
    metavar="ID",
    help="participant: only these subjects (01 or sub-01); default: all",
  )
  p.add_argument(
    "--model-dir",
    help="the trained model (train.py's --workdir); default: OUTPUT_DIR/sourcedata/model",
  )
  p.add_argument(
    "--labels",
    metavar="DIR",
    help="the label pipeline to train on / score against, e.g. derivatives/manual "
    "(default: group: every pipeline but this tool's outputs; participant: the model's)",
  )
  return p.parse_known_args(argv)


def main(argv=None) -> int:
  args, rest = parse_args(argv)
  model = args.model_dir or os.path.join(args.output_dir, "sourcedata", "model")
  labels = ["--labels", args.labels] if args.labels else []
  if args.analysis_level == "group":
    if args.participant_label:
      return refuse(
        "--participant-label is for the participant level; the group level trains on "
        "every labeled participant."
      )
    return train.main(["--data-dir", args.bids_dir, "--workdir", model, *labels, *rest])
  if not os.path.isfile(os.path.join(model, "run.json")):
    return refuse(
      f"{model}: no trained model (no run.json). Train one first (fcslstm {args.bids_dir} "
      f"{args.output_dir} group), or pass --model-dir."
    )
  chosen = ["--participant-label", *args.participant_label] if args.participant_label else []
  return evaluate.main(
    [
      *("--workdir", model, "--data-dir", args.bids_dir, "--out", args.output_dir),
      *chosen,
      *labels,
      *rest,
    ]
  )


def refuse(message: str) -> int:
  """One error line, exit code 2 (as the other tools' usage errors)."""
  print(f"error: {message}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
