"""``python -m fcslstm_jax.cli.preview --dataset bric --preview out.png``: a study's summary
(subjects, sessions, labeled slices per split) and a montage of one subject."""

import argparse
import sys

from fcslstm_jax import datasets
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.errors import DataError
from fcslstm_jax.outputs import figures


def main(argv=None) -> int:

  parser = argparse.ArgumentParser(
    prog="python -m fcslstm_jax.cli.preview", description=__doc__.split("\n")[0]
  )
  parser.add_argument(
    "--dataset", default="bric", help="built-in name (bric, ibis; generated on first use)"
  )
  parser.add_argument("--data-dir", default=None, help="a dataset folder instead")
  parser.add_argument(
    "--protocol",
    default=None,
    help="protocol name or JSON file (default: DATA_DIR/protocol.json, else bric)",
  )
  parser.add_argument("--data-seed", type=int, default=0, help="built-in dataset seed")
  parser.add_argument("--preview", default=None, help="write a montage PNG here")
  parser.add_argument("--subject", type=int, default=0, help="subject index for --preview")
  args = parser.parse_args(argv)
  try:
    root, protocol = datasets.resolve(
      args.dataset, args.data_dir, args.protocol, data_seed=args.data_seed
    )
    loaded = study.load_study(root, protocol)
    print(sequences.describe_study(loaded))
    if args.preview:
      figures.subject_preview(args.preview, loaded.subjects[args.subject], protocol)
      print(f"wrote {args.preview}")
  except (DataError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
