"""Whole-scan segmentation of a study with one trained run or an ensemble (:func:`evaluate_run`).

Layout: a subject's scan is ``T`` sessions of ``[X, Y, Z, C]`` on its working grid (canonical
RAS, :mod:`fcslstm_jax.data.study`); the model sees the ``Z`` axial slices as a batch of
sequences ``[Z, T, X, Y, C]`` and returns class probabilities ``[Z, T, X, Y, c]``, averaged
over in-plane flips (:mod:`fcslstm_jax.infer.tta`) and over the ensemble's members
(:mod:`fcslstm_jax.infer.ensemble`). A 3D run (``spatial_dims`` in its run.json) segments
each subject's whole volume over time ``[T, Z, X, Y, C]`` by sliding windows instead
(:mod:`fcslstm_jax.infer.sliding_window`) and hands on the same ``[Z, T, X, Y, c]``
probabilities (:func:`segment_study`). Each session's probabilities ``[X, Y, Z, c]`` are
resampled back onto that session's own grid (linear; nothing is interpolated where the grids
coincide); there the hard label is their argmax and the uncertainty their normalized entropy
(:mod:`fcslstm_jax.outputs.qc`). :class:`fcslstm_jax.outputs.writer.StudyWriter` writes them
with the session's original orientation, affine and header, scores the labels there, and
writes the study's tables, figures, report and ``metrics.json``.
"""

import dataclasses
import functools
import os
import time

import numpy as np

from fcslstm_jax import datasets
from fcslstm_jax import files
from fcslstm_jax import run_record
from fcslstm_jax.checkpoint import Checkpointer
from fcslstm_jax.config import Config
from fcslstm_jax.data import grids
from fcslstm_jax.data import layout
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import CheckpointError
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.errors import DataError
from fcslstm_jax.infer import ensemble
from fcslstm_jax.infer import prior
from fcslstm_jax.infer import sliding_window
from fcslstm_jax.infer import tta
from fcslstm_jax.model import networks
from fcslstm_jax.outputs import flags
from fcslstm_jax.outputs import manifest
from fcslstm_jax.outputs import qc
from fcslstm_jax.outputs import writer
from fcslstm_jax.run_record import RunRecord


def restore_params(
  workdir: str, config: Config, num_classes: int, in_channels: int, step: int | None = None
):
  """The run's model and parameters (newest readable checkpoint unless ``step``); the
  optimizer state stays on disk."""
  model = networks.build_model(config, num_classes)
  ckpt = Checkpointer(workdir, config.keep_checkpoints)
  params, restored = ckpt.restore_params(networks.init_params(model, in_channels), step)
  ckpt.close()
  if restored is None:
    raise CheckpointError(f"{ckpt.directory}: no checkpoint. Train first with train.py.")
  return model, params, restored


def read_runs(workdirs) -> list:
  """``[(workdir, RunRecord)]`` of an ensemble's members, checked to fit together."""
  seen = set()
  for w in workdirs:
    key = os.path.realpath(w)
    if key in seen:
      raise ConfigError(f"{w}: given twice as --workdir. Give each member once.")
    seen.add(key)
  runs = [(w, run_record.read(w)) for w in workdirs]
  ensemble.check_compatible(runs)
  return runs


def load_members(runs, proto, prior_correction: bool = True, log=print) -> list:
  """The :class:`fcslstm_jax.infer.ensemble.Member` of each ``(workdir, run)``, compiled as
  this backend prefers (:data:`fcslstm_jax.model.networks.COMPILE_FIELDS`); with
  ``prior_correction``, those whose config asks for it segment prior-corrected
  (:mod:`fcslstm_jax.infer.prior`)."""
  members = []
  for workdir, run in runs:
    channels = sequences.Inputs.of(run.config).channels(len(proto.modalities))
    # How the network is compiled is this machine's choice, not the training machine's.
    config = networks.with_backend_defaults(
      run.config.replace(**dict.fromkeys(networks.COMPILE_FIELDS)), proto.num_timepoints
    )
    model, params, step = restore_params(workdir, config, proto.num_classes, channels)
    scale, strength = None, run.prior_correction_strength
    if prior_correction and run.config.prior_correction != "none":
      if strength is None:
        log(
          f"{run_record.path_of(workdir)}: records no class weights or no fitted strength "
          f"(prior_correction {run.config.prior_correction}; an older or unfinished run, or "
          "a 3D one, which the fit does not cover), so "
          "its probabilities are not prior-corrected; finishing or resuming the run with "
          "train.py records them."
        )
      elif strength > 0:
        scale = prior.scale(run.class_weights, strength)
    members.append(ensemble.Member(workdir, run, config, model, params, step, scale))
  return members


