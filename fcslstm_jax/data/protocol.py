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

from fcslstm_jax import files
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
    label_values: the value of each class in the label files, in class order (iBEAT-style
      ``[0, 10, 150, 250]``); None: the class indices 0..c-1. Read by name from the label
      pipeline's ``dseg.tsv`` when it has one (:func:`values_from_dseg_tsv`); predictions
      are written back in these values.
    ignore_label: a value in the label files that means "not drawn" (nnU-Net's ignore
      label): such voxels are left out of the loss, the scores and the choice of labeled
      slices, so a partly drawn slice or a scribble trains only what was drawn. None: every
      voxel of a labeled slice counts (undrawn ones as background).
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
  label_values: Optional[tuple[int, ...]] = None
  ignore_label: Optional[int] = None

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
    values = class_values(self).tolist()
    if self.label_values is not None and (
      len(values) != self.num_classes or len(set(values)) != len(values) or min(values) < 0
    ):
      raise ConfigError(
        f"{where}: label_values {values} must give {self.num_classes} distinct values >= 0, "
        "one per class."
      )
    if self.ignore_label is not None and self.ignore_label in values:
      raise ConfigError(
        f"{where}: ignore_label {self.ignore_label} is also the value of class "
        f"{self.class_names[values.index(self.ignore_label)]!r}. Choose a value no class uses "
        "(e.g. 255)."
      )

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


# ------------------------------------------------------------------------------ label values


def class_values(proto) -> np.ndarray:
  """``int64 [c]``: the value of each class in the label files (:attr:`Protocol.label_values`)."""
  if proto.label_values is None:
    return np.arange(proto.num_classes)
  return np.asarray(proto.label_values, np.int64)


def to_classes(data, proto, path="labels"):
  """``(classes int32, drawn bool)`` of the same shape from a label file's values: each value
  mapped to its class, the ignore value (undrawn) to class 0 with ``drawn`` False. A value
  that is neither a class's nor the ignore value is a DataError naming ``path``."""
  data = np.asarray(data)
  values = class_values(proto)
  drawn = np.ones(data.shape, bool) if proto.ignore_label is None else data != proto.ignore_label
  known = np.isin(data, values) | ~drawn
  if not known.all():
    bad = np.unique(data[~known])
    where = (
      f"outside 0..{proto.num_classes - 1}"
      if proto.label_values is None
      else "not in the protocol's label values"
    )
    raise DataError(
      f"{path}: label value(s) {bad[:5].tolist()} {where} "
      f"({dict(zip(values.tolist(), proto.class_names))}"
      + (f", ignore {proto.ignore_label}" if proto.ignore_label is not None else "")
      + "). Map them, give the label pipeline a dseg.tsv naming each value, or set "
      "label_values / ignore_label in the protocol."
    )
  lookup = np.zeros(int(max(values.max(), data.max(initial=0))) + 1, np.int32)
  lookup[values] = np.arange(len(values))
  return np.where(drawn, lookup[np.where(drawn, data, 0)], 0).astype(np.int32), drawn


IGNORE_NAMES = ("unlabeled", "unlabelled", "ignore")  # dseg.tsv names of the ignore value


def values_from_dseg_tsv(path, proto) -> tuple:
  """The protocol's ``(label_values, ignore_label)`` as a BIDS ``dseg.tsv`` (``index``,
  ``name``) gives them: each class found by name (case-insensitive; a missing
  ``background`` row is value 0), and a row named ``unlabeled`` / ``ignore`` the ignore
  value. A row naming no class, or a class with no row, is a DataError naming ``path``."""
  try:
    rows = files.read_tsv(path)
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot be read ({e}).") from None
  by_name, ignore = {}, None
  for row in rows:
    name, index = (row.get("name") or "").strip(), (row.get("index") or "").strip()
    try:
      value = int(index)
    except ValueError:
      raise DataError(f"{path}: index {index!r} of {name!r} is not an integer.") from None
    if name.lower() in IGNORE_NAMES:
      ignore = value
    else:
      by_name[name.lower()] = value
  by_name.setdefault(proto.class_names[0].lower(), 0)
  classes = [n.lower() for n in proto.class_names]
  unknown = sorted(set(by_name) - set(classes))
  missing = [n for n in proto.class_names if n.lower() not in by_name]
  if unknown or missing:
    what = ([f"names {unknown} match no class"] if unknown else []) + (
      [f"no row names class(es) {missing}"] if missing else []
    )
    raise DataError(
      f"{path}: {'; '.join(what)} of protocol {proto.name} {list(proto.class_names)}. Name "
      "each value as the protocol's class_names do (or 'unlabeled' for undrawn voxels)."
    )
  return tuple(by_name[n] for n in classes), ignore


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
