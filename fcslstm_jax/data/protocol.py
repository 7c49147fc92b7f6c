"""Experimental protocols as data: which time points train and test, which slices count.

Gao et al. (ISBI 2018), section 3: BRIC has 5 time points in the first year (0, 3, 6, 9,
12 months), one manually labeled axial slice per volume; train on time points 1, 2, 4, 5
and test on 3. IBIS has 3 time points (6, 12, 24 months); train on the 2nd and 3rd,
test on the 1st. Both test on the hardest, isointense, age.

A protocol is a JSON file whose keys are the :class:`Protocol` fields (``protocols/*.json``
in this package are the shipped ones; ``--protocol FILE.json`` or a ``protocol.json`` at the
root of a dataset give your own). Time point indices in the file are 0-based.
:func:`assign_sessions` places a subject's sessions on the protocol's time points and says
which sessions fit none, so that no scan is dropped silently.
"""

import dataclasses
import os
import pathlib
from typing import Optional
from typing import Union

import numpy as np

from fcslstm_jax import jsonfile
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.errors import DataError

SHIPPED = pathlib.Path(__file__).parent / "protocols"
DATASET_FILE = "protocol.json"  # at the root of a dataset, used when --protocol is not given


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How sessions map to time points and which labels a split may see.

  Attributes:
    name: short name (the file's stem unless the file says otherwise).
    num_timepoints: T, the sequence length given to the model.
    ages: age of each time point (any unit, the same as ``sessions.tsv``; months for the
      shipped protocols); a session goes to the time point whose age is nearest, if within
      ``age_tolerance``. ``None``: the first T sessions in age order.
    age_tolerance: how far a session's age may lie from its time point's age.
    train_timepoints: 0-based time point indices whose labels training may use.
    test_timepoints: 0-based time point indices held out for testing.
    labeled_slices_per_volume: at most this many labeled axial slices are taken from each
      session's own labels (the paper: 1; more for densely labeled data).
    slice_selection: ``"center"`` (``labeled_slices_per_volume`` slices spread evenly over
      the session's labeled slices, the middle one for 1) or explicit axial (z) indices of
      each session's own canonical grid.
    num_classes: label classes, 0 = background.
    class_names: one name per class.
    modalities: BIDS suffixes stacked as channels, in order.
  """

  name: str
  num_timepoints: int
  ages: Optional[tuple[float, ...]] = None
  age_tolerance: float = 1.5
  train_timepoints: tuple[int, ...] = ()
  test_timepoints: tuple[int, ...] = ()
  labeled_slices_per_volume: int = 1
  slice_selection: Union[str, tuple[int, ...]] = "center"
  num_classes: int = 4
  class_names: tuple[str, ...] = ("background", "CSF", "GM", "WM")
  modalities: tuple[str, ...] = ("T1w", "T2w")

  def __post_init__(self):
    t = self.num_timepoints
    where = f"protocol {self.name}"
    if t < 1:
      raise ConfigError(f"{where}: num_timepoints must be >= 1, got {t}.")
    if self.ages is not None and len(self.ages) != t:
      raise ConfigError(f"{where}: ages has {len(self.ages)} entries for {t} time points.")
    if self.ages is not None and list(self.ages) != sorted(set(self.ages)):
      raise ConfigError(f"{where}: ages must increase strictly, got {list(self.ages)}.")
    for field in ("train_timepoints", "test_timepoints"):
      bad = [i for i in getattr(self, field) if not 0 <= i < t]
      if bad:
        raise ConfigError(f"{where}: {field} {bad} outside 0..{t - 1} (0-based indices).")
    if set(self.train_timepoints) & set(self.test_timepoints):
      raise ConfigError(
        f"{where}: time point(s) "
        f"{sorted(set(self.train_timepoints) & set(self.test_timepoints))} are "
        "in both train_timepoints and test_timepoints."
      )
    if self.num_classes < 2:
      raise ConfigError(f"{where}: num_classes must be >= 2 (background and one tissue).")
    if len(self.class_names) != self.num_classes:
      raise ConfigError(
        f"{where}: class_names has {len(self.class_names)} names for {self.num_classes} classes."
      )
    if isinstance(self.slice_selection, str) and self.slice_selection != "center":
      raise ConfigError(
        f"{where}: slice_selection must be 'center' or a list of indices, "
        f"got {self.slice_selection!r}."
      )
    if self.labeled_slices_per_volume < 1:
      raise ConfigError(f"{where}: labeled_slices_per_volume must be >= 1.")
    if self.age_tolerance < 0:
      raise ConfigError(f"{where}: age_tolerance must be >= 0.")
    if not self.modalities:
      raise ConfigError(f"{where}: modalities is empty.")

  def timepoints(self, split):
    """Time point indices whose labels ``split`` ('train', 'test' or 'all') may see."""
    if split == "train":
      return tuple(self.train_timepoints)
    if split == "test":
      return tuple(self.test_timepoints)
    if split == "all":
      return tuple(range(self.num_timepoints))
    raise ConfigError(f"split must be 'train', 'test' or 'all', got {split!r}.")

  def role(self, t):
    """``"train"``, ``"test"`` or ``"unused"`` for time point ``t``."""
    return (
      "train" if t in self.train_timepoints else "test" if t in self.test_timepoints else "unused"
    )

  def describe_timepoint(self, t):
    """``"time point 3 (6 mo)"``: 1-based, with the age when the protocol has ages."""
    age = f" (age {self.ages[t]:g})" if self.ages is not None else ""
    return f"time point {t + 1}{age}"

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ------------------------------------------------------------------------------ files


def from_dict(d: dict, path="protocol", default_name="protocol") -> Protocol:
  """A :class:`Protocol` from a JSON object; errors name ``path`` and the key."""
  d = jsonfile.fields_from_json(d, Protocol, path)
  d.setdefault("name", default_name)
  if "num_timepoints" not in d:
    if not d.get("ages"):
      raise ConfigError(
        f"{path}: key 'num_timepoints' is missing (or give 'ages', one per time point)."
      )
    d["num_timepoints"] = len(d["ages"])
  if "train_timepoints" not in d:
    raise ConfigError(
      f"{path}: key 'train_timepoints' is missing: the 0-based time points "
      "whose labels training uses."
    )
  try:
    return Protocol(**d)
  except ConfigError as e:
    raise ConfigError(f"{path}: {str(e).split(': ', 1)[1]}") from None


def load_file(path) -> Protocol:
  """Reads a protocol JSON file (see the module docstring)."""
  d = jsonfile.read(
    path,
    missing=f"Give a JSON file, or one of the shipped protocols {shipped_names()}.",
    fix="Fix the protocol file.",
  )
  return from_dict(d, path, default_name=pathlib.Path(path).stem)


def shipped_names():
  return sorted(p.stem for p in SHIPPED.glob("*.json"))


def get_protocol(name_or_path, data_dir=None) -> Protocol:
  """The protocol for ``--protocol``: a shipped name (``bric``, ``ibis``), a JSON file, or
  (``None``) ``data_dir/protocol.json`` when it exists, else ``bric``."""
  if name_or_path is None:
    local = pathlib.Path(data_dir) / DATASET_FILE if data_dir is not None else None
    if local is not None and local.is_file():
      return load_file(local)
    name_or_path = "bric"
  if isinstance(name_or_path, Protocol):
    return name_or_path
  text = str(name_or_path)
  if text.endswith(".json") or os.sep in text:
    return load_file(text)
  if (SHIPPED / f"{text}.json").is_file():
    return load_file(SHIPPED / f"{text}.json")
  raise ConfigError(f"unknown protocol {text!r}: give a JSON file or one of {shipped_names()}.")


# The paper's BRIC protocol (section 3); on the built-in data, sessions at 0..12 months.
BRIC = get_protocol("bric")

# The built-in dataset stops at 12 months, so its IBIS-shaped variant (``--dataset ibis``)
# takes the 6, 9 and 12 month sessions: test on the isointense 6 months, train on the two
# later ones. Real IBIS scans are at 6, 12 and 24 months: ``protocols/ibis.json``.
IBIS_BUILTIN = Protocol(
  name="ibis",
  num_timepoints=3,
  ages=(6.0, 9.0, 12.0),
  train_timepoints=(1, 2),
  test_timepoints=(0,),
)

BUILTIN = {"bric": BRIC, "ibis": IBIS_BUILTIN}  # --dataset NAME -> its protocol


def builtin(name) -> Protocol:
  """The protocol of a built-in dataset (``--dataset bric`` or ``ibis``)."""
  if name not in BUILTIN:
    raise ConfigError(f"unknown built-in dataset {name!r}; choose one of {sorted(BUILTIN)}.")
  return BUILTIN[name]


# ----------------------------------------------------------------------------- ages


@dataclasses.dataclass(frozen=True)
class Unassigned:
  """A session that fits no time point, with the reason (for the start-up warning)."""

  subject_id: str
  session: str
  age: float
  reason: str

  def __str__(self):
    return f"sub-{self.subject_id} ses-{self.session} (age {self.age:g}): {self.reason}"


def assign_sessions(sessions, protocol: Protocol, subject_id: str, where=""):
  """Places sessions (objects with ``label`` and ``age``, youngest first) on time points.

  Returns:
    ``(slots, unassigned)``: ``slots`` has T entries, each a session or None (missing);
    ``unassigned`` lists the :class:`Unassigned` sessions, never silently dropped.

  Raises:
    DataError: two sessions of the subject fit the same time point.
  """
  slots, unassigned = [None] * protocol.num_timepoints, []
  if protocol.ages is None:
    for t, session in enumerate(sessions):
      if t < protocol.num_timepoints:
        slots[t] = session
      else:
        unassigned.append(
          Unassigned(
            subject_id,
            session.label,
            session.age,
            f"protocol {protocol.name} uses the first "
            f"{protocol.num_timepoints} sessions in age order",
          )
        )
    return slots, unassigned
  ages = np.asarray(protocol.ages, dtype=np.float64)
  for session in sessions:
    t = int(np.argmin(np.abs(ages - session.age)))
    if abs(ages[t] - session.age) > protocol.age_tolerance:
      unassigned.append(
        Unassigned(
          subject_id,
          session.label,
          session.age,
          f"fits no time point of protocol {protocol.name} (nearest: "
          f"{protocol.describe_timepoint(t)}, tolerance {protocol.age_tolerance:g})",
        )
      )
      continue
    if slots[t] is not None:
      raise DataError(
        f"{where or 'sub-' + subject_id}: sessions {slots[t].label} and {session.label} both "
        f"fit {protocol.describe_timepoint(t)}. Remove one, fix the ages in the "
        "sessions.tsv, or lower the protocol's age_tolerance."
      )
    slots[t] = session
  return slots, unassigned
