"""Tissue volumes in mL from a label volume and its grid.

Layout: labels ``int [X, Y, Z]`` (any axis order: counting voxels does not depend on it)
and the ``[4, 4]`` voxel-to-world (mm) affine of the grid they lie on. A voxel's volume is
``|det(affine[:3, :3])|`` mm³, so oblique, flipped (LAS vs RAS) and anisotropic grids are
all measured in the scanner's millimetres; 1 mL = 1000 mm³.
"""

import dataclasses

import numpy as np


def voxel_ml(affine) -> float:
  """Volume of one voxel of ``affine``'s grid in mL."""
  return float(abs(np.linalg.det(np.asarray(affine, np.float64)[:3, :3])) / 1000.0)


def class_volumes_ml(labels, affine, num_classes: int) -> np.ndarray:
  """``float64 [c]``: the volume of each class 0..c-1 in mL."""
  counts = np.bincount(np.asarray(labels).ravel().astype(np.int64), minlength=num_classes)
  return counts[:num_classes].astype(np.float64) * voxel_ml(affine)


@dataclasses.dataclass(frozen=True)
class SessionVolumes:
  """One row of ``volumes.tsv``: a session's tissue volumes and QC score.

  Attributes:
    subject: subject id without ``sub-``.
    session: session label without ``ses-``.
    timepoint: the protocol time point (0-based) the session fills.
    age: the session's age (the protocol's unit, e.g. months).
    volumes_ml: class name -> volume in mL on the session's own (input) grid, for every
      class but background (the field of view's, not a tissue's).
    qc: the session's QC score (:func:`fcslstm_jax.outputs.qc.qc_score`; higher = less trusted).
  """
  subject: str
  session: str
  timepoint: int
  age: float
  volumes_ml: dict
  qc: float


def volume_rows(rows, class_names) -> tuple:
  """``(header, rows)`` of ``volumes.tsv``: subject, session, time point (1-based), age,
  ``<class>_ml`` per tissue class, ``total_ml`` (their sum), ``qc``; subjects in order,
  sessions by age."""
  tissues = list(class_names[1:])
  header = (["subject", "session", "timepoint", "age"] + [f"{n}_ml" for n in tissues]
            + ["total_ml", "qc"])
  out = []
  for r in sorted(rows, key=lambda r: (r.subject, r.age, r.session)):
    v = [r.volumes_ml[n] for n in tissues]
    out.append([f"sub-{r.subject}", f"ses-{r.session}", r.timepoint + 1, f"{r.age:g}"]
               + [f"{x:.3f}" for x in v] + [f"{sum(v):.3f}", f"{r.qc:.4f}"])
  return header, out
