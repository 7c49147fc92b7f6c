"""A segmented study's files, written as each session comes, and the study's tables, figures,
report and scores once every subject is done (:class:`StudyWriter`).

Layout: a session arrives with its class probabilities ``float32 [X, Y, Z, c]``, labels
``int32 [X, Y, Z]`` and uncertainty ``float32 [X, Y, Z]`` on its own canonical grid (what
:mod:`fcslstm_jax.infer.pipeline` resamples back), and its working-grid probabilities
``[Z, X, Y, c]`` for the report's preview. Written per session, BIDS derivative names with
the session's original orientation, affine and header: ``*_desc-<model>_dseg``,
``*_label-uncertainty_desc-<model>_probseg`` (optionally ``*_desc-<model>_probseg``), each
with its JSON sidecar. Per study: ``volumes.tsv``, ``qc.tsv``, ``flags.tsv`` and
``flags.json`` (:mod:`fcslstm_jax.outputs.flags`), figures, ``report.html``, the BIDS
derivative's ``dataset_description.json``, ``dseg.tsv``, ``README`` and ``.bidsignore``
(:mod:`fcslstm_jax.outputs.bids`) and ``metrics.json`` (last: it marks a complete output).
Labels are scored on each session's own grid, against its label file: per time point, and
per group of sessions (:data:`GROUPS`) with the tissue volumes against the label file's
(``volumes_truth.tsv``).
"""

import dataclasses
import datetime
import os
import time
from typing import NamedTuple

import numpy as np

from fcslstm_jax import files
from fcslstm_jax import metrics
from fcslstm_jax.data import nifti_io
from fcslstm_jax.data import protocol
from fcslstm_jax.data import study
from fcslstm_jax.outputs import bids
from fcslstm_jax.outputs import figures
from fcslstm_jax.outputs import flags
from fcslstm_jax.outputs import qc
from fcslstm_jax.outputs import report
from fcslstm_jax.outputs import volumes

# Sessions the report shows as montages (the least trusted ones).
WORST_SESSIONS = 4

# metrics.json's whole-volume groups: the test and the training time points of the subjects
# with labels at a training time point in the dataset's own label files, and every session of
# the other subjects (none of whose labels training could use).
GROUPS = ("heldout", "train_timepoints", "unlabeled_subjects")


