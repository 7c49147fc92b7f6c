"""The dataset layout on disk (BIDS-like): which files a study has, without reading voxels.

::

  DIR/protocol.json                                                   (optional)
  DIR/sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>_T1w.nii[.gz]     (and _T2w, ...)
  DIR/sub-<id>/sub-<id>_sessions.tsv                                  (optional: age column)
  DIR/derivatives/<any>/sub-<id>/ses-<label>/anat/*_dseg.nii[.gz]     (optional labels)
  DIR/derivatives/<any>/dseg.tsv                  (optional: index, name of each label value)

Labels come from every ``derivatives/`` pipeline but this tool's own outputs, or from the one
``--labels`` names.

Sessions are ordered by age: the ``age`` column of ``sub-<id>_sessions.tsv`` when present,
else the age the session label states with a unit, in months (``ses-06mo``, ``ses-12m``,
``ses-1y`` -> 6, 12, 12; :func:`label_age`). A label without a unit (``ses-T2``, ``ses-V06``,
``ses-6``) and no tsv age is refused, never guessed.
"""

import csv
import dataclasses
import json
import os
import pathlib
import re
from typing import Optional

from fcslstm_jax.data import nifti_io
from fcslstm_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class SessionFiles:
  """One session's files. ``images``: modality -> path; ``dseg``: label file or None."""

  label: str
  age: float
  images: dict
  dseg: Optional[str]


@dataclasses.dataclass(frozen=True)
class SubjectFiles:
  """A subject's folder and its sessions, youngest first."""

  subject_id: str
  path: str
  sessions: tuple

  @property
  def labeled(self) -> bool:
    return any(s.dseg for s in self.sessions)


# An age in a session label: a number and a unit at the label's end, read in months (the
# shipped protocols' unit). A bare number or an unknown unit ("V06", "T2", "6") is refused:
# read as months, "ses-1y" would be 1 month and "ses-T2" 2 months.
_LABEL_AGE = re.compile(
  r"(\d+(?:\.\d+)?)(mo|mos|month|months|m|y|yr|yrs|year|years)$", re.IGNORECASE
)
MONTHS_PER = {"m": 1.0, "y": 12.0}


def label_age(label):
  """The age in months a session label states (``06mo``, ``12m``, ``9months`` -> 6, 12, 9;
  ``1y``, ``2yr`` -> 12, 24), or None when it states none with a unit."""
  match = _LABEL_AGE.search(label)
  if not match:
    return None
  return float(match.group(1)) * MONTHS_PER[match.group(2)[0].lower()]


def read_session_ages(tsv_path):
  """``{session label: age}`` from a BIDS ``sub-<id>_sessions.tsv`` ({} without an age column)."""
  ages = {}
  try:
    with open(tsv_path, newline="") as f:
      rows = list(csv.DictReader(f, delimiter="\t"))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"{tsv_path}: cannot be read as a tab-separated table ({e}).") from None
  for row in rows:
    session_id, age = row.get("session_id"), row.get("age")
    if not session_id or age is None or age.strip() in ("", "n/a"):
      continue
    try:
      ages[session_id.strip().removeprefix("ses-")] = float(age)
    except ValueError:
      raise DataError(
        f"{tsv_path}: age {age!r} of {session_id} is not a number. "
        "Write ages as numbers (e.g. months) or 'n/a'."
      ) from None
  return ages


def _session_age(subject_dir, label, tsv_ages):
  if label in tsv_ages:
    return tsv_ages[label]
  age = label_age(label)
  if age is None:
    raise DataError(
      f"{subject_dir / ('ses-' + label)}: cannot tell the session's age (a label states it "
      f"only with a unit: 06mo, 12m, 1y). Add an 'age' column to "
      f"{subject_dir.name}_sessions.tsv, or rename the session (e.g. ses-06mo)."
    )
  return age


def _find_one(candidates, what, expected, fix="keep only one"):
  candidates = sorted(c for c in candidates if nifti_io.is_nifti_path(c))
  if len(candidates) > 1:
    names = ", ".join(str(c) for c in candidates)
    raise DataError(f"{expected}: several {what} files match ({names}). {fix.capitalize()}.")
  return str(candidates[0]) if candidates else None


def find_modality(subject_dir, label, modality):
  """The session's ``anat/sub-<id>_ses-<label>[_<entities>]_<modality>.nii[.gz]``."""
  anat = subject_dir / f"ses-{label}" / "anat"
  stem = f"{subject_dir.name}_ses-{label}"
  expected = anat / f"{stem}_{modality}.nii.gz"
  found = _find_one(anat.glob(f"{stem}*_{modality}.nii*"), modality, expected)
  if found is None:
    raise DataError(
      f"{expected}: missing (session has no {modality} image). Add it as .nii or "
      f".nii.gz, remove the session, or choose other modalities."
    )
  return found


def find_dseg(root, subject_id, label, labels_root=None):
  """The session's ``*_dseg.nii[.gz]``, or None.

  ``labels_root``: a folder laid out as ``sub-<id>/ses-<label>/anat/*_dseg.nii*`` (e.g. one
  pipeline's derivatives) to take labels from instead of ``root/derivatives/*/``.
  """
  rel = pathlib.Path(f"sub-{subject_id}") / f"ses-{label}" / "anat"
  if labels_root is not None:
    labels_root = pathlib.Path(labels_root)
    return _find_one((labels_root / rel).glob("*_dseg.nii*"), "dseg", labels_root / rel)
  candidates = [p for d in label_pipelines(root) for p in (d / rel).glob("*_dseg.nii*")]
  return _find_one(
    candidates,
    "dseg",
    root / "derivatives" / "*" / rel,
    "choose one pipeline with --labels derivatives/<name>",
  )


