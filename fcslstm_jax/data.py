"""Longitudinal NIfTI datasets -> slice sequences for the model.

Layout on disk (BIDS-like)::

  DIR/sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>_T1w.nii[.gz]   (and _T2w, ...)
  DIR/sub-<id>/sub-<id>_sessions.tsv                                  (optional: age column)
  DIR/derivatives/<any>/sub-<id>/ses-<label>/anat/*_dseg.nii[.gz]     (optional labels)

Sessions are ordered by age: the ``age`` column of ``sub-<id>_sessions.tsv`` when present,
else the number in the session label (``ses-06mo`` -> 6). A dseg file holds integer
classes, 0 = background. An axial slice counts as labeled when it holds any non-zero
label; all its voxels (background included) are then labeled.

Arrays are channels-last, in canonical RAS voxel order (see ``nifti_io``): a session's
image is ``[X, Y, Z, C]`` and an axial slice is ``[H, W] = [X, Y]``.

Intensity normalization (per subject, per session, per modality): the head is the set of
voxels above the volume's Otsu threshold; its 1st and 99th intensity percentiles are
mapped to 0 and 1 and the result is clipped to [0, 1]. This removes scanner gain and most
of the effect of outliers without using any label.

Command line: ``python -m fcslstm_jax.data --dataset bric --preview out.png``.
"""

import argparse
import csv
import dataclasses
import pathlib
import re
import sys
from typing import Optional

import numpy as np

from fcslstm_jax import nifti_io
from fcslstm_jax import protocol as protocol_lib
from fcslstm_jax.errors import ConfigError, DataError

# Grids (affines, in mm) closer than this are the same grid.
AFFINE_ATOL = 1e-3

BUILTIN_DATASETS = ("bric", "ibis")


@dataclasses.dataclass(frozen=True, eq=False)
class Session:
  """One scan session of one subject, in canonical (RAS) voxel order.

  Attributes:
    label: session label without ``ses-`` (e.g. ``"06mo"``).
    age: age used for ordering (months for the built-in data).
    paths: modality suffix (``"T1w"``...) -> file; ``"dseg"`` -> label file if any.
    image: ``float32 [X, Y, Z, C]`` normalized to [0, 1], channels in modality order.
    labels: ``int32 [X, Y, Z]`` classes, or None without a dseg file.
    affine: ``float64 [4, 4]`` canonical voxel -> world affine.
    ref: the first modality's original grid; pass it to ``nifti_io.save_like`` to write a
      prediction ``[X, Y, Z]`` on the input's own grid and orientation.
  """
  label: str
  age: float
  paths: dict
  image: np.ndarray
  labels: Optional[np.ndarray]
  affine: np.ndarray
  ref: nifti_io.NiftiRef


@dataclasses.dataclass(frozen=True, eq=False)
class Subject:
  """A subject's sessions, ordered by age; all on one grid.

  Attributes:
    subject_id: id without ``sub-``.
    path: the subject's folder.
    sessions: tuple of :class:`Session`, youngest first.
  """
  subject_id: str
  path: str
  sessions: tuple


@dataclasses.dataclass(frozen=True, eq=False)
class SliceSet:
  """Axial slice sequences, the model's input. N sequences of T time points.

  Attributes:
    images: ``float32 [N, T, H, W, C]``; zeros for missing sessions.
    labels: ``int32 [N, T, H, W]``; 0 wherever ``label_mask`` is 0 (labels a split may
      not see are not in the array at all).
    label_mask: ``float32 [N, T, H, W]``; 1 where the voxel is labeled, its time point
      belongs to the split and its slice is one the protocol counts as labeled.
    valid: ``bool [N, T]``; False for a missing session.
    subject_ids: N subject ids.
    slice_index: ``int32 [N]`` canonical axial (z) index of each sequence.
    session_labels: ``str [N, T]`` session label at each time point (``""`` where missing),
      so that errors can name the scan (``sub-<id> ses-<label>``).
  """
  images: np.ndarray
  labels: np.ndarray
  label_mask: np.ndarray
  valid: np.ndarray
  subject_ids: tuple
  slice_index: np.ndarray
  session_labels: Optional[np.ndarray] = None

  def __len__(self):
    return self.images.shape[0]


# ----------------------------------------------------------------------------- layout


def _number_in(label):
  match = re.search(r"\d+(?:\.\d+)?", label)
  return float(match.group()) if match else None


