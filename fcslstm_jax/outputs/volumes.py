"""Tissue volumes in mL from a label volume and its grid.

Layout: labels ``int [X, Y, Z]`` (any axis order: counting voxels does not depend on it)
and the ``[4, 4]`` voxel-to-world (mm) affine of the grid they lie on. A voxel's volume is
``|det(affine[:3, :3])|`` mm³, so oblique, flipped (LAS vs RAS) and anisotropic grids are
all measured in the scanner's millimetres; 1 mL = 1000 mm³.

Against a label file (``evaluate.py --labels``): volume and growth errors are pure functions
of ``[sessions, classes]`` mL arrays; :func:`is_whole_volume` reads ``[X, Y, Z]`` with z
the axial axis (the canonical grid).
"""

import dataclasses
from typing import Optional

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
  header = (
    ["subject", "session", "timepoint", "age"] + [f"{n}_ml" for n in tissues] + ["total_ml", "qc"]
  )
  out = []
  for r in sorted(rows, key=lambda r: (r.subject, r.age, r.session)):
    v = [r.volumes_ml[n] for n in tissues]
    out.append(
      [f"sub-{r.subject}", f"ses-{r.session}", r.timepoint + 1, f"{r.age:g}"]
      + [f"{x:.3f}" for x in v]
      + [f"{sum(v):.3f}", f"{r.qc:.4f}"]
    )
  return header, out


# --------------------------------------------------------------- volumes against the truth

# A true change under this fraction of the larger true volume counts as no growth: the
# relative growth error would divide by (nearly) nothing.
GROWTH_TOLERANCE = 0.01


def is_whole_volume(truth) -> bool:
  """Whether ``truth`` ``int [X, Y, Z]`` is a whole-volume label file, whose class volumes
  are the session's, decided from the file alone: it labels every axial slice, or one
  unbroken run of at least 3 (a brain with empty slices above and below). Sparse training
  labels (one slice, or every other slice) are not. A partial but unbroken slab would pass:
  no file can tell it from a small field of view."""
  labeled = np.flatnonzero(np.asarray(truth).any(axis=(0, 1)))
  if labeled.size == np.asarray(truth).shape[2]:
    return True
  return labeled.size >= 3 and labeled[-1] - labeled[0] + 1 == labeled.size


def volume_errors(pred_ml, true_ml) -> tuple:
  """``(mean |pred - true| / true, mean (pred - true) / true)``, ``float64 [c]`` each, over
  the sessions of ``pred_ml`` and ``true_ml`` (``[S, c]`` mL). A class's sessions with no
  true volume are left out of its means (NaN where none is left)."""
  pred, true = np.asarray(pred_ml, np.float64), np.asarray(true_ml, np.float64)
  if pred.ndim != 2 or pred.shape != true.shape:
    raise ValueError(
      f"volume_errors: pred_ml {pred.shape} and true_ml {true.shape} must both "
      "be [sessions, classes]."
    )
  counted = true > 0
  rel = np.where(counted, (pred - true) / np.where(counted, true, 1.0), 0.0)
  n = counted.sum(0)

  def mean(v):
    return np.where(n > 0, v.sum(0) / np.maximum(n, 1), np.nan)

  return mean(np.abs(rel)), mean(rel)


def first_last(subjects, ages) -> list:
  """``[(subject, first, last)]``: the indices of each subject's youngest and oldest session
  (by age, then order) in ``subjects [S]`` / ``ages [S]``, for subjects with >= 2 sessions,
  in order of first appearance."""
  by_subject = {}
  for i, s in enumerate(subjects):
    by_subject.setdefault(s, []).append(i)
  out = []
  for s, idx in by_subject.items():
    if len(idx) >= 2:
      idx = sorted(idx, key=lambda i: (ages[i], i))
      out.append((s, idx[0], idx[-1]))
  return out


def growth_errors(subjects, ages, pred_ml, true_ml, tolerance=GROWTH_TOLERANCE) -> tuple:
  """``(error float64 [c], subjects int64 [c])``: per class, the mean over subjects with
  >= 2 sessions of ``|(pred_last - pred_first) - (true_last - true_first)| / |true_last -
  true_first|`` (first and last session by age), and how many subjects it averages.

  ``subjects [S]``, ``ages [S]``, ``pred_ml`` / ``true_ml`` ``[S, c]`` mL. A subject whose
  true change is below ``tolerance`` times its larger true volume is skipped for that class
  (NaN where no subject is left)."""
  pred, true = np.asarray(pred_ml, np.float64), np.asarray(true_ml, np.float64)
  if pred.ndim != 2 or pred.shape != true.shape or not len(subjects) == len(ages) == len(pred):
    raise ValueError(
      f"growth_errors: subjects ({len(subjects)}), ages ({len(ages)}), pred_ml "
      f"{pred.shape} and true_ml {true.shape} must share the session axis."
    )
  total, n = np.zeros(pred.shape[1]), np.zeros(pred.shape[1], np.int64)
  for _, a, b in first_last(subjects, ages):
    true_growth, pred_growth = true[b] - true[a], pred[b] - pred[a]
    counted = np.abs(true_growth) > tolerance * np.maximum(true[a], true[b])
    err = np.abs(pred_growth - true_growth) / np.where(counted, np.abs(true_growth), 1.0)
    total, n = total + np.where(counted, err, 0.0), n + counted
  return np.where(n > 0, total / np.maximum(n, 1), np.nan), n


@dataclasses.dataclass(frozen=True)
class TruthVolumes:
  """A scored session's tissue volumes, predicted and from its label file (class name ->
  mL, every class but background), and its group (``heldout``, ``train_timepoints``,
  ``unlabeled_subjects``, or None: a labeled subject's unused time point)."""

  subject: str
  session: str
  age: float
  group: Optional[str]
  predicted_ml: dict
  true_ml: dict


def truth_rows(records, class_names) -> tuple:
  """``(header, rows)`` of ``volumes_truth.tsv``: one row per session and tissue class,
  subjects in order, sessions by age."""
  header = ["subject", "session", "age", "class", "predicted_ml", "true_ml"]
  out = []
  for r in sorted(records, key=lambda r: (r.subject, r.age, r.session)):
    out += [
      [
        f"sub-{r.subject}",
        f"ses-{r.session}",
        f"{r.age:g}",
        n,
        f"{r.predicted_ml[n]:.3f}",
        f"{r.true_ml[n]:.3f}",
      ]
      for n in class_names[1:]
    ]
  return header, out
