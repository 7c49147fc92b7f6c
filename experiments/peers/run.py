"""FCSLSTM and nnU-Net v2 side by side: one study, split, labeled voxels, machine and budget.

    pip install -r requirements.txt -r experiments/peers/requirements.txt   # own venv
    python experiments/peers/run.py --study cohort --budget-min 10

writes ``results/peers-<study>.json`` and ``.md``. What it does, in order:

1. The study (``cohort``: ``data/cohort``, generated if missing, as in docs/data.md; ``bric``:
   the built-in dataset) is loaded the way ``train.py`` loads it and converted into an
   nnU-Net v2 raw dataset (:mod:`convert`: working grids, the protocol's training time
   points only, one labeled slice per volume, the ignore label everywhere else).
2. FCSLSTM: ``train.py`` (the project's defaults: Bi-FCSLSTM, ``quick`` config) runs as a
   subprocess with ``--max-minutes`` (the budget); it saves a checkpoint at the step reached
   and fits the prior correction there (docs/failure-handling.md), and that checkpoint is
   evaluated as the default segments a finished run, on the run's own grids
   (:func:`fcslstm_study`: its registration, as evaluate.py loads it). Its wall time
   includes Python start, data loading and resampling, XLA compilation and that fit.
3. nnU-Net: ``nnUNetv2_plan_and_preprocess -c 2d`` (timed apart, not charged to the
   budget), then the ``2d`` configuration trained with :class:`nnUNetTrainerBudget`
   (nnU-Net's trainer, stopped by the same wall-clock budget, its poly learning rate decayed
   over it; the clock starts before the trainer is built), on CPU, fold ``all`` (every
   training case; nnU-Net's own 5-fold split would hold a fifth of the few labeled slices
   out). Every session is then predicted (nnU-Net's sliding window; mirroring off unless
   ``--mirroring``, as FCSLSTM runs without test-time flips).
4. Both tools' working-grid probabilities go back onto each session's own grid through the
   same map (:func:`fcslstm_jax.infer.pipeline.to_session_probs`) and are scored there with
   :mod:`fcslstm_jax.metrics`: on the protocol's labeled slices (the held-out time point
   never seen by either tool), on whole volumes against the full labels (cohort:
   ``sourcedata/full-labels``; bric: the whole labeled slab), and temporal consistency on the
   working grid (as ``evaluate.py``).
5. From the same native-grid predictions, tissue volumes (``scores.volumes`` of each tool's
   record, :func:`volume_summary`): for every session whose full label file is a whole
   volume (:func:`fcslstm_jax.outputs.volumes.is_whole_volume`), the predicted volume per
   class (:func:`fcslstm_jax.outputs.volumes.class_volumes_ml`, the session's affine) against
   the label file's; per class the volume error (mean |pred - true| / true) and its signed
   mean (bias), and the growth error from each subject's first to last session
   (:func:`fcslstm_jax.outputs.volumes.growth_errors`), for the labeled subjects (labels at
   a training time point in the dataset's own label files) and the unlabeled ones apart.
   They are also the table's last six columns.

Everything goes under ``--work`` (default ``runs/peers/<study>``), which is deleted first so
that the table always comes from one fresh run, but only if this script made it (its marker
file ``.fcslstm-peers-work``; an empty folder is used as it is, any other one refused). The
study's loading warnings are printed (``warning: ...`` lines, as ``train.py`` prints them) and
kept in the record. Each tool's record carries the code it ran on (``commit``: ``git
rev-parse HEAD``; ``dirty``: uncommitted changes to tracked files other than this script's two
outputs, with ``diff_sha256`` of them) and the ``configuration`` that makes rows comparable
(:func:`configuration`). ``--keep-others`` keeps another tool's earlier row only if both
match this run's; otherwise, and for records older than these fields, it stops before
anything runs: rerun both tools. Both tools run one after the other on the same machine;
run the command under the project's CPU lock so nothing else competes.
"""

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import convert

from fcslstm_jax import files
from fcslstm_jax import metrics
from fcslstm_jax import run_record
from fcslstm_jax.data import nifti_io
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.errors import DataError
from fcslstm_jax.infer import pipeline
from fcslstm_jax.outputs import volumes
from fcslstm_jax.outputs import writer

DATASET_IDS = {"cohort": 523, "bric": 524, "tiny": 525}
NNUNET = "nnU-Net v2 (2d)"  # its row's name
WORK_MARKER = ".fcslstm-peers-work"  # in every --work folder this script made


@dataclasses.dataclass(frozen=True)
class Source:
  """A study to compare on: its folder, protocol, full labels (None: the study's own label
  files hold them) and the ``train.py`` arguments that name it."""

  name: str
  root: str
  protocol: protocol.Protocol
  full_labels: str | None
  train_args: tuple


