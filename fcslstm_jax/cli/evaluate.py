"""Segment whole 4D scans with a trained run (or an ensemble); write what a study needs.

    python evaluate.py --workdir runs/bric-bi-fcslstm-quick
    python evaluate.py --workdir runs/X --data-dir NEW_DATA --out predictions/
    python evaluate.py --workdir runs/X --labels FULL_LABELS   # score against other labels
    python evaluate.py --workdir runs/A --workdir runs/B --tta-flips x,y --probabilities

Writes to --out (default: the first WORKDIR/predictions), never inside the input dataset:
  sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>_desc-<model>_dseg.nii.gz         labels
  sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>_desc-<model>_uncertainty.nii.gz  0..1
  sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>_desc-<model>_probseg.nii.gz      (--probabilities)
      all on each input's own grid, affine and header (desc: the model, or "ensemble")
  volumes.tsv        tissue volumes (mL) per subject and session, with age and QC score
  qc.tsv             sessions ranked by QC score (mean uncertainty in the brain), worst first
  flags.tsv          sessions a rule flags (also printed); flags.json: the rules used
  metrics.json       mPA / Dice / IoU per class and time point, temporal consistency;
                     whole_volume: per group Dice / precision / recall, volume and growth errors
  volumes_truth.tsv  predicted and true tissue volumes per session and class (with labels)
  report.html        one self-contained page: scores, flags, trajectories, worst sessions
  trajectories.png, qc_worst.png, segmentation.png, dseg.tsv (class names)
"""

import argparse
import sys

from fcslstm_jax import compile_cache
from fcslstm_jax.cli import add_common_arguments
from fcslstm_jax.cli import quiet_libraries
from fcslstm_jax.errors import run_cli
from fcslstm_jax.infer import pipeline
from fcslstm_jax.infer import tta
from fcslstm_jax.outputs import flags


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--workdir",
    required=True,
    action="append",
    help="a folder written by train.py; repeat it to average an ensemble (members "
    "must share the protocol and grid options)",
  )
  p.add_argument("--data-dir", help="segment this BIDS-like dataset instead of the run's own")
  p.add_argument("--out", help="output folder (default: the first WORKDIR/predictions)")
  p.add_argument(
    "--labels",
    help="score against the labels in this folder "
    "(sub-<id>/ses-<label>/anat/*_dseg.nii.gz) instead of the dataset's derivatives",
  )
  p.add_argument(
    "--participant-label",
    nargs="+",
    metavar="ID",
    help="segment only these subjects (01 or sub-01); default: all",
  )
  p.add_argument(
    "--batch-size",
    type=int,
    default=8,
    help="slices (windows, for a 3D run) per forward pass (times the number of "
    "flipped views with --tta-flips)",
  )
  p.add_argument(
    "--tta-flips",
    default="none",
    metavar="AXES",
    help="test-time augmentation: average over every combination of flips along "
    "these in-plane axes, e.g. x,y (4 views) or x; default none",
  )
  p.add_argument(
    "--probabilities",
    action="store_true",
    help="also write class probabilities (*_probseg.nii.gz, float32, one volume per class)",
  )
  p.add_argument(
    "--flags",
    metavar="FILE.json",
    help="flag rules (python -m fcslstm_jax.cli.flag_rules prints the defaults)",
  )
  p.add_argument(
    "--no-prior-correction",
    action="store_true",
    help="segment with the network's own probabilities, as the paper does, even where the "
    "run's config has prior_correction (the class weights divided out again)",
  )
  p.add_argument("--no-report", action="store_true", help="do not write report.html")
  add_common_arguments(p)
  args = p.parse_args(argv)
  if args.batch_size < 1:
    p.error(f"--batch-size {args.batch_size}: must be 1 or more")

  quiet_libraries(args.debug)
  result = {}

  def evaluate():

    compile_cache.enable(args.compile_cache)
    counter = compile_cache.CompileCounter()

    result.update(
      pipeline.evaluate_run(
        args.workdir,
        args.out,
        args.data_dir,
        args.batch_size,
        truth_dir=args.labels,
        tta_flips=tta.parse_flips(args.tta_flips),
        probabilities=args.probabilities,
        flag_rules=flags.load(args.flags),
        report=not args.no_report,
        counter=counter,
        participants=args.participant_label,
        prior_correction=not args.no_prior_correction,
      )
    )
    return 0

  rc = run_cli(
    evaluate, args.debug, "Free disk space or choose a writable --out folder, then rerun."
  )
  if rc:
    return rc
  print(
    f"wrote {result['predictions']} predictions to {result['out']}"
    + ("" if args.no_report else f"; report: {result['out']}/report.html")
  )
  print(f"{result['flags']} flag(s): {result['out']}/flags.tsv")
  if not result["metrics_available"]:
    print("no labels in this dataset: metrics are not available (predictions written).")
    return 0

  def fmt(m, k="mpa"):
    return "n/a" if m is None or m[k] is None else f"{m[k]:.4f}"

  for split in ("train", "test"):
    m = result[split]
    print(
      f"{split} time points: mPA {fmt(m)} (tissue classes only {fmt(m, 'mpa_fg')}), "
      f"mean Dice {fmt(m, 'mean_dice')}"
    )
  tc = result["temporal_consistency"]
  print(
    "temporal consistency (prediction / ground truth): "
    + ", ".join(
      f"{a:.3f}/{b:.3f}" if a is not None and b is not None else "n/a"
      for a, b in zip(tc["prediction"], tc["ground_truth"])
    )
  )
  for line in whole_volume_lines(result["whole_volume"]):
    print(line)
  return 0


GROUP_NAMES = {
  "heldout": "held-out time points",
  "train_timepoints": "training time points",
  "unlabeled_subjects": "unlabeled subjects",
}


def whole_volume_lines(wv) -> list:
  """The printed block of metrics.json's ``whole_volume``: a line per group, one for growth."""

  def number(v, f):
    return "n/a" if v is None else f(v)

  two, percent, signed = (
    lambda v: f"{v:.2f}",
    lambda v: f"{100 * v:.0f} %",
    lambda v: f"{100 * v:+.0f} %",
  )

  def tissues(d, f):
    return " ".join(f"{n} {number(v, f)}" for n, v in list(d.items())[1:])

  lines = [
    "whole volumes, per tissue class (volume error: mean |pred - true| / true, "
    "its signed mean in brackets):"
  ]
  for group, name in GROUP_NAMES.items():
    m = wv[group]
    if m is None:
      lines.append(f"  {name}: no scored session")
      continue
    volume = " ".join(
      f"{n} {number(e, percent)} ({number(m['volume_bias'][n], signed)})"
      for n, e in m["volume_error"].items()
    )
    lines.append(
      f"  {name} ({m['sessions']} sessions): Dice {tissues(m['dice'], two)} | "
      f"precision {tissues(m['precision'], two)} | recall {tissues(m['recall'], two)}"
      f" | volume error " + (volume if m["volume_sessions"] else "n/a (slice labels only)")
    )
  growth = [
    f"{kind.replace('_', ' ')} ({max(g['subjects'].values())}): "
    + " ".join(f"{n} {number(v, percent)}" for n, v in g["error"].items())
    for kind, g in wv["growth_error"].items()
    if g
  ]
  lines.append(
    "  growth error, first to last session (|pred - true growth| / |true growth|): "
    + (" | ".join(growth) or "n/a (no subject with 2 whole-volume label files)")
  )
  return lines


if __name__ == "__main__":
  sys.exit(main())
