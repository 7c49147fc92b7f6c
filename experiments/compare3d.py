"""2D vs 3D + time under the same wall-clock training budget (docs/model.md, "3D + time").

    python experiments/compare3d.py --budget-min 6        # bric-whole and cohort
    python experiments/compare3d.py --datasets cohort --budget-min 6

For each dataset, the same model (``--model``, default Bi-FCSLSTM) is trained twice with the
same ``--config`` (default ``quick``): on axial slices over time (``--spatial-dims 2``, the
paper) and on volumes over time (``--spatial-dims 3``), each by ``train.py`` itself, stopped
after ``--budget-min`` minutes of wall clock (loading, compiling, training and its periodic
scoring all count; ``train.py --max-minutes``: the checkpoint of the step reached is kept).
A rerun skips the runs already measured (``compare3d-row.json`` in each run's folder).
Then, for each run:

* held-out mPA: the labeled voxels of the held-out time point as the protocol counts them
  (train.py's "test" score; ``train.py`` rerun with ``--epochs`` = the epochs completed scores
  the final state);
* whole-volume Dice: ``evaluate.py`` segments every session whole (3D: sliding windows,
  ``window_overlap``) and scores it against full labels (``--labels``; the built-in data's
  labels are full volumes already), held-out time point;
* inter-slice consistency: the fraction of voxel pairs ``(z, z + 1)`` inside the head (a
  full label > 0 at either) whose predicted class is the same, next to the same fraction for
  the full labels, on each session's own grid, every session.

Datasets: ``bric-whole`` (the built-in whole-brain volumes, ``--volume whole``: 10 subjects x
5 sessions, 96 x 96 x 64 at 2 mm) and ``cohort`` (``python -m fcslstm_jax.cli.make_study``'s
study,
made under ``--data`` if missing: 10 subjects, sessions on their own grids, one labeled
slice per session at its own z; full labels in ``sourcedata/full-labels``).

Writes ``<out>/compare3d.json`` and ``compare3d.md`` (one table).
"""

import argparse
import glob
import json
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the repository, not an install

DATASETS = ("bric-whole", "cohort")


def inter_slice_consistency(seg, head) -> tuple:
  """``(same, counted)``: voxel pairs ``(z, z + 1)`` along the last axis of ``seg [X, Y, Z]``
  where ``head`` is True at either voxel, and of those the ones whose classes are equal."""
  seg, head = np.asarray(seg), np.asarray(head, bool)
  pairs = head[..., 1:] | head[..., :-1]
  same = (seg[..., 1:] == seg[..., :-1]) & pairs
  return int(same.sum()), int(pairs.sum())


def consistency_of(pred_dir, truth_dir) -> dict:
  """Inter-slice consistency of every predicted session (``*_desc-*_dseg.nii.gz`` under
  ``pred_dir``) and of its full labels (``truth_dir``, same sub-/ses- path), pooled."""
  from fcslstm_jax.data import nifti_io

  counts = np.zeros((2, 2), np.int64)  # [prediction, truth] x [same, counted]
  paths = sorted(glob.glob(os.path.join(pred_dir, "sub-*", "ses-*", "anat", "*_dseg.nii.gz")))
  for path in paths:
    stem = os.path.basename(path).split("_desc-")[0]
    rel = os.path.relpath(os.path.dirname(path), pred_dir)
    truth = nifti_io.load_volume(
      os.path.join(truth_dir, rel, f"{stem}_dseg.nii.gz"), kind="labels"
    ).data
    pred = nifti_io.load_volume(path, kind="labels").data
    head = truth > 0
    counts[0] += inter_slice_consistency(pred, head)
    counts[1] += inter_slice_consistency(truth, head)
  if not paths:
    raise FileNotFoundError(f"{pred_dir}: no predictions")
  return {
    "prediction": float(counts[0, 0] / counts[0, 1]),
    "ground_truth": float(counts[1, 0] / counts[1, 1]),
    "sessions": len(paths),
  }