def study_source(name: str) -> Source:
  if name in ("cohort", "tiny"):  # tiny: a smoke test of this script (the tests' study)
    from fcslstm_jax.synthetic import cohort

    root = os.path.join(REPO, "data", "cohort" if name == "cohort" else "cohort-tiny")
    config = (
      cohort.CohortConfig()
      if name == "cohort"
      else dataclasses.replace(cohort.TINY, fov_mm=(144.0, 144.0, 18.0))
    )
    if not os.path.isfile(os.path.join(root, "dataset_description.json")):
      cohort.generate(root, config=config)
    return Source(
      name,
      root,
      protocol.get_protocol(None, root),
      os.path.join(root, "sourcedata", "full-labels"),
      ("--data-dir", root, "--protocol", os.path.join(root, "protocol.json")),
    )
  from fcslstm_jax.synthetic import bric_like

  root = str(bric_like.ensure_dataset(seed=0, config=bric_like.VOLUMES["slab"]))
  return Source(name, root, protocol.builtin("bric"), None, ("--dataset", "bric"))


def load(uptime=os.getloadavg) -> list:
  return [round(v, 2) for v in uptime()]


# ------------------------------------------------------------- what makes rows comparable


def outputs(out_dir: str, study_name: str) -> tuple:
  """The two files a run writes: ``OUT/peers-<study>.json`` and ``.md``."""
  stem = os.path.join(out_dir, f"peers-{study_name}")
  return stem + ".json", stem + ".md"


def code_version(exclude=(), repo: str = REPO) -> dict:
  """The code a run runs on: ``commit`` (``git rev-parse HEAD``; None outside a git
  checkout), ``dirty`` (``git status --porcelain`` lists a tracked file with uncommitted
  changes) and ``diff_sha256`` (of ``git diff HEAD`` when dirty, else None). ``exclude``:
  files left out of both (this script's own outputs, which may be tracked)."""

  def git(*args) -> bytes:
    return subprocess.run(
      ["git", "--no-optional-locks", *args], cwd=repo, check=True, capture_output=True
    ).stdout

  try:
    commit = git("rev-parse", "HEAD").decode().strip()
    top = os.path.realpath(git("rev-parse", "--show-toplevel").decode().strip())
  except (OSError, subprocess.CalledProcessError):
    return {"commit": None, "dirty": None, "diff_sha256": None}
  spec = ["--", ":(top)"]
  for path in exclude:
    rel = os.path.relpath(os.path.realpath(path), top)
    if not rel.startswith(os.pardir):
      spec.append(f":(top,exclude){rel}")
  dirty = bool(git("status", "--porcelain", "--untracked-files=no", *spec).strip())
  diff = hashlib.sha256(git("diff", "HEAD", "--binary", *spec)).hexdigest() if dirty else None
  return {"commit": commit, "dirty": dirty, "diff_sha256": diff}


def configuration(args) -> dict:
  """The arguments that make two tools' rows comparable (every one but --tools, --work,
  --out and --keep-others), with what they resolve to."""
  try:
    from fcslstm_jax import config

    seed = config.get_config(args.config).seed
  except (ConfigError, ImportError, AttributeError):
    seed = None
  return {
    "study": args.study,
    "budget_min": args.budget_min,
    "fcslstm_model": args.model,
    "fcslstm_config": args.config,
    "fcslstm_seed": seed,
    "fcslstm_epochs": args.epochs,
    "nnunet_configuration": "2d",
    "nnunet_fold": "all",
    "nnunet_iterations_per_epoch": args.iterations,
    "nnunet_da_workers": args.da_workers,
    "nnunet_mirroring": args.mirroring,
  } | ({"fcslstm_set": list(args.set)} if args.set else {})


def tool_names(args) -> dict:
  """The row name of each tool this run runs."""
  names = {"nnunet": NNUNET, "fcslstm": f"FCSLSTM ({args.model}, {args.config})"}
  return {tool: names[tool] for tool in args.tools}


def _short(code: dict) -> str:
  if not code.get("commit"):
    return "an unknown commit"
  diff = f" (diff {code['diff_sha256'][:12]})" if code.get("diff_sha256") else ""
  dirty = f" with uncommitted changes{diff}" if code.get("dirty") else ""
  return f"commit {code['commit'][:7]}{dirty}"


def kept_records(path: str, run_names, code: dict, config: dict) -> dict:
  """The records of ``path`` (an earlier results file) of the tools this run does not run
  (``run_names``: the rows it makes), each checked to come from this very code (``code``,
  :func:`code_version`) and configuration (:func:`configuration`).

  Raises:
    ConfigError: a kept record from another commit, other uncommitted changes or another
      configuration, or one that predates these fields (the message names ``path``).
  """
  try:
    with open(path) as f:
      earlier = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(
      f"{path}: cannot be read ({e}); rerun both tools without --keep-others."
    ) from e
  kept = {}
  for name, record in earlier.get("tools", {}).items():
    if name in run_names:
      continue
    again = (
      "rerun both tools (without --keep-others) so that the table comes from one code "
      "version and configuration."
    )
    if not record.get("commit"):
      raise ConfigError(
        f"{path}: the {name} record has no commit (written before records carried one); {again}"
      )
    if not code.get("commit"):
      raise ConfigError(
        f"{path}: this checkout's commit is unknown (not a git checkout?), so "
        f"the {name} record cannot be matched to it; {again}"
      )
    theirs = {k: record.get(k) for k in ("commit", "dirty", "diff_sha256")}
    if theirs != {k: code.get(k) for k in theirs}:
      raise ConfigError(
        f"{path}: the {name} record ran on {_short(theirs)}, this run on {_short(code)}; {again}"
      )
    theirs = record.get("configuration", {})
    differ = [
      f"{k}={theirs.get(k)!r} (this run: {config.get(k)!r})"
      for k in [*config, *(k for k in theirs if k not in config)]
      if theirs.get(k) != config.get(k)
    ]
    if differ:
      raise ConfigError(f"{path}: the {name} record was measured with {', '.join(differ)}; {again}")
    kept[name] = dict(record, command=record.get("command", earlier.get("command")))
  return kept