def every_labeled_slice(proto: protocol.Protocol) -> protocol.Protocol:
  """``proto`` counting every labeled slice of every session (evaluation scores all the
  labels a study has, not the few that training was allowed to count)."""
  return dataclasses.replace(proto, labeled_slices_per_volume=1 << 30, slice_selection="center")


def bucketed(seq: sequences.SliceSet, multiple: int = networks.MULTIPLE) -> sequences.SliceSet:
  """``seq`` with its images zero-padded at the end of H and W to a multiple of ``multiple``:
  the network pads its input exactly so (:func:`fcslstm_jax.model.networks.pad_to_multiple`),
  so the probabilities over the original pixels do not change, and subjects of different
  in-plane sizes share a few compiled programs instead of one each."""
  h, w = seq.images.shape[2:4]
  pads = ((0, 0), (0, 0), (0, -h % multiple), (0, -w % multiple), (0, 0))
  return dataclasses.replace(seq, images=np.pad(seq.images, pads))


def segment_subject(
  fns,
  params_list,
  subject,
  proto,
  batch_size: int,
  windows=None,
  bucket: bool = False,
  inputs=sequences.Inputs(),
  scales=None,
):
  """``(sequences, probabilities [Z, T, X, Y, c])`` for every axial slice of one subject on
  its working grid, averaged over the members (``fns`` and ``params_list``, one each; each
  member's prior-corrected by its ``scales`` entry, :func:`fcslstm_jax.infer.prior.corrected`).

  ``windows``: for 3D members, each one's ``(window, overlap)``: the subject's whole volume
  ``[T, Z, X, Y, C]`` is segmented by sliding windows (:mod:`fcslstm_jax.infer.sliding_window`,
  ``batch_size`` windows per call) and its probabilities returned in the same layout.
  ``bucket``: 2D, pad the slices to the network's multiple first (:func:`bucketed`); not
  with test-time flips, whose flipped views would put the padding on the other side.
  ``inputs``: what the members' input holds besides the modalities (their session ages,
  neighbouring slices: :class:`fcslstm_jax.data.sequences.Inputs`)."""
  seq = sequences.make_sequences([subject], proto, "all", inputs=inputs)
  scales = scales or [None] * len(fns)
  if windows is None:
    if not bucket:
      return seq, ensemble.average_proba(params_list, fns, seq, batch_size, scales)
    h, w = seq.images.shape[2:4]
    probs = ensemble.average_proba(params_list, fns, bucketed(seq), batch_size, scales)
    return seq, probs[:, :, :h, :w]
  volume, valid = np.moveaxis(seq.images, 0, 1), seq.valid.T  # [T, Z, X, Y, C], [T, Z]
  total = sum(
    prior.corrected(
      sliding_window.sliding_window_proba(fn, params, volume, valid, window, overlap, batch_size),
      scale,
    )
    for fn, params, (window, overlap), scale in zip(fns, params_list, windows, scales)
  )
  return seq, np.moveaxis(total / np.float32(len(fns)), 1, 0).astype(np.float32)


