"""Train FCN / FCSLSTM / Bi-FCSLSTM on longitudinal MRI and evaluate the held-out time point.

    python train.py --dataset bric                      # built-in data, paper protocol
    python train.py --data-dir DIR                      # your study (DIR/protocol.json)
    python train.py --data-dir DIR --protocol my.json   # ... with another protocol file
    python train.py --dataset bric --config paper       # the paper's full schedule
    python train.py --model bi-fcslstm --spatial-dims 3 # volumes over time (3D + time)

Rerunning the same command resumes from the last checkpoint in --workdir.
"""

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import signal
import sys
import threading
import time
import typing

import jax
import numpy as np
from tqdm import tqdm

from fcslstm_jax import compile_cache
from fcslstm_jax import config
from fcslstm_jax import datasets
from fcslstm_jax import files
from fcslstm_jax import run_record
from fcslstm_jax.cli import add_common_arguments
from fcslstm_jax.cli import quiet_libraries
from fcslstm_jax.data import layout
from fcslstm_jax.data import patches
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.data.grids import REGISTRATIONS
from fcslstm_jax.data.grids import parse_spacing
from fcslstm_jax.errors import run_cli
from fcslstm_jax.model import networks
from fcslstm_jax.train import loop
from fcslstm_jax.train import parallel
from fcslstm_jax.train import stop

# Config fields with a flag of their own (the rest: --set NAME=VALUE); help, choices and
# ranges come from fcslstm_jax.config.
SHORTCUTS = (
  "model",
  "epochs",
  "batch_size",
  "seed",
  "remat",
  "precision",
  "chunk_pixels",
  "spatial_dims",
)


def parse_args(argv=None):

  p = argparse.ArgumentParser(
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="config fields (--set NAME=VALUE, repeatable; defaults of --config paper):\n"
    + config.describe_fields(),
  )
  src = p.add_mutually_exclusive_group()
  src.add_argument("--dataset", choices=("bric", "ibis"), help="built-in dataset and protocol")
  src.add_argument("--data-dir", help="BIDS-like folder (see docs/data.md)")
  p.add_argument(
    "--protocol",
    help="for --data-dir: a protocol JSON file or a shipped name "
    "(bric, ibis); default: DATA_DIR/protocol.json if present, else bric",
  )
  p.add_argument(
    "--max-minutes",
    type=float,
    metavar="M",
    help="stop after M minutes of wall clock (from the start of this command), saving a "
    "checkpoint; the same command continues the run (training on a time budget)",
  )
  p.add_argument(
    "--labels",
    metavar="DIR",
    help="for --data-dir: train on the labels of this pipeline folder "
    "(sub-<id>/ses-<label>/anat/*_dseg.nii.gz; e.g. derivatives/manual, relative to "
    "DATA_DIR); default: every derivatives/ pipeline but fcslstm-jax's own outputs",
  )
  p.add_argument(
    "--spacing",
    default="median",
    help="in-plane voxel size the model sees, mm: 'median' (of the training "
    "subjects), 'native' (no resampling), '1.0' or '1.0,1.2' (x, y)",
  )
  p.add_argument(
    "--reference",
    default="first",
    choices=("first", "last"),
    help="session whose grid each subject's sessions are resampled onto",
  )
  p.add_argument(
    "--register",
    default="moments",
    choices=REGISTRATIONS,
    help="each session aligned to the reference session: moments (the default: a "
    "similarity, shift, rotation and one scale for the head's growth, from the head outline; "
    "seconds a subject; data/head_moments.py), rigid (dipy, mutual information; minutes a "
    "subject) or none (through the scanner affines alone)",
  )
  p.add_argument(
    "--config",
    default="quick",
    choices=sorted(config.CONFIGS),
    help="preset the fields start from (config.py): "
    + "; ".join(f"{k}: {v}" for k, v in config.PRESET_HELP.items()),
  )
  fields = {f.name: f for f in dataclasses.fields(config.Config)}
  for name in SHORTCUTS:
    meta = fields[name].metadata
    choices = f" {{{', '.join(meta['choices'])}}}" if meta.get("choices") else ""
    p.add_argument(
      "--" + name.replace("_", "-"),
      dest=name,
      metavar=name.upper(),
      help=f"{meta['help']}{choices} (= --set {name}=...)",
    )
  p.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="any config field (listed below)",
  )
  p.add_argument(
    "--mesh", default="auto", help="devices of the data-parallel mesh: 'auto' (all) or a number"
  )
  p.add_argument("--coordinator-address", help="multi-process: process 0's host:port")
  p.add_argument("--num-processes", type=int, help="multi-process: number of processes")
  p.add_argument("--process-id", type=int, help="multi-process: this process, 0..N-1")
  p.add_argument("--workdir", help="default: runs/<dataset>-<model>[-3d]-<config>")
  p.add_argument("--data-seed", type=int, default=0, help="seed of the built-in dataset")
  p.add_argument(
    "--volume",
    choices=("slab", "whole"),
    help="built-in dataset: an axial slab of 20 slices (the paper's setting; "
    "default in 2D) or whole-brain volumes (default with --spatial-dims 3)",
  )
  add_common_arguments(p)
  args = p.parse_args(argv)
  if args.precision == "bf16":  # alias
    args.precision = "bfloat16"
  if args.mesh != "auto" and not args.mesh.isdigit():
    p.error(f"--mesh must be 'auto' or a number of devices, got {args.mesh!r}")
  if not args.dataset and not args.data_dir:
    args.dataset = "bric"
  if args.dataset and args.protocol:
    p.error("--protocol goes with --data-dir (a built-in dataset has its own protocol)")
  if args.max_minutes is not None and not args.max_minutes > 0:
    p.error(f"--max-minutes {args.max_minutes:g}: must be more than 0")
  if args.labels and not args.data_dir:
    p.error("--labels goes with --data-dir (a built-in dataset has its own labels)")
  if args.data_dir and args.volume:
    p.error("--volume goes with a built-in --dataset")
  try:
    parse_spacing(args.spacing)
  except ValueError as e:
    p.error(f"--spacing: {e}")
  return args


