"""A run's record, ``workdir/run.json``: written by training, read back on resume and by
evaluation, here and nowhere else.

It holds what the run depends on: the :class:`~fcslstm_jax.config.Config`, the dataset (a
built-in name or the study folder's absolute path, with the built-in generator's seed and
extent), the protocol's fields and the grid options. It is read and checked once, into a
:class:`RunRecord`; every reader gets typed fields, never a missing key. Older records still
load: a protocol recorded by name, no grid options, no ``volume``.
"""

import dataclasses
import os
from typing import Optional
from typing import Union

from fcslstm_jax import files
from fcslstm_jax import jsonfile
from fcslstm_jax.config import Config
from fcslstm_jax.data import protocol
from fcslstm_jax.data.study import GridOptions
from fcslstm_jax.errors import ConfigError

FILE = "run.json"
# Config fields a resume may change: epochs extend a finished run; unroll, chunk_pixels and
# batching change speed, not the function (a resume on another backend resolves them anew);
# log_every_steps only when the loss is read back; prior_correction only evaluation;
# keep_checkpoints only how many checkpoints stay on disk.
RESUMABLE_FIELDS = (
  "epochs",
  "prior_correction",  # how the trained network segments, not how it trains
  "keep_checkpoints",
  "unroll",
  "chunk_pixels",
  "batching",
  "log_every_steps",
  "score_every_epochs",
)
# What run.json holds for the typed fields (older records give the protocol by name).
JSON_TYPES = {"config": dict, "protocol": Optional[Union[dict, str]], "grid": Optional[dict]}


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What ``run.json`` records.

  Attributes:
    config: the run's config.
    dataset: a built-in dataset's name (``bric``, ``ibis``) or the study folder (absolute).
    protocol: the protocol the run trained with.
    grid: how sessions were brought onto working grids; None when the record has none
      (each subject's native grid).
    config_name: the preset the config started from (``quick``, ``paper``, ...).
    data_seed: the built-in dataset's generator seed.
    volume: the built-in dataset's extent, ``slab`` or ``whole``.
    labels: the label folder the run trained on (``--labels``, absolute); None: the
      dataset's ``derivatives/`` pipelines.
    age_range: the youngest and oldest session age training saw (``Config.age_input``
      runs); evaluation warns about sessions outside it.
    class_weights: the loss's class weights (``Config.class_weighting``, from the training
      labels), which ``Config.prior_correction`` divides out again; None in records
      written before they were recorded.
    prior_strength: the strength of the prior correction that ``prior_correction="fitted"``
      chose after training (:func:`fcslstm_jax.infer.prior.best_strength`); None before.
  """

  config: Config
  dataset: str
  protocol: protocol.Protocol
  grid: Optional[GridOptions] = None
  config_name: Optional[str] = None
  data_seed: int = 0
  volume: str = "slab"
  labels: Optional[str] = None
  age_range: Optional[tuple[float, ...]] = None
  class_weights: Optional[tuple[float, ...]] = None
  prior_strength: Optional[float] = None

  @property
  def prior_correction_strength(self) -> Optional[float]:
    """How strongly evaluation divides the class weights out (:mod:`fcslstm_jax.infer.prior`):
    None for no correction (``none``, or ``fitted`` before the fit, or no recorded
    weights)."""
    kind = self.config.prior_correction
    if kind == "none" or self.class_weights is None:
      return None
    return 1.0 if kind == "full" else self.prior_strength

  @property
  def builtin(self) -> bool:
    """Whether the run trained on a built-in (generated) dataset."""
    return self.dataset in protocol.BUILTIN

  def to_json(self) -> dict:
    d = {
      "config": self.config.to_json(),
      "config_name": self.config_name,
      "dataset": self.dataset,
      "data_seed": self.data_seed,
      "protocol": self.protocol.to_json(),
    }
    if self.grid is not None:
      d["grid"] = self.grid.to_json()
    if self.volume != "slab":
      d["volume"] = self.volume
    if self.labels is not None:
      d["labels"] = self.labels
    if self.age_range is not None:
      d["age_range"] = list(self.age_range)
    if self.class_weights is not None:
      d["class_weights"] = [round(float(w), 6) for w in self.class_weights]
    if self.prior_strength is not None:
      d["prior_strength"] = self.prior_strength
    return d

  @classmethod
  def from_json(cls, d, path: str = FILE) -> "RunRecord":
    """The record in a parsed ``run.json``; one error line naming ``path`` when it does not
    hold one."""
    if not isinstance(d, dict) or not isinstance(d.get("config"), dict):
      raise ConfigError(
        f"{path}: has no 'config' object; it was not written by train.py (or "
        "was edited). Restore it, or train again in another --workdir."
      )
    fields = jsonfile.fields_from_json(d, cls, path, JSON_TYPES)
    fields["config"] = Config.from_json(d["config"], path)
    if "dataset" not in fields:
      raise ConfigError(
        f"{path}: has no 'dataset'; it was not written by train.py (or was "
        "edited). Restore it, or train again in another --workdir."
      )
    recorded = fields.get("protocol")
    if isinstance(recorded, dict):
      fields["protocol"] = protocol.from_dict(recorded, f"{path} (protocol)")
    elif fields["dataset"] in protocol.BUILTIN:  # older records: a name
      fields["protocol"] = protocol.BUILTIN[fields["dataset"]]
    else:
      fields["protocol"] = protocol.get_protocol(recorded or "bric")
    if fields.get("grid") is not None:
      fields["grid"] = GridOptions.from_json(fields["grid"], f"{path} (grid)")
    return cls(**fields)

  def differences(self, new: "RunRecord") -> list:
    """What a resume with ``new`` would change (``"name: old -> new"``), besides the
    :data:`RESUMABLE_FIELDS`."""
    a, b = self.config.to_json(), new.config.to_json()
    out = [
      f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a) if k not in RESUMABLE_FIELDS and a[k] != b[k]
    ]
    out += [
      f"{k}: {getattr(self, k)!r} -> {getattr(new, k)!r}"
      for k in ("dataset", "volume", "labels")
      if getattr(self, k) != getattr(new, k)
    ]
    p, q = self.protocol.to_json(), new.protocol.to_json()
    out += [f"protocol {k}: {p[k]!r} -> {q[k]!r}" for k in p if p[k] != q[k]]
    if self.grid is not None and self.grid != new.grid:
      out.append(f"grid: {self.grid.to_json()} -> {new.grid and new.grid.to_json()}")
    return out


def path_of(workdir: str) -> str:
  return os.path.join(workdir, FILE)


def read(workdir: str) -> RunRecord:
  """The record of the run in ``workdir``, checked: one clear error when it is missing or
  broken."""
  path = path_of(workdir)
  d = jsonfile.read(
    path,
    missing="Point --workdir at a folder written by train.py.",
    fix="It records the run's config and protocol: restore it from a backup, "
    "or train again in another --workdir.",
  )
  return RunRecord.from_json(d, path)


def write(workdir: str, record: RunRecord) -> None:
  files.write_json(path_of(workdir), record.to_json())