def to_session_probs(probs, subject, session) -> np.ndarray:
  """Class probabilities ``float32 [X, Y, Z, c]`` on the session's own canonical grid from
  working-grid probabilities ``[X, Y, Z, c]``: resampled linearly (identity where the grids
  coincide). Outside the working grid: background with probability 1, so every voxel's
  probabilities still sum to 1 (linear interpolation is a convex combination)."""
  back = np.linalg.inv(session.to_session)  # session world -> working world
  probs = np.asarray(probs, np.float32)
  background = grids.resample(
    probs[..., :1], subject.grid, session.grid, order=1, world=back, cval=1.0
  )
  tissues = grids.resample(probs[..., 1:], subject.grid, session.grid, order=1, world=back)
  return np.concatenate([background, tissues], axis=-1).astype(np.float32)


def load_for_evaluation(run: RunRecord, data_dir=None, truth_dir=None, participants=None):
  """The study to segment with a run: its own data or ``data_dir`` (only ``participants``'
  subjects when given), on the run's grids."""
  proto = run.protocol
  options = run.grid or study.GridOptions()
  return study.load_study(
    data_dir or datasets.of_run(run),
    every_labeled_slice(proto),
    spacing=options.spacing,
    reference=options.reference,
    register=options.register,
    labels_root=truth_dir or (run.labels if same_study(run, data_dir) else None),
    participants=participants,
  ), proto


def same_study(run: RunRecord, data_dir) -> bool:
  """Whether ``data_dir`` (None: the run's own) is the study the run trained on."""
  if data_dir is None:
    return True
  return not run.builtin and os.path.realpath(data_dir) == os.path.realpath(run.dataset)


def own_unlabeled_subjects(loaded, truth_dir, log=print) -> list:
  """Ids of the subjects with no label file at a training time point in the dataset's own
  derivatives, even when ``truth_dir`` gives every subject labels to score against. If those
  files cannot be read (e.g. two of them for one session), the scored labels decide; a
  line says so."""
  if truth_dir is None:
    return sequences.unlabeled_subjects(loaded)
  try:
    own = dataclasses.replace(loaded, files=layout.scan(loaded.root, loaded.protocol.modalities))
  except DataError as e:
    log(
      f"warning: the dataset's own label files decide which subjects count as unlabeled "
      f"in metrics.json's whole_volume, but they cannot be read ({e}); the labels in "
      f"{truth_dir} decide instead."
    )
    return sequences.unlabeled_subjects(loaded)
  return sequences.unlabeled_subjects(own)


def describe_members(members, flips) -> list:
  def corrected(m):
    return (
      "" if m.prior_scale is None else f", prior correction {m.run.prior_correction_strength:g}"
    )

  lines = [
    f"{'member' if len(members) > 1 else 'run'}: {os.path.abspath(m.workdir)} "
    f"({m.config.model}, checkpoint step {m.step}{corrected(m)})"
    for m in members
  ]
  lines.append(
    "test-time flips: "
    + (", ".join(flips) + f" ({len(tta.flip_variants(flips))} views averaged)" if flips else "none")
  )
  return lines


