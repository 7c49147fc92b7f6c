"""Which lever fixes whole volumes and trajectories from one labeled slice per volume (issue 33).

    python experiments/trajectories.py                       # every lever, cohort, seed 0
    python experiments/trajectories.py --study cohort-b --levers paper,prior --seeds 0,1,2
    python experiments/trajectories.py --study cohort,uneven --levers paper,age --seeds 0,1,2

For each study, lever and seed: ``train.py`` (the default command, with the lever's
settings spelled out so that a row keeps its meaning when defaults change), then
``evaluate.py --labels FULL`` against the study's full labels (``sourcedata/full-labels``,
which training never reads). Each finished run is added to ``results/trajectories-<study>.json``
and ``.md`` at once; a rerun skips finished runs and resumes an interrupted one (train.py
resumes from its checkpoint), so the command can be stopped and restarted at will. Levers
that change only how the trained network segments (``prior``, ``prior-fit``, ``prior-age``:
the prior correction) or where it stops (``prior-fit-moments-epochs-N``: an earlier epoch's
checkpoint) reuse the finished training of the lever they build on
(``SAME_TRAINING``), so list that lever first.

Studies (generated under ``data/`` on first use, deterministic):
  cohort    the README's study (``python -m fcslstm_jax.cli.make_study``): 8 labeled + 2
            unlabeled subjects, 5 sessions at 0-12 months, each on its own grid, one labeled
            axial slice per session at its own z.
  cohort-b  other anatomy and geometry: another seed (other subjects' shapes and sizes),
            2.4 mm slices, other in-plane voxel sizes, skull-stripped, heads tilted.
  uneven    IBIS-like ages (issue 29): visits at 6, 12, 24 months jittered by up to 1.5,
            two labeled subjects missing a visit; trains on 12 and 24, tests on 6.
  cohort-dense  cohort's images with every slice of every session labeled: the ceiling of
            what labels at the training time points can teach (the held-out 6-month
            sessions' labels score, never train). Only the ages in sessions.tsv differ from
            cohort's (their jitter is drawn after the labeled slices). Lever ``dense-steps``.
  cohort-all  cohort itself (the same files) with no held-out time point: every session's
            labeled slice trains, the isointense 6-month one too, as a user who labels one
            slice in every session would train. Its held-out columns are empty; the table of
            Dice per time point shows the 6-month sessions.
  cohort-dense-all  cohort-dense with every session in training, the 6-month one too: the
            most the network learns of the isointense age when all of it is labeled (its
            6-month Dice is a fit, not a prediction). Lever ``dense-steps``.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import common
from fcslstm_jax.synthetic import cohort

STUDIES = {
  "cohort": (0, cohort.CohortConfig()),
  "cohort-b": (
    7,
    dataclasses.replace(
      cohort.CohortConfig(),
      slice_mm=2.4,
      fov_mm=(192.0, 216.0, 57.6),
      voxel_mm=(1.4, 1.6, 1.25),
      skull_strip=True,
      tilt_deg=3.0,
    ),
  ),
  "uneven": (11, cohort.UNEVEN),
  # Every session trains on its labeled slice, the 6-month one too: no time point is held
  # out, so the isointense age's whole volumes score one labeled slice's worth of teaching.
  "cohort-all": (
    0,
    dataclasses.replace(
      cohort.CohortConfig(),
      protocol=cohort.CohortConfig().protocol
      | {"name": "cohort-all", "train_timepoints": [0, 1, 2, 3, 4], "test_timepoints": []},
    ),
  ),
  # Every labeled slice is used (labeled_slices_per_volume above any session's slice count;
  # the protocol's default, the paper's 1, would keep one slice per session).
  "cohort-dense": (
    0,
    dataclasses.replace(
      cohort.CohortConfig(),
      labels="dense",
      protocol=cohort.CohortConfig().protocol | {"labeled_slices_per_volume": 64},
    ),
  ),
  # cohort-dense with the 6-month sessions' labels in training too: what the network can
  # learn of the isointense age when every slice of it is labeled (the information ceiling
  # of the images at that age, for this network and recipe). Nothing is held out.
  "cohort-dense-all": (
    0,
    dataclasses.replace(
      cohort.CohortConfig(),
      labels="dense",
      protocol=cohort.CohortConfig().protocol
      | {
        "name": "cohort-dense-all",
        "labeled_slices_per_volume": 64,
        "train_timepoints": [0, 1, 2, 3, 4],
        "test_timepoints": [],
      },
    ),
  ),
}

# Every lever names all the settings it is about (Config fields), so that a row means the
# same whatever the presets' defaults are.
PAPER = dict(
  epochs=30,
  class_weighting="inverse",
  dice_weight=0.0,
  rotate_deg=0.0,
  scale_range=0.0,
  gamma=0.0,
  invert=0.0,
  invert_one=0.0,
  pseudo_label_epochs=0,
  age_input="none",
  propagate_labels=0.0,
  prior_correction="none",
  context_slices=0,
  crop_margin=None,
)
AUGMENT = dict(
  PAPER, class_weighting="none", dice_weight=1.0, rotate_deg=15.0, scale_range=0.15, gamma=0.3
)
LEVERS = {
  "paper": ("the paper's loss (inverse-frequency weighted CE), flips + intensity scaling", PAPER),
  "prior": (
    "the paper's training; its segmentation prior-corrected (the class weights divided out "
    "again, infer/prior.py), in full",
    dict(PAPER, prior_correction="full"),
  ),
  "prior-fit": (
    "the paper's training; its segmentation prior-corrected as strongly as segments the "
    "labeled training voxels best (the quick preset's default)",
    dict(PAPER, prior_correction="fitted"),
  ),
  "weights-none": ("CE without class weights", dict(PAPER, class_weighting="none")),
  "weights-sqrt": (
    "CE weighted by inverse square-root frequency",
    dict(PAPER, class_weighting="sqrt"),
  ),
  "dice-ce": (
    "Dice + unweighted CE (nnU-Net's loss)",
    dict(PAPER, class_weighting="none", dice_weight=1.0),
  ),
  "augment": ("Dice + CE, with rotation 15 deg, scaling 0.15, gamma 0.3", AUGMENT),
  "self-train": (
    "augment, and self-training in the last 10 of 30 epochs (confident "
    "predictions on every slice and session, weight 0.5)",
    dict(AUGMENT, pseudo_label_epochs=10),
  ),
  "propagate": (
    "the paper's recipe, and each labeled slice also labels the same plane of the subject's "
    "other sessions (tissue interiors, 2 voxels from any boundary; loss weight 0.5)",
    dict(PAPER, propagate_labels=0.5, propagate_erosion=2),
  ),
  "age": (
    "the paper's recipe, and each session's age and the gaps to its neighbours as input "
    "(FiLM of every LSTM layer, model/age.py)",
    dict(PAPER, age_input="film"),
  ),
  "prior-age": (
    "the age lever's training; its segmentation prior-corrected",
    dict(PAPER, prior_correction="full", age_input="film"),
  ),
  "invert": (
    "the paper's recipe, and each time point's contrast moved toward its inversion by "
    "U(0, 0.6) (the isointense age at 0.5)",
    dict(PAPER, invert=0.6),
  ),
  "invert-one": (
    "the paper's recipe, and in half the sequences one labeled time point's contrast moved "
    "toward its inversion by U(0, 1), its neighbours untouched (train/augment.py)",
    dict(PAPER, invert_one=0.5),
  ),
  "prior-invert-one": (
    "the invert-one lever's training; its segmentation prior-corrected",
    dict(PAPER, invert_one=0.5, prior_correction="full"),
  ),
  "context": (
    "the paper's recipe, and the working slices above and below each slice as input "
    "channels (2.5D, context_slices=1)",
    dict(PAPER, context_slices=1),
  ),
  "prior-context": (
    "the context lever's training; its segmentation prior-corrected",
    dict(PAPER, context_slices=1, prior_correction="full"),
  ),
  "moments": (
    "the paper's recipe on sessions aligned by a similarity from the head outline (shift, "
    "rotation, one scale for growth: train.py --register moments, data/head_moments.py)",
    PAPER,
  ),
  "prior-moments": (
    "the moments lever's training; its segmentation prior-corrected",
    dict(PAPER, prior_correction="full"),
  ),
  # The default command while --register moments was the default without propagation
  # (2026-12-07): the moments lever's training, segmented with the fitted prior correction.
  "prior-fit-moments": (
    "the moments lever's training; its segmentation prior-corrected as strongly as segments "
    "the labeled training voxels best (prior_correction=fitted): the default command of "
    "2026-12-07",
    dict(PAPER, prior_correction="fitted"),
  ),
  # Propagation again, now that the sessions line up: the carried labels reach the
  # isointense 6 months from the 3 and 9 (experiments/propagation_accuracy.py --register).
  "propagate-moments": (
    "the propagate lever (loss weight 0.5, tissue interiors) on sessions aligned by "
    "--register moments",
    dict(PAPER, propagate_labels=0.5, propagate_erosion=2),
  ),
  # The default command since 2026-12-08 (the quick preset propagates in 2D).
  "prior-fit-propagate-moments": (
    "the propagate-moments lever's training; its segmentation prior-corrected (fitted): the "
    "default command since 2026-12-08",
    dict(PAPER, propagate_labels=0.5, propagate_erosion=2, prior_correction="fitted"),
  ),
  # A shorter default (issue 33's 20 minutes): nothing in training reads the epoch count but
  # the loop's end (the decay starts at epoch 10, the data order is per (seed, epoch)), so
  # the moments lever's checkpoint at epoch n (it keeps every epoch's: KEEP_EVERY_EPOCH) is
  # what an n-epoch run trains; these levers segment it as the default command does.
  **{
    f"prior-fit-moments-epochs-{n}": (
      f"the moments lever's training stopped after {n} epochs instead of 30 (its checkpoint "
      "at that epoch); its segmentation prior-corrected as the default command's",
      dict(PAPER, epochs=n, prior_correction="fitted"),
    )
    for n in (15, 20, 24)
  },
  # The default command cut to 24 epochs, which trains within issue 33's 20 minutes on 2
  # cores (trained from scratch; it keeps every epoch's checkpoint).
  "prior-fit-propagate-moments-epochs-24": (
    "the prior-fit-propagate-moments lever stopped after 24 epochs (about 19 minutes of "
    "training on 2 cores)",
    dict(PAPER, epochs=24, propagate_labels=0.5, propagate_erosion=2, prior_correction="fitted"),
  ),
  # Training on windows around the head (data/head_window.py): 128 x 128 instead of the
  # 130 x 145 slices padded to 160 x 160 on cohort, so each step computes 36 % fewer pixels.
  "prior-fit-propagate-moments-window": (
    "the prior-fit-propagate-moments lever trained on windows around the head (the training "
    "slices' nonzero box grown by 8 pixels, rounded up to a multiple of 32, at a random "
    "position around it each step: crop_margin=8)",
    dict(
      PAPER, propagate_labels=0.5, propagate_erosion=2, prior_correction="fitted", crop_margin=8
    ),
  ),
  # The same training segmented with left-right flips averaged in (evaluate.py --tta-flips
  # x; EVALUATE_ARGS): training flips too, and a brain is nearly symmetric.
  "prior-fit-propagate-moments-window-tta-x": (
    "the prior-fit-propagate-moments-window lever's training, segmented with test-time "
    "left-right flips (evaluate.py --tta-flips x)",
    dict(
      PAPER, propagate_labels=0.5, propagate_erosion=2, prior_correction="fitted", crop_margin=8
    ),
  ),
  # For cohort-dense: every working slice of the 8 labeled subjects is a training sequence
  # (~200, against 31 sparse), so 5 epochs take about the steps (and the time) of the sparse
  # study's 30 (~480 against 450); the decay begins after a third of them, as in the quick
  # preset (its per-epoch factor then reaches only 0.97^3, not 0.97^20).
  "dense-steps": (
    "the paper's recipe on every slice of the training time points (cohort-dense), 5 "
    "epochs: about the steps of the sparse study's 30",
    dict(PAPER, epochs=5, lr_decay_begin_epoch=2),
  ),
  "prior-dense-steps": (
    "the dense-steps lever's training; its segmentation prior-corrected",
    dict(PAPER, epochs=5, lr_decay_begin_epoch=2, prior_correction="full"),
  ),
}


# train.py arguments of the levers that change how the study is loaded, not a Config field;
# every other lever spells the registration it ran with (--register none; the default since
# has become moments).
MOMENTS = ["--register", "moments"]
LOADER_ARGS = {lever: MOMENTS for lever in LEVERS if "moments" in lever}
UNREGISTERED = ["--register", "none"]
# Levers whose training keeps every epoch's checkpoint, for the levers that stop it earlier.
KEEP_EVERY_EPOCH = {"moments", "prior-fit-propagate-moments-epochs-24"}

# Levers that differ from another only in how the trained network segments (the prior
# correction changes no training step), or in where it stops (the checkpoint of an earlier
# epoch): their run starts from a copy of that lever's finished run (checkpoints, metrics;
# only up to its last epoch).
SAME_TRAINING = {
  "prior": "paper",
  "prior-fit": "paper",
  "prior-age": "age",
  "prior-context": "context",
  "prior-invert-one": "invert-one",
  "prior-dense-steps": "dense-steps",
  "prior-moments": "moments",
  "prior-fit-moments": "moments",
  **{k: "moments" for k in LEVERS if k.startswith("prior-fit-moments-epochs-")},
  "prior-fit-propagate-moments": "propagate-moments",
  "prior-fit-propagate-moments-window-tta-x": "prior-fit-propagate-moments-window",
}
# evaluate.py arguments of the levers that segment differently (not a Config field).
EVALUATE_ARGS = {"prior-fit-propagate-moments-window-tta-x": ["--tta-flips", "x"]}


def reuse_training(study: str, lever: str, seed: int, work: str, workdir: str, log: str) -> None:
  """Copies the finished run of ``SAME_TRAINING[lever]`` (checkpoints, metrics, run.json with
  this lever's settings) into ``workdir``; train.py then only scores it. A lever with fewer
  epochs gets the checkpoints and metrics up to its last epoch (the newest is what train.py
  restores); a source that did not keep that epoch's checkpoint is refused."""
  source = os.path.join(work, study, f"{SAME_TRAINING.get(lever)}-seed{seed}")
  done = os.path.exists(os.path.join(source, "results.json"))
  if lever not in SAME_TRAINING or not done or os.path.exists(os.path.join(workdir, "run.json")):
    return
  with open(os.path.join(source, "run.json")) as f:
    record = json.load(f)
  with open(os.path.join(source, "metrics.jsonl")) as f:
    epochs = [json.loads(line) for line in f if line.strip()]
  last = LEVERS[lever][1].get("epochs", record["config"]["epochs"])
  epochs = [e for e in epochs if e["epoch"] <= last]
  step = max(e["step"] for e in epochs)
  checkpoints = os.path.join(source, "checkpoints")
  if not os.path.isdir(os.path.join(checkpoints, str(step))):
    raise SystemExit(
      f"{lever} needs the checkpoint of epoch {last} (step {step}) of {source}, which did not "
      f"keep it (it keeps every epoch's only when trained by this version: KEEP_EVERY_EPOCH)."
    )
  shutil.copytree(
    checkpoints,
    os.path.join(workdir, "checkpoints"),
    ignore=lambda folder, names: [
      n for n in names if folder == checkpoints and n.isdigit() and int(n) > step
    ],
  )
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(e) + "\n" for e in epochs)
  record["config"].update(LEVERS[lever][1])
  with open(os.path.join(workdir, "run.json"), "w") as f:
    json.dump(record, f, indent=1)
  with open(log, "a") as f:
    f.write(
      f"(the training of {source} up to epoch {last}: this lever changes how it segments "
      "or where it stops, not how it trains)\n"
    )


