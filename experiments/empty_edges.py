"""Tissue predicted where the image is empty: per session and per image face.

    python experiments/empty_edges.py PREDICTIONS DATA_DIR

For every ``*_dseg.nii.gz`` that ``evaluate.py`` wrote under PREDICTIONS, counts the voxels
predicted as tissue (class > 0) where the session's first-modality image is exactly 0 (outside
the head of skull-stripped data, or outside the field of view): on each face of the canonical
grid (x = 0, x = -1, y = 0, y = -1), in all, and farther than 2 voxels from any image voxel
(``far``: not a blurred boundary but tissue made up). Used to find and check the edge artifact
of docs/data.md; prints one row per session and the mean per volume.
"""

import argparse
import os
import pathlib
import sys

import numpy as np
from scipy import ndimage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fcslstm_jax.data import nifti_io

FACES = {"x0": np.s_[0], "x-1": np.s_[-1], "y0": np.s_[:, 0], "y-1": np.s_[:, -1]}


def count(pred, image) -> dict:
  """``{face: voxels}`` of ``pred > 0`` where ``image == 0`` (both canonical ``[X, Y, Z]``)."""
  false = (pred > 0) & (image == 0)
  out = {k: int(false[s].sum()) for k, s in FACES.items()}
  out["all"] = int(false.sum())
  out["far"] = int((false & (ndimage.distance_transform_edt(image == 0) > 2)).sum())
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("predictions")
  p.add_argument("data_dir")
  p.add_argument("--modality", default="T1w")
  args = p.parse_args(argv)
  rows = []
  for path in sorted(pathlib.Path(args.predictions).glob("sub-*/ses-*/anat/*_dseg.nii.gz")):
    sub, ses = path.parts[-4], path.parts[-3]
    (source,) = (pathlib.Path(args.data_dir) / sub / ses / "anat").glob(f"*_{args.modality}.nii*")
    pred = nifti_io.load_volume(path, kind="labels").data
    image = nifti_io.load_volume(source).data
    rows.append((f"{sub} {ses}", count(pred, image)))
  keys = list(rows[0][1])
  print("| session | " + " | ".join(keys) + " |\n|---" * (len(keys) + 1) + "|")
  for name, c in rows:
    print(f"| {name} | " + " | ".join(str(c[k]) for k in keys) + " |")
  print(
    "| mean per volume | "
    + " | ".join(f"{np.mean([c[k] for _, c in rows]):.0f}" for k in keys)
    + " |"
  )


if __name__ == "__main__":
  main()