def prepare_work(work: str) -> None:
  """Makes ``work`` an empty folder holding :data:`WORK_MARKER`. An existing folder is
  deleted first only if it holds the marker (this script made it); an empty one is used as
  it is.

  Raises:
    ConfigError: ``work`` is not a folder, or a non-empty folder without the marker.
  """
  if os.path.islink(work) or (os.path.exists(work) and not os.path.isdir(work)):
    raise ConfigError(f"{work}: is not a folder (a file or a link); choose another --work.")
  if os.path.isdir(work) and os.listdir(work):
    if not os.path.isfile(os.path.join(work, WORK_MARKER)):
      raise ConfigError(
        f"{work}: is not empty and has no {WORK_MARKER} marker, so this script "
        "did not make it and will not delete it; remove it yourself or choose "
        "another --work."
      )
    shutil.rmtree(work)
  os.makedirs(work, exist_ok=True)
  files.write_text(
    os.path.join(work, WORK_MARKER),
    "made by experiments/peers/run.py, which deletes this folder before its "
    "next run with this --work.\n",
  )


# ---------------------------------------------------------------------------------- scoring


def counted_scores(pred, session, num_classes: int) -> np.ndarray:
  """Confusion matrix of a native-grid prediction on the session's counted labeled slices
  (the protocol's, e.g. its one labeled slice), against its label file."""
  truth = nifti_io.load_volume(session.paths["dseg"], kind="labels").data
  mask = np.zeros(truth.shape, np.float32)
  mask[:, :, list(session.counted_slices)] = 1.0
  return metrics.confusion_counts(pred, truth, mask, num_classes)


class Scores:
  """Confusion matrices per time point on the labeled slices and on whole volumes, the
  temporal agreement counts, summed over subjects, and the predicted and true tissue volumes
  of each session whose full label file is a whole volume.

  Args:
    unlabeled: ids of the subjects with no label file at a training time point in the
      dataset's own labels (:func:`fcslstm_jax.data.sequences.unlabeled_subjects` of the
      training study): their sessions are the ``unlabeled_subjects`` of the volumes.
  """

  def __init__(self, proto, unlabeled=()):
    t, c = proto.num_timepoints, proto.num_classes
    self.protocol = proto
    self.unlabeled = frozenset(unlabeled)
    self.labeled = np.zeros((t, c, c))
    self.whole = np.zeros((t, c, c))
    self.agreement = [np.zeros((2, t - 1)) for _ in range(2)]
    self.volumes, self.uncompared = [], 0  # TruthVolumes; scored sessions of slice labels

  def add(self, subject, train_subject, probs_by_t: dict, out_dir: str, desc: str):
    """One subject: ``probs_by_t`` maps a time point to its working-grid probabilities
    ``[X, Y, Z, c]``; ``subject`` comes from the evaluation study (full labels),
    ``train_subject`` from the training one (the protocol's counted slices)."""
    seq = sequences.make_sequences([subject], self.protocol, "all")
    pred = np.zeros(seq.labels.shape, np.int32)  # [Z, T, X, Y]
    for t, session in enumerate(subject.timepoints):
      if session is None:
        continue
      probs = probs_by_t[t]
      pred[:, t] = np.moveaxis(np.argmax(probs, axis=-1), 2, 0)
      native = convert.to_session_labels(probs, subject, session)
      convert.write_session_labels(
        writer.output_path(
          out_dir, subject.subject_id, session.label, desc.replace("-", ""), "dseg"
        ),
        native,
        session,
      )
      self.add_session(subject.subject_id, t, session, native, train_subject.timepoints[t])
    mask = seq.label_mask * seq.valid[:, :, None, None]
    for counts, seg in zip(self.agreement, (pred, seq.labels)):
      counts += metrics.temporal_agreement(seg, mask)

  def add_session(self, subject_id: str, t: int, session, native, counted=None):
    """One session's prediction ``native`` ``int [X, Y, Z]`` on its own grid, scored against
    ``session``'s label file (the evaluation study's: the full labels) on every labeled slice
    or, for a whole volume (:func:`fcslstm_jax.outputs.volumes.is_whole_volume`), on every
    voxel, whose tissue volumes it then keeps (predicted on ``session.ref``'s grid, true on
    the label file's); and on the counted labeled slices of ``counted`` (the same session
    in the training study; None: none)."""
    c, names = self.protocol.num_classes, self.protocol.class_names
    truth = writer.load_truth(session, self.protocol)
    if truth is not None:
      whole = volumes.is_whole_volume(truth.data)
      self.whole[t] += writer.scores(native, truth, c)
      if whole:
        pred_ml = volumes.class_volumes_ml(native, session.ref.affine, c)
        true_ml = volumes.class_volumes_ml(truth.data, truth.ref.affine, c)
        self.volumes.append(
          volumes.TruthVolumes(
            subject_id,
            session.label,
            float(session.age),
            writer.session_group(self.protocol, self.unlabeled, subject_id, t),
            {n: float(v) for n, v in zip(names[1:], pred_ml[1:])},
            {n: float(v) for n, v in zip(names[1:], true_ml[1:])},
          )
        )
      else:
        self.uncompared += 1
    if counted is not None and counted.counted_slices and "dseg" in counted.paths:
      self.labeled[t] += counted_scores(native, counted, c)

  def summary(self) -> dict:
    return {
      "labeled_slices": writer.summarize_run(self.labeled, self.agreement, self.protocol),
      "whole_volumes": writer.summarize_run(self.whole, self.agreement, self.protocol),
      "volumes": volume_summary(self.volumes, self.uncompared, self.protocol.class_names),
    }


