"""2D (slices over time) vs 3D (volumes over time) Bi-FCSLSTM at the same wall-clock budget.

    python -m fcslstm_jax.experiments.compare3d --minutes 8        # writes results/compare3d-bric.*
    python -m fcslstm_jax.experiments.compare3d --quick            # smoke test (tiny data)

Both models train on the built-in dataset's whole-brain volumes (``bric.WHOLE_BRAIN``: 10
subjects x 5 sessions, 96 x 96 x 64 at 2 mm), the paper's protocol (one labeled axial slice
per volume, train on time points 1, 2, 4, 5, hold out 3), the ``quick`` config otherwise.
The 2D model trains on the labeled slices' sequences, the 3D one on patches crossing them
(config ``patch_size``). Each run is stopped after ``--minutes`` of training (a SIGTERM to
itself: the loop saves a checkpoint at the step reached), then ``evaluate.py``'s code
segments every session's whole volume (the 3D one by sliding windows) and scores it on the
session's own grid against every labeled slice the generator wrote (all of them: full
labels). Reported: held-out and training mPA and Dice, and the inter-slice consistency: the
fraction of voxel pairs (z, z + 1) whose predicted classes agree, over the pairs where the
ground truth of either voxel is tissue, against the same fraction for the ground truth.
Writes ``<out>/compare3d-bric.json`` and ``.md``.
"""

import argparse
import os
import pathlib
import platform
import signal
import sys
import threading
import time

import jax
import numpy as np

from fcslstm_jax import bric
from fcslstm_jax import data as data_lib
from fcslstm_jax import files
from fcslstm_jax import inference
from fcslstm_jax import nifti_io
from fcslstm_jax import patches
from fcslstm_jax import protocol as protocol_lib
from fcslstm_jax import sequences
from fcslstm_jax import train_lib
from fcslstm_jax.config import PATCH_CPU, get_config
from fcslstm_jax.model import count_params

QUICK_DATA = bric.TINY_3D


def inter_slice_agreement(pred, truth) -> tuple:
  """``(agreeing, counted)`` voxel pairs (z, z + 1) of ``pred`` over the pairs where ``truth``
  is tissue (> 0) at either voxel; arrays ``[X, Y, Z]``."""
  a, b = pred[..., :-1], pred[..., 1:]
  counted = (truth[..., :-1] > 0) | (truth[..., 1:] > 0)
  return int(((a == b) & counted).sum()), int(counted.sum())


def consistency(out_dir, root, desc) -> dict:
  """Inter-slice consistency of every prediction in ``out_dir`` and of its ground truth."""
  totals = {"prediction": [0, 0], "ground_truth": [0, 0]}
  for dseg in sorted(root.glob("derivatives/*/sub-*/ses-*/anat/*_dseg.nii*")):
    sub, ses = dseg.parts[-4], dseg.parts[-3]
    pred_path = inference.prediction_path(out_dir, sub[4:], ses[4:], desc)
    truth = nifti_io.load_volume(dseg, kind="labels").data
    pred = nifti_io.load_volume(pred_path, kind="labels").data
    for key, seg in (("prediction", pred), ("ground_truth", truth)):
      agree, counted = inter_slice_agreement(seg, truth)
      totals[key][0] += agree
      totals[key][1] += counted
  return {k: a / max(n, 1) for k, (a, n) in totals.items()}


def train_for(config, study, workdir, seconds, log):
  """Trains ``config`` until ``seconds`` have passed (None: its epochs); returns the steps
  and the parameter count."""
  subjects, protocol = study.subjects, study.protocol
  if config.spatial_dims == 3:
    train_set, train_eval, test_set = patches.training_sets(subjects, protocol,
                                                            config.patch_size, config.seed)
  else:
    train_set = sequences.make_sequences(subjects, protocol, "train")
    test_set = sequences.make_sequences(subjects, protocol, "test")
    train_eval = None
  info = {"config": config.to_json(), "dataset": study.root, "protocol": protocol.to_json(),
          "grid": study.options.to_json()}
  # The loop saves a checkpoint and returns on SIGTERM (train_lib.StopRequest); the budget
  # is far longer than the setup before the loop, where SIGTERM would end the process.
  timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGTERM)) \
      if seconds else None
  if timer:
    timer.start()
  try:
    result = train_lib.train_and_evaluate(config, train_set, test_set, workdir,
                                          protocol.class_names, info, log=log,
                                          train_eval_set=train_eval)
  finally:
    if timer:
      timer.cancel()
  return int(result.state.step), count_params(result.state.params)


