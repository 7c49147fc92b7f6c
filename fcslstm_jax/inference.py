"""Whole-scan segmentation with one trained run or an ensemble, and what a study needs after it.

Layout: a subject's scan is ``T`` sessions of ``[X, Y, Z, C]`` on its working grid (canonical
RAS, :mod:`fcslstm_jax.data`); the model sees the ``Z`` axial slices as a batch of sequences
``[Z, T, X, Y, C]`` and returns class probabilities ``[Z, T, X, Y, c]``, averaged over
in-plane flips (:mod:`fcslstm_jax.tta`) and over the ensemble's members
(:mod:`fcslstm_jax.ensemble`). A 3D run (``spatial_dims`` in its run.json) segments each
subject's whole volume over time ``[T, Z, X, Y, C]`` by sliding windows instead
(:mod:`fcslstm_jax.sliding_window`) and hands on the same ``[Z, T, X, Y, c]``
probabilities. Each session's probabilities ``[X, Y, Z, c]`` are resampled
back onto that session's own grid (linear; nothing is interpolated where the grids
coincide); there the hard label is their argmax, the uncertainty their normalized entropy
(:mod:`fcslstm_jax.qc`), and the tissue volumes are counted in the voxels of that grid
(:mod:`fcslstm_jax.volumes`). Labels, uncertainty and (optionally) probabilities are written
with the session's original orientation, affine and header, and labels are scored there.
After every subject: ``volumes.tsv``, ``qc.tsv``, the flag rules (:mod:`fcslstm_jax.flags`)
into ``flags.tsv`` and the console, figures, ``report.html`` and ``metrics.json`` (last: it
marks a complete output).
"""

import dataclasses
import datetime
import os
import time

import jax
import numpy as np

from fcslstm_jax import data as data_lib
from fcslstm_jax import ensemble
from fcslstm_jax import figures
from fcslstm_jax import files
from fcslstm_jax import flags as flags_lib
from fcslstm_jax import grids
from fcslstm_jax import metrics as metrics_lib
from fcslstm_jax import nifti_io
from fcslstm_jax import protocol as protocol_lib
from fcslstm_jax import qc as qc_lib
from fcslstm_jax import report as report_lib
from fcslstm_jax import sequences
from fcslstm_jax import sliding_window
from fcslstm_jax import train_lib
from fcslstm_jax import tta
from fcslstm_jax import volumes as volumes_lib
from fcslstm_jax.checkpoint import Checkpointer
from fcslstm_jax.config import Config
from fcslstm_jax.errors import CheckpointError, ConfigError, DataError

# Sessions the report shows as montages (the least trusted ones).
WORST_SESSIONS = 4


def read_run(workdir: str) -> dict:
  return train_lib.read_run_json(os.path.join(workdir, "run.json"))


def restore_params(workdir: str, config: Config, num_classes: int, in_channels: int,
                   step: int | None = None):
  """The run's model and parameters (newest readable checkpoint unless ``step``)."""
  model = train_lib.build_model(config, num_classes)
  state = train_lib.create_train_state(jax.random.PRNGKey(0), model, config, in_channels, 1)
  ckpt = Checkpointer(workdir, config.keep_checkpoints)
  state, restored = ckpt.restore(state, step)
  ckpt.close()
  if restored is None:
    raise CheckpointError(f"{ckpt.directory}: no checkpoint. Train first with train.py.")
  return model, state.params, restored


def read_runs(workdirs) -> list:
  """``[(workdir, run.json)]`` of an ensemble's members, checked to fit together."""
  seen = set()
  for w in workdirs:
    key = os.path.realpath(w)
    if key in seen:
      raise ConfigError(f"{w}: given twice as --workdir. Give each member once.")
    seen.add(key)
  runs = [(w, read_run(w)) for w in workdirs]
  ensemble.check_compatible(runs)
  return runs


def load_members(runs, protocol) -> list:
  """The :class:`fcslstm_jax.ensemble.Member` of each ``(workdir, run)``."""
  members = []
  for workdir, run in runs:
    config = Config.from_json(run["config"])
    model, params, step = restore_params(workdir, config, protocol.num_classes,
                                         len(protocol.modalities))
    members.append(ensemble.Member(workdir, run, config, model, params, step))
  return members