SUBJECT_KINDS = ("labeled_subjects", "unlabeled_subjects")


def volume_summary(truth, uncompared: int, names) -> dict:
  """The record's ``scores.volumes``: for the labeled and the unlabeled subjects apart
  (:data:`SUBJECT_KINDS`; None without a compared session), per tissue class, the volume
  error and its signed mean (``volume_error``, ``volume_bias``:
  :func:`fcslstm_jax.outputs.volumes.volume_errors` over the sessions whose full label file
  is a whole volume) and the growth error from each subject's first to last such session
  (``growth_error``, averaged over ``growth_subjects``:
  :func:`fcslstm_jax.outputs.volumes.growth_errors`), with how many ``sessions`` and
  ``subjects`` they come from; ``sessions_not_compared`` (label files of slices only) and
  ``per_session`` (each compared session's predicted and true mL). ``truth``:
  :class:`fcslstm_jax.outputs.volumes.TruthVolumes`."""
  tissues = list(names[1:])

  def per(v):
    return {n: None if np.isnan(x) else float(x) for n, x in zip(tissues, v)}

  out = {}
  for kind in SUBJECT_KINDS:
    mine = [r for r in truth if (r.group == writer.GROUPS[2]) == (kind == SUBJECT_KINDS[1])]
    if not mine:
      out[kind] = None
      continue
    pred = np.array([[r.predicted_ml[n] for n in tissues] for r in mine], np.float64)
    true = np.array([[r.true_ml[n] for n in tissues] for r in mine], np.float64)
    error, bias = volumes.volume_errors(pred, true)
    growth, counted = volumes.growth_errors(
      [r.subject for r in mine], [r.age for r in mine], pred, true
    )
    out[kind] = {
      "sessions": len(mine),
      "subjects": len({r.subject for r in mine}),
      "volume_error": per(error),
      "volume_bias": per(bias),
      "growth_error": per(growth),
      "growth_subjects": {n: int(k) for n, k in zip(tissues, counted)},
    }
  out["sessions_not_compared"] = uncompared
  out["per_session"] = [
    dataclasses.asdict(r) for r in sorted(truth, key=lambda r: (r.subject, r.age, r.session))
  ]
  return out


# ---------------------------------------------------------------------------------- FCSLSTM


def train_fcslstm(
  source: Source,
  workdir: str,
  budget_s: float,
  model: str,
  config: str,
  epochs: int,
  log_path: str,
  overrides=(),
) -> dict:
  """``train.py --max-minutes`` for at most ``budget_s`` seconds of wall time (then a
  checkpoint at the step reached); ``overrides``: ``train.py --set NAME=VALUE`` each. Returns
  what was run and measured."""
  command = [
    sys.executable,
    os.path.join(REPO, "train.py"),
    *source.train_args,
    "--model",
    model,
    "--config",
    config,
    "--epochs",
    str(epochs),
    "--workdir",
    workdir,
    "--max-minutes",
    str(budget_s / 60),
    *(a for item in overrides for a in ("--set", item)),
  ]
  started = time.monotonic()
  with open(log_path, "w") as log:
    returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
  with open(log_path) as log:
    stopped = "time budget: saved a checkpoint" in log.read()
  seconds = time.monotonic() - started
  steps = (
    [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()]
    if os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    else []
  )
  return {
    "command": " ".join(os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in command[1:]),
    "seconds": round(seconds, 1),
    "stopped_by_budget": stopped,
    "returncode": returncode,
    "epochs_scored": len(steps),
  }


