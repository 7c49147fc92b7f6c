"""Subjects -> whole volumes over time, and the training patches drawn from them (3D + time).

A volume sequence is one subject's working grid at all T time points, ``[T, D, H, W, C]``
(channels-last; ``[D, H, W] = [Z, X, Y]`` canonical, so that an axial slice of it is the 2D
path's ``[H, W] = [X, Y]``, :mod:`fcslstm_jax.data.sequences`). A :class:`VolumeSet` holds the
subjects of a split zero-padded (centred, mask 0) to one shape. As for slices, a split's
labels and loss mask exist only at that split's time points: a held-out time point's labels
never reach the training arrays, nor the choice of patches.

Patches (:class:`PatchSampler`) are ``[T, d, h, w]`` (config ``patch_size``): a labeled voxel
of the split (``label_mask`` 1 at some time point) is picked uniformly and the patch placed at
a uniformly random offset around it, inside the volume, so every patch holds labeled voxels
of training time points. With one labeled axial slice per volume (the paper's protocol) every
patch crosses that slice, and the loss mask keeps the rest of the patch at weight 0, as in
2D. The draw is a function of ``(seed, epoch, step)``, so a resumed run draws the same
patches. An epoch is one patch of every training subject.

Scoring during training (:func:`label_slabs`): the labeled voxels of a split lie in a few
axial slices, so the volumes are cut into the fewest slabs of the window's depth that hold
them, each centred on its labeled slices (each labeled voxel counted in exactly one slab),
and each slab is segmented by non-overlapping windows (:mod:`fcslstm_jax.infer.sliding_window`).
"""

import dataclasses

import numpy as np

from fcslstm_jax.data import sequences
from fcslstm_jax.errors import DataError

BATCH_KEYS = ("images", "labels", "label_mask", "valid")


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeSet:
  """Volume sequences: N subjects (or slabs of them) of T time points.

  Attributes:
    images: ``float32 [N, T, D, H, W, C]``; zeros for missing sessions.
    labels: ``int32 [N, T, D, H, W]``; 0 wherever ``label_mask`` is 0.
    label_mask: ``float32 [N, T, D, H, W]``; 1 where the voxel is labeled, its time point
      belongs to the split and its slice counts under the protocol.
    valid: ``bool [N, T, D]``: False for a missing session, and at the slices outside a
      session's field of view (:attr:`fcslstm_jax.data.study.Session.in_view`); the model treats
      those (time point, slice) pairs as missing. Zero padding takes the slice beside it.
    subject_ids: N subject ids.
    session_labels: ``str [N, T]`` (``""`` where missing).
    offsets: ``int32 [N, 3]``: the working grid's ``[Z, X, Y]`` index 0 sits at this index of
      ``[D, H, W]`` (negative along D for a slab that starts inside the volume).
  """

  images: np.ndarray
  labels: np.ndarray
  label_mask: np.ndarray
  valid: np.ndarray
  subject_ids: tuple
  session_labels: np.ndarray
  offsets: np.ndarray

  def __len__(self):
    return self.images.shape[0]


def volume_shape(subjects) -> tuple:
  """The largest ``(Z, X, Y)`` of the subjects' working grids."""
  shapes = [(s.grid.shape[2],) + tuple(s.grid.shape[:2]) for s in subjects if s.grid is not None]
  return tuple(int(v) for v in np.max(shapes, axis=0)) if shapes else (0, 0, 0)