def check_outside_dataset(out_dir: str, input_root: str, flag: str = "--out") -> None:
  """Outputs never go inside the input dataset (nothing can overwrite an input)."""
  out, root = os.path.realpath(out_dir), os.path.realpath(input_root)
  if os.path.commonpath([out, root]) == root:
    raise ConfigError(f"{out_dir}: is inside the input dataset {input_root}. Choose a {flag} "
                      "folder outside it; outputs never go next to the inputs.")


def check_output_dir(out_dir: str, input_root: str) -> None:
  """Creates ``out_dir`` after checking it is outside the input dataset and writable."""
  check_outside_dataset(out_dir, input_root)
  out = os.path.realpath(out_dir)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"{out_dir}: cannot be created ({e.strerror}). Choose another --out "
                      "folder.") from e
  if not os.access(out, os.W_OK):
    raise ConfigError(f"{out_dir}: is not writable. Choose another --out folder.")


def output_path(out_dir: str, subject_id: str, session_label: str, desc: str,
                suffix: str) -> str:
  """BIDS derivative name: ``sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>_desc-<desc>_<suffix>.nii.gz``."""
  name = f"sub-{subject_id}_ses-{session_label}_desc-{desc}_{suffix}.nii.gz"
  return os.path.join(out_dir, f"sub-{subject_id}", f"ses-{session_label}", "anat", name)


def prediction_path(out_dir: str, subject_id: str, session_label: str, model_name: str) -> str:
  return output_path(out_dir, subject_id, session_label, model_name.replace("-", ""), "dseg")


def every_labeled_slice(protocol: protocol_lib.Protocol) -> protocol_lib.Protocol:
  """``protocol`` counting every labeled slice of every session (evaluation scores all the
  labels a study has, not the few that training was allowed to count)."""
  return dataclasses.replace(protocol, labeled_slices_per_volume=1 << 30,
                             slice_selection="center")


def segment_subject(fns, params_list, subject, protocol, batch_size: int, windows=None):
  """``(sequences, probabilities [Z, T, X, Y, c])`` for every axial slice of one subject on
  its working grid, averaged over the members (``fns`` and ``params_list``, one each).

  ``windows``: for 3D members, each one's ``(window, overlap)``: the subject's whole volume
  ``[T, Z, X, Y, C]`` is segmented by sliding windows (:mod:`fcslstm_jax.sliding_window`,
  ``batch_size`` windows per call) and its probabilities returned in the same layout."""
  seq = sequences.make_sequences([subject], protocol, "all")
  if windows is None:
    return seq, ensemble.average_proba(params_list, fns, seq, batch_size)
  volume, valid = np.moveaxis(seq.images, 0, 1), seq.valid.T  # [T, Z, X, Y, C], [T, Z]
  total = sum(sliding_window.sliding_window_proba(fn, params, volume, valid, window, overlap,
                                                  batch_size)
              for fn, params, (window, overlap) in zip(fns, params_list, windows))
  return seq, np.moveaxis(total / np.float32(len(fns)), 1, 0).astype(np.float32)


def to_session_probs(probs, subject, session) -> np.ndarray:
  """Class probabilities ``float32 [X, Y, Z, c]`` on the session's own canonical grid from
  working-grid probabilities ``[X, Y, Z, c]``: resampled linearly (identity where the grids
  coincide). Outside the working grid: background with probability 1, so every voxel's
  probabilities still sum to 1 (linear interpolation is a convex combination)."""
  back = np.linalg.inv(session.to_session)  # session world -> working world
  probs = np.asarray(probs, np.float32)
  background = grids.resample(probs[..., :1], subject.grid, session.grid, order=1, world=back,
                              cval=1.0)
  tissues = grids.resample(probs[..., 1:], subject.grid, session.grid, order=1, world=back)
  return np.concatenate([background, tissues], axis=-1).astype(np.float32)


def to_session_grid(probs, subject, session) -> np.ndarray:
  """Class map ``int [X, Y, Z]`` on the session's own canonical grid: the argmax of
  :func:`to_session_probs`."""
  return np.argmax(to_session_probs(probs, subject, session), axis=-1).astype(np.int32)


def native_scores(pred, session, num_classes):
  """Confusion matrix of a native-grid prediction against the session's label file, over
  every labeled axial slice (None without labels)."""
  if "dseg" not in session.paths:
    return None
  truth = nifti_io.load_volume(session.paths["dseg"], kind="labels").data
  mask = np.zeros(truth.shape, np.float32)
  mask[:, :, data_lib.labeled_slices(truth)] = 1.0
  return metrics_lib.confusion_counts(pred, truth, mask, num_classes)