class StudyWriter:
  """Writes each session's files as :meth:`add_session` receives them and keeps what the
  study's outputs need: the confusion counts per time point, the temporal agreement, the
  ``volumes.tsv`` rows, each session's tissue Dice and preview, and the subject shown in
  ``segmentation.png`` (the first with counted labels). :meth:`finish` writes the rest.

  Args:
    desc: the ``desc-`` of the file names (the model, or ``ensemble``).
    probabilities: also write ``*_probseg.nii.gz`` (float32, one volume per class).
    unlabeled_subjects: ids of the subjects without a label file at a training time point in
      the dataset's own label files (the ``unlabeled_subjects`` group of :data:`GROUPS`).
    source_root: the segmented dataset (the sidecars' ``Sources``).
    run: what each sidecar says of the run(s) (e.g. ``{"Runs": [...]}``).
  """

  def __init__(
    self,
    out_dir: str,
    desc: str,
    proto,
    probabilities: bool = False,
    unlabeled_subjects=(),
    *,
    source_root: str = ".",
    run: dict | None = None,
  ):
    self.out_dir, self.desc, self.protocol = out_dir, desc, proto
    self.probabilities = probabilities
    self.sidecar = Sidecar(source_root, dict(run or {}))
    # First: a killed evaluation's *_dseg files are then already marked as this tool's
    # (never read as labels: fcslstm_jax.data.layout.label_pipelines).
    bids.write_dataset_files(
      out_dir, source_root, zip(protocol.class_values(proto).tolist(), proto.class_names)
    )
    self.unlabeled = frozenset(unlabeled_subjects)
    t, c = proto.num_timepoints, proto.num_classes
    self.cms = np.zeros((t, c, c))
    self.group_cms = {g: np.zeros((c, c)) for g in GROUPS}
    self.group_sessions = dict.fromkeys(GROUPS, 0)
    self.truth, self.uncompared = [], 0  # TruthVolumes; scored sessions with slice labels
    self.agreement = [np.zeros((2, t - 1)) for _ in range(2)]  # prediction, ground truth
    self.rows, self.extra, self.previews = [], {}, {}
    self.figure = None  # (subject, sequences, working-grid prediction)

  def add_session(self, subject_id, t, session, probs, labels, uncertainty, working_probs):
    """One session's outputs on its own grid (see the module docstring), at time point ``t``."""
    names = self.protocol.class_names
    write_session(
      self.out_dir,
      self.desc,
      subject_id,
      session,
      probs,
      labels,
      uncertainty,
      self.probabilities,
      self.sidecar,
      self.protocol,
    )
    truth = load_truth(session, self.protocol)
    cm = None if truth is None else scores(labels, truth, len(names))
    row = session_row(subject_id, session, labels, uncertainty, names)
    self.rows.append(row)
    if cm is not None:
      self.cms[t] += cm
      self.add_truth(row, t, labels, truth, cm)
    key = (subject_id, session.label)
    self.extra[key] = tissue_dice(cm)
    self.previews[key] = preview(session, working_probs)

  def add_truth(self, row, t, labels, truth, cm):
    """A scored session's confusion counts in its group and, where its label file is a
    whole volume (:func:`fcslstm_jax.outputs.volumes.is_whole_volume`), its true volumes."""
    names = self.protocol.class_names
    group = session_group(self.protocol, self.unlabeled, row.subject, t)
    if group is not None:
      self.group_cms[group] += cm
      self.group_sessions[group] += 1
    if not volumes.is_whole_volume(truth.data):
      self.uncompared += 1
      return
    ml = volumes.class_volumes_ml(truth.data, truth.ref.affine, len(names))
    self.truth.append(
      volumes.TruthVolumes(
        row.subject,
        row.session,
        row.age,
        group,
        dict(row.volumes_ml),
        {n: float(v) for n, v in zip(names[1:], ml[1:])},
      )
    )

  def add_subject(self, subject, seq, pred):
    """A subject's temporal agreement: its slice sequences ``seq`` and their predicted class
    map ``pred [Z, T, X, Y]`` on the working grid."""
    mask = seq.label_mask * seq.valid[:, :, None, None]
    for counts, seg in zip(self.agreement, (pred, seq.labels)):
      counts += metrics.temporal_agreement(seg, mask)
    if self.figure is None or (self.figure[1].label_mask.sum() == 0 < seq.label_mask.sum()):
      self.figure = (subject, seq, pred)

  def finish(self, rules, log, run_fields: dict, sources: dict, meta, started: float) -> dict:
    """Flags (also logged), tables, figures, ``report.html`` (unless ``meta`` is None: its
    header lines) and ``metrics.json``; returns the metrics.

    Args:
      run_fields, sources: what ``metrics.json`` says of the run(s) and of the labels and
        output folder, before and after the counts of predictions and flags.
      started: ``time.monotonic()`` at the start, for the seconds taken.
    """
    proto, names, out_dir = self.protocol, self.protocol.class_names, self.out_dir
    found = flags.check(self.rows, rules, names)
    for f in found:
      log(f.line())
    result = summarize_run(self.cms, self.agreement, proto)
    result["whole_volume"] = (
      whole_volume_summary(self.group_cms, self.group_sessions, self.truth, self.uncompared, names)
      if result["metrics_available"]
      else None
    )
    result.update(run_fields)
    result.update(predictions=len(self.rows), flags=len(found))
    result.update(sources)
    write_study_tables(out_dir, self.rows, self.extra, found, rules, names)
    truth_tsv = os.path.join(out_dir, "volumes_truth.tsv")
    if self.truth:
      files.write_tsv(truth_tsv, *volumes.truth_rows(self.truth, names))
    elif os.path.exists(truth_tsv):
      os.unlink(truth_tsv)  # an earlier evaluation's, into the same folder
    with files.atomic_path(os.path.join(out_dir, "segmentation.png")) as path:
      save_figure(path, *self.figure, proto, self.desc)
    n_worst, n_flagged = write_study_figures(out_dir, self.rows, found, self.previews, proto)
    result["seconds"] = round(time.monotonic() - started, 1)
    if meta is not None:
      meta = list(meta) + [
        f"written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{result['seconds']:.0f} s"
      ]
      files.write_text(
        os.path.join(out_dir, "report.html"),
        report_page(out_dir, meta, result, self.rows, self.extra, found, names, n_worst, n_flagged),
      )
    files.write_json(os.path.join(out_dir, "metrics.json"), result)  # last: marks it complete
    return result