def fcslstm_study(workdir: str, source, eval_study):
  """The study FCSLSTM segments: on the run's own grid options (run.json), as evaluate.py
  loads it (:func:`fcslstm_jax.infer.pipeline.load_for_evaluation`), so that a network
  trained on aligned sessions (``--register moments``, the default) sees them aligned;
  ``eval_study`` itself where the options are its own. The same in-plane spacing as
  ``eval_study``, whose subjects it scores against."""
  options = run_record.read(workdir).grid or study.GridOptions()
  mine = eval_study.options
  if (options.register, options.reference) == (mine.register, mine.reference):
    return eval_study
  return study.load_study(
    source.root,
    eval_study.protocol,
    spacing=mine.spacing,
    reference=options.reference,
    register=options.register,
    labels_root=source.full_labels,
  )


def fcslstm_probabilities(workdir: str, loaded, batch_size: int = 8):
  """``(seconds, {subject_id: {t: [X, Y, Z, c]}})`` of the run's newest checkpoint on every
  session of ``loaded`` (no test-time flips), through evaluate.py's own forward passes
  (:func:`fcslstm_jax.infer.pipeline.segment_study`: shape buckets, shared batches)."""
  started = time.monotonic()
  runs = pipeline.read_runs([workdir])
  members = pipeline.load_members(runs, loaded.protocol)
  out = {}
  for subject, _, probs, _ in pipeline.segment_study(loaded, members, (), batch_size):
    out[subject.subject_id] = {
      t: np.moveaxis(probs[:, t], 0, 2) for t, s in enumerate(subject.timepoints) if s is not None
    }
  return time.monotonic() - started, out, members[0].step


# ---------------------------------------------------------------------------------- nnU-Net


def nnunet_env(work: str, da_workers: int) -> dict:
  env = {
    "nnUNet_raw": os.path.join(work, "nnUNet_raw"),
    "nnUNet_preprocessed": os.path.join(work, "nnUNet_preprocessed"),
    "nnUNet_results": os.path.join(work, "nnUNet_results"),
    "nnUNet_n_proc_DA": str(da_workers),
    "nnUNet_compile": "f",
    "nnUNet_extTrainer": HERE,
  }
  os.environ.update(env)  # nnunetv2 reads them when imported
  return env


def nnunet_plan(dataset_id: int, dataset_name: str, log_path: str) -> tuple:
  """``(seconds, use_mask_for_norm as planned)``: fingerprint and plans, then preprocessing
  of the ``2d`` configuration with ``use_mask_for_norm`` off for every channel.

  Why: nnU-Net z-scores a channel inside the nonzero mask when cropping to it shrank the
  images (``use_mask_for_norm``, planned on for these studies: each session fills only part
  of its working grid). In preprocessing it takes that mask from the label map (``seg >=
  0``; ``crop_to_nonzero`` writes -1 where the label is 0 and the image is 0), but with the
  ignore label on every unannotated voxel no voxel is 0 there, so training cases are
  normalized over the whole crop, while at inference (no label map) over the nonzero voxels
  only: the same image reached the network with other intensities (on the first cohort run
  a difference of up to 1.1 standard deviations, and the trained network's accuracy on the
  labeled voxels of a training case fell from 0.89 to 0.57). Off, both normalize over the
  whole crop; the labels stay exactly the protocol's."""
  started = time.monotonic()
  bin_dir = os.path.dirname(sys.executable)
  with open(log_path, "w") as log:

    def run(*cmd):
      return subprocess.run(
        [os.path.join(bin_dir, cmd[0]), *cmd[1:]], stdout=log, stderr=subprocess.STDOUT, check=True
      )

    run(
      "nnUNetv2_plan_and_preprocess",
      "-d",
      str(dataset_id),
      "-c",
      "2d",
      "--no_pp",
      "--verify_dataset_integrity",
    )
    path = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name, "nnUNetPlans.json")
    with open(path) as f:
      plans = json.load(f)
    planned = plans["configurations"]["2d"]["use_mask_for_norm"]
    plans["configurations"]["2d"]["use_mask_for_norm"] = [False] * len(planned)
    files.write_json(path, plans)
    run("nnUNetv2_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", "2")
  return time.monotonic() - started, planned


def nnunet_input_check(dataset_name: str, raw_dir: str, case: dict, channels: int) -> float:
  """Largest difference between a training case as nnU-Net preprocessed it for training and
  as its predictor preprocesses the same files (0 when both paths agree)."""
  from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
  from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

  base = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name)
  with open(os.path.join(base, "nnUNetPlans.json")) as f:
    plans = PlansManager(json.load(f))
  with open(os.path.join(base, "dataset.json")) as f:
    dataset_json = json.load(f)
  config = plans.get_configuration("2d")
  folder = os.path.join(base, config.data_identifier)
  stored = np.asarray(infer_dataset_class(folder)(folder).load_case(case["case"])[0][:])
  fresh, _, _ = config.preprocessor_class(verbose=False).run_case(
    [
      os.path.join(raw_dir, case["folder"], f"{case['case']}_{k:04d}{convert.FILE_ENDING}")
      for k in range(channels)
    ],
    None,
    plans,
    config,
    dataset_json,
  )
  if fresh.shape != stored.shape:
    return float("inf")
  return float(np.abs(fresh - stored).max())