def tissue_dice(cm):
  """Mean Dice of the tissue classes present in the labels (None without labels)."""
  if cm is None or cm.sum() == 0:
    return None
  d = metrics_lib.dice_per_class(cm)[1:]
  return None if np.all(np.isnan(d)) else float(np.nanmean(d))


def load_for_evaluation(run: dict, data_dir=None, truth_dir=None):
  """The study to segment with a run: its own data or ``data_dir``, on the run's grids."""
  protocol = protocol_lib.from_run(run)
  options = data_lib.GridOptions.from_json(run.get("grid") or {})
  if data_dir:
    root = data_dir
  elif run.get("dataset") in data_lib.BUILTIN_DATASETS:
    from fcslstm_jax import bric
    root = bric.ensure_dataset(seed=run.get("data_seed", 0),
                               config=bric.VOLUMES[run.get("volume", "slab")])
  else:
    root = run["dataset"]
  return data_lib.load_study(root, every_labeled_slice(protocol),
                             spacing=options.spacing or "native", reference=options.reference,
                             register=options.register, labels_root=truth_dir), protocol


@dataclasses.dataclass(frozen=True, eq=False)
class Preview:
  """A session's most uncertain axial slice on the working grid, for the report:
  ``images [M] x [X, Y]``, ``labels [X, Y]``, ``uncertainty [X, Y]``, its index ``z``."""
  images: list
  labels: np.ndarray
  uncertainty: np.ndarray
  z: int


def preview(session, probs) -> Preview:
  """:class:`Preview` of a session from its working-grid probabilities ``[Z, X, Y, c]``:
  of the slices inside the session's field of view (some image voxel not 0), the one whose
  predicted brain holds the most uncertainty (the middle one without brain)."""
  labels = np.argmax(probs, axis=-1)
  unc = qc_lib.normalized_entropy(probs)
  seen = np.moveaxis(session.image, 2, 0).any(axis=(1, 2, 3))  # [Z]
  per_slice = np.where(labels > 0, unc, 0.0).sum(axis=(1, 2)) * seen
  z = int(np.argmax(per_slice)) if per_slice.any() else probs.shape[0] // 2
  images = [session.image[:, :, z, k] for k in range(session.image.shape[-1])]
  return Preview(images, labels[z], unc[z], z)


def describe_members(members, flips) -> list:
  lines = [f"{'member' if len(members) > 1 else 'run'}: {os.path.abspath(m.workdir)} "
           f"({m.config.model}, checkpoint step {m.step})" for m in members]
  lines.append("test-time flips: " + (", ".join(flips) + f" ({len(tta.flip_variants(flips))} "
                                      "views averaged)" if flips else "none"))
  return lines


