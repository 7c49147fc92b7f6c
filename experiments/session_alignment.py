"""How well do a subject's sessions line up, voxel by voxel, on its working grid?

    python experiments/session_alignment.py --study cohort   # registration: minutes a subject

The LSTM carries each voxel's state from one session to the next on the subject's working
grid (``fcslstm_jax/data/grids.py``). It can only carry tissue over time where a voxel shows
the same anatomy in consecutive sessions. This measures that with the study's full labels
(``sourcedata/full-labels``, which training never reads): each session's labels resampled onto
the working grid as the loader does (reference: the first session), and the Dice per tissue
class between consecutive sessions, where both sessions cover the voxel. Three ways to place
the sessions:

* ``none``: through their affines only (the default, ``--register none``);
* ``rigid``: ``--register rigid`` (``grids.register_rigid``: dipy, mutual information);
* ``affine``: that rigid transform refined to a 12-parameter affine (dipy, mutual information),
  which can follow the head's global growth. Not an option of ``train.py``: measured here
  to see whether it would be worth one;
* ``moments``: a similarity (shift, rotation about the slice axis, one scale) from the head
  outline's in-plane moments (``--register moments``, ``fcslstm_jax/data/head_moments.py``).

``--methods`` measures some of them; the record keeps the others' earlier results.

A Dice of 1 would mean a voxel keeps its tissue between sessions. Growth, head motion and the
thin cortex keep even the truth below that. Writes ``results/alignment-<study>.json`` (with
the registration seconds per subject, on the machine it ran) and
``.md``.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import common
from fcslstm_jax.data import grids
from fcslstm_jax.data import head_moments
from fcslstm_jax.data import nifti_io

METHODS = ("none", "rigid", "affine", "moments")
TISSUES = {1: "CSF", 2: "GM", 3: "WM"}
OUTSIDE = 255  # label of working-grid voxels a session does not cover


def load(path, kind):
  """``(array, Grid)`` of a NIfTI file, read and checked as the loader reads it (canonical,
  RAS); ``kind`` is ``"image"`` or ``"labels"``."""
  volume = nifti_io.load_volume(path, kind=kind)
  return volume.data, grids.Grid(shape=volume.data.shape, affine=volume.affine)


def register_affine(static, static_grid, moving, moving_grid, start) -> np.ndarray:
  """``start`` (a rigid map, as from ``grids.register_rigid``) refined to a full affine, with
  the same mutual-information registration (``grids.mi_registration``)."""
  from dipy.align.transforms import AffineTransform3D

  found = grids.mi_registration().optimize(
    np.asarray(static, np.float64),
    np.asarray(moving, np.float64),
    AffineTransform3D(),
    None,
    static_grid2world=static_grid.affine,
    moving_grid2world=moving_grid.affine,
    starting_affine=start,
  )
  return np.asarray(found.affine, np.float64)


def tissue_dice(a, b) -> dict:
  """Dice per tissue class between two label volumes, where both cover the voxel."""
  both = (a != OUTSIDE) & (b != OUTSIDE)
  out = {}
  for c, name in TISSUES.items():
    x, y = (a == c) & both, (b == c) & both
    total = x.sum() + y.sum()
    out[name] = float(2 * (x & y).sum() / total) if total else float("nan")
  return out


def session_maps(images, methods=METHODS) -> tuple:
  """For each of ``methods``, each session's (``None`` where missing) world map from the
  reference's (the first session's) world to its own, and the seconds it took; ``affine``
  starts from ``rigid``'s. ``images``: ``(array, Grid)`` per session, every modality on the
  last axis of the array."""
  ref_image, ref_grid = images[0]
  maps = {m: [np.eye(4)] * len(images) for m in methods}
  seconds = dict.fromkeys(methods, 0.0)
  for i, session in enumerate(images):
    if session is None or i == 0:
      continue
    if "rigid" in methods or "affine" in methods:
      started = time.monotonic()
      rigid = grids.register_rigid(ref_image[..., 0], ref_grid, session[0][..., 0], session[1])
      if "rigid" in methods:
        maps["rigid"][i] = rigid
        seconds["rigid"] += time.monotonic() - started
      if "affine" in methods:
        maps["affine"][i] = register_affine(
          ref_image[..., 0], ref_grid, session[0][..., 0], session[1], rigid
        )
        seconds["affine"] += time.monotonic() - started
    if "moments" in methods:
      started = time.monotonic()
      maps["moments"][i] = head_moments.register_moments(ref_image, ref_grid, *session)
      seconds["moments"] += time.monotonic() - started
  return maps, seconds


def subject_alignment(study: str, subject: str, sessions: list, methods=METHODS) -> dict:
  """``{method: {"t-(t+1)": {tissue: Dice}}, "seconds": {method: s}}`` for one subject
  (``affine``'s seconds include the rigid start)."""
  images, labels = [], []
  for ses in sessions:
    anat = f"sub-{subject}/ses-{ses}/anat/sub-{subject}_ses-{ses}"
    t1, t2 = (os.path.join(study, f"{anat}_{m}.nii.gz") for m in ("T1w", "T2w"))
    full = os.path.join(study, "sourcedata", "full-labels", f"{anat}_dseg.nii.gz")
    present = os.path.exists(t1) and os.path.exists(full)
    if present:
      (a, grid), (b, _) = load(t1, "image"), load(t2, "image")
      images.append((np.stack([a, b], axis=-1), grid))
    else:
      images.append(None)
    labels.append(load(full, "labels") if present else None)
  every, seconds = session_maps(images, methods)
  out = {"seconds": {m: round(v, 1) for m, v in seconds.items()}}
  for method in methods:
    maps = every[method]
    present = [i for i, x in enumerate(images) if x is not None]
    work = grids.working_grid(
      images[0][1],
      "native",
      [images[i][1] for i in present],
      [np.linalg.inv(maps[i]) for i in present],
    )
    on_work = [
      None
      if lab is None
      else grids.resample(lab[0], lab[1], work, 0, world, cval=OUTSIDE).astype(np.uint8)
      for lab, world in zip(labels, maps)
    ]
    out[method] = {
      f"{t}-{t + 1}": tissue_dice(on_work[t], on_work[t + 1])
      for t in range(len(sessions) - 1)
      if on_work[t] is not None and on_work[t + 1] is not None
    }
  return out


def summary(subjects: dict) -> dict:
  """Mean Dice over subjects per method, pair of sessions and tissue."""
  out = {}
  for method in METHODS:
    measured = [s[method] for s in subjects.values() if method in s]
    pairs = sorted({p for s in measured for p in s})
    out[method] = {
      p: {
        name: round(float(np.nanmean([s[p][name] for s in measured if p in s])), 3)
        for name in TISSUES.values()
      }
      for p in pairs
    }
  return {m: v for m, v in out.items() if v}


def markdown(study: str, record: dict) -> str:
  ages = record["ages"]
  methods = [m for m in METHODS if m in record["summary"]]
  lines = [
    f"# Session alignment on `{study}` (`python experiments/session_alignment.py --study {study}`)",
    "",
    f"{record['cpu']}; {len(record['subjects'])} subjects. Dice of the full labels between "
    "consecutive sessions on the working grid (mean over subjects), CSF / GM / WM:",
    "",
    "| sessions (months) | " + " | ".join(methods) + " |",
    "|---|" + "---|" * len(methods),
  ]
  for pair in record["summary"]["none"]:
    a, b = (int(t) for t in pair.split("-"))
    cells = [
      " / ".join(f"{record['summary'][m][pair][n]:.2f}" for n in TISSUES.values()) for m in methods
    ]
    lines.append(f"| {ages[a]} -> {ages[b]} | " + " | ".join(cells) + " |")
  sec = record["seconds_per_subject"]
  timed = ", ".join(f"{m} {sec[m]:.1f} s" for m in methods if m in sec and m != "none")
  lines += [
    "",
    f"Registration per subject (mean): {timed} (affine: the rigid start included).",
    "",
  ]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--study", default="cohort", help="a study under data/ with full labels")
  p.add_argument("--subjects", default=None, help="comma-separated ids (default: all)")
  p.add_argument("--results", default=os.path.join(REPO, "results"))
  p.add_argument(
    "--methods",
    default=",".join(METHODS),
    help=f"comma-separated, of {','.join(METHODS)}; the record keeps the others' results",
  )
  p.add_argument("--tables", action="store_true", help="only rewrite the .md from the .json")
  args = p.parse_args(argv)
  stem = os.path.join(args.results, f"alignment-{args.study}")
  if args.tables:
    with open(stem + ".json") as f:
      record = json.load(f)
    with open(stem + ".md", "w") as f:
      f.write(markdown(args.study, record))
    return 0
  root = os.path.join(REPO, "data", args.study)
  with open(os.path.join(root, "dataset_description.json")) as f:
    generated = json.load(f)["GeneratedBy"][0]["Parameters"]
  ages = generated["ages"]
  sessions = [f"V{k + 1}" for k in range(len(ages))]
  subjects = (
    args.subjects.split(",")
    if args.subjects
    else sorted(d[4:] for d in os.listdir(os.path.join(root, "sourcedata", "full-labels")))
  )
  methods = [m for m in METHODS if m in args.methods.split(",")]
  try:
    with open(stem + ".json") as f:
      results = json.load(f)["subjects"]  # earlier methods' results are kept
  except (OSError, ValueError, KeyError):
    results = {}
  for subject in subjects:
    new = subject_alignment(root, subject, sessions, methods)
    old = results.get(subject, {})
    results[subject] = {**old, **new, "seconds": {**old.get("seconds", {}), **new["seconds"]}}
    print(subject, json.dumps(new["seconds"]), flush=True)
  record = {
    "study": args.study,
    "ages": ages,
    "cpu": f"{common.cpu_name()}, {os.cpu_count()} cores",
    "subjects": results,
    "summary": summary(results),
    "seconds_per_subject": {
      m: round(float(np.mean([r["seconds"][m] for r in results.values()])), 1)
      for m in METHODS
      if all(m in r["seconds"] for r in results.values())
    },
  }
  os.makedirs(args.results, exist_ok=True)
  with open(stem + ".json", "w") as f:
    json.dump(record, f, indent=1)
  with open(stem + ".md", "w") as f:
    f.write(markdown(args.study, record))
  print(markdown(args.study, record))
  return 0


if __name__ == "__main__":
  sys.exit(main())