def study_dir(name: str) -> str:
  root = os.path.realpath(os.path.join(REPO, "data", name))
  if not os.path.isfile(os.path.join(root, "dataset_description.json")):
    seed, config = STUDIES[name]
    cohort.generate(root, seed=seed, config=config)
  return root


def run_command(command, log_path) -> float:
  """Runs ``command`` (output appended to ``log_path``); its wall seconds. Raises on failure."""
  started = time.monotonic()
  with open(log_path, "a") as log:
    rc = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
  if rc:
    raise SystemExit(f"{' '.join(command)} failed ({rc}); see {log_path}")
  return time.monotonic() - started


def one_run(study: str, lever: str, seed: int, work: str) -> dict:
  """Trains and evaluates one (study, lever, seed); returns its results row."""
  root = study_dir(study)
  workdir = os.path.join(work, study, f"{lever}-seed{seed}")
  out = os.path.join(workdir, "predictions-full")
  os.makedirs(workdir, exist_ok=True)
  log = workdir + ".log"
  reuse_training(study, lever, seed, work, workdir, log)
  settings = [f"--set={k}={'null' if v is None else v}" for k, v in LEVERS[lever][1].items()]
  train = [
    sys.executable,
    "train.py",
    "--data-dir",
    root,
    "--workdir",
    workdir,
    "--seed",
    str(seed),
    *LOADER_ARGS.get(lever, UNREGISTERED),
    *settings,
    *(["--set=keep_checkpoints=1000"] if lever in KEEP_EVERY_EPOCH else []),
  ]
  train_s = run_command(train, log)
  evaluate = [
    sys.executable,
    "evaluate.py",
    "--workdir",
    workdir,
    "--labels",
    os.path.join(root, "sourcedata", "full-labels"),
    "--out",
    out,
    "--no-report",
    *EVALUATE_ARGS.get(lever, []),
  ]
  eval_s = run_command(evaluate, log)
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  return {
    "study": study,
    "lever": lever,
    "seed": seed,
    "settings": LEVERS[lever][1],
    "train_command": " ".join(
      os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in train[1:]
    ),
    "evaluate_args": EVALUATE_ARGS.get(lever, []),
    "train_seconds": round(train_s, 1),
    "evaluate_seconds": round(eval_s, 1),
    "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "commit": git_commit(),
    "cpu": f"{common.cpu_name()}, {os.cpu_count()} cores",
    "workdir": os.path.relpath(workdir, REPO),
    "train_epoch_minutes": training_minutes(workdir),
    "metrics": metrics,
  }