def evaluate_run(workdir, out_dir: str | None = None, data_dir: str | None = None,
                 batch_size: int = 8, truth_dir: str | None = None, log=print, *,
                 tta_flips=(), probabilities: bool = False, flag_rules=None,
                 report: bool = True) -> dict:
  """Segments every session of every subject and writes what a study needs (see the module
  docstring). Labels (the dataset's, or ``truth_dir``'s) are scored on each session's own
  grid; without any, metrics are None and every other output is written.

  Args:
    workdir: a run folder, or a list of them (an ensemble; the first one's dataset is
      segmented unless ``data_dir``, and ``out_dir`` defaults to inside it).
    tta_flips: in-plane flip axes to average over (``("x", "y")``; :mod:`fcslstm_jax.tta`).
    probabilities: also write ``*_probseg.nii.gz`` (float32, one volume per class).
    flag_rules: :class:`fcslstm_jax.flags.FlagRules` (None: the defaults).
    report: write ``report.html``.
  """
  started = time.monotonic()
  workdirs = [workdir] if isinstance(workdir, (str, os.PathLike)) else list(workdir)
  workdirs = [str(w) for w in workdirs]
  flips = tta.parse_flips(tta_flips)
  rules = flag_rules or flags_lib.FlagRules()
  runs = read_runs(workdirs)
  study, protocol = load_for_evaluation(runs[0][1], data_dir, truth_dir)
  for line in sequences.describe_warnings(study):
    log(line)
  out_dir = out_dir or os.path.join(workdirs[0], "predictions")
  check_output_dir(out_dir, study.root)
  if truth_dir:
    check_outside_dataset(out_dir, truth_dir, "--out")
  c, names = protocol.num_classes, protocol.class_names
  members = load_members(runs, protocol)
  desc = members[0].config.model.replace("-", "") if len(members) == 1 else "ensemble"
  spatial_dims = members[0].config.spatial_dims
  fns = ensemble.predict_fns(members, tta.flip_variants(flips, spatial_dims))
  params_list = [m.params for m in members]
  windows = None if spatial_dims == 2 else [
      (train_lib.window_shape(m.config), m.config.window_overlap) for m in members]
  cms = np.zeros((protocol.num_timepoints, c, c))
  agreement = [np.zeros((2, protocol.num_timepoints - 1)) for _ in range(2)]
  figure, written, rows, extra, previews = None, 0, [], {}, {}
  segment_seconds = 0.0  # the forward passes (sliding windows in 3D), per subject
  for subject in study.subjects:
    if subject.grid is None:
      log(f"sub-{subject.subject_id}: no session fits the protocol's time points; not segmented")
      continue
    t_segment = time.monotonic()
    seq, probs = segment_subject(fns, params_list, subject, study.protocol, batch_size,
                                 windows)
    seconds = time.monotonic() - t_segment
    segment_seconds += seconds
    pred = np.argmax(probs, axis=-1).astype(np.int32)  # [Z, T, X, Y] on the working grid
    for t, session in enumerate(subject.timepoints):
      if session is None:
        continue
      native, labels, uncertainty = session_outputs(np.moveaxis(probs[:, t], 0, 2), subject,
                                                    session)
      write_session(out_dir, desc, subject.subject_id, session, native, labels, uncertainty,
                    probabilities)
      written += 1
      cm = native_scores(labels, session, c)
      if cm is not None:
        cms[t] += cm
      rows.append(session_row(subject.subject_id, session, labels, uncertainty, names))
      key = (subject.subject_id, session.label)
      extra[key] = tissue_dice(cm)
      previews[key] = preview(session, probs[:, t])
    mask = seq.label_mask * seq.valid[:, :, None, None]
    for counts, seg in zip(agreement, (pred, seq.labels)):
      counts += metrics_lib.temporal_agreement(seg, mask)
    if figure is None or (figure[1].label_mask.sum() == 0 < seq.label_mask.sum()):
      figure = (subject, seq, pred)
    sessions = sum(s is not None for s in subject.timepoints)
    log(f"sub-{subject.subject_id}: {pred.shape[0]} slices x {pred.shape[1]} time points, "
        f"segmented in {seconds:.1f} s ({seconds / max(sessions, 1):.1f} s per session)")
  if figure is None:
    raise DataError(f"{study.root}: no session of any subject fits the protocol "
                    f"{protocol.name}'s time points; nothing to segment.")
  found = flags_lib.check(rows, rules, names)
  for f in found:
    log(f.line())
  result = summarize_run(cms, agreement, protocol)
  result.update(
      workdir=os.path.abspath(workdirs[0]), checkpoint_step=members[0].step,
      model=members[0].config.model if len(members) == 1 else "ensemble",
      members=[{"workdir": os.path.abspath(m.workdir), "model": m.config.model,
                "checkpoint_step": m.step} for m in members],
      tta_flips=list(flips), predictions=written, flags=len(found),
      segment_seconds=round(segment_seconds, 1),
      segment_seconds_per_session=round(segment_seconds / max(written, 1), 2),
      labels=str(truth_dir) if truth_dir else "dataset", out=os.path.abspath(out_dir))
  write_study_tables(out_dir, rows, extra, found, rules, names)
  with files.atomic_path(os.path.join(out_dir, "segmentation.png")) as path:
    save_figure(path, *figure, protocol, desc)
  n_worst, n_flagged = write_study_figures(out_dir, rows, found, previews, protocol)
  result["seconds"] = round(time.monotonic() - started, 1)
  if report:
    meta = [f"dataset: {os.path.abspath(study.root)}"] + describe_members(members, flips) + [
        f"output: {os.path.abspath(out_dir)}",
        f"written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{result['seconds']:.0f} s"]
    files.write_text(os.path.join(out_dir, "report.html"),
                     report_page(out_dir, meta, result, rows, extra, found, names, n_worst,
                                 n_flagged))
  files.write_json(os.path.join(out_dir, "metrics.json"), result)  # last: marks it complete
  return result


# ------------------------------------------------------------------------------ sessions