def _subject_volume(subject, protocol, split, shape):
  seen = protocol.timepoints(split)
  if subject.z_index is not None:
    raise ValueError(
      f"sub-{subject.subject_id}: loaded with keep='labeled'; volumes need "
      "every slice (study.load_study(..., keep='all'))."
    )
  x, y, z = subject.grid.shape[:3]
  off = tuple((s - n) // 2 for n, s in zip((z, x, y), shape))
  region = tuple(slice(o, o + n) for o, n in zip(off, (z, x, y)))
  t_count, c = protocol.num_timepoints, len(protocol.modalities)
  images = np.zeros((t_count,) + tuple(shape) + (c,), np.float32)
  labels = np.zeros((t_count,) + tuple(shape), np.int32)
  mask = np.zeros((t_count,) + tuple(shape), np.float32)

  def to_zxy(a):
    return np.moveaxis(a, 2, 0)  # [X, Y, Z, ...] -> [Z, X, Y, ...]

  for t, session in enumerate(subject.timepoints):
    if session is None:
      continue
    images[(t,) + region] = to_zxy(session.image)
    if session.labels is None or t not in seen:
      continue
    labels[(t,) + region] = to_zxy(session.labels)
    mask[(t,) + region] = to_zxy(session.label_mask)
  valid = np.zeros((t_count, shape[0]), bool)
  for t, session in enumerate(subject.timepoints):
    if session is not None:  # the padding around the subject as the slice beside it
      valid[t] = np.pad(sequences.in_view(session), (off[0], shape[0] - off[0] - z), mode="edge")
  names = np.array([s.label if s else "" for s in subject.timepoints])
  return images, labels, mask, valid, names, np.array(off, np.int32)


def make_volumes(subjects, protocol, split, shape=None) -> VolumeSet:
  """Whole-volume sequences of a split: every subject with counted labels at the split's time
  points (``"all"``: every subject, every label), padded to ``shape`` ``(D, H, W)`` (default:
  the largest subject)."""
  protocol.timepoints(split)  # validates split
  subjects = [s for s in subjects if s.grid is not None]
  if split != "all":
    subjects = [s for s in subjects if s.labeled_in(protocol.timepoints(split))]
  shape = tuple(shape) if shape is not None else volume_shape(subjects)
  for s in subjects:
    own = (s.grid.shape[2],) + tuple(s.grid.shape[:2])
    if any(n > m for n, m in zip(own, shape)):
      raise DataError(
        f"{s.path}: working grid {own} (z, x, y) larger than the batch shape {shape}."
      )
  parts = [_subject_volume(s, protocol, split, shape) for s in subjects]
  t, c = protocol.num_timepoints, len(protocol.modalities)
  if not parts:

    def empty(*dims, dtype=np.float32):
      return np.zeros((0,) + dims, dtype)

    return VolumeSet(
      empty(t, *shape, c),
      empty(t, *shape, dtype=np.int32),
      empty(t, *shape),
      empty(t, shape[0], dtype=bool),
      (),
      empty(t, dtype=str),
      empty(3, dtype=np.int32),
    )

  def stack(i):
    return np.stack([p[i] for p in parts])

  return VolumeSet(
    stack(0),
    stack(1),
    stack(2),
    stack(3),
    tuple(s.subject_id for s in subjects),
    stack(4),
    stack(5),
  )


def pad_to(volumes: VolumeSet, minimum) -> VolumeSet:
  """``volumes`` zero-padded at the end of D, H, W up to at least ``minimum`` (mask 0 there)."""
  shape = volumes.images.shape[2:5]
  pads = [max(0, m - n) for n, m in zip(shape, minimum)]
  if not any(pads):
    return volumes
  spatial = [(0, p) for p in pads]

  def pad(a, extra):
    return np.pad(a, [(0, 0), (0, 0)] + spatial + [(0, 0)] * extra)

  valid = (
    np.pad(volumes.valid, [(0, 0), (0, 0), (0, pads[0])], mode="edge")
    if volumes.valid.shape[2]
    else volumes.valid
  )  # padding as the slices beside it
  return dataclasses.replace(
    volumes,
    images=pad(volumes.images, 1),
    labels=pad(volumes.labels, 0),
    label_mask=pad(volumes.label_mask, 0),
    valid=valid,
  )


def patch_start(center, patch, shape, rng) -> np.ndarray:
  """Corner of a ``patch`` inside ``shape`` that contains voxel ``center``: at a uniformly
  random offset, moved inside the volume where it would reach out (``shape >= patch``)."""
  center, patch, shape = (np.asarray(v, np.int64) for v in (center, patch, shape))
  start = center - rng.integers(0, patch)
  return np.clip(start, 0, shape - patch)


class PatchSampler:
  """Training batches of ``[T, d, h, w]`` patches drawn from a :class:`VolumeSet`.

  The arrays of the padded volumes are exposed as the set's (``images``, ``labels``, ...),
  so class weights and error messages read them as they read a SliceSet; ``len`` is the
  number of subjects (one patch each per epoch).
  """

  def __init__(self, volumes: VolumeSet, patch, seed: int = 0):
    self.patch = tuple(int(v) for v in patch)
    if len(self.patch) != 3:
      raise ValueError(f"patch must be [d, h, w], got {patch}")
    self.volumes = pad_to(volumes, self.patch)
    self.seed = seed
    # Every labeled voxel of the split, per subject: [K, 3] (d, h, w) indices.
    self.labeled = [np.argwhere(m.any(axis=0)) for m in self.volumes.label_mask]
    empty = [self.volumes.subject_ids[i] for i, v in enumerate(self.labeled) if not len(v)]
    if empty:
      raise DataError(f"sub-{empty[0]}: no labeled voxel in the split; cannot draw a patch.")

  def __len__(self):
    return len(self.volumes)

  def __getattr__(self, name):  # images, labels, label_mask, valid, subject_ids, ...
    if name == "volumes":
      raise AttributeError(name)
    return getattr(self.volumes, name)

  def starts(self, indices, key) -> np.ndarray:
    """``int64 [B, 3]``: the patch corners for subjects ``indices`` at ``key`` (e.g.
    ``(epoch, step)``)."""
    shape = self.volumes.images.shape[2:5]
    out = []
    for j, i in enumerate(indices):
      rng = np.random.default_rng([self.seed, *key, j, int(i)])
      voxels = self.labeled[i]
      out.append(patch_start(voxels[rng.integers(len(voxels))], self.patch, shape, rng))
    return np.stack(out)

  def batch(self, indices, key) -> dict:
    """The batch (``images [B, T, d, h, w, C]``, ``labels`` / ``label_mask [B, T, d, h, w]``,
    ``valid [B, T, d]``) of one patch of each subject in ``indices``."""
    starts = self.starts(indices, key)

    def crop(a, i, s):
      return a[(i, slice(None)) + tuple(slice(o, o + n) for o, n in zip(s, self.patch))]

    out = {
      k: np.stack([crop(getattr(self.volumes, k), i, s) for i, s in zip(indices, starts)])
      for k in ("images", "labels", "label_mask")
    }
    out["valid"] = np.stack(
      [self.volumes.valid[i, :, s[0] : s[0] + self.patch[0]] for i, s in zip(indices, starts)]
    )
    return out


def slab_starts(labeled_z, depth: int, total: int) -> list:
  """``[(start, first, last)]``: slabs of ``depth`` slices (of a volume of ``total``) that
  cover the labeled z indices ``labeled_z`` (sorted), each centred on the labeled slices
  ``first..last`` it counts: ``clip(centre - depth // 2, 0, total - depth)``, moved so that
  ``first..last`` stays inside. One labeled slice sits in the middle of its slab, not on its
  edge, where the windows' Gaussian weights are smallest
  (:mod:`fcslstm_jax.infer.sliding_window`)."""
  out, i, zs = [], 0, [int(z) for z in labeled_z]
  while i < len(zs):
    first = zs[i]
    last = max(z for z in zs[i:] if z < first + depth)
    start = (first + last) // 2 - depth // 2
    start = min(max(start, last - depth + 1), first)  # first..last inside the slab
    out.append((int(np.clip(start, 0, total - depth)), first, last))
    i += sum(1 for z in zs[i:] if z <= last)
  return out


def labeled_z(volumes: VolumeSet) -> list:
  """Per volume, the z indices (along D) that hold a labeled voxel of the set."""
  return [np.flatnonzero(m.any(axis=(0, 2, 3))) for m in volumes.label_mask]


def label_slabs(volumes: VolumeSet, depth: int, zs=None) -> VolumeSet:
  """Slabs ``[T, depth, H, W]`` of each volume centred on its labeled slices
  (:func:`slab_starts`, the fewest that hold them), every labeled voxel in exactly one slab
  (a slab's mask is cleared outside the labeled slices it counts). Volumes without labels
  give none. ``zs``: per volume, the z indices to place the slabs by (default: its own
  labeled z); a superset (the labeled z of the training and held-out time points together)
  lets two splits share one set of slabs and one forward pass."""
  volumes = pad_to(volumes, (depth, 0, 0))
  d_total = volumes.images.shape[2]
  keep, starts, counted = [], [], []
  for i, m in enumerate(volumes.label_mask):
    labeled = np.flatnonzero(m.any(axis=(0, 2, 3))) if zs is None else zs[i]
    for s, first, last in slab_starts(labeled, depth, d_total):
      keep.append(i)
      starts.append(s)
      counted.append((first - s, last - s + 1))

  def cut(a):
    return (
      np.stack([a[i, :, s : s + depth] for i, s in zip(keep, starts)])
      if keep
      else np.zeros((0,) + a.shape[1:2] + (depth,) + a.shape[3:], a.dtype)
    )

  mask = cut(volumes.label_mask)
  for k, (lo, hi) in enumerate(counted):
    mask[k, :, :lo] = 0.0
    mask[k, :, hi:] = 0.0
  labels = np.where(mask > 0, cut(volumes.labels), 0).astype(np.int32)
  offsets = volumes.offsets[keep].copy() if keep else np.zeros((0, 3), np.int32)
  offsets[:, 0] -= np.asarray(starts, np.int32)
  valid = (
    np.stack([volumes.valid[i, :, s : s + depth] for i, s in zip(keep, starts)])
    if keep
    else np.zeros((0,) + volumes.valid.shape[1:2] + (depth,), bool)
  )
  return VolumeSet(
    cut(volumes.images),
    labels,
    mask,
    valid,
    tuple(volumes.subject_ids[i] for i in keep),
    volumes.session_labels[keep],
    offsets,
  )


def training_sets(subjects, protocol, patch, seed=0, shape=None):
  """``(train patches, train slabs, test slabs)`` of a 3D run (see the module docstring):
  a :class:`PatchSampler` over the training split's volumes, and the :func:`label_slabs`
  (depth ``patch[0]``) that score the training and the held-out time points. Each split's
  slabs are placed by its own labeled z: the slabs that score the training split (and so
  select the best checkpoint) never depend on where the held-out labels lie. (They once were
  placed by both splits' z, to segment shared slabs once; that let held-out label
  positions into checkpoint selection.)"""
  shape = shape or volume_shape(subjects)
  train = make_volumes(subjects, protocol, "train", shape)
  test = make_volumes(subjects, protocol, "test", shape)
  return (
    PatchSampler(train, patch, seed),
    label_slabs(train, patch[0]),
    label_slabs(test, patch[0]),
  )