def evaluate_run(
  workdir,
  out_dir: str | None = None,
  data_dir: str | None = None,
  batch_size: int = 8,
  truth_dir: str | None = None,
  log=print,
  *,
  tta_flips=(),
  probabilities: bool = False,
  flag_rules=None,
  report: bool = True,
  counter=None,
  participants=None,
  prior_correction: bool = True,
) -> dict:
  """Segments every session of every subject and writes what a study needs (see the module
  docstring). Labels (the dataset's, or ``truth_dir``'s) are scored on each session's own
  grid; without any, metrics are None and every other output is written.

  Args:
    workdir: a run folder, or a list of them (an ensemble; the first one's dataset is
      segmented unless ``data_dir``, and ``out_dir`` defaults to inside it).
    tta_flips: in-plane flip axes to average over (``("x", "y")``; :mod:`fcslstm_jax.infer.tta`).
    probabilities: also write ``*_probseg.nii.gz`` (float32, one volume per class).
    flag_rules: :class:`fcslstm_jax.outputs.flags.FlagRules` (None: the defaults).
    report: write ``report.html``.
    counter: a :class:`fcslstm_jax.compile_cache.CompileCounter`; its counts go into
      ``metrics.json`` (``compilations``).
    prior_correction: False: segment with the networks' own probabilities even where a
      run's config asks for the prior correction (:mod:`fcslstm_jax.infer.prior`).
    participants: segment only these subjects (ids); their selection is part of the output
      folder's identity (:mod:`fcslstm_jax.outputs.manifest`).
  """
  started = time.monotonic()
  workdirs = [workdir] if isinstance(workdir, (str, os.PathLike)) else list(workdir)
  workdirs = [str(w) for w in workdirs]
  flips = tta.parse_flips(tta_flips)
  runs = read_runs(workdirs)
  loaded, proto = load_for_evaluation(runs[0][1], data_dir, truth_dir, participants)
  for line in sequences.describe_warnings(loaded):
    log(line)
  if runs[0][1].age_range is not None:
    for line in sequences.ages_outside(loaded.subjects, runs[0][1].age_range):
      log(line)
  out_dir = out_dir or os.path.join(workdirs[0], "predictions")
  files.check_output_dir(
    out_dir, loaded.root, functools.partial(layout.output_place_allowed, loaded.root)
  )
  if truth_dir:
    files.check_outside_dataset(out_dir, truth_dir, "--out")
  members = load_members(runs, proto, prior_correction, log)
  load_seconds = time.monotonic() - started  # the study, resampled, and the checkpoints
  desc = members[0].config.model.replace("-", "") if len(members) == 1 else "ensemble"
  ident = manifest.identity(workdirs, loaded.root, participants)
  earlier = manifest.claim(out_dir, ident)  # refuses another run's folder
  with files.recording() as written:
    study_writer = writer.StudyWriter(
      out_dir,
      desc,
      proto,
      probabilities,
      own_unlabeled_subjects(loaded, truth_dir, log),
      source_root=loaded.root,
      run={
        "Runs": [
          {"Workdir": os.path.abspath(m.workdir), "Model": m.config.model, "Step": m.step}
          for m in members
        ],
        "TestTimeFlips": list(flips),
      },
    )
    segment_seconds, sessions_done = write_segmentations(
      loaded, members, flips, batch_size, study_writer, log
    )
    if study_writer.figure is None:
      raise DataError(
        f"{loaded.root}: no session of any subject fits the protocol "
        f"{proto.name}'s time points; nothing to segment."
      )
    run_fields = dict(
      evaluation_fields(members, flips),
      segment_seconds=round(segment_seconds, 1),
      segment_seconds_per_session=round(segment_seconds / max(sessions_done, 1), 2),
      compilations=counter.to_json() if counter else None,
      load_seconds=round(load_seconds, 1),
    )
    sources = dict(labels=str(truth_dir) if truth_dir else "dataset", out=os.path.abspath(out_dir))
    meta = (
      [f"dataset: {os.path.abspath(loaded.root)}"]
      + describe_members(members, flips)
      + [f"output: {os.path.abspath(out_dir)}"]
      if report
      else None
    )
    result = study_writer.finish(
      flag_rules or flags.FlagRules(), log, run_fields, sources, meta, started
    )
  for path in manifest.seal(out_dir, ident, written, earlier):
    log(f"removed {path}: an earlier evaluation's output that this one does not write")
  return result


def write_segmentations(loaded, members, flips, batch_size: int, study_writer, log):
  """Segments every subject and hands each session's outputs to ``study_writer``.
  Returns ``(seconds, sessions)``: the forward passes' time (sliding windows in 3D) and
  the sessions segmented."""
  segment_seconds, sessions_done = 0.0, 0
  for subject, seq, probs, seconds in segment_study(loaded, members, flips, batch_size, log):
    sessions = sum(s is not None for s in subject.timepoints)
    segment_seconds, sessions_done = segment_seconds + seconds, sessions_done + sessions
    for t, session in enumerate(subject.timepoints):
      if session is not None:
        outputs = session_outputs(np.moveaxis(probs[:, t], 0, 2), subject, session)
        study_writer.add_session(subject.subject_id, t, session, *outputs, probs[:, t])
    pred = np.argmax(probs, axis=-1).astype(np.int32)  # [Z, T, X, Y] on the working grid
    study_writer.add_subject(subject, seq, pred)
    log(
      f"sub-{subject.subject_id}: {pred.shape[0]} slices x {pred.shape[1]} time points, "
      f"segmented in {seconds:.1f} s ({seconds / max(sessions, 1):.1f} s per session)"
    )
  return segment_seconds, sessions_done


