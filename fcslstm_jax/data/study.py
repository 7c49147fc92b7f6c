"""A longitudinal study on disk -> subjects whose time points share one working grid.

Reading (see :mod:`fcslstm_jax.data.layout` for the files it looks for):

1. Sessions are placed on the protocol's time points by age
   (:func:`fcslstm_jax.data.protocol.assign_sessions`); a session that fits none is reported,
   never dropped silently.
2. Each session is read on its own grid, checked (shape, affine, NaN, label range, corrupt
   files: one error naming the file), reoriented to canonical RAS and normalized per
   modality (:mod:`fcslstm_jax.data.intensity`). Other modalities are resampled onto the first
   one's grid when they differ. Its labels count on at most ``labeled_slices_per_volume``
   of its *own* labeled axial slices (the protocol's slice selection); an axial slice is
   labeled when it holds a non-zero label, and then all its voxels (background included)
   are labeled.
3. Each subject gets a working grid (:func:`fcslstm_jax.data.grids.working_grid`): the reference
   session's orientation and slice spacing (``reference``: its first or last session), the
   target in-plane spacing, and an extent covering all its sessions. Every session is
   resampled onto it (optionally after rigid registration to the reference). Each counted
   labeled slice goes whole to its nearest working slice and only there (:func:`place_labels`;
   in-plane by nearest neighbour), so a session whose slice spacing differs from the
   reference's neither loses labels silently nor has them copied onto interpolated
   neighbouring slices; a labeled slice that shares its working slice with a nearer one is
   dropped and named in :attr:`Subject.warnings`. For training (``label_planes``), the
   image at such a working slice is the labeled plane's own (:func:`with_label_planes`), not
   the working slice interpolated up to half a slice away: labels and the image they train
   come from the same physical plane.

Arrays are channels-last, canonical RAS: a session's image is ``[X, Y, Z, C]``; an axial
slice is ``[H, W] = [X, Y]``.
"""

import dataclasses
from typing import Any
from typing import NamedTuple
from typing import Optional
from typing import Union

import numpy as np

from fcslstm_jax import jsonfile
from fcslstm_jax.data import grids
from fcslstm_jax.data import head_moments
from fcslstm_jax.data import intensity
from fcslstm_jax.data import layout
from fcslstm_jax.data import nifti_io
from fcslstm_jax.data import protocol
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.errors import DataError

REFERENCES = ("first", "last")


SPACING = Union[str, tuple[float, ...]]  # "native" or (x, y) mm, once resolved


@dataclasses.dataclass(frozen=True)
class GridOptions:
  """How sessions and subjects are brought onto working grids (recorded with a run).

  Attributes:
    spacing: target in-plane spacing ``(x, y)`` in mm, or ``"native"`` to keep each
      subject's own (:func:`load_study` resolves ``--spacing median`` to a tuple; a
      run.json from before records native as null).
    reference: the session whose grid a subject's working grid follows: ``"first"`` or
      ``"last"`` (in age order).
    register: ``"none"``, ``"rigid"`` (each session to the reference, mutual information) or
      ``"moments"`` (a similarity from the head outline: :mod:`fcslstm_jax.data.head_moments`).
  """

  spacing: Union[str, tuple[float, ...]] = "native"
  reference: str = "first"
  register: str = "none"

  def __post_init__(self):
    if self.spacing is None:  # older run.json files
      object.__setattr__(self, "spacing", "native")
    if self.spacing != "native":
      object.__setattr__(self, "spacing", grids.parse_spacing(self.spacing))
      if self.spacing == "median":
        raise ConfigError("GridOptions.spacing must be resolved: 'native' or (x, y) mm.")
    if self.reference not in REFERENCES:
      raise ConfigError(f"--reference must be one of {REFERENCES}, got {self.reference!r}.")
    if self.register not in grids.REGISTRATIONS:
      raise ConfigError(f"--register must be one of {grids.REGISTRATIONS}, got {self.register!r}.")

  def to_json(self) -> dict:
    return {
      "spacing": self.spacing if self.spacing == "native" else list(self.spacing),
      "reference": self.reference,
      "register": self.register,
    }

  @classmethod
  def from_json(cls, d: dict, where="run.json (grid)") -> "GridOptions":
    return cls(**jsonfile.fields_from_json(d, cls, where, {"spacing": Optional[SPACING]}))


