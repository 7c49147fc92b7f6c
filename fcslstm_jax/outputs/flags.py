"""Flags: rules that name the sessions whose volumes a person should check.

Each rule reads the per-session tissue volumes (:class:`fcslstm_jax.outputs.volumes.SessionVolumes`)
and returns :class:`Flag` records naming subject, session, rule, class and numbers. The
rules and their limits are plain values (:class:`FlagRules`); a JSON file given with
``evaluate.py --flags FILE.json`` changes any of them (``python -m fcslstm_jax.cli.flag_rules``
prints the defaults to start from). Ages are in the protocol's unit (months for the shipped
protocols).

* ``shrink``: a tissue volume falls by more than ``fraction`` between two consecutive
  sessions of a subject, the later one younger than ``before_age``. Brain tissue grows in
  the first two years of life; a drop there is more likely a segmentation failure than
  biology.
* ``outlier``: a session's tissue volume lies more than ``z`` robust standard deviations
  from the cohort's median at its time point (``|v - median| / (1.4826 MAD)``); only where
  the time point has at least ``min_sessions`` sessions, and not where the MAD is 0.
* ``empty``: a tissue class below ``min_ml`` (iBEAT users report "brain volume equals 0").
* ``uncertain``: a session whose QC score (mean uncertainty in the predicted brain,
  :mod:`fcslstm_jax.outputs.qc`) lies more than ``z`` robust standard deviations above the median
  of all sessions (at least ``min_sessions`` of them), or above ``qc`` when that is set.
  Relative by default: how uncertain a good segmentation is depends on the model and the
  images (the built-in data's soft tissue borders keep every session's score well above 0).

* ``trajectory``: a subject's growth of a tissue class from its first to its last session,
  per unit of age, departs from the cohort's median growth (over the subjects with at least
  2 sessions at different ages; at least ``min_subjects`` of them) by more than ``z`` times
  the spread: ``|g - median| / max(1.4826 MAD, floor |median|)``. The floor keeps a tight
  cohort from flagging noise: with the defaults a subject is flagged only when its growth
  departs from the median by more than 70 % of the median (e.g. WM flat while every other
  subject's grows). One flag per subject and class, on its last session.

Setting a rule to ``null`` in the file turns it off; ``classes`` limits the volume rules to
some tissue classes (default: every class but background).
"""

import dataclasses
from typing import Optional

import numpy as np

from fcslstm_jax import jsonfile
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.outputs import volumes

MAD_TO_SD = 1.4826  # the MAD of a normal distribution times this is its standard deviation


@dataclasses.dataclass(frozen=True)
class ShrinkRule:
  fraction: float = 0.1
  before_age: Optional[float] = 24.0


@dataclasses.dataclass(frozen=True)
class OutlierRule:
  z: float = 3.5
  min_sessions: int = 5


@dataclasses.dataclass(frozen=True)
class EmptyRule:
  min_ml: float = 1.0


@dataclasses.dataclass(frozen=True)
class UncertainRule:
  z: Optional[float] = 3.5
  min_sessions: int = 5
  qc: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class TrajectoryRule:
  z: float = 3.5
  floor: float = 0.2
  min_subjects: int = 4


@dataclasses.dataclass(frozen=True)
class FlagRules:
  """The rules (None: off) and the classes the volume rules look at (None: all tissues)."""

  shrink: Optional[ShrinkRule] = ShrinkRule()
  outlier: Optional[OutlierRule] = OutlierRule()
  empty: Optional[EmptyRule] = EmptyRule()
  uncertain: Optional[UncertainRule] = UncertainRule()
  trajectory: Optional[TrajectoryRule] = TrajectoryRule()
  classes: Optional[tuple[str, ...]] = None

  def to_json(self) -> dict:
    d = {
      k: None if v is None else dataclasses.asdict(v)
      for k, v in ((f, getattr(self, f)) for f in RULES)
    }
    d["classes"] = None if self.classes is None else list(self.classes)
    return d


RULES = {
  "shrink": ShrinkRule,
  "outlier": OutlierRule,
  "empty": EmptyRule,
  "uncertain": UncertainRule,
  "trajectory": TrajectoryRule,
}


