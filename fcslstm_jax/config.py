"""Training configurations: plain values, one place for the paper's hyperparameters.

``paper``: the recipe of Gao et al. (ISBI 2018), Sec. 3: Kaiming initialization, RMSprop with
smoothing constant α = 0.95 and initial learning rate 1e-3, the learning rate decayed by 0.97
per epoch after epoch 20, weighted cross-entropy with class weights inversely proportional to
the class pixel counts (Sec. 2.3), unlabeled pixels weighted 0 (as 3D u-net [10]), and "very
simple data augmentation" (Sec. 1; we use random flips and a small intensity scaling). The
paper does not give the number of epochs or the batch size; we use 200 and 2.

    python train.py --dataset bric --config paper

``quick`` (the default): the same recipe on a budget that finishes in about 6 minutes on
two idle CPU cores (30 epochs, decay from epoch 10; measured 6.2 min, test mPA 0.921).

    python train.py --dataset bric          # README states the mPA it reaches

``tiny``: a narrow network for tests and smoke runs; not meant to segment well.
"""

import dataclasses

from fcslstm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run depends on. Stored in ``workdir/run.json`` and checked on resume."""
  model: str = "bi-fcslstm"          # fcn | fcslstm | bi-fcslstm
  epochs: int = 200
  batch_size: int = 2
  learning_rate: float = 1e-3
  rmsprop_decay: float = 0.95        # the paper's smoothing constant α
  rmsprop_eps: float = 1e-8          # outside the square root, as torch's RMSprop
  lr_decay_rate: float = 0.97        # per epoch ...
  lr_decay_begin_epoch: int = 20     # ... after this many epochs
  augment: bool = True
  flip_prob: float = 0.5             # left-right and anterior-posterior flips, per sequence
  intensity_scale: float = 0.1       # multiply each channel by U(1 - s, 1 + s)
  stages: tuple = ((16, 2), (32, 2), (64, 3), (128, 3), (128, 3))  # VGG-16 / 4
  remat: str = "none"                # none | stages | full | lean, see model.py
  unroll: int | None = None          # None: full unroll on CPU, while loop on accelerators
  chunk_pixels: int | None = None    # Ψx pixels per call; None: see model.py "Chunking"
  precision: str = "float32"         # float32 | bfloat16 (convolutions; params stay float32)
  keep_checkpoints: int = 2
  log_every_steps: int = 10          # read the loss back (progress bar, NaN guard) every N steps
  seed: int = 0

  def replace(self, **changes) -> "Config":
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ConfigError(f"unknown config fields {sorted(unknown)}")
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["stages"] = [list(s) for s in self.stages]
    return d

  @classmethod
  def from_json(cls, d: dict) -> "Config":
    d = dict(d)
    d["stages"] = tuple(tuple(s) for s in d["stages"])
    return cls(**d)


CONFIGS = {
    "paper": Config(),
    "quick": Config(epochs=30, lr_decay_begin_epoch=10),
    "tiny": Config(epochs=2, stages=((4, 1), (4, 1), (8, 1), (8, 1), (8, 1)), keep_checkpoints=2),
}


def get_config(name: str = "quick", **overrides) -> Config:
  """The named config with ``overrides`` (fields left ``None`` are not overridden)."""
  if name not in CONFIGS:
    raise ConfigError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
  return CONFIGS[name].replace(**{k: v for k, v in overrides.items() if v is not None})
