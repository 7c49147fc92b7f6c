"""Compares evaluate.py output folders: held-out scores, volume errors, QC against Dice.

    python experiments/study_outputs.py runs/eval/seed0 runs/eval/seed0-tta ...

For each folder (written by ``evaluate.py``) prints one Markdown row: mPA (with and without
background) and Dice per tissue on the held-out and training time points (``metrics.json``);
the mean absolute relative error of each tissue volume and their total in ``volumes.tsv``
against the volumes of
the dataset's label files, where those label every axial slice (the built-in dataset);
and the Spearman rank correlation between the QC score and the per-session tissue Dice
(``qc.tsv``; negative: the less trusted sessions are the worse ones), and the number of
flags the default rules raise on ``volumes.tsv``.
"""

import argparse
import json
import os
import sys

import numpy as np
from scipy import stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fcslstm_jax import files
from fcslstm_jax.data import layout
from fcslstm_jax.data import nifti_io
from fcslstm_jax.outputs import flags
from fcslstm_jax.outputs import volumes


def truth_volumes(root, class_names) -> dict:
  """``{(sub-<id>, ses-<label>): {class: mL}}`` of every label file that labels every axial
  slice (the others cannot give a volume)."""
  out = {}
  for f in layout.scan(root, ["T1w"]):
    for s in f.sessions:
      if s.dseg is None:
        continue
      vol = nifti_io.load_volume(s.dseg, kind="labels")
      if not np.any(vol.data > 0, axis=(0, 1)).all():
        continue
      ml = volumes.class_volumes_ml(vol.data, vol.ref.affine, len(class_names))
      out[f"sub-{f.subject_id}", f"ses-{s.label}"] = dict(
        zip(class_names[1:], ml[1:]), total=ml[1:].sum()
      )
  return out


def row(folder, truth, class_names) -> dict:
  metrics = json.load(open(os.path.join(folder, "metrics.json")))
  tissues = list(class_names[1:])
  out = {
    "folder": folder,
    "members": len(metrics["members"]),
    "flips": ",".join(metrics["tta_flips"]) or "none",
    "seconds": metrics.get("seconds"),
  }
  for split in ("test", "train"):
    m = metrics[split]
    out[f"{split}_mpa"], out[f"{split}_mpa_fg"] = m["mpa"], m["mpa_fg"]
    for n in tissues:
      out[f"{split}_dice_{n}"] = m["dice"][n]
  rows = files.read_tsv(os.path.join(folder, "volumes.tsv"))
  for n in tissues + ["total"]:
    errors = [
      abs(float(r[f"{n}_ml"]) - truth[r["subject"], r["session"]][n])
      / truth[r["subject"], r["session"]][n]
      for r in rows
      if (r["subject"], r["session"]) in truth
    ]
    out[f"volume_error_{n}"] = float(np.mean(errors)) if errors else None
  qc_rows = [
    r for r in files.read_tsv(os.path.join(folder, "qc.tsv")) if r["dice_tissues"] != "n/a"
  ]
  if len(qc_rows) > 2:
    out["qc_dice_spearman"] = float(
      stats.spearmanr(
        [float(r["qc"]) for r in qc_rows], [float(r["dice_tissues"]) for r in qc_rows]
      )[0]
    )
  out["flags"] = len(flags.check(session_volumes(rows, tissues), flags.FlagRules(), class_names))
  return out


def session_volumes(rows, tissues) -> list:
  """``volumes.tsv`` rows back as :class:`fcslstm_jax.outputs.volumes.SessionVolumes`."""
  return [
    volumes.SessionVolumes(
      r["subject"].removeprefix("sub-"),
      r["session"].removeprefix("ses-"),
      int(r["timepoint"]) - 1,
      float(r["age"]),
      {n: float(r[f"{n}_ml"]) for n in tissues},
      float(r["qc"]),
    )
    for r in rows
  ]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("folders", nargs="+")
  p.add_argument("--data-dir", default="data/bric-v1-seed0", help="the evaluated dataset")
  p.add_argument("--json", help="also write the rows here")
  args = p.parse_args(argv)
  names = [r["name"] for r in files.read_tsv(os.path.join(args.folders[0], "dseg.tsv"))]
  truth = truth_volumes(args.data_dir, names)
  rows = [row(f, truth, names) for f in args.folders]
  tissues = names[1:]

  def f(v):
    return "n/a" if v is None else f"{v:.3f}"

  print(
    "| folder | members | flips | test mPA | test mPA tissues | test Dice "
    + " / ".join(tissues)
    + " | train mPA | volume error "
    + " / ".join(tissues + ["total"])
    + " | QC-Dice Spearman | flags | s |"
  )
  print("|---" * 10 + "|")
  for r in rows:
    print(
      f"| {r['folder']} | {r['members']} | {r['flips']} | {f(r['test_mpa'])} | "
      f"{f(r['test_mpa_fg'])} | "
      + " / ".join(f(r[f"test_dice_{n}"]) for n in tissues)
      + f" | {f(r['train_mpa'])} | "
      + " / ".join(f"{100 * r[f'volume_error_{n}']:.1f} %" for n in tissues + ["total"])
      + f" | {f(r.get('qc_dice_spearman'))} | {r['flags']} | {r['seconds']} |"
    )
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(rows, fh, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
