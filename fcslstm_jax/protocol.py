"""Experimental protocols as data: which time points train/test, which slices count as labeled.

Gao et al. (ISBI 2018), section 3: BRIC has 5 time points in the first year (0, 3, 6, 9,
12 months), one manually labeled axial slice per volume; train on time points 1, 2, 4, 5
and test on 3. IBIS has 3 time points (6, 12, 24 months); train on the 2nd and 3rd,
test on the 1st. Both test on the hardest, isointense, age.
"""

import dataclasses
from typing import Optional, Union

from fcslstm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How sessions map to time points and which labels a split may see.

  Attributes:
    name: short name (``--dataset`` / ``--protocol`` value).
    num_timepoints: T, the sequence length given to the model.
    ages: age in months of each time point; a session is assigned to the time point
      whose age is nearest (within ``age_tolerance``). ``None``: the first T sessions
      in age order.
    age_tolerance: months a session's age may differ from its time point's age.
    train_timepoints: 0-based time point indices whose labels training may use.
    test_timepoints: 0-based time point indices held out for testing.
    labeled_slices_per_volume: axial slices per volume whose labels count (paper: 1).
    slice_selection: ``"center"`` (``labeled_slices_per_volume`` slices evenly spread
      over the subject's labeled slab, the middle one for 1) or explicit canonical
      axial (z) indices.
    num_classes: label classes, 0 = background.
    class_names: one name per class.
    modalities: BIDS suffixes stacked as channels, in order.
  """
  name: str
  num_timepoints: int
  ages: Optional[tuple] = None
  age_tolerance: float = 1.5
  train_timepoints: tuple = ()
  test_timepoints: tuple = ()
  labeled_slices_per_volume: int = 1
  slice_selection: Union[str, tuple] = "center"
  num_classes: int = 4
  class_names: tuple = ("background", "CSF", "GM", "WM")
  modalities: tuple = ("T1w", "T2w")

  def __post_init__(self):
    t = self.num_timepoints
    if self.ages is not None and len(self.ages) != t:
      raise ConfigError(f"protocol {self.name}: {len(self.ages)} ages for {t} time points.")
    for field in ("train_timepoints", "test_timepoints"):
      bad = [i for i in getattr(self, field) if not 0 <= i < t]
      if bad:
        raise ConfigError(f"protocol {self.name}: {field} {bad} outside 0..{t - 1}.")
    if set(self.train_timepoints) & set(self.test_timepoints):
      raise ConfigError(f"protocol {self.name}: a time point is in both train and test.")
    if len(self.class_names) != self.num_classes:
      raise ConfigError(f"protocol {self.name}: {len(self.class_names)} class names for "
                        f"{self.num_classes} classes.")
    if isinstance(self.slice_selection, str) and self.slice_selection != "center":
      raise ConfigError(f"protocol {self.name}: slice_selection must be 'center' or a tuple "
                        f"of indices, got {self.slice_selection!r}.")
    if self.labeled_slices_per_volume < 1:
      raise ConfigError(f"protocol {self.name}: labeled_slices_per_volume must be >= 1.")
    if not self.modalities:
      raise ConfigError(f"protocol {self.name}: no modalities.")

  def timepoints(self, split):
    """Time point indices whose labels ``split`` ('train', 'test' or 'all') may see."""
    if split == "train":
      return tuple(self.train_timepoints)
    if split == "test":
      return tuple(self.test_timepoints)
    if split == "all":
      return tuple(range(self.num_timepoints))
    raise ConfigError(f"split must be 'train', 'test' or 'all', got {split!r}.")


# The paper's BRIC protocol (section 3); on the built-in data, sessions at 0..12 months.
BRIC = Protocol(
    name="bric",
    num_timepoints=5,
    ages=(0.0, 3.0, 6.0, 9.0, 12.0),
    train_timepoints=(0, 1, 3, 4),
    test_timepoints=(2,),
)

# The paper's IBIS protocol shape (3 time points, test on the 1st). IBIS scans are at
# 6, 12 and 24 months; the built-in data stops at 12 months, so we take its 6, 9 and
# 12 month sessions: again test on the isointense 6 months, train on the two later.
IBIS = Protocol(
    name="ibis",
    num_timepoints=3,
    ages=(6.0, 9.0, 12.0),
    train_timepoints=(1, 2),
    test_timepoints=(0,),
)

PROTOCOLS = {p.name: p for p in (BRIC, IBIS)}


def get_protocol(name):
  """The protocol called ``name`` ('bric' or 'ibis')."""
  try:
    return PROTOCOLS[name]
  except KeyError:
    raise ConfigError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}.") from None