# ------------------------------------------------------------------------------ sessions


def output_path(
  out_dir: str, subject_id: str, session_label: str, desc: str, suffix: str, label: str = ""
) -> str:
  """BIDS derivative name:
  ``sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>[_label-<label>]_desc-<desc>_<suffix>.nii.gz``."""
  entity = f"_label-{label}" if label else ""
  name = f"sub-{subject_id}_ses-{session_label}{entity}_desc-{desc}_{suffix}.nii.gz"
  return os.path.join(out_dir, f"sub-{subject_id}", f"ses-{session_label}", "anat", name)


@dataclasses.dataclass(frozen=True)
class Sidecar:
  """What the JSON sidecars of a study's outputs share: the dataset their sources are in and
  what they say of the run(s)."""

  source_root: str
  run: dict

  def write(self, nifti_path, text, session) -> None:
    sources = [bids.source_uri(p, self.source_root) for p in session.paths.values()]
    reference = bids.source_uri(next(iter(session.paths.values())), self.source_root)
    bids.write_sidecar(nifti_path, text, sources, reference, self.run)


UNCERTAINTY_TEXT = (
  "Voxel-wise uncertainty in [0, 1] (not a probability of a class): the entropy of the "
  "class probabilities divided by log(number of classes); 0 = one class certain, 1 = all "
  "equally likely. Stored uint8 with a scale factor (steps of 1/255)."
)


def write_session(
  out_dir,
  desc,
  subject_id,
  session,
  probs,
  labels,
  uncertainty,
  probabilities: bool,
  sidecar: Sidecar | None = None,
  proto=None,
) -> None:
  """The session's dseg, uncertainty (uint8, 256 steps: a map to look at, not to compute
  with) and, if asked, probseg files on its input grid and header, each with its JSON
  sidecar (unless ``sidecar`` is None). The dseg holds the label files' own values
  (``proto.label_values``; class indices 0..c-1 without them). Not asked, a probseg file an
  earlier evaluation wrote under the same name is removed (``out_dir`` lies outside the
  inputs: :func:`fcslstm_jax.files.check_output_dir`), so that no output describes another
  run."""

  def path(suffix, label=""):
    return output_path(out_dir, subject_id, session.label, desc, suffix, label)

  values = protocol.class_values(proto) if proto is not None else np.arange(probs.shape[-1])
  written = []
  with files.naming(path("dseg")) as p:
    nifti_io.save_like(p, values[labels], session.ref, num_classes=int(values.max()) + 1)
    written.append((p, "Tissue labels (values in dseg.tsv): the most probable class."))
  with files.naming(path("probseg", bids.UNCERTAINTY_LABEL)) as p:
    nifti_io.save_float_like(p, uncertainty, session.ref, np.uint8)
    written.append((p, UNCERTAINTY_TEXT))
  if probabilities:
    with files.naming(path("probseg")) as p:
      nifti_io.save_float_like(p, probs, session.ref)
      written.append((p, "Class probabilities, one volume per row of dseg.tsv, in its order."))
  else:
    for stale in (path("probseg"), bids.sidecar_path(path("probseg"))):
      if os.path.exists(stale):
        os.unlink(stale)  # an earlier evaluation's, into the same --out: now stale
  if sidecar is not None:
    for p, text in written:
      sidecar.write(p, text, session)


def session_row(subject_id, session, labels, uncertainty, names) -> volumes.SessionVolumes:
  """The session's ``volumes.tsv`` row: tissue volumes on its input grid, QC score."""
  ml = volumes.class_volumes_ml(labels, session.ref.affine, len(names))
  return volumes.SessionVolumes(
    subject=subject_id,
    session=session.label,
    timepoint=session.timepoint,
    age=session.age,
    volumes_ml={n: float(v) for n, v in zip(names[1:], ml[1:])},
    qc=qc.qc_score(uncertainty, labels),
  )