def read_session_ages(tsv_path):
  """``{session label: age}`` from a BIDS ``sub-<id>_sessions.tsv`` ({} without an age column)."""
  ages = {}
  with open(tsv_path, newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  for row in rows:
    session_id, age = row.get("session_id"), row.get("age")
    if not session_id or age in (None, "", "n/a"):
      continue
    try:
      ages[session_id.removeprefix("ses-")] = float(age)
    except ValueError:
      raise DataError(f"{tsv_path}: age {age!r} of {session_id} is not a number. "
                      "Write ages as numbers (e.g. months) or 'n/a'.") from None
  return ages


def _session_age(subject_dir, label, tsv_ages):
  if label in tsv_ages:
    return tsv_ages[label]
  age = _number_in(label)
  if age is None:
    raise DataError(
        f"{subject_dir / ('ses-' + label)}: cannot tell the session's age. Add an 'age' column "
        f"to {subject_dir.name}_sessions.tsv or put the age in the label (e.g. ses-06mo).")
  return age


def _find_one(candidates, what, expected):
  candidates = sorted(c for c in candidates if nifti_io.is_nifti_path(c))
  if len(candidates) > 1:
    names = ", ".join(str(c) for c in candidates)
    raise DataError(f"{expected}: several {what} files match ({names}). Keep only one.")
  return candidates[0] if candidates else None


def find_modality(subject_dir, label, modality):
  """The session's ``anat/sub-<id>_ses-<label>[_<entities>]_<modality>.nii[.gz]``."""
  anat = subject_dir / f"ses-{label}" / "anat"
  stem = f"{subject_dir.name}_ses-{label}"
  expected = anat / f"{stem}_{modality}.nii.gz"
  found = _find_one(anat.glob(f"{stem}*_{modality}.nii*"), modality, expected)
  if found is None:
    raise DataError(f"{expected}: missing (session has no {modality} image). Add it as .nii or "
                    f".nii.gz, remove the session, or choose other modalities.")
  return found


def find_dseg(root, subject_id, label):
  """The session's ``*_dseg.nii[.gz]`` under ``root/derivatives/*/``, or None."""
  rel = pathlib.Path(f"sub-{subject_id}") / f"ses-{label}" / "anat"
  candidates = [p for d in sorted((root / "derivatives").glob("*"))
                for p in (d / rel).glob("*_dseg.nii*")]
  return _find_one(candidates, "dseg", root / "derivatives" / "*" / rel)


# ------------------------------------------------------------------------ intensities


def otsu_threshold(values, bins=256):
  """Threshold maximizing the between-class variance of a 1D array."""
  values = np.asarray(values, dtype=np.float64)
  lo, hi = values.min(), values.max()
  if hi <= lo:
    return lo
  counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
  centers = (edges[:-1] + edges[1:]) / 2
  w0 = np.cumsum(counts)
  w1 = w0[-1] - w0
  m0 = np.cumsum(counts * centers)
  mean0 = m0 / np.maximum(w0, 1)
  mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
  between = w0 * w1 * (mean0 - mean1) ** 2
  return edges[1:][np.argmax(between)]


def normalize_intensity(volume, lower=1.0, upper=99.0):
  """Maps the head's ``lower``/``upper`` percentiles to 0/1 and clips (see module docstring).

  Args:
    volume: ``[X, Y, Z]`` raw intensities.

  Returns:
    ``float32 [X, Y, Z]`` in [0, 1].
  """
  volume = np.asarray(volume, dtype=np.float32)
  head = volume[volume > otsu_threshold(volume)]
  if head.size == 0:
    head = volume.ravel()
  lo, hi = np.percentile(head, [lower, upper])
  scale = 1.0 / (hi - lo) if hi > lo else 1.0
  return np.clip((volume - lo) * scale, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- loading


def _same_grid(a, b):
  return a.data.shape[:3] == b.data.shape[:3] and np.allclose(a.affine, b.affine, atol=AFFINE_ATOL)


def _check_labels(volume, num_classes):
  data = volume.data
  lo, hi = int(data.min()), int(data.max())
  if lo < 0 or hi >= num_classes:
    raise DataError(
        f"{volume.path}: labels range {lo}..{hi}, outside 0..{num_classes - 1}. Map the classes "
        f"to 0..{num_classes - 1} (0 = background) or set the number of classes.")


def load_session(root, subject_dir, label, age, modalities, num_classes, max_bytes):
  """Reads, checks and normalizes one session. See :class:`Session`."""
  files = [find_modality(subject_dir, label, modality) for modality in modalities]
  for path in files:
    nifti_io.read_header(path, max_bytes)  # refuse huge or broken files before reading data
  volumes = [nifti_io.load_volume(path, max_bytes=max_bytes) for path in files]
  first = volumes[0]
  for other in volumes[1:]:
    if not _same_grid(first, other):
      raise DataError(
          f"{other.path}: shape {other.ref.shape} / affine differ from {first.path} "
          f"(shape {first.ref.shape}). Modalities of a session must share one grid: "
          "co-register and resample them (e.g. to the T1w).")
  paths = {m: v.path for m, v in zip(modalities, volumes)}
  labels = None
  dseg = find_dseg(root, subject_dir.name.removeprefix("sub-"), label)
  if dseg is not None:
    lab = nifti_io.load_volume(dseg, kind="labels", max_bytes=max_bytes)
    if not _same_grid(first, lab):
      raise DataError(
          f"{lab.path}: shape {lab.ref.shape} / affine differ from {first.path}. Resample the "
          "labels onto the image grid with nearest-neighbour interpolation.")
    _check_labels(lab, num_classes)
    labels, paths["dseg"] = lab.data, lab.path
  image = np.stack([normalize_intensity(v.data) for v in volumes], axis=-1)
  return Session(label=label, age=age, paths=paths, image=image, labels=labels,
                 affine=first.affine, ref=first.ref)


def load_subject(root, subject_dir, modalities=("T1w", "T2w"), num_classes=4,
                 max_bytes=nifti_io.DEFAULT_MAX_BYTES):
  """Reads all sessions of ``root/sub-<id>``, ordered by age, and checks they share a grid."""
  root, subject_dir = pathlib.Path(root), pathlib.Path(subject_dir)
  labels = sorted(d.name.removeprefix("ses-") for d in subject_dir.glob("ses-*") if d.is_dir())
  if not labels:
    raise DataError(f"{subject_dir}: no ses-<label> folders. Longitudinal data needs "
                    f"{subject_dir}/ses-<label>/anat/{subject_dir.name}_ses-<label>_T1w.nii.gz.")
  tsv = subject_dir / f"{subject_dir.name}_sessions.tsv"
  tsv_ages = read_session_ages(tsv) if tsv.is_file() else {}
  ages = {label: _session_age(subject_dir, label, tsv_ages) for label in labels}
  labels.sort(key=lambda label: (ages[label], label))
  sessions = tuple(load_session(root, subject_dir, label, ages[label], modalities, num_classes,
                                max_bytes) for label in labels)
  first = sessions[0]
  for s in sessions[1:]:
    if s.image.shape[:3] != first.image.shape[:3] or not np.allclose(
        s.affine, first.affine, atol=AFFINE_ATOL):
      raise DataError(
          f"{s.paths[modalities[0]]}: grid (shape {s.ref.shape}) differs from session "
          f"{first.label} ({first.paths[modalities[0]]}, shape {first.ref.shape}). Sessions of a "
          "subject must share one grid: register and resample them to a common space "
          "(e.g. to the first session or a template).")
  return Subject(subject_id=subject_dir.name.removeprefix("sub-"), path=str(subject_dir),
                 sessions=sessions)


def load_dataset(root, modalities=("T1w", "T2w"), num_classes=4,
                 max_bytes=nifti_io.DEFAULT_MAX_BYTES):
  """Reads every ``root/sub-*`` subject (see module docstring for the layout).

  Args:
    root: dataset folder.
    modalities: BIDS suffixes to stack as channels, in order.
    num_classes: labels must lie in ``0..num_classes - 1``.
    max_bytes: per-file limit checked on the header before any data is read.

  Returns:
    A list of :class:`Subject`, sorted by id.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"{root}: dataset folder not found. Pass the folder that holds sub-<id>/.")
  subject_dirs = sorted(d for d in root.glob("sub-*") if d.is_dir())
  if not subject_dirs:
    raise DataError(f"{root}: no subjects found (no sub-<id>/ folders). Expected "
                    f"{root}/sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>_T1w.nii.gz.")
  return [load_subject(root, d, tuple(modalities), num_classes, max_bytes) for d in subject_dirs]


# ---------------------------------------------------------------------------- sequences


def align_sessions(subject, protocol):
  """Places a subject's sessions on the protocol's T time points.

  Returns:
    A list of T entries, each a :class:`Session` or None (missing). Sessions whose age is
    not within ``protocol.age_tolerance`` of a time point are left out.
  """
  slots = [None] * protocol.num_timepoints
  if protocol.ages is None:
    for t, session in enumerate(subject.sessions[:protocol.num_timepoints]):
      slots[t] = session
    return slots
  ages = np.asarray(protocol.ages, dtype=np.float64)
  for session in subject.sessions:
    t = int(np.argmin(np.abs(ages - session.age)))
    if abs(ages[t] - session.age) > protocol.age_tolerance:
      continue
    if slots[t] is not None:
      raise DataError(
          f"{subject.path}: sessions {slots[t].label} and {session.label} both match time point "
          f"{t} (age {ages[t]:g}). Remove one, or fix the ages in the sessions.tsv.")
    slots[t] = session
  return slots


def valid_timepoints(subject, protocol):
  """``bool [T]``: which of the protocol's time points the subject has."""
  return np.array([s is not None for s in align_sessions(subject, protocol)])


def labeled_slices(labels):
  """Canonical z indices of the axial slices of ``labels [X, Y, Z]`` that hold a label."""
  return np.flatnonzero(np.any(labels > 0, axis=(0, 1)))


def select_slices(subject, protocol):
  """The axial (z) indices whose labels the protocol counts, for one subject.

  ``"center"``: ``labeled_slices_per_volume`` indices spread evenly over the union of the
  subject's labeled slices (the middle one when 1); the volume's middle slice if nothing
  is labeled.
  """
  depth = subject.sessions[0].image.shape[2]
  if not isinstance(protocol.slice_selection, str):
    picked = tuple(int(z) for z in protocol.slice_selection)
    bad = [z for z in picked if not 0 <= z < depth]
    if bad:
      raise ConfigError(f"protocol {protocol.name}: slices {bad} outside 0..{depth - 1} "
                        f"for subject {subject.path}.")
    return picked
  slab = [labeled_slices(s.labels) for s in subject.sessions if s.labels is not None]
  slab = np.unique(np.concatenate(slab)) if slab else np.array([], dtype=np.int64)
  if slab.size == 0:
    return (depth // 2,)
  k = min(protocol.labeled_slices_per_volume, slab.size)
  positions = ((np.arange(k) + 0.5) * slab.size / k).astype(int)
  return tuple(int(z) for z in slab[positions])


def _subject_sequences(subject, protocol, split):
  """``(images [S, T, H, W, C], labels, mask, valid [T], z [S])`` for one subject."""
  slots = align_sessions(subject, protocol)
  ref = subject.sessions[0].image
  x, y, depth, c = ref.shape
  zs = np.arange(depth) if split == "all" else np.asarray(select_slices(subject, protocol))
  counted = set(range(depth)) if split == "all" else set(zs.tolist())
  seen = set(protocol.timepoints(split))
  t_count = protocol.num_timepoints
  images = np.zeros((len(zs), t_count, x, y, c), np.float32)
  labels = np.zeros((len(zs), t_count, x, y), np.int32)
  mask = np.zeros((len(zs), t_count, x, y), np.float32)
  for t, session in enumerate(slots):
    if session is None:
      continue
    images[:, t] = np.moveaxis(session.image[:, :, zs], 2, 0)
    if session.labels is None or t not in seen:
      continue
    usable = set(labeled_slices(session.labels).tolist()) & counted
    for i, z in enumerate(zs):
      if int(z) in usable:
        labels[i, t] = session.labels[:, :, z]
        mask[i, t] = 1.0
  valid = np.array([s is not None for s in slots])
  return images, labels, mask, valid, zs


def make_sequences(subjects, protocol, split):
  """Axial slice sequences for a split.

  Args:
    subjects: from :func:`load_dataset`; all must share one in-plane grid ``[H, W]``.
    protocol: a :class:`~fcslstm_jax.protocol.Protocol`.
    split: ``"train"`` / ``"test"``: the protocol's labeled slices of every subject, with
      labels and mask only on that split's time points (training never sees test labels).
      ``"all"``: every axial slice of every subject, mask on every labeled voxel of every
      time point (for whole-volume inference and evaluation).

  Returns:
    A :class:`SliceSet`.
  """
  protocol.timepoints(split)  # validates split
  if not subjects:
    raise DataError("no subjects to make sequences from. Load a dataset first.")
  parts = [_subject_sequences(s, protocol, split) for s in subjects]
  shapes = {p[0].shape[2:] for p in parts}
  if len(shapes) > 1:
    raise DataError(
        f"{subjects[0].path}: subjects have different in-plane grids {sorted(shapes)}. "
        "Resample all subjects to one grid, or call make_sequences one subject at a time.")
  return SliceSet(
      images=np.concatenate([p[0] for p in parts]),
      labels=np.concatenate([p[1] for p in parts]),
      label_mask=np.concatenate([p[2] for p in parts]),
      valid=np.concatenate([np.broadcast_to(p[3], (len(p[4]), p[3].size)) for p in parts]),
      subject_ids=tuple(s.subject_id for s, p in zip(subjects, parts) for _ in p[4]),
      slice_index=np.concatenate([p[4] for p in parts]).astype(np.int32),
      session_labels=np.concatenate([np.broadcast_to(
          [ses.label if ses else "" for ses in align_sessions(subject, protocol)],
          (len(p[4]), protocol.num_timepoints)) for subject, p in zip(subjects, parts)]),
  )


# ----------------------------------------------------------------------------- built-in


def load_builtin(name="bric", seed=0, **generate_kwargs):
  """The built-in dataset (generated on first use) and its protocol.

  Args:
    name: ``"bric"`` (paper protocol) or ``"ibis"`` (IBIS-like protocol on the same data).
    seed: generation seed; each seed has its own cache folder.
    **generate_kwargs: passed to ``bric.generate`` (smaller datasets for tests).

  Returns:
    ``(subjects, protocol)``.
  """
  from fcslstm_jax import bric  # the generator is only needed here
  protocol = protocol_lib.get_protocol(name)
  root = bric.ensure_dataset(seed=seed, **generate_kwargs)
  return load_dataset(root, protocol.modalities, protocol.num_classes), protocol


def load(dataset, protocol_name=None, seed=0):
  """``(subjects, protocol)`` for ``--dataset`` (a built-in name or a folder)."""
  if dataset in BUILTIN_DATASETS:
    return load_builtin(dataset, seed=seed)
  protocol = protocol_lib.get_protocol(protocol_name or "bric")
  return load_dataset(dataset, protocol.modalities, protocol.num_classes), protocol


# ----------------------------------------------------------------------------- preview


def save_preview(subject, protocol, path, z=None):
  """Montage PNG: rows = time points, columns = each modality and the labels, at slice ``z``."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import colors
  import matplotlib.pyplot as plt

  z = select_slices(subject, protocol)[0] if z is None else z
  slots = align_sessions(subject, protocol)
  names = list(protocol.modalities) + ["labels"]
  cmap = colors.ListedColormap(["black", "#3b7dd8", "#9e9e9e", "#f5f5f5"][:protocol.num_classes]
                               if protocol.num_classes <= 4 else plt.get_cmap("tab10").colors)
  fig, axes = plt.subplots(len(slots), len(names), figsize=(2.2 * len(names), 2.2 * len(slots)),
                           squeeze=False)
  for t, session in enumerate(slots):
    for j, name in enumerate(names):
      ax = axes[t, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if t == 0:
        ax.set_title(name)
      if j == 0:
        age = protocol.ages[t] if protocol.ages else t
        role = "test" if t in protocol.test_timepoints else "train"
        ax.set_ylabel(f"{age:g} mo ({role})" if protocol.ages else f"t{t} ({role})")
      if session is None:
        continue
      if name == "labels":
        if session.labels is not None:
          ax.imshow(session.labels[:, :, z].T, origin="lower", cmap=cmap,
                    vmin=-0.5, vmax=protocol.num_classes - 0.5, interpolation="nearest")
      else:
        ax.imshow(session.image[:, :, z, j].T, origin="lower", cmap="gray", vmin=0, vmax=1)
  fig.suptitle(f"sub-{subject.subject_id}, axial slice z={z}", fontsize=10)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _summary(subjects, protocol):
  lines = [f"{len(subjects)} subjects, protocol {protocol.name}: train time points "
           f"{protocol.train_timepoints}, test {protocol.test_timepoints}"]
  for split in ("train", "test"):
    s = make_sequences(subjects, protocol, split)
    lines.append(f"  {split}: images {s.images.shape}, labeled 2D slices "
                 f"{int(s.label_mask.any(axis=(2, 3)).sum())}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m fcslstm_jax.data",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="bric",
                      help="built-in name (bric, ibis; generated on first use) or a dataset folder")
  parser.add_argument("--protocol", default=None, help="protocol for a dataset folder (bric, ibis)")
  parser.add_argument("--seed", type=int, default=0, help="built-in dataset seed")
  parser.add_argument("--preview", default=None, help="write a montage PNG here")
  parser.add_argument("--subject", type=int, default=0, help="subject index for --preview")
  args = parser.parse_args(argv)
  try:
    subjects, protocol = load(args.dataset, args.protocol, args.seed)
    print(_summary(subjects, protocol))
    if args.preview:
      save_preview(subjects[args.subject], protocol, args.preview)
      print(f"wrote {args.preview}")
  except (DataError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