def format_table(result, class_names) -> str:
  rows = [f"| {'':<14} | {'train':>8} | {'test':>8} |", f"|{'-' * 16}|{'-' * 10}|{'-' * 10}|"]

  def fmt(v):
    return f"{v:8.4f}" if v is not None else f"{'n/a':>8}"

  rows.append(f"| {'mPA':<14} | {fmt(result.train['mpa'])} | {fmt(result.test['mpa'])} |")
  rows.append(
    f"| {'mPA tissue':<14} | {fmt(result.train['mpa_fg'])} | {fmt(result.test['mpa_fg'])} |"
  )
  for metric in ("pixel_accuracy", "dice", "iou"):
    for c in class_names:
      rows.append(
        f"| {metric.replace('pixel_accuracy', 'acc') + ' ' + c:<14} | "
        f"{fmt(result.train[metric][c])} | {fmt(result.test[metric][c])} |"
      )
  return "\n".join(rows)


@contextlib.contextmanager
def sigterm_as_interrupt():
  """SIGTERM outside the training steps (a scheduler's preemption while the model compiles or
  the final evaluation runs) ends the run like Ctrl-C; during the steps the training loop's handler
  saves a checkpoint first."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)

  old = signal.signal(signal.SIGTERM, interrupt)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, old)


def main(argv=None) -> int:
  started = time.monotonic()  # --max-minutes counts from here
  args = parse_args(argv)
  args.deadline = None if args.max_minutes is None else started + 60 * args.max_minutes

  quiet_libraries(args.debug)
  try:
    with sigterm_as_interrupt():
      return run_cli(
        lambda: run(args),
        args.debug,
        "Free disk space or choose a writable --workdir, then rerun the same command.",
      )
  except KeyboardInterrupt:
    if args.debug:
      raise
    print(
      "interrupted outside a training step: checkpoints already written are kept. Rerun "
      "the same command to resume.",
      file=sys.stderr,
    )
    return 130


def make_config(args):
  """The --config preset with the shortcut flags and every --set applied, each value checked.
  A 3D run's patch size, when left null, becomes the backend's default here, so that
  run.json records the one used."""

  texts = [
    f"{name}={getattr(args, name)}" for name in SHORTCUTS if getattr(args, name) is not None
  ] + args.overrides
  overrides = dict(config.parse_override(t) for t in texts)
  cfg = config.get_config(args.config).replace(**overrides)
  if cfg.spatial_dims == 3 and cfg.patch_size is None:
    cfg = cfg.replace(
      patch_size=config.PATCH_CPU if jax.default_backend() == "cpu" else config.PATCH_ACCELERATOR
    )
  return cfg


def volume_of(args, cfg) -> str:
  """The built-in dataset's extent: ``--volume``, else whole brains for a 3D run."""
  return args.volume or ("whole" if cfg.spatial_dims == 3 else "slab")