def session_outputs(probs, subject, session):
  """``(probabilities float32 [X, Y, Z, c], labels int32 [X, Y, Z], uncertainty float32
  [X, Y, Z])`` on the session's own canonical grid from its working-grid probabilities
  ``[X, Y, Z, c]``: the labels are the argmax of exactly those probabilities."""
  native = to_session_probs(probs, subject, session)
  return native, np.argmax(native, axis=-1).astype(np.int32), qc_lib.normalized_entropy(native)


def write_session(out_dir, desc, subject_id, session, probs, labels, uncertainty,
                  probabilities: bool) -> None:
  """The session's dseg (display range 0..c-1, ``c = probs.shape[-1]``), uncertainty (uint8,
  256 steps: a map to look at, not to compute with) and, if asked, probseg files on its
  input grid and header. Not asked, a probseg file an earlier evaluation wrote under the
  same name is removed (``out_dir`` lies outside the inputs: :func:`check_output_dir`), so
  that no output describes another run."""
  path = lambda suffix: output_path(out_dir, subject_id, session.label, desc, suffix)
  with files.naming(path("dseg")) as p:
    nifti_io.save_like(p, labels, session.ref, num_classes=probs.shape[-1])
  with files.naming(path("uncertainty")) as p:
    nifti_io.save_float_like(p, uncertainty, session.ref, np.uint8)
  if probabilities:
    with files.naming(path("probseg")) as p:
      nifti_io.save_float_like(p, probs, session.ref)
  elif os.path.exists(path("probseg")):
    os.unlink(path("probseg"))  # an earlier evaluation's, into the same --out: now stale


def session_row(subject_id, session, labels, uncertainty, names) -> volumes_lib.SessionVolumes:
  """The session's ``volumes.tsv`` row: tissue volumes on its input grid, QC score."""
  ml = volumes_lib.class_volumes_ml(labels, session.ref.affine, len(names))
  return volumes_lib.SessionVolumes(
      subject=subject_id, session=session.label, timepoint=session.timepoint, age=session.age,
      volumes_ml={n: float(v) for n, v in zip(names[1:], ml[1:])},
      qc=qc_lib.qc_score(uncertainty, labels))


def write_study_figures(out_dir, rows, found, previews, protocol) -> tuple:
  """``trajectories.png``, ``qc_worst.png`` (the least trusted sessions) and ``flagged.png``
  (the first flagged ones; removed when nothing is flagged). Returns how many sessions
  each montage shows."""
  names = protocol.class_names
  flagged = {(f.subject, f.session, f.cls) for f in found}
  with files.atomic_path(os.path.join(out_dir, "trajectories.png")) as path:
    figures.trajectories(path, rows, names, flagged,
                         "months" if protocol.name in protocol_lib.BUILTIN else None)
  by_key = {(r.subject, r.session): r for r in rows}
  worst = [(r.subject, r.session) for r in qc_lib.worst_first(rows)[:WORST_SESSIONS]]
  with files.atomic_path(os.path.join(out_dir, "qc_worst.png")) as path:
    save_worst_figure(path, [(by_key[k], previews[k]) for k in worst], protocol)
  shown = list(dict.fromkeys((f.subject, f.session) for f in found))[:WORST_SESSIONS]
  flagged_png = os.path.join(out_dir, "flagged.png")
  if shown:
    with files.atomic_path(flagged_png) as path:
      save_worst_figure(path, [(by_key[k], previews[k]) for k in shown], protocol,
                        title="flagged sessions (first ones of flags.tsv)")
  elif os.path.exists(flagged_png):
    os.unlink(flagged_png)  # an earlier evaluation's, into the same folder
  return len(worst), len(shown)


# -------------------------------------------------------------------------------- tables


def qc_table(rows, extra) -> tuple:
  """``(header, rows)`` of ``qc.tsv``: sessions worst first (rank 1 = least trusted)."""
  header = ["rank", "subject", "session", "timepoint", "age", "qc", "total_ml",
            "dice_tissues"]
  out = []
  for k, r in enumerate(qc_lib.worst_first(rows), 1):
    dice = extra.get((r.subject, r.session))
    out.append([k, f"sub-{r.subject}", f"ses-{r.session}", r.timepoint + 1, f"{r.age:g}",
                f"{r.qc:.4f}", f"{sum(r.volumes_ml.values()):.3f}",
                "n/a" if dice is None else f"{dice:.4f}"])
  return header, out