class Truth(NamedTuple):
  """A session's label file as classes: ``data`` ``int32 [X, Y, Z]`` on its own canonical
  grid, ``drawn`` bool (False at the protocol's ignore value), the file's header ``ref``."""

  data: np.ndarray
  drawn: np.ndarray
  ref: object


def load_truth(session, proto=None):
  """The session's label file mapped to classes (:func:`fcslstm_jax.data.protocol.to_classes`;
  the values are the class indices when ``proto`` is None), or None without one."""
  if "dseg" not in session.paths:
    return None
  volume = nifti_io.load_volume(session.paths["dseg"], kind="labels")
  if proto is None:
    return Truth(volume.data, np.ones(volume.data.shape, bool), volume.ref)
  classes, drawn = protocol.to_classes(volume.data, proto, volume.path)
  return Truth(classes, drawn, volume.ref)


def score_against(pred, truth, num_classes, whole: bool = False, drawn=None):
  """Confusion matrix of ``pred`` against ``truth`` (both ``[X, Y, Z]``) over every axial
  slice holding a label, or over every voxel when ``truth`` is a whole volume
  (:func:`fcslstm_jax.outputs.volumes.is_whole_volume`): tissue predicted on a slice with no
  brain is a false positive there, as it is in the volumes. ``drawn`` (bool ``[X, Y, Z]``):
  only those voxels count (the ignore value's are left out)."""
  mask = np.zeros(truth.shape, np.float32)
  mask[:, :, slice(None) if whole else study.labeled_slices(truth)] = 1.0
  if drawn is not None:
    mask *= drawn
  return metrics.confusion_counts(pred, truth, mask, num_classes)


def scores(pred, truth: Truth, num_classes):
  """:func:`score_against` a loaded :class:`Truth` (whole or sparse as its file is)."""
  whole = volumes.is_whole_volume(truth.data)
  return score_against(pred, truth.data, num_classes, whole, truth.drawn)


def native_scores(pred, session, num_classes, proto=None):
  """Confusion matrix of a native-grid prediction against the session's label file, over
  every labeled axial slice (None without labels)."""
  truth = load_truth(session, proto)
  return None if truth is None else scores(pred, truth, num_classes)


def session_group(proto, unlabeled, subject_id, t):
  """The whole-volume group of a session at time point ``t`` (:data:`GROUPS`), or None for
  a labeled subject's time point that is neither a training nor a test one."""
  if subject_id in unlabeled:
    return "unlabeled_subjects"
  return {"test": "heldout", "train": "train_timepoints"}.get(proto.role(t))


def tissue_dice(cm):
  """Mean Dice of the tissue classes present in the labels (None without labels)."""
  if cm is None or cm.sum() == 0:
    return None
  d = metrics.dice_per_class(cm)[1:]
  return None if np.all(np.isnan(d)) else float(np.nanmean(d))


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
  unc = qc.normalized_entropy(probs)
  seen = np.moveaxis(session.image, 2, 0).any(axis=(1, 2, 3))  # [Z]
  per_slice = np.where(labels > 0, unc, 0.0).sum(axis=(1, 2)) * seen
  z = int(np.argmax(per_slice)) if per_slice.any() else probs.shape[0] // 2
  images = [session.image[:, :, z, k] for k in range(session.image.shape[-1])]
  return Preview(images, labels[z], unc[z], z)