def evaluation_fields(members, flips) -> dict:
  """What metrics.json records about the networks that segmented."""
  return dict(
    workdir=os.path.abspath(members[0].workdir),
    checkpoint_step=members[0].step,
    model=members[0].config.model if len(members) == 1 else "ensemble",
    members=[
      {"workdir": os.path.abspath(m.workdir), "model": m.config.model, "checkpoint_step": m.step}
      for m in members
    ],
    tta_flips=list(flips),
    prior_correction_strength=[
      m.run.prior_correction_strength if m.prior_scale is not None else 0.0 for m in members
    ],
  )


def segment_study(loaded, members, flips, batch_size: int, log=print):
  """Yields ``(subject, sequences, probabilities [Z, T, X, Y, c], seconds)`` on each
  subject's working grid, averaged over the members and the flipped views (``seconds``: the
  forward passes); subjects none of whose sessions fits the protocol are logged and
  skipped. 2D: the subjects' slices are streamed through the network in shared batches
  (:func:`fcslstm_jax.infer.ensemble.stream_proba`; the same probabilities as one subject
  at a time, without a part-filled batch per subject)."""
  spatial_dims = members[0].config.spatial_dims
  fns = ensemble.predict_fns(members, tta.flip_variants(flips, spatial_dims))
  params_list = [m.params for m in members]
  scales = [m.prior_scale for m in members]
  inputs = sequences.Inputs.of(members[0].config)
  subjects = segmentable(loaded.subjects, log)
  if spatial_dims == 2:
    yield from stream_subjects(
      fns, params_list, subjects, loaded.protocol, batch_size, inputs, scales, bucket=not flips
    )
    return
  windows = [(sliding_window.window_shape(m.config), m.config.window_overlap) for m in members]
  for subject in subjects:
    t_segment = time.monotonic()
    seq, probs = segment_subject(
      fns, params_list, subject, loaded.protocol, batch_size, windows, inputs=inputs, scales=scales
    )
    yield subject, seq, probs, time.monotonic() - t_segment


def segmentable(subjects, log=print):
  """The subjects with a working grid, read lazily; the others are logged and skipped."""
  for subject in subjects:
    if subject.grid is None:
      log(f"sub-{subject.subject_id}: no session fits the protocol's time points; not segmented")
    else:
      yield subject


def stream_subjects(fns, params_list, subjects, proto, batch_size, inputs, scales, bucket):
  """2D :func:`segment_study`: each subject's ``(subject, sequences, probabilities,
  seconds)``, its slices (padded with :func:`bucketed` when ``bucket``) batched together
  with its neighbours' (``seconds``: the time spent getting it, forward passes shared
  with a neighbour counted for whichever finished first)."""

  def parts():
    for subject in subjects:
      seq = sequences.make_sequences([subject], proto, "all", inputs=inputs)
      yield (subject, seq), bucketed(seq) if bucket else seq

  stream = ensemble.stream_proba(params_list, fns, parts(), batch_size, scales)
  while True:
    started = time.monotonic()
    try:
      (subject, seq), probs = next(stream)
    except StopIteration:
      return
    h, w = seq.images.shape[2:4]
    yield subject, seq, probs[:, :, :h, :w], time.monotonic() - started


def session_outputs(probs, subject, session):
  """``(probabilities float32 [X, Y, Z, c], labels int32 [X, Y, Z], uncertainty float32
  [X, Y, Z])`` on the session's own canonical grid from its working-grid probabilities
  ``[X, Y, Z, c]``: the labels are the argmax of exactly those probabilities."""
  native = to_session_probs(probs, subject, session)
  return native, np.argmax(native, axis=-1).astype(np.int32), qc.normalized_entropy(native)
