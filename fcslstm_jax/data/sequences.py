"""Subjects -> axial slice sequences over time, the model's input; split summaries and checks.

A sequence is one axial slice ``z`` of one subject's working grid at all T time points,
``[T, H, W, C]`` (channels-last; ``[H, W] = [X, Y]`` canonical; C: the modalities, of
neighbouring slices too and with the session's age where the run asks, :class:`Inputs`).
For a split (``"train"``, ``"test"``), there is a sequence for every (subject, z) where some
time point *of that split* has counted labels at ``z``
(:attr:`fcslstm_jax.data.study.Session.label_mask`); its loss mask is 1 exactly where those
time points are labeled, so a held-out time point's labels never reach training arrays, nor
the choice of slices. ``"all"`` gives every slice of every subject with every labeled voxel
(whole-volume inference and evaluation). Subjects of different in-plane size are
zero-padded (centered, mask 0) to one size for batching.
"""

import dataclasses
from typing import Optional

import numpy as np

from fcslstm_jax.data import propagate
from fcslstm_jax.data import protocol
from fcslstm_jax.errors import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class SliceSet:
  """Axial slice sequences. N sequences of T time points.

  Attributes:
    images: ``float32 [N, T, H, W, C]``; zeros for missing sessions.
    labels: ``int32 [N, T, H, W]``; 0 wherever ``label_mask`` is 0 (labels a split may
      not see are not in the array at all).
    label_mask: ``float32 [N, T, H, W]``; 1 where the voxel is labeled, its time point
      belongs to the split and its slice counts under the protocol.
    valid: ``bool [N, T]``; False for a missing session, and where the sequence's slice lies
      outside the session's field of view (:attr:`fcslstm_jax.data.study.Session.in_view`: a
      cropped session's blank slices are not time points).
    subject_ids: N subject ids.
    slice_index: ``int32 [N]`` axial (z) index of each sequence on its subject's working grid.
    session_labels: ``str [N, T]`` session label at each time point (``""`` where missing),
      so that errors can name the scan (``sub-<id> ses-<label>``).
    offsets: ``int32 [N, 2]`` where the subject's ``[X, Y]`` starts inside ``[H, W]``
      (centered zero padding).
    context: neighbouring slices on each side held in ``images``' channels
      (:attr:`Inputs.context`); the slice's own modalities are :meth:`own_channels`.
  """

  images: np.ndarray
  labels: np.ndarray
  label_mask: np.ndarray
  valid: np.ndarray
  subject_ids: tuple
  slice_index: np.ndarray
  session_labels: Optional[np.ndarray] = None
  offsets: Optional[np.ndarray] = None
  context: int = 0

  def __len__(self):
    return self.images.shape[0]

  def own_channels(self, num_modalities: int) -> slice:
    """The channels of ``images`` that hold each sequence's own slice, one per modality."""
    return slice(self.context * num_modalities, (self.context + 1) * num_modalities)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What a network's input holds besides each slice's modalities.

  Attributes:
    ages: one more channel, each session's age (:func:`with_age_channel`; for
      ``Config.age_input``).
    context: 2.5D, ``k`` working slices on each side of a sequence's slice as more channels
      (``Config.context_slices``; :func:`with_context`).
  """

  ages: bool = False
  context: int = 0

  @classmethod
  def of(cls, config) -> "Inputs":
    """The inputs of a run of ``config`` (a :class:`fcslstm_jax.config.Config`)."""
    return cls(ages=config.age_input != "none", context=config.context_slices)

  def channels(self, num_modalities: int) -> int:
    """Input channels: the modalities of ``2 * context + 1`` slices, then the age."""
    return num_modalities * (2 * self.context + 1) + self.ages


def with_context(image: np.ndarray, zs: np.ndarray, context: int) -> np.ndarray:
  """``[len(zs), X, Y, (2k + 1) C]``: for each slice ``z`` of ``zs``, ``image [X, Y, Z, C]``
  at ``z - k .. z + k`` (``k = context``; the first and last slice repeated past the volume's
  ends), channels slice-major (slice ``z - k``'s modalities first).

  Ours: the paper segments each slice from its own image (Sec. 2); "2.5D" neighbours (issue
  33) give the 2D network the anatomy just above and below. On a
  training time point a labeled working slice shows its labeled plane
  (:func:`fcslstm_jax.data.study.with_label_planes`), its neighbours the working grid's."""
  offsets = np.arange(-context, context + 1)
  idx = np.clip(np.asarray(zs)[:, None] + offsets[None, :], 0, image.shape[2] - 1)  # [N, S]
  planes = image[:, :, idx]  # [X, Y, N, S, C]
  return np.moveaxis(planes, 2, 0).reshape(len(zs), *image.shape[:2], len(offsets) * image.shape[3])


def labeled_z(subject, timepoints) -> np.ndarray:
  """Positions along the sessions' z axis where a session at ``timepoints`` has counted
  labels (:meth:`fcslstm_jax.data.study.Subject.working_z` turns them into working-grid z)."""
  zs = [
    np.flatnonzero(s.label_mask.any(axis=(0, 1)))
    for t, s in enumerate(subject.timepoints)
    if t in timepoints and s is not None and s.label_mask is not None
  ]
  return np.unique(np.concatenate(zs)) if zs else np.array([], np.int64)


def _pad_offsets(shape, size):
  return tuple((s - n) // 2 for n, s in zip(shape, size))


def _subject_sequences(
  subject, protocol, split, size, every_slice=False, inputs=Inputs(), propagation=None
):
  """``(images, labels, mask, valid, zs, offsets)`` of one subject, padded to ``size`` (with
  ``inputs.ages``, the images carry :func:`with_age_channel`, with ``inputs.context``
  :func:`with_context`; with ``propagation`` ``(weight, erosion)``, each labeled slice
  labels the subject's other sessions too: :mod:`fcslstm_jax.data.propagate`)."""
  seen = protocol.timepoints(split)
  depth = subject.sessions[0].image.shape[2]
  zs = np.arange(depth) if split == "all" or every_slice else labeled_z(subject, seen)
  if inputs.context and subject.z_index is not None:
    raise DataError(
      f"{subject.path}: loaded with its labeled slices only; neighbouring slices as input "
      "(context_slices) need every slice (study.load_study(..., keep='all'))."
    )
  x, y = subject.grid.shape[:2]
  ox, oy = _pad_offsets((x, y), size)
  t_count, c = protocol.num_timepoints, len(protocol.modalities) * (2 * inputs.context + 1)
  images = np.zeros((len(zs), t_count) + tuple(size) + (c,), np.float32)
  labels = np.zeros((len(zs), t_count) + tuple(size), np.int32)
  mask = np.zeros((len(zs), t_count) + tuple(size), np.float32)
  region = (slice(None), slice(ox, ox + x), slice(oy, oy + y))
  for t, session in enumerate(subject.timepoints):
    if session is None:
      continue
    images[(slice(None), t) + region[1:]] = with_context(session.image, zs, inputs.context)
    if session.labels is None or t not in seen:
      continue
    labels[(slice(None), t) + region[1:]] = np.moveaxis(session.labels[:, :, zs], 2, 0)
    mask[(slice(None), t) + region[1:]] = np.moveaxis(session.label_mask[:, :, zs], 2, 0)
  valid = np.stack(
    [np.zeros(len(zs), bool) if s is None else in_view(s)[zs] for s in subject.timepoints], axis=1
  )  # [len(zs), T]
  if propagation is not None and propagation[0] > 0:
    months = [0.0 if s is None else s.age for s in subject.timepoints]
    labels, mask = propagate.propagate(labels, mask, valid, months, seen, *propagation)
  if inputs.ages:
    months = [0.0 if s is None else s.age for s in subject.timepoints]
    images = with_age_channel(images, months, valid)
  return images, labels, mask, valid, subject.working_z(zs), (ox, oy)


MONTHS_PER_YEAR = 12.0


def with_age_channel(images: np.ndarray, ages_months, valid) -> np.ndarray:
  """``images [N, T, ..., C]`` with one more channel, constant over each slice: each valid
  time point's age in years (ages in months, the shipped protocols' unit; 0 where not
  valid), the input of ``Config.age_input`` (:mod:`fcslstm_jax.model.age`).
  ``ages_months [N, T]`` (or ``[T]``), ``valid [N, T]``."""
  ages = np.broadcast_to(np.asarray(ages_months, np.float32), images.shape[:2])
  years = np.where(valid, ages / MONTHS_PER_YEAR, 0.0).astype(np.float32)
  channel = np.broadcast_to(
    years.reshape(years.shape + (1,) * (images.ndim - 2)), images.shape[:-1] + (1,)
  )
  return np.concatenate([images, channel], axis=-1)


def age_range(subjects) -> tuple | None:
  """``(youngest, oldest)`` session age of ``subjects`` (None without sessions)."""
  ages = [s.age for subject in subjects for s in subject.sessions]
  return (float(min(ages)), float(max(ages))) if ages else None


def ages_outside(subjects, seen) -> list:
  """Warning lines for the sessions whose age lies outside ``seen`` ``(youngest, oldest)``:
  a model that takes the age as input extrapolates there."""
  lo, hi = seen
  return [
    f"warning: sub-{subject.subject_id} ses-{s.label}: age {s.age:g} lies outside the ages "
    f"the model trained on ({lo:g} to {hi:g}); its age input extrapolates"
    for subject in subjects
    if subject.grid is not None
    for s in subject.sessions
    if not lo <= s.age <= hi
  ]


def in_view(session) -> np.ndarray:
  """``bool [Z]``: the slices of the session's arrays inside its field of view."""
  if session.in_view is None:
    return np.ones(session.image.shape[2], bool)
  return np.asarray(session.in_view, bool)


def in_plane_size(subjects) -> tuple:
  """The largest ``(X, Y)`` of the subjects' working grids."""
  shapes = [s.grid.shape[:2] for s in subjects if s.grid is not None]
  return tuple(int(v) for v in np.max(shapes, axis=0)) if shapes else (0, 0)


def make_sequences(
  subjects, protocol, split, size=None, every_slice=False, inputs=Inputs(), propagation=None
) -> SliceSet:
  """Axial slice sequences for a split (see the module docstring).

  Args:
    subjects: :class:`fcslstm_jax.data.study.Subject` list.
    protocol: a :class:`~fcslstm_jax.data.protocol.Protocol`.
    split: ``"train"``, ``"test"`` or ``"all"``.
    size: ``(H, W)`` to pad every slice to; default: the largest subject.
    every_slice: a sequence for every slice of every subject, labeled or not, still with
      the split's labels only (the unlabeled pool of self-training,
      :mod:`fcslstm_jax.train.pseudo_labels`).
    inputs: what the images hold besides each slice's modalities (:class:`Inputs`: the
      session's age, neighbouring slices).
    propagation: ``(weight, erosion)``: each labeled slice's labels also label the subject's
      other sessions on that slice (:mod:`fcslstm_jax.data.propagate`; training).

  Returns:
    A :class:`SliceSet` (possibly empty: N = 0).
  """
  protocol.timepoints(split)  # validates split
  subjects = [s for s in subjects if s.grid is not None]
  size = tuple(size) if size is not None else in_plane_size(subjects)
  for s in subjects:
    if any(n > m for n, m in zip(s.grid.shape[:2], size)):
      raise DataError(
        f"{s.path}: working grid {s.grid.shape[:2]} larger than the batch size {size}."
      )
  parts = [
    (s, _subject_sequences(s, protocol, split, size, every_slice, inputs, propagation))
    for s in subjects
  ]
  parts = [(s, p) for s, p in parts if len(p[4])]
  t, c = protocol.num_timepoints, inputs.channels(len(protocol.modalities))
  if not parts:

    def empty(*shape, dtype=np.float32):
      return np.zeros((0,) + shape, dtype)

    return SliceSet(
      images=empty(t, *size, c),
      labels=empty(t, *size, dtype=np.int32),
      label_mask=empty(t, *size),
      valid=empty(t, dtype=bool),
      subject_ids=(),
      slice_index=empty(dtype=np.int32),
      session_labels=empty(t, dtype=str),
      offsets=empty(2, dtype=np.int32),
      context=inputs.context,
    )

  def cat(i):
    return np.concatenate([p[i] for _, p in parts])

  def repeat(v, p):
    return np.broadcast_to(v, (len(p[4]),) + np.shape(v))

  return SliceSet(
    images=cat(0),
    labels=cat(1),
    label_mask=cat(2),
    valid=cat(3),
    subject_ids=tuple(s.subject_id for s, p in parts for _ in p[4]),
    slice_index=cat(4).astype(np.int32),
    session_labels=np.concatenate(
      [repeat(np.array([ses.label if ses else "" for ses in s.timepoints]), p) for s, p in parts]
    ),
    offsets=np.concatenate([repeat(np.array(p[5], np.int32), p) for _, p in parts]),
    context=inputs.context,
  )


# ------------------------------------------------------------------------------ summaries


def split_counts(subjects, protocol, split) -> np.ndarray:
  """``int64 [4 + c]``: subjects, sessions, labeled slices, voxels, then labeled voxels per
  class, of the split's time points (a vector, so processes can sum it)."""
  c = protocol.num_classes
  out = np.zeros(4 + c, np.int64)
  for subject in subjects:
    seen = False
    for t, s in enumerate(subject.timepoints):
      if t not in protocol.timepoints(split) or s is None or s.label_mask is None:
        continue
      m = s.label_mask > 0
      if not m.any():
        continue
      seen = True
      out[1] += 1
      out[2] += int(m.any(axis=(0, 1)).sum())
      out[3] += int(m.sum())
      out[4:] += np.bincount(s.labels[m].ravel(), minlength=c)[:c]
    out[0] += seen
  return out


def format_counts(counts, protocol, split) -> str:
  subjects, sessions, slices, voxels = (int(v) for v in counts[:4])
  per_class = ", ".join(f"{n} {int(v)}" for n, v in zip(protocol.class_names, counts[4:]))
  times = ", ".join(str(t + 1) for t in protocol.timepoints(split)) or "none"
  return (
    f"{split} (time points {times}): {subjects} subjects, {sessions} sessions, "
    f"{slices} labeled slices; labeled voxels: {per_class}"
  )


def check_training_labels(counts, protocol, root) -> None:
  """Refuses (before anything compiles) a training split without labels, or with a class
  that has no labeled voxel (its class weight would be 0: never learned)."""
  times = ", ".join(str(t + 1) for t in protocol.train_timepoints) or "none"
  if counts[3] == 0:
    raise DataError(
      f"{root}: no labeled voxel at the training time points ({times}) of protocol "
      f"{protocol.name}. Add *_dseg.nii.gz files under {root}/derivatives/<name>/ for "
      "sessions of those time points, or change the protocol's train_timepoints."
    )
  missing = [
    f"{n} ({i})" for i, (n, v) in enumerate(zip(protocol.class_names, counts[4:])) if v == 0
  ]
  if missing:
    raise DataError(
      f"{root}: class {', '.join(missing)} has no labeled voxel at the training time points "
      f"({times}); training could never learn it. Check num_classes and class_names in the "
      "protocol, or label that class in some training session."
    )


def unlabeled_subjects(study) -> list:
  """Ids of the subjects with no label file at a training time point (all processes)."""

  out = []
  for f in study.files:
    slots, _ = protocol.assign_sessions(f.sessions, study.protocol, f.subject_id, f.path)
    if not any(
      s is not None and s.dseg for t, s in enumerate(slots) if t in study.protocol.train_timepoints
    ):
      out.append(f.subject_id)
  return out


def describe_study(study, counts=None) -> str:
  """The start-up summary: protocol, grids, each split's counts, who takes no part."""
  p = study.protocol
  spacing = (
    "native (per subject)"
    if study.options.spacing == "native"
    else " x ".join(f"{v:g}" for v in study.options.spacing) + " mm"
  )
  sessions = sum(len(f.sessions) for f in study.files)
  lines = [
    f"{len(study.files)} subjects, {sessions} sessions in {study.root}; protocol "
    f"{p.name}: {p.num_timepoints} time points"
    + (f" at ages {', '.join(f'{a:g}' for a in p.ages)}" if p.ages else " (by order)")
    + f"; in-plane spacing {spacing}; reference session {study.options.reference}; "
    f"registration {study.options.register}"
  ]
  for split in ("train", "test"):
    c = counts[split] if counts else split_counts(study.subjects, p, split)
    lines.append("  " + format_counts(c, p, split))
  unlabeled = unlabeled_subjects(study)
  if unlabeled:
    lines.append(
      f"  no labels at training time points (segmented, not trained on): "
      f"{', '.join('sub-' + s for s in unlabeled)}"
    )
  return "\n".join(lines)


def describe_unassigned(study) -> list:
  """One warning line per session that fits no time point."""
  return [f"warning: {u}; not used" for u in study.unassigned]


def describe_warnings(study) -> list:
  """:func:`describe_unassigned`, then one line per session of this process's subjects whose
  labels did not all come through (:attr:`fcslstm_jax.data.study.Subject.warnings`)."""
  return describe_unassigned(study) + [f"warning: {w}" for s in study.subjects for w in s.warnings]