def load_study(args, cfg):
  """The study (this process's subjects) and its root, from --dataset or --data-dir. A 2D
  run keeps only the labeled slices in memory (every slice when it self-trains), with each
  training label's own image plane (``label_planes``); a 3D run whole volumes as they are
  (a replaced plane would be a jump along z)."""
  root, protocol = datasets.resolve(
    args.dataset,
    args.data_dir,
    args.protocol,
    data_seed=args.data_seed,
    volume=volume_of(args, cfg),
  )
  return study.load_study(
    root,
    protocol,
    spacing=args.spacing,
    reference=args.reference,
    register=args.register,
    labels_root=labels_dir(args),
    shard=parallel.shard_for_this_process(),
    keep="labeled"
    if cfg.spatial_dims == 2 and not (cfg.pseudo_label_epochs or cfg.context_slices)
    else "all",
    label_planes=cfg.spatial_dims == 2,
  )


def labels_dir(args):
  """``--labels`` as an absolute folder (relative to --data-dir if not found as given)."""
  if args.labels is None:
    return None
  return os.path.abspath(layout.resolve_labels_root(args.data_dir, args.labels))


def setup(args, main: bool):
  """``(config, workdir, study, record)`` of a run, checked: the config, the work
  directory (outside the data; whether a run.json there is this run's, the training loop
  checks: :func:`fcslstm_jax.train.loop.check_run_dir`) and this process's subjects."""
  cfg = make_config(args)
  name = args.dataset or os.path.basename(os.path.normpath(args.data_dir))
  model_name = cfg.model + ("-3d" if cfg.spatial_dims == 3 else "")
  workdir = args.workdir or os.path.join("runs", f"{name}-{model_name}-{args.config}")
  if args.data_dir:
    files.check_outside_dataset(
      workdir,
      args.data_dir,
      "--workdir",
      functools.partial(layout.output_place_allowed, args.data_dir),
    )
  loaded = load_study(args, cfg)
  # What gets compiled (time-loop unroll, chunking, batching of the two directions) is the
  # backend's choice where the config leaves it: resolved here, once, and recorded.
  cfg = networks.with_backend_defaults(cfg, loaded.protocol.num_timepoints)
  record = run_record.RunRecord(
    config=cfg,
    config_name=args.config,
    dataset=args.dataset or os.path.abspath(args.data_dir),
    data_seed=args.data_seed,
    protocol=loaded.protocol,
    grid=loaded.options,
    volume=volume_of(args, cfg) if args.dataset else "slab",
    labels=labels_dir(args),
    age_range=seen_ages(loaded.subjects) if cfg.age_input != "none" else None,
  )
  return cfg, workdir, loaded, record


def seen_ages(subjects):
  """The youngest and oldest session age over every process's subjects (to 1/1000,
  rounded outwards: the processes agree on integers)."""
  lo, hi = sequences.age_range(subjects) or (0.0, 0.0)
  neg_lo, hi = parallel.agree_max([math.ceil(-lo * 1000), math.ceil(hi * 1000)])
  return (-neg_lo / 1000, hi / 1000)


def run(args) -> int:

  compile_cache.enable(args.compile_cache)
  parallel.initialize(args.coordinator_address, args.num_processes, args.process_id)
  mesh = parallel.make_mesh(None if args.mesh == "auto" else int(args.mesh))
  main = parallel.is_main_process()

  def log(*values, **kwargs):  # process 0 logs; warnings about its own subjects, every process
    if main:
      print(*values, **kwargs)

  # Every check that may fail on one process only (its share of the data; run.json, which
  # process 0 reads) is agreed on before the first collective: no process waits for one
  # that stopped.
  cfg, workdir, loaded, record = parallel.agree_on_error(lambda: setup(args, main))
  protocol = loaded.protocol
  for line in sequences.describe_unassigned(loaded):
    log(line, file=sys.stderr)
  for subject in loaded.subjects:  # this process's subjects, on every process
    for line in subject.warnings:
      print(f"warning: {line}", file=sys.stderr)
  counts = {
    split: parallel.sum_over_processes(sequences.split_counts(loaded.subjects, protocol, split))
    for split in ("train", "test")
  }
  log(sequences.describe_study(loaded, counts))
  sequences.check_training_labels(counts["train"], protocol, loaded.root)
  data = training_sets(cfg, loaded.subjects, protocol)
  log(
    f"{data.description}; model {cfg.model}; workdir {workdir}; {mesh.size} "
    f"{mesh.devices.flat[0].platform} device(s), {jax.process_count()} process(es)"
  )
  if data.carried:
    log(data.carried)

  def progress(it, epoch):
    return tqdm(it, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)

  result = loop.train_and_evaluate(
    cfg,
    data.train,
    data.test,
    workdir,
    protocol.class_names,
    record,
    progress=progress if main else None,
    mesh=mesh,
    train_eval_set=data.train_eval,
    pool=data.pool,
    deadline=args.deadline,
  )
  if result.stopped_by == stop.BUDGET:
    return 0  # asked for: the checkpoint is saved, a rerun continues
  if result.stopped_by:
    return 130
  if not main:
    return 0
  report(args, cfg, protocol, workdir, result, log)
  return 0