def label_pipelines(root) -> list:
  """The folders under ``root/derivatives/`` that may hold labels: every one but this tool's
  own outputs (:func:`is_own`: its ``dataset_description.json`` names fcslstm-jax), so
  that training never reads its own predictions as labels."""
  return [d for d in sorted((pathlib.Path(root) / "derivatives").glob("*")) if not is_own(d)]


def output_place_allowed(root, parts) -> bool:
  """Whether outputs may go to ``root/<parts>`` inside a dataset: under
  ``derivatives/<name>/`` (where BIDS puts a pipeline's outputs) unless that folder holds
  another pipeline's subjects (labels, which must never be overwritten)."""
  if len(parts) < 2 or parts[0] != "derivatives":
    return False
  pipeline = pathlib.Path(root) / parts[0] / parts[1]
  return is_own(pipeline) or not any(pipeline.glob("sub-*"))


# The GeneratedBy name of this tool's derivative datasets (fcslstm_jax.outputs.bids).
GENERATOR = "fcslstm-jax"


def is_own(derivative_dir) -> bool:
  """Whether ``derivative_dir``'s ``dataset_description.json`` says this tool generated it
  (an unreadable or missing description: not ours)."""
  path = os.path.join(derivative_dir, "dataset_description.json")
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  except (OSError, ValueError):
    return False
  generated = record.get("GeneratedBy") if isinstance(record, dict) else None
  return isinstance(generated, list) and any(
    isinstance(g, dict) and g.get("Name") == GENERATOR for g in generated
  )


def resolve_labels_root(root, labels):
  """``--labels``: a folder, absolute or relative to the dataset (``derivatives/manual``),
  laid out as ``sub-<id>/ses-<label>/anat/*_dseg.nii*``; None stays None."""
  if labels is None:
    return None
  path = pathlib.Path(labels)
  if not path.is_absolute() and not path.is_dir() and (pathlib.Path(root) / path).is_dir():
    path = pathlib.Path(root) / path
  if not path.is_dir():
    raise DataError(
      f"{labels}: label folder not found (neither as given nor under {root}). Pass e.g. "
      "--labels derivatives/<pipeline>."
    )
  return str(path)


def dseg_tables(subjects) -> list:
  """The ``dseg.tsv`` files of the label pipelines the subjects' label files come from
  (``PIPELINE/sub-<id>/ses-<label>/anat/*_dseg.nii*`` -> ``PIPELINE/dseg.tsv``), for those
  that have one."""
  tables = {
    pathlib.Path(session.dseg).parents[3] / "dseg.tsv"
    for subject in subjects
    for session in subject.sessions
    if session.dseg
  }
  return sorted(str(t) for t in tables if t.is_file())


def scan_subject(root, subject_dir, modalities, labels_root=None) -> SubjectFiles:
  """The files of ``root/sub-<id>``, sessions in age order (see the module docstring)."""
  root, subject_dir = pathlib.Path(root), pathlib.Path(subject_dir)
  labels = sorted(d.name.removeprefix("ses-") for d in subject_dir.glob("ses-*") if d.is_dir())
  if not labels:
    raise DataError(
      f"{subject_dir}: no ses-<label> folders. Longitudinal data needs "
      f"{subject_dir}/ses-<label>/anat/{subject_dir.name}_ses-<label>_T1w.nii.gz."
    )
  tsv = subject_dir / f"{subject_dir.name}_sessions.tsv"
  tsv_ages = read_session_ages(tsv) if tsv.is_file() else {}
  subject_id = subject_dir.name.removeprefix("sub-")
  sessions = []
  for label in labels:
    images = {m: find_modality(subject_dir, label, m) for m in modalities}
    sessions.append(
      SessionFiles(
        label=label,
        age=_session_age(subject_dir, label, tsv_ages),
        images=images,
        dseg=find_dseg(root, subject_id, label, labels_root),
      )
    )
  sessions.sort(key=lambda s: (s.age, s.label))
  return SubjectFiles(subject_id=subject_id, path=str(subject_dir), sessions=tuple(sessions))


def subject_dirs(root):
  """The ``sub-*`` folders of a dataset, sorted; errors name the folder."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"{root}: dataset folder not found. Pass the folder that holds sub-<id>/.")
  dirs = sorted(d for d in root.glob("sub-*") if d.is_dir())
  if not dirs:
    raise DataError(
      f"{root}: no subjects found (no sub-<id>/ folders). Expected "
      f"{root}/sub-<id>/ses-<label>/anat/sub-<id>_ses-<label>_T1w.nii.gz."
    )
  return dirs


def scan(root, modalities=("T1w", "T2w"), labels_root=None, participants=None) -> list:
  """Every subject's :class:`SubjectFiles`, sorted by id (only ``participants``' when given:
  labels with or without ``sub-``; one that the dataset lacks is a DataError)."""
  dirs = subject_dirs(root)
  if participants is not None:
    wanted = {str(p).removeprefix("sub-") for p in participants}
    have = {d.name.removeprefix("sub-") for d in dirs}
    missing = sorted(wanted - have)
    if missing:
      raise DataError(
        f"{root}: no participant(s) {', '.join('sub-' + m for m in missing)} (it has "
        f"{', '.join('sub-' + h for h in sorted(have)[:8])}{', ...' if len(have) > 8 else ''})."
      )
    dirs = [d for d in dirs if d.name.removeprefix("sub-") in wanted]
  return [scan_subject(root, d, tuple(modalities), labels_root) for d in dirs]