@dataclasses.dataclass(frozen=True, eq=False)
class Session:
  """One scan session, on its subject's working grid.

  Attributes:
    label: session label without ``ses-`` (e.g. ``"06mo"``).
    age: the session's age (``sessions.tsv`` or the label).
    timepoint: the protocol time point (0-based) it fills.
    paths: modality suffix (``"T1w"``...) -> file; ``"dseg"`` -> label file if any.
    image: ``float32 [X, Y, Z, C]`` normalized to [0, 1] (0 outside the session's view).
    labels: ``int32 [X, Y, Z]`` classes where ``label_mask`` is 1, else 0; None without
      labels.
    label_mask: ``float32 [X, Y, Z]``: 1 on the voxels of the session's counted labeled
      slices; None without labels.
    counted_slices: the session's own canonical z indices whose labels count (and reached
      the working grid: :func:`place_labels`).
    in_view: ``bool [Z]``: the working-grid axial slices (of those the arrays hold) inside
      the session's field of view; elsewhere its image is blank, not a scan, and the model
      treats the time point as missing there (:attr:`fcslstm_jax.data.sequences.SliceSet.valid`).
    grid: the session's own canonical grid.
    to_session: ``[4, 4]`` map from the working grid's world to the session's world
      (identity unless registered).
    ref: the first modality's stored grid; :func:`fcslstm_jax.data.nifti_io.save_like` writes a
      prediction ``[X, Y, Z]`` of :attr:`grid` on it.
  """

  label: str
  age: float
  timepoint: int
  paths: dict
  image: np.ndarray
  labels: Optional[np.ndarray]
  label_mask: Optional[np.ndarray]
  counted_slices: tuple
  grid: grids.Grid
  to_session: np.ndarray
  ref: nifti_io.NiftiRef
  in_view: Optional[np.ndarray] = None

  @property
  def affine(self):
    return self.grid.affine