class TrainingData(typing.NamedTuple):
  """What one process trains and scores on: slice sequences (2D; ``pool``: every slice, for
  self-training) or volumes and patches (3D; ``train_eval``: the training volumes' labeled
  slabs, scored by windows); ``description``: one line for the log; ``carried``: one more
  on what label propagation added (empty without it)."""

  train: typing.Any
  test: typing.Any
  train_eval: typing.Any
  pool: typing.Any
  description: str
  carried: str = ""


def training_sets(cfg, subjects, protocol) -> TrainingData:
  """The :class:`TrainingData` of this process's ``subjects``."""
  train_eval_set = pool = None
  if cfg.spatial_dims == 3:
    shape = parallel.agree_max(patches.volume_shape(subjects))
    train_set, train_eval_set, test_set = patches.training_sets(
      subjects, protocol, cfg.patch_size, cfg.seed, shape
    )
    what = (
      f"{len(train_set)} training volumes of shape {train_set.images.shape[1:]} (T, D, "
      f"H, W, C), patches {list(cfg.patch_size)}"
    )
    return TrainingData(train_set, test_set, train_eval_set, pool, what)
  size = parallel.agree_max(sequences.in_plane_size(subjects))
  inputs = sequences.Inputs.of(cfg)
  carry = (cfg.propagation_weight, cfg.propagate_erosion)
  train_set = sequences.make_sequences(
    subjects, protocol, "train", size, inputs=inputs, propagation=carry
  )
  test_set = sequences.make_sequences(subjects, protocol, "test", size, inputs=inputs)
  what = f"{len(train_set)} training sequences of shape {train_set.images.shape[1:]}"
  carried = ""
  if carry[0] > 0:
    own = sequences.make_sequences(subjects, protocol, "train", size, inputs=inputs)
    carried = describe_carried(train_set, own, carry[0])
  if cfg.pseudo_label_epochs:
    pool = sequences.make_sequences(
      subjects, protocol, "train", size, every_slice=True, inputs=inputs
    )
    what += f", {len(pool)} more for self-training in the last {cfg.pseudo_label_epochs} epochs"
  return TrainingData(train_set, test_set, train_eval_set, pool, what, carried)


def describe_carried(carried, own, weight: float) -> str:
  """What label propagation added to the training sequences ``own`` (this process's):
  voxels, how many of them tissue, and the slices they label."""
  added = (carried.label_mask > 0) & (own.label_mask == 0)
  voxels, tissue, slices = parallel.sum_over_processes(
    np.array([added.sum(), (added & (carried.labels > 0)).sum(), added.any(axis=(2, 3)).sum()])
  )
  return (
    f"labels propagated across sessions (loss weight {weight:g}): {voxels} voxels "
    f"({tissue} tissue) on {slices} slices that had none"
  )


def report(args, cfg, protocol, workdir: str, result, log) -> None:
  """Writes results.json and prints the table (process 0)."""
  summary = {
    "train": result.train,
    "test": result.test,
    "seconds": result.seconds,
    "step": int(result.state.step),
    "model": cfg.model,
    "config": args.config,
  }
  files.write_json(os.path.join(workdir, "results.json"), summary)
  log(
    f"\n{cfg.model} on {protocol.name} (test = time point(s) "
    f"{[t + 1 for t in protocol.test_timepoints]}), step {int(result.state.step)}, "
    f"{result.seconds / 60:.1f} min"
  )
  log(format_table(result, protocol.class_names))
  log(
    f"\nResults: {os.path.join(workdir, 'results.json')}; segment whole scans with "
    f"python evaluate.py --workdir {workdir}"
  )


if __name__ == "__main__":
  sys.exit(main())
