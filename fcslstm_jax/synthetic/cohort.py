"""Studies that look like a real cohort, made with the built-in generator
(:mod:`fcslstm_jax.synthetic.bric_like`).

A real longitudinal study is not the built-in dataset's tidy grid. This module writes one
that has what cohorts have, each condition switchable, so that the loader, training and
evaluation are tested (and measured) against it:

* every session on its own grid: its field of view cropped or extended by a few voxels on
  each side (the affine says exactly where), and the head moved (rotation, shift) between
  sessions, as subjects lie differently in the scanner;
* subjects on different voxel sizes (cycled over ``voxel_mm``), hence different shapes;
* sparse labels: one labeled axial slice per session, at a different z in each session (the
  paper: "only 1 slice per 3D volume is manually labeled"), or one z per subject, or dense;
  the full label volumes are kept apart in ``sourcedata/full-labels/`` (which the loader
  never reads) to score whole-volume predictions against labels training never saw;
* unlabeled subjects, with missing sessions;
* ages with jitter in ``sessions.tsv`` and session labels that carry no age (``ses-V1``);
* optional skull stripping (zero outside the head);
* a ``protocol.json`` at the root (the paper's BRIC protocol unless given).

Files are stored LAS, like the built-in dataset. Deterministic in the seed.

    python -m fcslstm_jax.cli.make_study --out data/cohort       # the README's study (~1 min)
"""

import dataclasses
import os
import pathlib
import shutil
import tempfile

import numpy as np

from fcslstm_jax import files
from fcslstm_jax.data import protocol
from fcslstm_jax.synthetic import bric_like

LABELS = ("sparse", "subject", "dense")


@dataclasses.dataclass(frozen=True)
class CohortConfig:
  """What the study looks like. Defaults: the README's study
  (``python -m fcslstm_jax.cli.make_study``).

  Attributes:
    num_subjects: subjects with labels.
    num_unlabeled: subjects without any label file (ids after the labeled ones).
    missing: sessions missing from each unlabeled subject (never its first).
    missing_labeled: labeled subjects (the last ones) that miss one session, never their
      first (uneven studies: a missed visit).
    ages: nominal ages (months) of the visits.
    age_jitter: uniform jitter (months) of the ages written to ``sessions.tsv``.
    fov_mm: field of view ``(x, y, z)`` in mm before the per-session changes.
    voxel_mm: in-plane voxel sizes, one per subject (cycled).
    slice_mm: slice spacing.
    crop_vox: each side of each session's field of view moves by up to this many voxels.
    motion_deg: head rotation between sessions about the scanner's z axis, up to +-degrees.
    tilt_deg: head rotation about the x axis (through-plane), up to +-degrees.
    motion_mm: head shift between sessions, up to +- mm per axis (z: half of it).
    labels: ``"sparse"`` (one slice per session at its own z), ``"subject"`` (one z per
      subject, the same index in every session) or ``"dense"`` (every slice).
    skull_strip: zero every voxel outside the head (brain and CSF).
    noise: Rician noise relative to the brightest tissue.
    protocol: the ``protocol.json`` written at the root (fields of a Protocol).
  """

  num_subjects: int = 8
  num_unlabeled: int = 2
  missing: int = 1
  missing_labeled: int = 0
  ages: tuple = (0, 3, 6, 9, 12)
  age_jitter: float = 0.5
  fov_mm: tuple = (192.0, 216.0, 60.0)
  voxel_mm: tuple = (1.5, 1.8, 1.2)
  slice_mm: float = 3.0
  crop_vox: int = 6
  motion_deg: float = 4.0
  tilt_deg: float = 0.0
  motion_mm: float = 4.0
  labels: str = "sparse"
  skull_strip: bool = False
  noise: float = 0.03
  protocol: dict = dataclasses.field(
    default_factory=lambda: protocol.BRIC.to_json() | {"name": "cohort"}
  )

  def __post_init__(self):
    if self.labels not in LABELS:
      raise ValueError(f"labels must be one of {LABELS}, got {self.labels!r}")


# Tests: 32-40 voxels in-plane, 3-4 slices, 2 labeled + 1 unlabeled subjects.
TINY = CohortConfig(
  num_subjects=2,
  num_unlabeled=1,
  fov_mm=(192.0, 192.0, 18.0),
  voxel_mm=(6.0, 4.8),
  slice_mm=6.0,
  crop_vox=2,
  motion_deg=3.0,
  motion_mm=3.0,
)


