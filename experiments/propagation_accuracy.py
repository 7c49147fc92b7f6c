"""How right are the labels that within-subject propagation carries (issue 33)?

    python experiments/propagation_accuracy.py --study data/cohort --erosion 2

Loads the study as training does (working grids, median spacing; ``--register``), builds the
training sequences with label propagation (:mod:`fcslstm_jax.data.propagate`), and compares
every carried voxel with the study's full labels (``sourcedata/full-labels``, which training
never reads) on the same working slice: all of them, and those carried as a tissue (not
background). Prints the agreement per time point and writes
``results/propagation-<study>.json`` (``-<register>`` appended unless ``--register none``).
"""

import argparse
import dataclasses
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study


def agreement(root, erosion: int, register: str) -> dict:
  proto = protocol.get_protocol(None, root)
  sparse = study.load_study(root, proto, spacing="median", register=register)
  every = dataclasses.replace(
    proto,
    labeled_slices_per_volume=1 << 30,
    train_timepoints=tuple(range(proto.num_timepoints)),
    test_timepoints=(),
  )
  full = study.load_study(
    root,
    every,
    spacing=sparse.options.spacing,
    register=register,
    labels_root=os.path.join(root, "sourcedata", "full-labels"),
  )
  counts = {t: [0, 0, 0, 0] for t in range(proto.num_timepoints)}  # all, then tissue only
  for a, b in zip(sparse.subjects, full.subjects):
    if a.grid is None:
      continue
    carried = sequences.make_sequences([a], proto, "train", propagation=(0.5, erosion))
    own = sequences.make_sequences([a], proto, "train")
    new = (carried.label_mask > 0) & ~(own.label_mask > 0)
    for i, z in enumerate(carried.slice_index):
      ox, oy = carried.offsets[i]
      for t, session in enumerate(b.timepoints):
        if session is None or not new[i, t].any():
          continue
        x, y = session.labels.shape[:2]
        truth = session.labels[:, :, z]
        where = new[i, t, ox : ox + x, oy : oy + y] & (session.label_mask[:, :, z] > 0)
        got = carried.labels[i, t, ox : ox + x, oy : oy + y]
        tissue = where & (got > 0)
        counts[t][0] += int((got[where] == truth[where]).sum())
        counts[t][1] += int(where.sum())
        counts[t][2] += int((got[tissue] == truth[tissue]).sum())
        counts[t][3] += int(tissue.sum())
  agree, total, tissue_agree, tissue_total = (sum(c[k] for c in counts.values()) for k in range(4))
  return {
    "erosion": erosion,
    "register": register,
    "carried_voxels": total,
    "agreement": agree / max(total, 1),
    "carried_tissue_voxels": tissue_total,
    "tissue_agreement": tissue_agree / max(tissue_total, 1),
    "per_timepoint": {
      proto.describe_timepoint(t): {
        "carried": n,
        "agreement": a / max(n, 1),
        "tissue_agreement": ta / max(tn, 1),
      }
      for t, (a, n, ta, tn) in counts.items()
    },
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--study", default=os.path.join(REPO, "data", "cohort"))
  p.add_argument("--erosion", type=int, default=2)
  p.add_argument("--register", default="none", choices=("none", "rigid", "moments"))
  args = p.parse_args(argv)
  result = agreement(args.study, args.erosion, args.register)
  name = os.path.basename(os.path.normpath(args.study))
  suffix = "" if args.register == "none" else f"-{args.register}"
  path = os.path.join(REPO, "results", f"propagation-{name}{suffix}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