def nnunet_train(dataset_name: str, budget_s: float, iterations: int):
  """``(trainer, seconds, epochs)``: the ``2d`` configuration, fold ``all``, on CPU."""
  import torch
  from batchgenerators.utilities.file_and_folder_operations import load_json
  from nnUNetTrainerBudget import nnUNetTrainerBudget

  started = time.monotonic()
  nnUNetTrainerBudget.started, nnUNetTrainerBudget.budget_s = started, budget_s
  nnUNetTrainerBudget.iterations = iterations
  base = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name)
  plans = load_json(os.path.join(base, "nnUNetPlans.json"))
  plans["continue_training"] = False
  trainer = nnUNetTrainerBudget(
    plans, "2d", "all", load_json(os.path.join(base, "dataset.json")), torch.device("cpu")
  )
  trainer.run_training()
  return trainer, time.monotonic() - started, trainer.current_epoch


def nnunet_probabilities(trainer, raw_dir: str, manifest: dict, mirroring: bool):
  """``(seconds, {case: [X, Y, Z, c]})``: every case predicted by the trained network."""
  import torch
  from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

  started = time.monotonic()
  trainer.set_deep_supervision_enabled(False)
  trainer.network.eval()
  predictor = nnUNetPredictor(
    tile_step_size=0.5,
    use_gaussian=True,
    use_mirroring=mirroring,
    device=torch.device("cpu"),
    allow_tqdm=False,
  )
  predictor.manual_initialization(
    trainer.network,
    trainer.plans_manager,
    trainer.configuration_manager,
    [trainer.network.state_dict()],
    trainer.dataset_json,
    type(trainer).__name__,
    trainer.inference_allowed_mirroring_axes,
  )
  cases = manifest["cases"]
  channels = len(manifest["protocol"]["modalities"])
  inputs = [
    [
      os.path.join(raw_dir, c["folder"], f"{c['case']}_{k:04d}{convert.FILE_ENDING}")
      for k in range(channels)
    ]
    for c in cases
  ]
  results = predictor.predict_from_files_sequential(inputs, None, save_probabilities=True)
  out = {}
  for case, (seg, probs) in zip(cases, results):
    probs, seg = convert.from_nnunet_order(probs), convert.from_nnunet_order(seg)
    if probs.shape[:3] != seg.shape or not np.array_equal(np.argmax(probs, -1), seg):
      raise RuntimeError(
        f"{case['case']}: nnU-Net's probabilities {probs.shape} do not give "
        f"its segmentation {seg.shape} (axis order?)"
      )
    out[case["case"]] = probs
  return time.monotonic() - started, out


# ------------------------------------------------------------------------------------ table


def fmt(v) -> str:
  return "n/a" if v is None else f"{v:.3f}"


def per_class(values, signed: bool = False) -> str:
  """``values`` (class name -> number or None; None: no such numbers) as ``a / b / c``."""
  if not values:
    return "n/a"
  return " / ".join(
    "n/a" if v is None else f"{v:+.3f}" if signed else f"{v:.3f}" for v in values.values()
  )


def volume_cells(record) -> list:
  """The volume columns of a record (:func:`volume_summary`): for the labeled, then the
  unlabeled subjects, the volume error, its bias and the growth error per tissue class."""
  volume_scores = record["scores"].get("volumes") or {}
  cells = []
  for kind in SUBJECT_KINDS:
    mine = volume_scores.get(kind) or {}
    cells += [
      per_class(mine.get("volume_error")),
      per_class(mine.get("volume_bias"), True),
      per_class(mine.get("growth_error")),
    ]
  return cells


def row(name, record) -> list:
  lab, whole = record["scores"]["labeled_slices"], record["scores"]["whole_volumes"]

  def dice(split):
    return " / ".join(fmt(whole[split]["dice"][n]) for n in ("CSF", "GM", "WM"))

  def tc(which):
    return " / ".join(fmt(v) for v in lab["temporal_consistency"][which])

  return [
    name,
    f"{record['train_seconds'] / 60:.1f}",
    f"{record['infer_seconds']:.0f}",
    f"{fmt(lab['test']['mpa'])} ({fmt(lab['test']['mpa_fg'])})",
    f"{fmt(lab['train']['mpa'])} ({fmt(lab['train']['mpa_fg'])})",
    f"{fmt(whole['test']['mpa'])} ({fmt(whole['test']['mpa_fg'])})",
    dice("test"),
    dice("train"),
    tc("prediction"),
    *volume_cells(record),
  ]


VOLUME_HEAD = [
  f"{what} CSF / GM / WM, {kind} subjects"
  for kind in ("labeled", "unlabeled")
  for what in ("volume error", "volume bias", "growth error")
]