def run_one(spatial_dims, config, study, runs_dir, seconds, log):
  config = config.replace(spatial_dims=spatial_dims)
  root = study.root
  workdir = os.path.join(runs_dir, f"bi-fcslstm-{spatial_dims}d")
  t0 = time.time()
  steps, params = train_for(config, study, workdir, seconds, log)
  train_s = time.time() - t0
  out = os.path.join(workdir, "predictions")
  t0 = time.time()
  result = inference.evaluate_run(workdir, out, data_dir=str(root), batch_size=2, log=log,
                                  report=False)
  eval_s = time.time() - t0
  tc = consistency(out, pathlib.Path(root), config.model)
  return {"spatial_dims": spatial_dims, "steps": steps, "parameters": params,
          "train_seconds": train_s, "evaluate_seconds": eval_s,
          "patch_size": list(config.patch_size) if config.patch_size else None,
          "train": result["train"], "test": result["test"], "inter_slice_consistency": tc}


def markdown(runs, class_names, header):
  pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
  cols = (["model", "steps", "train mPA %", "test mPA %"]
          + [f"test Dice {c} %" for c in class_names[1:]]
          + ["inter-slice consistency % (truth)", "parameters", "train min", "evaluate min"])
  lines = [header, "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
  for r in runs:
    name = f"Bi-FCSLSTM {r['spatial_dims']}D" + (
        f" (patch {'x'.join(map(str, r['patch_size']))})" if r["patch_size"] else "")
    tc = r["inter_slice_consistency"]
    lines.append(f"| {name} | {r['steps']} | {pct(r['train']['mpa'])} | {pct(r['test']['mpa'])} | "
                 + " | ".join(pct(r["test"]["dice"][c]) for c in class_names[1:])
                 + f" | {pct(tc['prediction'])} ({pct(tc['ground_truth'])}) | "
                 f"{r['parameters']:,} | {r['train_seconds'] / 60:.1f} | "
                 f"{r['evaluate_seconds'] / 60:.1f} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--minutes", type=float, default=8.0, help="training budget of each model")
  p.add_argument("--config", default="quick")
  p.add_argument("--patch", type=int, nargs=3, default=list(PATCH_CPU))
  p.add_argument("--out", default="results")
  p.add_argument("--workdir", default=os.path.join("runs", "compare3d"))
  p.add_argument("--quick", action="store_true", help="smoke test: tiny data and model")
  args = p.parse_args(argv)
  config = get_config("tiny" if args.quick else args.config,
                      epochs=1 if args.quick else 10_000,
                      patch_size=(8, 32, 32) if args.quick else tuple(args.patch))
  seconds = None if args.quick else 60.0 * args.minutes  # quick: one epoch each
  protocol = protocol_lib.builtin("bric")
  root = bric.ensure_dataset(seed=0, config=QUICK_DATA if args.quick else bric.WHOLE_BRAIN)
  study = data_lib.load_study(root, protocol, spacing="native", keep="all")
  runs = []
  for dims in (2, 3):
    print(f"== Bi-FCSLSTM {dims}D, " + ("one epoch" if seconds is None else
                                         f"{seconds / 60:.1f} min of training"))
    runs.append(run_one(dims, config, study, args.workdir, seconds, print))
    r = runs[-1]
    print(f"   test mPA {r['test']['mpa']:.4f}, {r['steps']} steps, inter-slice consistency "
          f"{r['inter_slice_consistency']}")
  cpu = platform.processor() or platform.machine()
  budget = "one epoch" if seconds is None else f"{seconds / 60:.1f} min of training"
  header = (f"### bric, whole-brain volumes: Bi-FCSLSTM 2D vs 3D, {budget} "
            f"each, config `{'tiny' if args.quick else args.config}`, "
            f"{os.cpu_count()} CPU cores ({cpu}), jax {jax.__version__} on "
            f"{jax.default_backend()}")
  command = "python -m fcslstm_jax.experiments.compare3d " + " ".join(
      sys.argv[1:] if argv is None else argv)
  table = markdown(runs, protocol.class_names, header)
  stem = os.path.join(args.out, "compare3d-bric")
  files.write_json(stem + ".json", {"command": command, "config": config.to_json(),
                                    "seconds": seconds, "runs": runs})
  files.write_text(stem + ".md", table + f"\n\nMade by `{command.strip()}`.\n")
  print(table)
  return runs


if __name__ == "__main__":
  main()