def git_commit() -> str:
  try:
    return subprocess.check_output(
      ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True
    ).strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def pct(v) -> str:
  return "n/a" if v is None else f"{100 * v:+.0f} %"


def pct_abs(v) -> str:
  return "n/a" if v is None else f"{100 * v:.0f} %"


def training_minutes(workdir: str) -> float | None:
  """Minutes the run spent in its epochs (training and scoring), summed over every attempt
  (``metrics.jsonl``): a resumed run's own wall time would count only its last part."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return sum(r.get("epoch_seconds") or 0.0 for r in records) / 60


def num(v) -> str:
  return "n/a" if v is None else f"{v:.3f}"


def tissue_names(r) -> list:
  """The tissue classes of a row's scores (every class but background), from the first
  whole-volume group it has (a study without a held-out time point has no ``heldout``)."""
  whole = r["metrics"].get("whole_volume") or {}
  for g in ("heldout", "train_timepoints", "unlabeled_subjects"):
    dice = (whole.get(g) or {}).get("dice")
    if dice:
      return [n for n in dice if n != "background"]
  return []


def timepoint_lines(rows: list) -> list:
  """Whole-volume Dice per time point (every subject's session at that time point, labeled
  subject or not), one line per row, tissue classes CSF / GM / WM (empty without rows that
  have them): where along the ages a lever gains or loses, e.g. at the isointense 6 months."""
  scored = [r for r in rows if r["metrics"].get("per_timepoint")]
  if not scored:
    return []
  points = scored[0]["metrics"]["per_timepoint"]
  head = ["lever", "seed"] + [
    f"{p['age']:g} mo ({p['role']})" if p.get("age") is not None else f"t{p['timepoint']}"
    for p in points
  ]
  lines = [
    "",
    "Whole-volume Dice per time point (every subject's sessions there, labeled subjects and "
    "not; the time point's role in training in brackets):",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for r in scored:
    names = tissue_names(r)
    cells = [
      " / ".join(num((p.get("dice") or {}).get(n)) for n in names)
      for p in r["metrics"]["per_timepoint"]
    ]
    lines.append("| " + " | ".join([r["lever"], str(r["seed"])] + cells) + " |")
  return lines


def row_cells(r) -> list:
  """A markdown row (tissue classes CSF / GM / WM): whole-volume Dice at the held-out time
  point, at the training time points and on the unlabeled subjects; precision and recall
  (held-out); volume error (all sessions of labeled subjects); growth error (labeled and
  unlabeled subjects); labeled-slice mPA (held-out); minutes."""
  m = r["metrics"]
  whole = m.get("whole_volume") or {}

  def group(g):
    return whole.get(g) or {}

  names = tissue_names(r)

  def per(d, f):
    return " / ".join(f((d or {}).get(n)) for n in names)

  def growth(g):
    return ((whole.get("growth_error") or {}).get(g) or {}).get("error")

  held, train = group("heldout"), group("train_timepoints")
  minutes = (r.get("train_epoch_minutes") or r["train_seconds"] / 60) + r["evaluate_seconds"] / 60
  return [
    r["lever"],
    str(r["seed"]),
    per(held.get("dice"), num),
    per(train.get("dice"), num),
    per(group("unlabeled_subjects").get("dice"), num),
    per(held.get("precision"), num),
    per(held.get("recall"), num),
    per(train.get("volume_bias"), pct),
    per(held.get("volume_bias"), pct),
    per(growth("labeled_subjects"), pct_abs),
    per(growth("unlabeled_subjects"), pct_abs),
    num((m.get("test") or {}).get("mpa")),
    f"{minutes:.0f}",
  ]


HEADER = [
  "lever",
  "seed",
  "Dice held-out",
  "Dice train time points",
  "Dice unlabeled subjects",
  "precision held-out",
  "recall held-out",
  "volume bias train t.p.",
  "volume bias held-out",
  "growth error",
  "growth error unlabeled subj.",
  "slice mPA held-out",
  "min",
]


def seed_values(r) -> dict:
  """The numbers of one row that the seed summary averages: whole-volume Dice per tissue
  class (held-out time point, training time points, unlabeled subjects), growth error per
  class (labeled subjects) and the held-out labeled-slice mPA."""
  whole = r["metrics"].get("whole_volume") or {}
  out = {}
  for group in ("heldout", "train_timepoints", "unlabeled_subjects"):
    for name, v in ((whole.get(group) or {}).get("dice") or {}).items():
      if name != "background":
        out[f"dice {group} {name}"] = v
  growth = (whole.get("growth_error") or {}).get("labeled_subjects") or {}
  for name, v in (growth.get("error") or {}).items():
    out[f"growth {name}"] = v
  out["mpa"] = (r["metrics"].get("test") or {}).get("mpa")
  return out


def seed_summary(rows: list) -> list:
  """One line per lever with two or more seeds: ``(lever, seeds, {value: (mean, sd)})``,
  the sample standard deviation (ddof 1) over seeds; a value some seed lacks is left out."""
  by_lever = {}
  for r in rows:
    by_lever.setdefault(r["lever"], []).append(seed_values(r))
  summary = []
  for lever, values in by_lever.items():
    if len(values) < 2:
      continue
    keys = [k for k in values[0] if all(v.get(k) is not None for v in values)]
    stats = {
      k: (float(np.mean([v[k] for v in values])), float(np.std([v[k] for v in values], ddof=1)))
      for k in keys
    }
    summary.append((lever, len(values), stats))
  return summary


def summary_lines(rows: list) -> list:
  """The seed summary as a markdown table (empty when no lever has two seeds)."""
  summary = seed_summary(rows)
  if not summary:
    return []

  def cell(stats, keys, scale=1.0, digits=3):
    return " / ".join(
      f"{scale * stats[k][0]:.{digits}f} ± {scale * stats[k][1]:.{digits}f}"
      if k in stats
      else "n/a"
      for k in keys
    )

  tissues = tissue_names(rows[0])
  head = [
    "lever",
    "seeds",
    "Dice held-out",
    "Dice train time points",
    "Dice unlabeled subjects",
    "growth error (%)",
    "slice mPA held-out",
  ]
  lines = [
    "",
    f"Mean ± standard deviation over seeds (levers with two or more; {' / '.join(tissues)}):",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for lever, n, stats in summary:
    cells = [lever, str(n)]
    for group in ("heldout", "train_timepoints", "unlabeled_subjects"):
      cells.append(cell(stats, [f"dice {group} {t}" for t in tissues]))
    cells.append(cell(stats, [f"growth {t}" for t in tissues], 100.0, 0))
    cells.append(cell(stats, ["mpa"]))
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def markdown(study: str, rows: list) -> str:
  lines = [
    f"# Levers on whole volumes and trajectories: {study}",
    "",
    "Made by `python experiments/trajectories.py --study " + study + "`. Every cell "
    "with three values is CSF / GM / WM. Whole volumes against the study's full labels "
    "(which training never reads). Volume bias: mean (predicted - true) / true over "
    "sessions; growth error: mean |predicted growth - true growth| / |true growth|, "
    "first to last session, over subjects. Slice mPA: the paper's metric on the "
    "held-out time point's labeled slices. Minutes: training epochs (all attempts of a "
    "resumed run, `metrics.jsonl`) plus evaluation, on the machine named in the JSON, "
    "shared with other work (a load we did not control). The JSON holds every number "
    "(`metrics.whole_volume`), with the unsigned volume errors. Self-training "
    "(`self-train`) trains on the images of every subject, the unlabeled ones "
    "included (never on a held-out label): its unlabeled-subject columns are not "
    "out of sample.",
    "",
    "| " + " | ".join(HEADER) + " |",
    "|" + "---|" * len(HEADER),
  ]
  lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
  lines += summary_lines(rows)
  lines += timepoint_lines(rows)
  lines += ["", "Levers:", ""] + [
    f"- `{k}`: {LEVERS[k][0]}" for k in dict.fromkeys(r["lever"] for r in rows) if k in LEVERS
  ]
  return "\n".join(lines) + "\n"


RESULTS = os.path.join(REPO, "results")


def write_results(study: str, rows: list) -> None:
  base = os.path.join(RESULTS, f"trajectories-{study}")
  os.makedirs(os.path.dirname(base), exist_ok=True)
  record = {
    "study": study,
    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    "rows": rows,
  }
  for path, text in (
    (base + ".json", json.dumps(record, indent=1) + "\n"),
    (base + ".md", markdown(study, rows)),
  ):
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)


def read_rows(study: str) -> list:
  path = os.path.join(RESULTS, f"trajectories-{study}.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)["rows"]


def main(argv=None) -> int:
  global RESULTS
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument(
    "--study", default="cohort", help=f"comma-separated, from {', '.join(sorted(STUDIES))}"
  )
  p.add_argument(
    "--levers", default=",".join(LEVERS), help=f"comma-separated, from {', '.join(LEVERS)}"
  )
  p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
  p.add_argument(
    "--work",
    default=os.path.join(REPO, "runs", "trajectories"),
    help="run folders (kept: a rerun resumes them)",
  )
  p.add_argument("--results", default=RESULTS, help="where the tables go")
  p.add_argument(
    "--tables", action="store_true", help="only rewrite the markdown table from the JSON"
  )
  args = p.parse_args(argv)
  RESULTS = args.results
  levers = args.levers.split(",")
  unknown = [k for k in levers if k not in LEVERS]
  if unknown:
    p.error(f"unknown lever(s) {unknown}; choose from {', '.join(LEVERS)}")
  studies = args.study.split(",")
  unknown = [k for k in studies if k not in STUDIES]
  if unknown:
    p.error(f"unknown study {unknown}; choose from {', '.join(sorted(STUDIES))}")
  for study in studies:
    run_study(study, levers, [int(s) for s in args.seeds.split(",")], args.work, args.tables)
  return 0


def run_study(study: str, levers, seeds, work: str, tables_only: bool) -> None:
  """Every (lever, seed) of one study not yet in its results; or, with ``tables_only``, the
  markdown table again from the JSON."""
  rows = read_rows(study)
  if tables_only:  # rows of an older runner lack the training minutes: read them now
    for r in rows:
      workdir = os.path.join(work, r["study"], f"{r['lever']}-seed{r['seed']}")
      r.setdefault("workdir", os.path.relpath(workdir, REPO))
      if r.get("train_epoch_minutes") is None:
        r["train_epoch_minutes"] = training_minutes(workdir)
    write_results(study, rows)
    return
  for seed in seeds:
    for lever in levers:
      if any(r["lever"] == lever and r["seed"] == seed for r in rows):
        print(f"{study} {lever} seed {seed}: done (results/trajectories-{study}.json)")
        continue
      print(f"{study} {lever} seed {seed}: training and evaluating ...", flush=True)
      rows.append(one_run(study, lever, seed, work))
      write_results(study, rows)
      print("  " + " | ".join(row_cells(rows[-1])), flush=True)


if __name__ == "__main__":
  sys.exit(main())
