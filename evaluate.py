"""Segment whole 4D scans with a trained run; write NIfTI predictions, metrics and a figure.

    python evaluate.py --workdir runs/bric-bi-fcslstm-quick
    python evaluate.py --workdir runs/X --data-dir NEW_DATA --out predictions/
    python evaluate.py --workdir runs/X --labels FULL_LABELS   # score against other labels

Writes to --out (default WORKDIR/predictions), never inside the input dataset:
  sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>_desc-<model>_dseg.nii.gz  (input grid/affine)
  metrics.json       mPA / Dice / IoU per class and time point, temporal consistency
  segmentation.png   rows = time points; T1w, T2w, ground truth, prediction
"""

import argparse
import sys


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a folder written by train.py")
  p.add_argument("--data-dir", help="segment this BIDS-like dataset instead of the run's own")
  p.add_argument("--out", help="output folder (default: WORKDIR/predictions)")
  p.add_argument("--labels", help="score against the labels in this folder "
                 "(sub-<id>/ses-<label>/anat/*_dseg.nii.gz) instead of the dataset's derivatives")
  p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
  p.add_argument("--debug", action="store_true", help="show tracebacks")
  args = p.parse_args(argv)
  from fcslstm_jax.errors import user_message
  try:
    from fcslstm_jax import inference
    result = inference.evaluate_run(args.workdir, args.out, args.data_dir, args.batch_size,
                                    truth_dir=args.labels)
  except Exception as e:  # one clear line for the user's mistakes; tracebacks for ours
    message = None if args.debug else user_message(
        e, "Free disk space or choose a writable --out folder, then rerun.")
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    return 2
  print(f"wrote {result['predictions']} predictions to {result['out']}")
  if not result["metrics_available"]:
    print("no labels in this dataset: metrics are not available (predictions written).")
    return 0
  fmt = lambda m, k="mpa": "n/a" if m is None or m[k] is None else f"{m[k]:.4f}"
  for split in ("train", "test"):
    m = result[split]
    print(f"{split} time points: mPA {fmt(m)} (tissue classes only {fmt(m, 'mpa_fg')}), "
          f"mean Dice {fmt(m, 'mean_dice')}")
  tc = result["temporal_consistency"]
  print("temporal consistency (prediction / ground truth): " + ", ".join(
      f"{a:.3f}/{b:.3f}" if a is not None and b is not None else "n/a"
      for a, b in zip(tc["prediction"], tc["ground_truth"])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