@dataclasses.dataclass(frozen=True)
class Flag:
  """One flagged session: ``rule`` fired for ``cls`` (a class name, or ``""`` for the
  whole session) with ``value`` against ``limit``; ``message`` says it in words."""

  subject: str
  session: str
  age: float
  rule: str
  cls: str
  value: float
  limit: float
  message: str

  def line(self) -> str:
    return (
      f"flag: sub-{self.subject} ses-{self.session} (age {self.age:g}): {self.rule}: {self.message}"
    )


# ----------------------------------------------------------------------------- the rules


def shrink_flags(rows, rule: ShrinkRule, classes) -> list:
  """Consecutive sessions (by age) of each subject whose class volume fell by more than
  ``rule.fraction``, the later session younger than ``rule.before_age``."""
  out = []
  for subject in sorted({r.subject for r in rows}):
    mine = sorted((r for r in rows if r.subject == subject), key=lambda r: r.age)
    for a, b in zip(mine, mine[1:]):
      if rule.before_age is not None and b.age >= rule.before_age:
        continue
      for cls in classes:
        va, vb = a.volumes_ml[cls], b.volumes_ml[cls]
        if va <= 0:
          continue
        drop = (va - vb) / va
        if drop > rule.fraction:
          before = "" if rule.before_age is None else f" before age {rule.before_age:g}"
          out.append(
            Flag(
              subject,
              b.session,
              b.age,
              "shrink",
              cls,
              drop,
              rule.fraction,
              f"{cls} {va:.1f} -> {vb:.1f} mL ({-100 * drop:.1f} %) since "
              f"ses-{a.session} (age {a.age:g}); limit "
              f"-{100 * rule.fraction:g} %{before}",
            )
          )
  return out


def robust_z(values) -> np.ndarray:
  """``(v - median) / (1.4826 MAD)`` of each value (NaN where the MAD is 0)."""
  v = np.asarray(values, np.float64)
  med = np.median(v)
  mad = np.median(np.abs(v - med)) * MAD_TO_SD
  return (v - med) / mad if mad > 0 else np.full(v.shape, np.nan)


def outlier_flags(rows, rule: OutlierRule, classes) -> list:
  """Sessions whose class volume is a robust-z outlier among the sessions of its time
  point (time points with at least ``rule.min_sessions`` sessions)."""
  out = []
  for t in sorted({r.timepoint for r in rows}):
    group = [r for r in rows if r.timepoint == t]
    if len(group) < rule.min_sessions:
      continue
    for cls in classes:
      values = [r.volumes_ml[cls] for r in group]
      med = float(np.median(values))
      for r, z in zip(group, robust_z(values)):
        if np.isfinite(z) and abs(z) > rule.z:
          out.append(
            Flag(
              r.subject,
              r.session,
              r.age,
              "outlier",
              cls,
              float(z),
              rule.z,
              f"{cls} {r.volumes_ml[cls]:.1f} mL, robust z {z:+.1f} against the "
              f"median {med:.1f} mL of {len(group)} sessions at time point "
              f"{t + 1}; limit |z| {rule.z:g}",
            )
          )
  return out


def empty_flags(rows, rule: EmptyRule, classes) -> list:
  """Sessions where a class has less than ``rule.min_ml``."""
  return [
    Flag(
      r.subject,
      r.session,
      r.age,
      "empty",
      cls,
      r.volumes_ml[cls],
      rule.min_ml,
      f"{cls} {r.volumes_ml[cls]:.2f} mL; limit {rule.min_ml:g} mL",
    )
    for r in rows
    for cls in classes
    if r.volumes_ml[cls] < rule.min_ml
  ]


def uncertain_flags(rows, rule: UncertainRule) -> list:
  """Sessions whose QC score is above ``rule.qc``, or above the cohort's median QC score by
  more than ``rule.z`` robust standard deviations (with at least ``rule.min_sessions``
  sessions)."""
  out = []
  z = (
    robust_z([r.qc for r in rows])
    if rule.z is not None and len(rows) >= rule.min_sessions
    else np.full(len(rows), np.nan)
  )
  median = float(np.median([r.qc for r in rows])) if rows else 0.0
  for r, zr in zip(rows, z):
    what = f"QC score (mean uncertainty in the predicted brain) {r.qc:.3f}"
    if rule.qc is not None and r.qc > rule.qc:
      out.append(
        Flag(
          r.subject, r.session, r.age, "uncertain", "", r.qc, rule.qc, f"{what}; limit {rule.qc:g}"
        )
      )
    elif np.isfinite(zr) and zr > rule.z:
      out.append(
        Flag(
          r.subject,
          r.session,
          r.age,
          "uncertain",
          "",
          float(zr),
          rule.z,
          f"{what}, robust z {zr:+.1f} against the median {median:.3f} of "
          f"{len(rows)} sessions; limit z {rule.z:g}",
        )
      )
  return out