def write_study_figures(out_dir, rows, found, previews, proto) -> tuple:
  """``trajectories.png``, ``qc_worst.png`` (the least trusted sessions) and ``flagged.png``
  (the first flagged ones; removed when nothing is flagged). Returns how many sessions
  each montage shows."""
  names = proto.class_names
  flagged = {(f.subject, f.session, f.cls) for f in found}
  with files.atomic_path(os.path.join(out_dir, "trajectories.png")) as path:
    figures.trajectories(
      path, rows, names, flagged, "months" if proto.name in protocol.BUILTIN else None
    )
  by_key = {(r.subject, r.session): r for r in rows}
  worst = [(r.subject, r.session) for r in qc.worst_first(rows)[:WORST_SESSIONS]]
  with files.atomic_path(os.path.join(out_dir, "qc_worst.png")) as path:
    save_worst_figure(path, [(by_key[k], previews[k]) for k in worst], proto)
  shown = list(dict.fromkeys((f.subject, f.session) for f in found))[:WORST_SESSIONS]
  flagged_png = os.path.join(out_dir, "flagged.png")
  if shown:
    with files.atomic_path(flagged_png) as path:
      save_worst_figure(
        path,
        [(by_key[k], previews[k]) for k in shown],
        proto,
        title="flagged sessions (first ones of flags.tsv)",
      )
  elif os.path.exists(flagged_png):
    os.unlink(flagged_png)  # an earlier evaluation's, into the same folder
  return len(worst), len(shown)


# -------------------------------------------------------------------------------- tables


def qc_table(rows, extra) -> tuple:
  """``(header, rows)`` of ``qc.tsv``: sessions worst first (rank 1 = least trusted)."""
  header = ["rank", "subject", "session", "timepoint", "age", "qc", "total_ml", "dice_tissues"]
  out = []
  for k, r in enumerate(qc.worst_first(rows), 1):
    dice = extra.get((r.subject, r.session))
    out.append(
      [
        k,
        f"sub-{r.subject}",
        f"ses-{r.session}",
        r.timepoint + 1,
        f"{r.age:g}",
        f"{r.qc:.4f}",
        f"{sum(r.volumes_ml.values()):.3f}",
        "n/a" if dice is None else f"{dice:.4f}",
      ]
    )
  return header, out


def write_study_tables(out_dir, rows, extra, found, rules, names) -> None:
  """``volumes.tsv``, ``qc.tsv``, ``flags.tsv`` and ``flags.json`` (the rules used)."""
  for name, (header, table) in (
    ("volumes.tsv", volumes.volume_rows(rows, names)),
    ("qc.tsv", qc_table(rows, extra)),
    ("flags.tsv", flags.flag_rows(found)),
  ):
    files.write_tsv(os.path.join(out_dir, name), header, table)
  files.write_json(os.path.join(out_dir, "flags.json"), rules.to_json())


def report_page(
  out_dir, meta, result, rows, extra, found, names, worst_count, flagged_count
) -> str:
  def read(name):
    return open(os.path.join(out_dir, name), "rb").read()

  return report.evaluation_page(
    title="Segmentation report",
    meta=meta,
    metrics=result,
    class_names=names,
    flags=flags.flag_rows(found),
    volumes=volumes.volume_rows(rows, names),
    qc_rows=qc_table(rows, extra),
    trajectories_png=read("trajectories.png"),
    worst_png=read("qc_worst.png") if worst_count else None,
    worst_count=worst_count,
    flagged_png=read("flagged.png") if flagged_count else None,
    flagged_count=flagged_count,
  )


# ------------------------------------------------------------------------------- metrics


def summarize_run(cms, agreement, proto) -> dict:
  """metrics.json: per time point and per split, and temporal consistency (None where no
  voxel is labeled)."""
  names = proto.class_names
  per_t = []
  for t in range(proto.num_timepoints):
    per_t.append(
      dict(
        timepoint=t + 1,
        role=proto.role(t),
        age=proto.ages[t] if proto.ages else None,
        **metrics.summarize(cms[t], names),
      )
    )

  def pick(ts):
    return metrics.summarize(cms[list(ts)].sum(0), names) if ts else None

  def ratio(counts):
    return [None if b == 0 else float(a / b) for a, b in zip(*counts)]

  return {
    "metrics_available": bool(cms.sum() > 0),
    "test": pick(proto.test_timepoints),
    "train": pick(proto.train_timepoints),
    "per_timepoint": per_t,
    "temporal_consistency": {
      "prediction": ratio(agreement[0]),
      "ground_truth": ratio(agreement[1]),
    },
  }