# An uneven study (issue 29): visits at 6, 12 and 24 months (IBIS's ages), ages jittered by up
# to 1.5 months, two labeled subjects that missed a visit; trains on 12 and 24, tests on 6.
UNEVEN = CohortConfig(
  ages=(6, 12, 24),
  age_jitter=1.5,
  missing_labeled=2,
  protocol=protocol.get_protocol("ibis").to_json() | {"name": "uneven"},
)


def _rotation_x(angle):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclasses.dataclass(frozen=True)
class SessionGeometry:
  """A session's grid (``affine``: voxel -> scanner mm, ``shape``) and head pose
  (``pose``: head mm -> scanner mm, rigid)."""

  affine: np.ndarray
  shape: tuple
  pose: np.ndarray


def base_grid(config, voxel):
  """A subject's nominal grid: ``voxel`` in-plane, ``slice_mm`` apart, centered on the head."""
  spacing = np.array([voxel, voxel, config.slice_mm])
  shape = tuple(int(round(f / s)) for f, s in zip(config.fov_mm, spacing))
  affine = np.diag(list(spacing) + [1.0])
  affine[:3, 3] = -spacing * (np.array(shape) - 1) / 2
  return affine, shape


def session_geometry(rng, config, voxel, moved=True) -> SessionGeometry:
  """The session's own grid (a random crop of the nominal one) and head pose."""
  affine, shape = base_grid(config, voxel)
  k = config.crop_vox
  lo = rng.integers(-k, k + 1, size=3) if moved else np.zeros(3, int)
  hi = rng.integers(-k, k + 1, size=3) if moved else np.zeros(3, int)
  lo[2], hi[2] = lo[2] // 2, hi[2] // 2  # few slices: move z by less
  shape = tuple(int(n - a - b) for n, a, b in zip(shape, lo, hi))
  out = affine.copy()
  out[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]  # exact: whole voxels
  pose = np.eye(4)
  if moved:
    angle, tilt = np.deg2rad(rng.uniform(-1, 1, size=2) * [config.motion_deg, config.tilt_deg])
    pose[:3, :3] = bric_like._rotation_z(angle) @ _rotation_x(tilt)
    pose[:3, 3] = rng.uniform(-1, 1, size=3) * config.motion_mm * np.array([1, 1, 0.5])
  return SessionGeometry(affine=out, shape=shape, pose=pose)


def _generation(config, voxel):
  """The built-in generator's config for one subject's grids (noise and voxel size)."""
  return bric_like.GenerationConfig(
    num_subjects=1, ages=config.ages, voxel_mm=voxel, noise=config.noise
  )


def make_session(templates, params, rng, config, age, voxel, geometry):
  """``(images {modality: int16 [X, Y, Z]}, labels uint8 [X, Y, Z])`` on the session's grid."""
  gen = _generation(config, voxel)
  head_affine = np.linalg.inv(geometry.pose) @ geometry.affine  # voxel -> head mm
  probs, onset = bric_like.session_tissues(templates, params, age, gen, head_affine, geometry.shape)
  spacing = np.linalg.norm(geometry.affine[:3, :3], axis=0)
  images = bric_like.session_images(rng, probs, onset, age, gen, spacing=spacing)
  labels = bric_like.session_labels(probs)
  if config.skull_strip:
    inside = labels > 0
    images = {m: np.where(inside, v, 0).astype(v.dtype) for m, v in images.items()}
  return images, labels


def labeled_z(rng, labels_by_session, mode):
  """For each session, the z indices whose labels are kept (see ``CohortConfig.labels``)."""
  if mode == "dense":
    return [np.arange(lab.shape[2]) for lab in labels_by_session]
  full = [
    np.flatnonzero([np.isin([1, 2, 3], lab[:, :, z]).all() for z in range(lab.shape[2])])
    for lab in labels_by_session
  ]  # slices showing every tissue ...
  full = [
    f if f.size else np.flatnonzero(lab.any(axis=(0, 1)))  # ... else any labeled slice
    for f, lab in zip(full, labels_by_session)
  ]
  if mode == "subject":
    common = sorted(set.intersection(*(set(f.tolist()) for f in full)))
    z = int(rng.choice(common))
    return [np.array([z]) for _ in labels_by_session]
  out, used = [], set()
  for candidates in full:  # a different z in each session where there is a choice
    free = [int(z) for z in candidates if z not in used] or [int(z) for z in candidates]
    z = int(rng.choice(free))
    used.add(z)
    out.append(np.array([z]))
  return out