def markdown(result) -> str:
  head = [
    "tool",
    "training (min)",
    "inference (s)",
    "held-out mPA, labeled slices (tissue)",
    "training time points mPA (tissue)",
    "held-out mPA, whole volumes (tissue)",
    "held-out Dice CSF / GM / WM, whole volumes",
    "training time points Dice CSF / GM / WM",
    "temporal consistency t1-t2 / ... (prediction)",
    *VOLUME_HEAD,
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, record in result["tools"].items():
    lines.append("| " + " | ".join(row(name, record)) + " |")
  truth = next(iter(result["tools"].values()))["scores"]["labeled_slices"]
  tc = " / ".join(
    "n/a" if v is None else f"{v:.3f}" for v in truth["temporal_consistency"]["ground_truth"]
  )
  return "\n".join(lines) + f"\n\nTemporal consistency of the full labels: {tc}.\n" + VOLUME_NOTE


VOLUME_NOTE = (
  "\nVolume error: mean |predicted - true| / true tissue volume over the sessions whose full "
  "label file is a whole volume, each on its own grid; bias: its signed mean (+: too large). "
  "Growth error: mean |predicted - true change| / |true change| from each subject's first to "
  "last such session. Labeled subjects: those with labels at a training time point (every "
  "session of theirs); unlabeled: the others, none of whose labels training used.\n"
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--study", choices=sorted(DATASET_IDS), default="cohort")
  p.add_argument(
    "--budget-min", type=float, default=10.0, help="training wall-clock minutes for each tool"
  )
  p.add_argument("--tools", nargs="+", choices=("fcslstm", "nnunet"), default=["fcslstm", "nnunet"])
  p.add_argument("--model", default="bi-fcslstm", choices=("fcn", "fcslstm", "bi-fcslstm"))
  p.add_argument("--config", default="quick", help="train.py --config")
  p.add_argument(
    "--epochs",
    type=int,
    default=30,
    help="train.py --epochs (its learning-rate schedule); the budget stops it",
  )
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="train.py --set for FCSLSTM (e.g. lr_decay_rate=0.75), repeatable",
  )
  p.add_argument("--iterations", type=int, default=10, help="nnU-Net batches per epoch")
  p.add_argument(
    "--da-workers", type=int, default=1, help="nnU-Net augmentation processes (nnUNet_n_proc_DA)"
  )
  p.add_argument("--mirroring", action="store_true", help="nnU-Net test-time mirroring")
  p.add_argument(
    "--work",
    help="default: runs/peers/<study> (deleted first if this script "
    f"made it: its {WORK_MARKER} file; an empty folder is used, any other refused)",
  )
  p.add_argument("--out", default=os.path.join(REPO, "results"))
  p.add_argument(
    "--keep-others",
    action="store_true",
    help="keep the records of the tools not run from the existing "
    "OUT/peers-<study>.json (each says when it was measured); refused unless "
    "they ran on this commit (and uncommitted changes) with this configuration",
  )
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    return compare(args, argv)
  except (ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def compare(args, argv) -> int:
  budget_s = args.budget_min * 60
  work = os.path.abspath(args.work or os.path.join(REPO, "runs", "peers", args.study))
  paths = outputs(args.out, args.study)
  code, config = code_version(exclude=paths), configuration(args)
  # Every check before anything is deleted or run.
  kept = (
    kept_records(paths[0], set(tool_names(args).values()), code, config)
    if args.keep_others and os.path.exists(paths[0])
    else {}
  )
  prepare_work(work)
  print(
    f"code: {_short(code)}" + (f"; kept from {paths[0]}: {', '.join(kept)}" if kept else ""),
    flush=True,
  )
  env = nnunet_env(work, args.da_workers)
  source = study_source(args.study)
  proto = source.protocol
  started = time.monotonic()
  warnings = []

  def warn(line):
    if line not in warnings:
      warnings.append(line)
      print(line, file=sys.stderr, flush=True)

  train_study = convert.load_for_conversion(source.root, proto, warn=warn)
  eval_study = study.load_study(
    source.root,
    pipeline.every_labeled_slice(proto),
    spacing=train_study.options.spacing,
    labels_root=source.full_labels,
  )
  for line in sequences.describe_warnings(eval_study):  # the full labels' own, if any
    warn(line)
  by_id = {s.subject_id: s for s in train_study.subjects}
  unlabeled = sequences.unlabeled_subjects(train_study)  # the dataset's own labels decide
  for s in eval_study.subjects:
    if s.grid is not None and not s.grid.same_as(by_id[s.subject_id].grid):
      raise RuntimeError(f"sub-{s.subject_id}: working grids differ between the two loads")
  dataset_name = f"Dataset{DATASET_IDS[args.study]}_{args.study}"
  raw_dir = os.path.join(env["nnUNet_raw"], dataset_name)
  manifest = convert.write_dataset(train_study, raw_dir, dataset_name)
  roles = [c["role"] for c in manifest["cases"]]
  print(
    f"{source.root}: {len(roles)} sessions, {roles.count('train')} nnU-Net training cases; "
    f"loaded and converted in {time.monotonic() - started:.0f} s",
    flush=True,
  )
  result = {
    "command": "python experiments/peers/run.py "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "study": args.study,
    "root": source.root,
    "budget_min": args.budget_min,
    **code,
    "configuration": config,
    "warnings": warnings,
    "machine": {
      "cpus": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "python": platform.python_version(),
    },
    "sessions": len(roles),
    "nnunet_training_cases": roles.count("train"),
    "unlabeled_subjects": sorted(unlabeled),
    "tools": {},
  }
  scorers = {}

  def score(name, probs_of, desc, segmented=None):
    """Scores of ``probs_of(subject)``, working-grid probabilities of each subject of
    ``segmented`` (default: ``eval_study``; the study the tool segmented)."""
    scores = Scores(eval_study.protocol, unlabeled)
    for subject in (segmented or eval_study).subjects:
      if subject.grid is not None:
        scores.add(
          subject,
          by_id[subject.subject_id],
          probs_of(subject),
          os.path.join(work, "predictions", desc),
          desc,
        )
    scorers[name] = scores
    return scores.summary()

  # nnU-Net first: its augmentation workers fork, which must happen before JAX starts
  # threads in this process (FCSLSTM's inference).
  if "nnunet" in args.tools:
    import torch

    print("nnU-Net v2: planning and preprocessing (2d) ...", flush=True)
    plan_seconds, planned_mask = nnunet_plan(
      DATASET_IDS[args.study], dataset_name, os.path.join(work, "nnunet-plan.log")
    )
    input_diff = nnunet_input_check(
      dataset_name,
      raw_dir,
      next(c for c in manifest["cases"] if c["role"] == "train"),
      len(proto.modalities),
    )
    print(
      f"  a training case as trained and as predicted: largest input difference {input_diff:.2g}",
      flush=True,
    )
    print(f"nnU-Net v2 (2d): training for {args.budget_min:g} min ...", flush=True)
    before = load()
    with open(os.path.join(work, "nnunet-train.log"), "w") as log, contextlib.redirect_stdout(log):
      trainer, train_seconds, epochs = nnunet_train(dataset_name, budget_s, args.iterations)
      after = load()
      seconds, probs = nnunet_probabilities(trainer, raw_dir, manifest, args.mirroring)
    # Not `config`: that name holds configuration(args), which both tools' records carry.
    plan = trainer.configuration_manager
    run = {
      "plan_and_preprocess_seconds": round(plan_seconds, 1),
      "train_seconds": round(train_seconds, 1),
      "infer_seconds": round(seconds, 1),
      "epochs": epochs,
      "iterations_per_epoch": args.iterations,
      "batch_size": trainer.batch_size,
      "patch_size": list(plan.patch_size),
      "use_mask_for_norm_planned": planned_mask,
      "use_mask_for_norm": False,
      "train_vs_inference_input_max_diff": input_diff,
      "mirroring": args.mirroring,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "da_workers": args.da_workers,
      "load_before": before,
      "load_after": after,
      "scores": score(
        "nnunet",
        lambda s: {
          t: probs[convert.case_id(s.subject_id, ses.label)]
          for t, ses in enumerate(s.timepoints)
          if ses is not None
        },
        "nnunet2d",
      ),
    }
    run["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    run.update(code, configuration=config)
    result["tools"][NNUNET] = run
    print(
      f"  {train_seconds:.0f} s training ({epochs} epochs x {args.iterations} batches of "
      f"{trainer.batch_size}), {seconds:.0f} s inference; held-out mPA "
      f"{run['scores']['labeled_slices']['test']['mpa']:.3f}",
      flush=True,
    )
    del trainer, probs

  if "fcslstm" in args.tools:
    workdir = os.path.join(work, "fcslstm")
    print(f"FCSLSTM ({args.model}): training for {args.budget_min:g} min ...", flush=True)
    before = load()
    run = train_fcslstm(
      source,
      workdir,
      budget_s,
      args.model,
      args.config,
      args.epochs,
      os.path.join(work, "fcslstm-train.log"),
      args.set,
    )
    run["load_before"], run["load_after"] = before, load()
    segmented = fcslstm_study(workdir, source, eval_study)
    seconds, probs, step = fcslstm_probabilities(workdir, segmented)
    run.update(
      train_seconds=run["seconds"],
      infer_seconds=round(seconds, 1),
      checkpoint_step=step,
      model=args.model,
      registration=segmented.options.register,
      scores=score("fcslstm", lambda s: probs[s.subject_id], "fcslstm", segmented),
    )
    run["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    run.update(code, configuration=config)
    result["tools"][tool_names(args)["fcslstm"]] = run
    print(
      f"  {run['seconds']:.0f} s training (step {step}), {seconds:.0f} s inference; held-out "
      f"mPA {run['scores']['labeled_slices']['test']['mpa']:.3f}",
      flush=True,
    )

  os.makedirs(args.out, exist_ok=True)
  result["tools"].update(kept)
  table = markdown(result)
  header = (
    f"### {args.study}: FCSLSTM and nnU-Net v2, {args.budget_min:g} min of training "
    f"each, {os.cpu_count()} CPU cores ({result['machine']['processor']})\n\n"
  )
  code_line = f"on {_short(code)}" if code["commit"] else "outside a git checkout"
  files.write_json(paths[0], result)
  files.write_text(paths[1], header + table + f"\nMade by `{result['command']}` {code_line}.\n")
  print(header + table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