def whole_volume_summary(group_cms, group_sessions, truth, uncompared, names) -> dict:
  """metrics.json's ``whole_volume``: per group (:data:`GROUPS`; None without a scored
  session) its sessions, :func:`fcslstm_jax.metrics.summarize` of its confusion counts, and
  the tissue volume errors of the sessions whose label file is a whole volume (``volume_error``
  mean |pred - true| / true, ``volume_bias`` its signed mean); ``growth_error`` per subject
  kind (labeled or unlabeled subjects, every compared session of a subject); how many scored
  sessions were left out of the volumes (slice labels only)."""
  tissues = list(names[1:])

  def per(v):
    return {n: None if np.isnan(x) else float(x) for n, x in zip(tissues, v)}

  def arrays(recs):
    return (
      np.array([[r.predicted_ml[n] for n in tissues] for r in recs]).reshape(-1, len(tissues)),
      np.array([[r.true_ml[n] for n in tissues] for r in recs]).reshape(-1, len(tissues)),
    )

  out = {}
  for g in GROUPS:
    if not group_sessions[g]:
      out[g] = None
      continue
    mine = [r for r in truth if r.group == g]
    error, bias = volumes.volume_errors(*arrays(mine))
    out[g] = dict(
      sessions=group_sessions[g],
      **metrics.summarize(group_cms[g], names),
      volume_sessions=len(mine),
      volume_error=per(error),
      volume_bias=per(bias),
    )
  growth = {}
  for kind, mine in (
    ("labeled_subjects", [r for r in truth if r.group != GROUPS[2]]),
    ("unlabeled_subjects", [r for r in truth if r.group == GROUPS[2]]),
  ):
    error, counted = volumes.growth_errors(
      [r.subject for r in mine], [r.age for r in mine], *arrays(mine)
    )
    growth[kind] = (
      None
      if not counted.any()
      else dict(subjects={n: int(k) for n, k in zip(tissues, counted)}, error=per(error))
    )
  out["growth_error"] = growth
  out["volumes_not_compared"] = uncompared
  return out


# ------------------------------------------------------------------------------- figures


def save_figure(path, subject, seq, pred, proto, model_name):
  """Fig. 4 layout at the subject's most labeled slice: T1w, T2w, ground truth, prediction."""
  per_slice = seq.label_mask.sum(axis=(1, 2, 3))
  i = int(np.argmax(per_slice)) if per_slice.any() else len(seq) // 2
  rows = range(proto.num_timepoints)
  own = seq.images[i, ..., seq.own_channels(len(proto.modalities))]  # [T, H, W, M]
  columns = [
    (m, "image", [own[t, ..., k] if seq.valid[i, t] else None for t in rows])
    for k, m in enumerate(proto.modalities)
  ]
  columns.append(
    (
      "ground truth",
      "labels",
      [seq.labels[i, t] if seq.label_mask[i, t].any() else None for t in rows],
    )
  )
  columns.append((model_name, "labels", [pred[i, t] if seq.valid[i, t] else None for t in rows]))
  labels = [f"{proto.ages[t]:g}" if proto.ages else f"t{t + 1}" for t in rows]
  labels = [
    label + (" (test)" if t in proto.test_timepoints else "") for t, label in enumerate(labels)
  ]
  figures.montage(
    path,
    columns,
    labels,
    proto.num_classes,
    title=f"sub-{subject.subject_id}, axial slice z={int(seq.slice_index[i])}",
  )


def save_worst_figure(path, worst, proto, title="least trusted sessions (highest QC score first)"):
  """Sessions as rows (e.g. the least trusted, worst first): each modality, the prediction
  and the uncertainty at the session's most uncertain axial slice of its working grid."""
  columns = [(m, "image", [p.images[k] for _, p in worst]) for k, m in enumerate(proto.modalities)]
  columns.append(("prediction", "labels", [p.labels for _, p in worst]))
  columns.append(("uncertainty (0 black, 1 yellow)", "map", [p.uncertainty for _, p in worst]))
  rows = [f"sub-{r.subject} ses-{r.session}\nz={p.z}, QC {r.qc:.3f}" for r, p in worst]
  figures.montage(path, columns, rows, proto.num_classes, title=title)