def completed_epochs(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return max(json.loads(line)["epoch"] for line in f if line.strip())


def dataset_args(name, data_root):
  """``(train.py data flags, evaluate.py data flags, full-label folder)`` of a dataset."""
  if name == "bric-whole":
    from fcslstm_jax.synthetic import bric_like

    root = str(bric_like.ensure_dataset(seed=0, config=bric_like.WHOLE_BRAIN))
    return (
      ["--dataset", "bric", "--volume", "whole"],
      [],
      os.path.join(root, "derivatives", "manual"),
    )
  from fcslstm_jax.synthetic import cohort

  root = os.path.join(data_root, "cohort")
  if not os.path.exists(root):
    cohort.generate(root)
  return (
    ["--data-dir", root],
    ["--data-dir", root],
    os.path.join(root, "sourcedata", "full-labels"),
  )


def run_one(dataset, dims, args, log=print) -> dict:
  from fcslstm_jax.cli import evaluate
  from fcslstm_jax.cli import train

  data_flags, eval_flags, truth = dataset_args(dataset, args.data)
  workdir = os.path.join(args.workdir, f"{dataset}-{args.model}-{dims}d")
  done = os.path.join(workdir, "compare3d-row.json")
  if os.path.exists(done):  # measured already (a rerun continues where it stopped)
    with open(done) as f:
      return json.load(f)
  flags = data_flags + [
    "--model",
    args.model,
    "--spatial-dims",
    str(dims),
    "--config",
    args.config,
    "--workdir",
    workdir,
  ]
  t0 = time.time()
  rc = train.main(flags + ["--epochs", str(args.max_epochs), "--max-minutes", str(args.budget_min)])
  seconds = time.time() - t0
  if rc != 0:
    raise RuntimeError(f"train.py {' '.join(flags)}: exit code {rc}")
  epochs = completed_epochs(workdir)
  assert train.main(flags + ["--epochs", str(epochs)]) == 0  # scores the final state
  with open(os.path.join(workdir, "results.json")) as f:
    scored = json.load(f)
  out = os.path.join(workdir, "predictions-full")
  t1 = time.time()
  assert (
    evaluate.main(
      [
        "--workdir",
        workdir,
        "--out",
        out,
        "--labels",
        truth,
        "--no-report",
        "--batch-size",
        str(args.eval_batch),
      ]
      + eval_flags
    )
    == 0
  )
  eval_seconds = time.time() - t1
  with open(os.path.join(out, "metrics.json")) as f:
    whole = json.load(f)
  row = {
    "dataset": dataset,
    "spatial_dims": dims,
    "model": args.model,
    "train_seconds": round(seconds, 1),
    "epochs": epochs,
    "step": scored["step"],
    "heldout_mpa": scored["test"]["mpa"],
    "train_mpa": scored["train"]["mpa"],
    "whole_volume_test": whole["test"],
    "whole_volume_train": whole["train"],
    "inter_slice": consistency_of(out, truth),
    "evaluate_seconds": round(eval_seconds, 1),
    "segment_seconds_per_session": whole.get("segment_seconds_per_session"),
    "load_average": os.getloadavg(),
  }
  from fcslstm_jax import files

  files.write_json(done, row)
  return row


def markdown(rows, header) -> str:
  def pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}"

  cols = [
    "dataset",
    "model",
    "steps (epochs)",
    "held-out mPA %",
    "whole-volume test Dice CSF / GM / WM %",
    "whole-volume test mPA %",
    "inter-slice consistency % (prediction / full labels)",
    "evaluate s per session",
  ]
  lines = [header, "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
  for r in rows:
    dice = r["whole_volume_test"]["dice"]
    tissue = [k for k in dice if k != "background"]
    lines.append(
      f"| {r['dataset']} | {r['model']} {r['spatial_dims']}D | {r['step']} ({r['epochs']}) | "
      f"{pct(r['heldout_mpa'])} | {' / '.join(pct(dice[k]) for k in tissue)} | "
      f"{pct(r['whole_volume_test']['mpa'])} | {pct(r['inter_slice']['prediction'])} / "
      f"{pct(r['inter_slice']['ground_truth'])} | {r['segment_seconds_per_session']} |"
    )
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
  p.add_argument("--model", default="bi-fcslstm", choices=("fcn", "fcslstm", "bi-fcslstm"))
  p.add_argument("--config", default="quick")
  p.add_argument(
    "--budget-min",
    type=float,
    default=6.0,
    help="wall-clock minutes of training per model and dataset",
  )
  p.add_argument(
    "--max-epochs", type=int, default=1000, help="epochs asked for (the budget stops the run first)"
  )
  p.add_argument("--eval-batch", type=int, default=8, help="evaluate.py --batch-size")
  p.add_argument("--data", default="data", help="where the cohort study is made")
  p.add_argument("--workdir", default=os.path.join("runs", "compare3d"))
  p.add_argument("--out", default="results")
  args = p.parse_args(argv)
  import jax

  rows = []
  for dataset in args.datasets:
    for dims in (2, 3):
      print(f"== {dataset}: {args.model} {dims}D, {args.budget_min:g} min", flush=True)
      rows.append(run_one(dataset, dims, args))
      print(json.dumps(rows[-1]), flush=True)
  load = os.getloadavg()
  header = (
    f"### 2D vs 3D + time, {args.model}, config `{args.config}`, the same "
    f"{args.budget_min:g} min of training wall clock per run; {os.cpu_count()} CPU "
    f"cores ({platform.processor() or platform.machine()}), jax {jax.__version__} on "
    f"{jax.default_backend()}, load average at the end {load[0]:.1f}"
  )
  command = "python experiments/compare3d.py " + " ".join(sys.argv[1:] if argv is None else argv)
  from fcslstm_jax import files

  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, "compare3d")
  files.write_json(
    stem + ".json",
    {
      "command": command,
      "budget_min": args.budget_min,
      "config": args.config,
      "load_average": load,
      "runs": rows,
    },
  )
  table = markdown(rows, header)
  files.write_text(stem + ".md", table + f"\n\nMade by `{command.strip()}`.\n")
  print(table)
  return rows


if __name__ == "__main__":
  main()