def write_cohort(out_dir, seed, config):
  """Writes the study into ``out_dir`` (not atomic: see :func:`generate`)."""
  out_dir = pathlib.Path(out_dir)
  templates = bric_like.load_templates(config.fov_mm[2] / 2 / 0.6 + 12.0)
  total, total_labeled = config.num_subjects + config.num_unlabeled, config.num_subjects
  for i in range(total):
    sid, labeled = f"{i + 1:02d}", i < config.num_subjects
    params = bric_like.subject_params(np.random.default_rng([seed, i]))
    voxel = config.voxel_mm[i % len(config.voxel_mm)]
    rng = np.random.default_rng([seed, i, 7])
    sessions = list(range(len(config.ages)))
    misses = config.missing if not labeled else int(i >= total_labeled - config.missing_labeled)
    if misses and len(sessions) > 1:
      dropped = rng.choice(sessions[1:], size=min(misses, len(sessions) - 1), replace=False)
      sessions = [j for j in sessions if j not in set(dropped.tolist())]
    made = []
    for j in sessions:
      geometry = session_geometry(
        np.random.default_rng([seed, i, j, 1]), config, voxel, moved=j > 0
      )
      images, labels = make_session(
        templates,
        params,
        np.random.default_rng([seed, i, j]),
        config,
        config.ages[j],
        voxel,
        geometry,
      )
      made.append((j, geometry, images, labels))
    keep = labeled_z(rng, [m[3] for m in made], config.labels)
    rows = []
    for (j, geometry, images, labels), zs in zip(made, keep):
      ses = f"V{j + 1}"
      stem = f"sub-{sid}_ses-{ses}"
      anat = out_dir / f"sub-{sid}" / f"ses-{ses}" / "anat"
      for modality, image in images.items():
        bric_like._write(anat / f"{stem}_{modality}.nii.gz", image, geometry.affine, np.int16)
      full = out_dir / "sourcedata" / "full-labels" / f"sub-{sid}" / f"ses-{ses}" / "anat"
      bric_like._write(full / f"{stem}_dseg.nii.gz", labels, geometry.affine, np.uint8)
      if labeled:
        sparse = np.zeros_like(labels)
        sparse[:, :, zs] = labels[:, :, zs]
        manual = out_dir / "derivatives" / "manual" / f"sub-{sid}" / f"ses-{ses}" / "anat"
        bric_like._write(manual / f"{stem}_dseg.nii.gz", sparse, geometry.affine, np.uint8)
      age = config.ages[j] + rng.uniform(-config.age_jitter, config.age_jitter)
      rows.append((f"ses-{ses}", f"{max(age, 0.0):.2f}"))
    files.write_tsv(out_dir / f"sub-{sid}" / f"sub-{sid}_sessions.tsv", ("session_id", "age"), rows)
  files.write_tsv(
    out_dir / "participants.tsv", ("participant_id",), [(f"sub-{i + 1:02d}",) for i in range(total)]
  )
  files.write_json(out_dir / "protocol.json", config.protocol)
  files.write_text(out_dir / ".bidsignore", "protocol.json\n")  # not a BIDS file
  params = {
    k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
  }
  files.write_json(
    out_dir / "dataset_description.json",
    {
      "Name": "fcslstm-jax synthetic cohort (built-in generator, real-study conditions)",
      "BIDSVersion": "1.9.0",
      "DatasetType": "raw",
      "GeneratedBy": [
        {
          "Name": "fcslstm_jax.cohort",
          "Version": bric_like.VERSION,
          "Parameters": {"seed": seed, **params},
        }
      ],
    },
  )  # written last: marks completion


def generate(out_dir, seed=0, config=CohortConfig()):
  """Writes the study into ``out_dir`` atomically (a temporary sibling, then a rename)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
  try:
    write_cohort(tmp, seed, config)
    os.replace(tmp, out_dir)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return out_dir