@dataclasses.dataclass(frozen=True, eq=False)
class Subject:
  """A subject's sessions on the protocol's time points, all on one working grid.

  Attributes:
    subject_id: id without ``sub-``.
    path: the subject's folder.
    grid: the working grid (:mod:`fcslstm_jax.data.grids`).
    timepoints: T entries, a :class:`Session` or None (missing).
    unassigned: sessions that fit no time point (:class:`fcslstm_jax.data.protocol.Unassigned`).
    z_index: the working-grid z indices the sessions' arrays hold (their third axis), or
      None for all of them.
    warnings: one line per session whose labels did not all come through (labeled slices
      lost to a differing slice spacing, explicit ``slice_selection`` indices it has no
      label at) or whose ``--register moments`` alignment was refused as implausible,
      ``"sub-<id> ses-<label>: ..."``.
  """

  subject_id: str
  path: str
  grid: grids.Grid
  timepoints: tuple
  unassigned: tuple = ()
  z_index: Optional[np.ndarray] = None
  warnings: tuple = ()

  def working_z(self, positions):
    """Working-grid z indices of positions along the arrays' z axis."""
    positions = np.asarray(positions, np.int64)
    return positions if self.z_index is None else self.z_index[positions]

  @property
  def sessions(self) -> tuple:
    """The sessions present, youngest first."""
    return tuple(s for s in self.timepoints if s is not None)

  def labeled_in(self, timepoints) -> bool:
    return any(
      s is not None and s.labels is not None and s.label_mask.any()
      for t, s in enumerate(self.timepoints)
      if t in timepoints
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Study:
  """What :func:`load_study` read.

  Attributes:
    root: the dataset folder.
    protocol: the :class:`~fcslstm_jax.data.protocol.Protocol`.
    options: the resolved :class:`GridOptions` (spacing a tuple unless native).
    subjects: the loaded subjects (this process's share with several processes).
    files: every subject's :class:`~fcslstm_jax.data.layout.SubjectFiles` (all processes).
    unassigned: every session that fits no time point.
  """

  root: str
  protocol: protocol.Protocol
  options: GridOptions
  subjects: list
  files: list
  unassigned: tuple


# ----------------------------------------------------------------------------- sessions


def labeled_slices(labels):
  """Canonical z indices of the axial slices of ``labels [X, Y, Z]`` that hold a label."""
  return np.flatnonzero(np.any(labels > 0, axis=(0, 1)))


def counted_slices(labels, proto, path=""):
  """The session's own labeled z indices whose labels count under ``proto``.

  ``"center"``: ``labeled_slices_per_volume`` of the session's labeled slices, spread
  evenly (the middle one for 1). Explicit indices: those of them that are labeled.
  """
  labeled = labeled_slices(labels)
  if not isinstance(proto.slice_selection, str):
    depth = labels.shape[2]
    picked = [int(z) for z in proto.slice_selection]
    bad = [z for z in picked if not 0 <= z < depth]
    if bad:
      raise ConfigError(
        f"protocol {proto.name}: slice_selection {bad} outside 0..{depth - 1} for {path}."
      )
    return tuple(z for z in picked if z in set(labeled.tolist()))
  if labeled.size == 0:
    return ()
  k = min(proto.labeled_slices_per_volume, labeled.size)
  positions = ((np.arange(k) + 0.5) * labeled.size / k).astype(int)
  return tuple(int(z) for z in labeled[positions])


def _grid(volume):
  return grids.Grid(shape=tuple(volume.data.shape), affine=volume.affine)


class SessionData(NamedTuple):
  """One session read on its own canonical grid (:func:`read_session`)."""

  image: np.ndarray  # float32 [X, Y, Z, C], normalized
  labels: np.ndarray | None  # int32 [X, Y, Z], or None without a label file
  mask: np.ndarray | None  # float32 [X, Y, Z]: 1 on the counted labeled slices
  counted: tuple  # canonical z indices whose labels count
  grid: grids.Grid
  ref: Any  # the first modality's header, for writing outputs like it
  notes: list  # what of its labels does not count, and why (warning lines)


class PlacedLabels(NamedTuple):
  """A session's counted labeled slices on the working grid (:func:`place_labels`)."""

  labels: np.ndarray  # int32 [X', Y', Z']
  mask: np.ndarray  # float32 [X', Y', Z']
  placed: dict  # session z -> working z
  lost: list  # [(z, reason)] of the slices that did not reach the working grid


def read_session(files: layout.SessionFiles, proto, max_bytes) -> SessionData:
  """One session on its own canonical grid (its image channels resampled onto the first
  modality's grid), its labels checked."""
  for path in files.images.values():
    nifti_io.read_header(path, max_bytes)  # refuse huge or broken files before reading data
  volumes = [nifti_io.load_volume(files.images[m], max_bytes=max_bytes) for m in proto.modalities]
  grid = _grid(volumes[0])
  channels = []
  for volume in volumes:
    normalized = intensity.normalize_intensity(volume.data)
    if not _grid(volume).same_as(grid):
      normalized = grids.resample(normalized, _grid(volume), grid, order=1)
      if not normalized.any():
        raise DataError(
          f"{volume.path}: its field of view does not overlap "
          f"{volumes[0].path} (affines in the headers). Fix the headers or "
          "co-register the modalities."
        )
    channels.append(normalized)
  labels = mask = None
  counted, notes = (), []
  if files.dseg is not None:
    lab = nifti_io.load_volume(files.dseg, kind="labels", max_bytes=max_bytes)
    if not _grid(lab).same_as(grid):
      raise DataError(
        f"{lab.path}: shape {lab.ref.shape} / affine differ from {volumes[0].path} (shape "
        f"{volumes[0].ref.shape}). Labels must lie on their session's image grid: resample "
        "them onto it with nearest-neighbour interpolation."
      )
    classes, drawn = protocol.to_classes(lab.data, proto, lab.path)
    counted = counted_slices(classes, proto, lab.path)
    if not isinstance(proto.slice_selection, str):
      missing = [int(z) for z in proto.slice_selection if int(z) not in counted]
      if missing:
        notes.append(
          f"{lab.path}: no label at slice_selection z={missing} (canonical RAS z "
          f"of this session's own grid; its labeled slices: "
          f"{labeled_slices(classes).tolist()}); those slices do not count"
        )
    mask = np.zeros(grid.shape, np.float32)
    mask[:, :, list(counted)] = 1.0
    mask *= drawn  # the ignore value's voxels (not drawn) count nowhere
    labels = np.where(mask > 0, classes, 0).astype(np.int32)
  return SessionData(
    np.stack(channels, axis=-1), labels, mask, counted, grid, volumes[0].ref, notes
  )


def place_labels(
  labels, counted, grid: grids.Grid, work: grids.Grid, world=None, drawn=None
) -> PlacedLabels:
  """A session's counted labeled slices on the working grid, each on its nearest working
  slice and only there (:func:`fcslstm_jax.data.grids.place_slices`): with another slice spacing
  nearest-neighbour resampling along z would drop some and copy others onto interpolated
  neighbours. ``drawn`` (``[X, Y, Z]``, the session's label mask): voxels outside it (the
  ignore value's) stay out of the working mask too."""
  placed, lost = grids.place_slices(counted, grid, work, world)
  out = np.zeros(work.shape, np.int32)
  mask = np.zeros(work.shape, np.float32)
  for z, k in placed.items():
    values, inside = grids.slice_on(labels[:, :, z], grid, work, k, world)
    out[:, :, k] = values
    mask[:, :, k] = inside
    if drawn is not None:
      mask[:, :, k] *= grids.slice_on(drawn[:, :, z] > 0, grid, work, k, world)[0]
  return PlacedLabels(out, mask, placed, lost)


def describe_lost(path, grid: grids.Grid, work: grids.Grid, lost) -> str:
  """The warning for a session's labeled slices that do not reach the working grid."""
  what = "; ".join(f"z={z} {reason}" for z, reason in lost)
  return (
    f"{path}: {len(lost)} labeled slice(s) not used: {what} (its slices are "
    f"{grid.spacing[2]:.3g} mm apart, the working grid's {work.spacing[2]:.3g} mm; each "
    "labeled slice goes to its nearest working slice only)"
  )


def _register(options: GridOptions, ref: SessionData, session: SessionData) -> np.ndarray:
  """``[4, 4]`` map from the reference session's world to ``session``'s (``--register``)."""
  if options.register == "rigid":
    return grids.register_rigid(ref.image[..., 0], ref.grid, session.image[..., 0], session.grid)
  found = head_moments.register_moments(ref.image, ref.grid, session.image, session.grid)
  why = head_moments.implausible(found)
  if why:  # said with the session's other warnings
    session.notes.append(f"--register moments: {why}; placed by its affine alone")
    return np.eye(4)
  return found


def _reference_index(present, reference):
  return 0 if reference == "first" else len(present) - 1


def with_label_planes(
  image, session_image, placed, grid: grids.Grid, work: grids.Grid, world=None
) -> np.ndarray:
  """``image [X', Y', Z', C]`` (a session resampled onto the working grid) with each working
  slice that received a labeled slice (``placed {session z: working z}``) replaced by that
  labeled plane's own image (:func:`fcslstm_jax.data.grids.image_plane_on`): labels and the
  image they train come from the same physical plane."""
  if not placed:
    return image
  image = image.copy()
  for z, k in placed.items():
    image[:, :, k] = grids.image_plane_on(session_image[:, :, z], grid, work, k, world)
  return image


def load_subject(
  files: layout.SubjectFiles,
  proto,
  options: GridOptions,
  keep="all",
  max_bytes=nifti_io.DEFAULT_MAX_BYTES,
  label_planes=False,
) -> Subject:
  """Reads, checks and resamples one subject (see the module docstring).

  ``keep``: ``"all"`` slices of the working grid, or only the ``"labeled"`` ones (training:
  whole-brain volumes of a large study would not fit in memory otherwise).
  ``label_planes``: the image at each working slice holding a labeled slice of a training
  time point is that labeled plane's own (:func:`with_label_planes`; training; never at a
  held-out time point, whose labels must not shape the inputs). Off, every working slice is
  interpolated at its own position, so that a prediction does not depend on which slices
  of the study happen to be labeled (evaluation).
  """
  slots, unassigned = protocol.assign_sessions(files.sessions, proto, files.subject_id, files.path)
  present = [(t, f) for t, f in enumerate(slots) if f is not None]
  if not present:
    return Subject(files.subject_id, files.path, None, (None,) * len(slots), tuple(unassigned))
  raw = [read_session(f, proto, max_bytes) for _, f in present]
  ref_i = _reference_index(present, options.reference)
  ref_grid = raw[ref_i].grid
  to_session = [
    np.eye(4) if i == ref_i or options.register == "none" else _register(options, raw[ref_i], r)
    for i, r in enumerate(raw)
  ]
  work = grids.working_grid(
    ref_grid, options.spacing, [r.grid for r in raw], [np.linalg.inv(m) for m in to_session]
  )
  placed = [
    None if r.labels is None else place_labels(r.labels, r.counted, r.grid, work, world, r.mask)
    for r, world in zip(raw, to_session)
  ]
  masks = [None if p is None else p.mask for p in placed]
  warnings = []
  for (_, f), r, p in zip(present, raw, placed):
    notes = list(r.notes) + ([describe_lost(f.dseg, r.grid, work, p.lost)] if p and p.lost else [])
    warnings += [f"sub-{files.subject_id} ses-{f.label}: {n}" for n in notes]
  z_index = None
  if keep == "labeled":  # training needs only the slices some session labels
    z_index = np.unique(
      np.concatenate(
        [np.flatnonzero(m.any(axis=(0, 1))) for m in masks if m is not None]
        or [np.array([], np.int64)]
      )
    )
  keep_z = (lambda a: a) if z_index is None else (lambda a: a[:, :, z_index])
  timepoints = [None] * len(slots)
  for (t, f), r, world, p in zip(present, raw, to_session, placed):
    image, grid, ref = r.image, r.grid, r.ref
    on_work = grids.resample(image, grid, work, 1, world)
    if label_planes and p is not None and t in proto.train_timepoints:
      on_work = with_label_planes(on_work, image, p.placed, grid, work, world)
    paths = dict(f.images, **({"dseg": f.dseg} if f.dseg else {}))
    timepoints[t] = Session(
      label=f.label,
      age=f.age,
      timepoint=t,
      paths=paths,
      image=keep_z(on_work),
      labels=None if p is None else keep_z(p.labels),
      label_mask=None if p is None else keep_z(p.mask),
      counted_slices=() if p is None else tuple(sorted(p.placed)),
      grid=grid,
      to_session=world,
      ref=ref,
      in_view=grids.coverage(grid, work, world)[
        np.arange(work.shape[2]) if z_index is None else z_index
      ],
    )
  return Subject(
    files.subject_id,
    files.path,
    work,
    tuple(timepoints),
    tuple(unassigned),
    z_index,
    tuple(warnings),
  )


# ------------------------------------------------------------------------------- studies


def _training_files(files, proto):
  """Subjects with a label file at a training time point (headers only)."""
  out = []
  for f in files:
    slots, _ = protocol.assign_sessions(f.sessions, proto, f.subject_id, f.path)
    if any(s is not None and s.dseg for t, s in enumerate(slots) if t in proto.train_timepoints):
      out.append((f, slots))
  return out


def resolve_spacing(files, proto, spacing, reference="first", max_bytes=nifti_io.DEFAULT_MAX_BYTES):
  """``--spacing`` resolved once (:data:`SPACING`): ``"native"``, a tuple as given, or for
  ``"median"`` the median in-plane spacing of the training subjects' reference sessions (of
  all subjects if none has labels), read from headers only."""
  spacing = grids.parse_spacing(spacing)
  if spacing != "median":
    return spacing
  chosen = _training_files(files, proto) or [
    (f, protocol.assign_sessions(f.sessions, proto, f.subject_id, f.path)[0]) for f in files
  ]
  ref_grids = []
  for f, slots in chosen:
    present = [s for s in slots if s is not None]
    if present:
      s = present[_reference_index(present, reference)]
      shape, affine = nifti_io.read_grid(s.images[proto.modalities[0]], max_bytes)
      ref_grids.append(grids.Grid(shape, affine))
  if not ref_grids:
    return "native"
  return grids.median_spacing(ref_grids)


def load_study(
  root,
  proto,
  spacing="median",
  reference="first",
  register="none",
  labels_root=None,
  shard=None,
  keep="all",
  max_bytes=nifti_io.DEFAULT_MAX_BYTES,
  label_planes=False,
  participants=None,
) -> Study:
  """Reads a study (see the module docstring).

  Args:
    root: dataset folder.
    proto: a :class:`~fcslstm_jax.data.protocol.Protocol`.
    spacing: ``"median"`` (of the training subjects), ``"native"`` (no in-plane
      resampling), or ``(x, y)`` mm; see :func:`resolve_spacing`.
    reference: ``"first"`` or ``"last"`` session as each subject's reference grid.
    register: ``"none"``, ``"rigid"`` or ``"moments"``.
    labels_root: take labels from this folder (``sub-*/ses-*/anat/*_dseg.nii*``; absolute or
      relative to ``root``, e.g. ``derivatives/manual``) instead of ``root/derivatives/*/``.
    shard: ``callable(list) -> list`` choosing this process's subjects (default: all).
    keep: ``"all"`` slices, or the ``"labeled"`` ones only (see :func:`load_subject`).
    label_planes: labeled working slices show their labeled plane's image (training; see
      :func:`load_subject`).
    max_bytes: per-file limit checked on the header before any data is read.
    participants: only these subjects (ids, with or without ``sub-``); None: all.
  """
  labels_root = layout.resolve_labels_root(root, labels_root)
  files = layout.scan(root, proto.modalities, labels_root, participants)
  proto = with_dseg_values(proto, files)
  unassigned = tuple(
    u for f in files for u in protocol.assign_sessions(f.sessions, proto, f.subject_id, f.path)[1]
  )
  resolved = resolve_spacing(files, proto, spacing, reference, max_bytes)
  options = GridOptions(spacing=resolved, reference=reference, register=register)
  mine = shard(files) if shard else files
  subjects = [load_subject(f, proto, options, keep, max_bytes, label_planes) for f in mine]
  return Study(
    root=str(root),
    protocol=proto,
    options=options,
    subjects=subjects,
    files=files,
    unassigned=unassigned,
  )


def with_dseg_values(proto, files):
  """``proto`` with the label values and ignore value of its label pipelines' ``dseg.tsv``
  (:func:`fcslstm_jax.data.protocol.values_from_dseg_tsv`); unchanged without one. A table
  that disagrees with another, or with values the protocol already has (a trained run's),
  is a DataError naming it."""
  for tsv in layout.dseg_tables(files):
    values, ignore = protocol.values_from_dseg_tsv(tsv, proto)
    ignore = proto.ignore_label if ignore is None else ignore
    before = protocol.class_values(proto).tolist()
    if proto.label_values is not None and list(values) != before:
      raise DataError(
        f"{tsv}: gives the classes {list(proto.class_names)} the values {list(values)}, "
        f"but {before} were set before (the protocol, a trained run or another dseg.tsv). "
        "Use one set of label values."
      )
    if proto.ignore_label is not None and ignore != proto.ignore_label:
      raise DataError(
        f"{tsv}: its unlabeled value {ignore} differs from the ignore_label "
        f"{proto.ignore_label} set before. Use one."
      )
    try:
      proto = dataclasses.replace(proto, label_values=tuple(values), ignore_label=ignore)
    except ConfigError as e:
      raise DataError(f"{tsv}: {e}") from None
  return proto


def load_dataset(root, proto=protocol.BRIC, **kwargs) -> list:
  """The subjects of :func:`load_study` (for scripts and tests)."""
  return load_study(root, proto, **kwargs).subjects