def write_study_tables(out_dir, rows, extra, found, rules, names) -> None:
  """``volumes.tsv``, ``qc.tsv``, ``flags.tsv``, ``flags.json`` (the rules used) and
  ``dseg.tsv`` (the class of each label value / probseg volume)."""
  for name, (header, table) in (("volumes.tsv", volumes_lib.volume_rows(rows, names)),
                                ("qc.tsv", qc_table(rows, extra)),
                                ("flags.tsv", flags_lib.flag_rows(found)),
                                ("dseg.tsv", (["index", "name"], list(enumerate(names))))):
    files.write_tsv(os.path.join(out_dir, name), header, table)
  files.write_json(os.path.join(out_dir, "flags.json"), rules.to_json())


def report_page(out_dir, meta, result, rows, extra, found, names, worst_count,
                flagged_count) -> str:
  read = lambda name: open(os.path.join(out_dir, name), "rb").read()
  return report_lib.evaluation_page(
      title="Segmentation report", meta=meta, metrics=result, class_names=names,
      flags=flags_lib.flag_rows(found), volumes=volumes_lib.volume_rows(rows, names),
      qc_rows=qc_table(rows, extra), trajectories_png=read("trajectories.png"),
      worst_png=read("qc_worst.png") if worst_count else None, worst_count=worst_count,
      flagged_png=read("flagged.png") if flagged_count else None,
      flagged_count=flagged_count)


# ------------------------------------------------------------------------------- metrics


def summarize_run(cms, agreement, protocol) -> dict:
  """metrics.json: per time point and per split, and temporal consistency (None where no
  voxel is labeled)."""
  names = protocol.class_names
  per_t = []
  for t in range(protocol.num_timepoints):
    per_t.append(dict(timepoint=t + 1, role=protocol.role(t),
                      age=protocol.ages[t] if protocol.ages else None,
                      **metrics_lib.summarize(cms[t], names)))
  pick = lambda ts: metrics_lib.summarize(cms[list(ts)].sum(0), names) if ts else None
  ratio = lambda counts: [None if b == 0 else float(a / b) for a, b in zip(*counts)]
  return {"metrics_available": bool(cms.sum() > 0),
          "test": pick(protocol.test_timepoints), "train": pick(protocol.train_timepoints),
          "per_timepoint": per_t,
          "temporal_consistency": {"prediction": ratio(agreement[0]),
                                   "ground_truth": ratio(agreement[1])}}


# ------------------------------------------------------------------------------- figures


def save_figure(path, subject, seq, pred, protocol, model_name):
  """Fig. 4 layout at the subject's most labeled slice: T1w, T2w, ground truth, prediction."""
  per_slice = seq.label_mask.sum(axis=(1, 2, 3))
  i = int(np.argmax(per_slice)) if per_slice.any() else len(seq) // 2
  rows = range(protocol.num_timepoints)
  columns = [(m, "image", [seq.images[i, t, ..., k] if seq.valid[i, t] else None for t in rows])
             for k, m in enumerate(protocol.modalities)]
  columns.append(("ground truth", "labels",
                  [seq.labels[i, t] if seq.label_mask[i, t].any() else None for t in rows]))
  columns.append((model_name, "labels", [pred[i, t] if seq.valid[i, t] else None for t in rows]))
  labels = [f"{protocol.ages[t]:g}" if protocol.ages else f"t{t + 1}" for t in rows]
  labels = [l + (" (test)" if t in protocol.test_timepoints else "") for t, l in enumerate(labels)]
  figures.montage(path, columns, labels, protocol.num_classes,
                  title=f"sub-{subject.subject_id}, axial slice z={int(seq.slice_index[i])}")


def save_worst_figure(path, worst, protocol,
                      title="least trusted sessions (highest QC score first)"):
  """Sessions as rows (e.g. the least trusted, worst first): each modality, the prediction
  and the uncertainty at the session's most uncertain axial slice of its working grid."""
  columns = [(m, "image", [p.images[k] for _, p in worst])
             for k, m in enumerate(protocol.modalities)]
  columns.append(("prediction", "labels", [p.labels for _, p in worst]))
  columns.append(("uncertainty (0 black, 1 yellow)", "map", [p.uncertainty for _, p in worst]))
  rows = [f"sub-{r.subject} ses-{r.session}\nz={p.z}, QC {r.qc:.3f}" for r, p in worst]
  figures.montage(path, columns, rows, protocol.num_classes, title=title)
