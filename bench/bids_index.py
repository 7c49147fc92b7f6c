"""How long indexing a study takes: this package's layout scan vs pybids (issue 35).

    pip install pybids==0.22.0    # bench/requirements.txt
    python bench/bids_index.py    # 20 subjects x 5 sessions = 100 sessions, 3 repeats

Writes a study of ``--subjects`` x ``--sessions`` sessions (T1w + T2w, 4^3 voxels: indexing
reads names and sidecars, not voxels; a ``sessions.tsv`` with ages and a label pipeline
with a ``dseg`` per session) into a temporary folder, then times, each ``--repeats`` times
in this process (median):

- ``layout.scan``: :func:`fcslstm_jax.data.layout.scan` (the files of every session, ages from
  the tsv, one label file per session);
- ``pybids``: ``bids.BIDSLayout(root, derivatives=PIPELINE, validate=False)``, then the same
  question asked of it (each subject's sessions, their T1w / T2w files, the dseg and ages).

Writes ``bench/results/bids_index.json`` and prints a table.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

from fcslstm_jax import files
from fcslstm_jax.data import layout

RESULTS = os.path.join(REPO, "bench", "results", "bids_index.json")


def write_study(root, subjects, sessions):
  image = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
  labels = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
  files.write_json(
    os.path.join(root, "dataset_description.json"), {"Name": "bench", "BIDSVersion": "1.10.0"}
  )
  pipeline = os.path.join(root, "derivatives", "manual")
  files.write_json(
    os.path.join(pipeline, "dataset_description.json"),
    {
      "Name": "manual",
      "BIDSVersion": "1.10.0",
      "DatasetType": "derivative",
      "GeneratedBy": [{"Name": "manual"}],
    },
  )
  for s in range(subjects):
    sub = f"sub-{s + 1:02d}"
    rows = []
    for k in range(sessions):
      ses = f"ses-{3 * k:02d}mo"
      rows.append((ses, str(3 * k)))
      anat = os.path.join(root, sub, ses, "anat")
      os.makedirs(anat, exist_ok=True)
      for m in ("T1w", "T2w"):
        nib.save(image, os.path.join(anat, f"{sub}_{ses}_{m}.nii.gz"))
      out = os.path.join(pipeline, sub, ses, "anat")
      os.makedirs(out, exist_ok=True)
      nib.save(labels, os.path.join(out, f"{sub}_{ses}_desc-manual_dseg.nii.gz"))
    files.write_tsv(os.path.join(root, sub, f"{sub}_sessions.tsv"), ["session_id", "age"], rows)
  return pipeline


def with_layout(root):
  return sum(len(s.sessions) for s in layout.scan(root, ("T1w", "T2w")))


def with_pybids(root, pipeline):
  import bids

  index = bids.BIDSLayout(root, derivatives=pipeline, validate=False)
  count = 0
  for sub in index.get_subjects():
    ages = {
      r["session_id"]: r["age"]
      for _, r in index.get(subject=sub, suffix="sessions", extension=".tsv")[0].get_df().iterrows()
    }
    for ses in index.get_sessions(subject=sub):
      images = [
        index.get(subject=sub, session=ses, suffix=m, extension=".nii.gz", scope="raw")
        for m in ("T1w", "T2w")
      ]
      dseg = index.get(subject=sub, session=ses, suffix="dseg", scope="derivatives")
      assert all(len(i) == 1 for i in images) and len(dseg) == 1 and f"ses-{ses}" in ages
      count += 1
  return count


def timed(fn, repeats):
  seconds = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    n = fn()
    seconds.append(time.perf_counter() - t0)
  return n, statistics.median(seconds), seconds


def table(r):
  lines = [
    f"Indexing {r['sessions']} sessions ({r['machine_phrase']}; median of {r['repeats']})",
    "",
    "| indexer | seconds | sessions found |",
    "|---|---|---|",
  ]
  for name in ("layout_scan", "pybids"):
    lines.append(f"| {name} | {r[name]['median_s']:.3f} | {r[name]['sessions']} |")
  lines.append(f"\npybids / layout.scan: {r['ratio']:.1f}x")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--subjects", type=int, default=20)
  p.add_argument("--sessions", type=int, default=5)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  import bids

  with tempfile.TemporaryDirectory() as root:
    pipeline = write_study(root, args.subjects, args.sessions)
    n_a, t_a, all_a = timed(lambda: with_layout(root), args.repeats)
    n_b, t_b, all_b = timed(lambda: with_pybids(root, pipeline), args.repeats)
  machine = common.machine()
  result = {
    "sessions": args.subjects * args.sessions,
    "repeats": args.repeats,
    "layout_scan": {"median_s": t_a, "all_s": all_a, "sessions": n_a},
    "pybids": {"median_s": t_b, "all_s": all_b, "sessions": n_b, "version": bids.__version__},
    "ratio": t_b / t_a,
    "machine": machine,
    "machine_phrase": common.describe(machine),
  }
  common.write_result(result, RESULTS, table)


if __name__ == "__main__":
  main()