def trajectory_flags(rows, rule: TrajectoryRule, classes) -> list:
  """Subjects whose growth of a class per unit of age, first to last session, departs from
  the cohort's median growth (see the module docstring; at least ``rule.min_subjects``
  subjects with 2 sessions at different ages, else none)."""
  ends = [
    (rows[a], rows[b])
    for _, a, b in volumes.first_last([r.subject for r in rows], [r.age for r in rows])
    if rows[b].age > rows[a].age
  ]
  if len(ends) < rule.min_subjects:
    return []
  out = []
  for cls in classes:
    rates = np.array([(b.volumes_ml[cls] - a.volumes_ml[cls]) / (b.age - a.age) for a, b in ends])
    med = float(np.median(rates))
    scale = max(MAD_TO_SD * float(np.median(np.abs(rates - med))), rule.floor * abs(med))
    if scale <= 0:
      continue
    for (a, b), rate in zip(ends, rates):
      z = (rate - med) / scale
      if abs(z) > rule.z:
        out.append(
          Flag(
            b.subject,
            b.session,
            b.age,
            "trajectory",
            cls,
            float(z),
            rule.z,
            f"{cls} grew {rate:+.2f} mL per unit of age from ses-{a.session} (age "
            f"{a.age:g}) to ses-{b.session} (age {b.age:g}); the cohort's median "
            f"{med:+.2f} over {len(ends)} subjects (z {z:+.1f} with spread "
            f"{scale:.2f}); limit |z| {rule.z:g}",
          )
        )
  return out


def check(rows, rules: FlagRules, class_names) -> list:
  """Every flag of every rule, sorted by subject, age and rule."""
  tissues = list(class_names[1:])
  classes = tissues if rules.classes is None else list(rules.classes)
  unknown = [c for c in classes if c not in tissues]
  if unknown:
    raise ConfigError(
      f"flag rules: classes {unknown} are not tissue classes of the protocol "
      f"({', '.join(tissues)}). Fix 'classes' in the --flags file."
    )
  out = []
  if rules.shrink:
    out += shrink_flags(rows, rules.shrink, classes)
  if rules.outlier:
    out += outlier_flags(rows, rules.outlier, classes)
  if rules.empty:
    out += empty_flags(rows, rules.empty, classes)
  if rules.uncertain:
    out += uncertain_flags(rows, rules.uncertain)
  if rules.trajectory:
    out += trajectory_flags(rows, rules.trajectory, classes)
  order = {name: i for i, name in enumerate(RULES)}
  return sorted(out, key=lambda f: (f.subject, f.age, order[f.rule], f.cls))


def flag_rows(flags) -> tuple:
  """``(header, rows)`` of ``flags.tsv``."""
  header = ["subject", "session", "age", "rule", "class", "value", "limit", "message"]
  return header, [
    [
      f"sub-{f.subject}",
      f"ses-{f.session}",
      f"{f.age:g}",
      f.rule,
      f.cls or "n/a",
      f"{f.value:.4g}",
      f"{f.limit:g}",
      f.message,
    ]
    for f in flags
  ]


# ------------------------------------------------------------------------------ the file


def from_json(d, path="flags.json") -> FlagRules:
  """:class:`FlagRules` from a JSON object: the defaults, changed where ``d`` says (a rule's
  missing keys keep their defaults; a rule set to null is off)."""
  changes = jsonfile.fields_from_json(d, FlagRules, path)
  for name, cls in RULES.items():
    if changes.get(name) is not None:
      changes[name] = dataclasses.replace(
        cls(), **jsonfile.fields_from_json(changes[name], cls, f"{path}: rule {name!r}")
      )
  return dataclasses.replace(FlagRules(), **changes)


def load(path) -> FlagRules:
  """The rules in a ``--flags`` JSON file (None: the defaults)."""
  if path is None:
    return FlagRules()
  hint = "(python -m fcslstm_jax.cli.flag_rules prints the defaults)"
  d = jsonfile.read(
    path, missing=f"Give --flags an existing JSON file {hint}.", fix=f"Fix the file {hint}."
  )
  return from_json(d, path)
