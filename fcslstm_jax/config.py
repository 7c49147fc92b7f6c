"""Training configurations: plain values, one place for the paper's hyperparameters.

``paper``: the recipe of Gao et al. (ISBI 2018), Sec. 3: Kaiming initialization, RMSprop with
smoothing constant α = 0.95 and initial learning rate 1e-3, the learning rate decayed by 0.97
per epoch after epoch 20, weighted cross-entropy with class weights inversely proportional to
the class pixel counts (Sec. 2.3), unlabeled pixels weighted 0 (as 3D u-net [10]), and "very
simple data augmentation" (Sec. 1; we use random flips and a small intensity scaling). The
paper does not give the number of epochs or the batch size; we use 200 and 2.

    python train.py --dataset bric --config paper

``quick`` (the default): the same recipe on a CPU-sized budget (30 epochs, decay from epoch
10; its time and result: README.md, "Result of the default command"). In 2D each labeled
slice also labels the same plane of the subject's other sessions, at half a manual label's
weight (``propagate_labels``, ours: fcslstm_jax/data/propagate.py); the paper trains on the
labeled slices only. Its 2D training steps see a window around the head, not the whole slice
(``crop_margin``, ours, as nnU-Net crops to the nonzero region: fcslstm_jax/data/head_window.py);
evaluation segments whole slices. In 3D
its sliding windows overlap by a quarter, not a half (``window_overlap``): 2.5-3x fewer
windows, so that a small study trains and is segmented in minutes on CPU (docs/model.md, "3D +
time"). It segments with the fitted prior correction (``prior_correction``, ours): the paper's
class weights shape training, then are divided out of the segmentation as far as that helps
on the labeled training voxels (fcslstm_jax/infer/prior.py).

    python train.py --dataset bric          # README states the mPA it reaches

``tiny``: a narrow network for tests and smoke runs; not meant to segment well.

3D + time (``spatial_dims=3``, ours): every preset also trains volumes over time, on
``patch_size`` patches, with the ``stages_3d`` widths (docs/model.md, "3D + time"):

    python train.py --model bi-fcslstm --spatial-dims 3     # whole-brain built-in volumes
"""

import dataclasses
import json
import typing

from fcslstm_jax import jsonfile
from fcslstm_jax.errors import ConfigError

MODELS = ("fcn", "fcslstm", "bi-fcslstm")
REMAT_POLICIES = ("none", "stages", "full", "lean")
# The quick preset's propagation weight in 2D (issue 33: docs/trajectories.md).
PROPAGATE_2D = 0.5
PRECISIONS = ("float32", "bfloat16")
AGE_INPUTS = ("none", "film")  # fcslstm_jax.model.age
PRIOR_CORRECTIONS = ("none", "full", "fitted")  # fcslstm_jax.infer.prior
VGG16_QUARTER = ((16, 2), (32, 2), (64, 3), (128, 3), (128, 3))  # (channels, 3x3 convs)
VGG16_EIGHTH = ((8, 2), (16, 2), (32, 3), (64, 3), (64, 3))  # 3D default (3x3x3 convs)
SPATIAL_DIMS = (2, 3)
# Training patch [d, h, w] of a 3D run when patch_size is null (resolved once, by the CLI,
# and recorded in run.json). CPU: the smallest patch that is not padded (five poolings need
# multiples of 32); 3D training is still slow there (docs/model.md, "3D + time").
# Accelerators: a patch the 3D Bi-FCSLSTM holds for T = 5 well inside 12 GB with remat
# (bench/README.md, "3D + time").
PATCH_CPU = (32, 32, 32)
PATCH_ACCELERATOR = (64, 128, 128)


def _field(default, help, choices=None, minimum=None, maximum=None):
  """A config field with what ``--help`` shows and what :meth:`Config.__post_init__` checks."""
  return dataclasses.field(
    default=default, metadata=dict(help=help, choices=choices, minimum=minimum, maximum=maximum)
  )


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run depends on. Stored in ``workdir/run.json`` and checked on resume.

  Every field can be set from ``train.py`` with ``--set NAME=VALUE``; its help, choices and
  range live here, in one place, and each value is checked when the config is made.
  """

  model: str = _field("bi-fcslstm", "network", choices=MODELS)
  epochs: int = _field(200, "training epochs", minimum=1)
  batch_size: int = _field(2, "sequences per step (global, over all devices)", minimum=1)
  microbatches: int = _field(
    1,
    "run each step's batch in this many equal parts, one after another, and sum their "
    "gradients: the memory of a part, the step of the whole batch (train/loop.py)",
    minimum=1,
  )
  learning_rate: float = _field(1e-3, "initial RMSprop learning rate (paper: 1e-3)", minimum=0.0)
  rmsprop_decay: float = _field(
    0.95, "RMSprop smoothing constant alpha (paper: 0.95)", minimum=0.0, maximum=1.0
  )
  rmsprop_eps: float = _field(
    1e-8, "RMSprop epsilon, outside the square root as in torch", minimum=0.0
  )
  lr_decay_rate: float = _field(
    0.97, "learning-rate factor per epoch after the decay begins", minimum=0.0, maximum=1.0
  )
  lr_decay_begin_epoch: int = _field(
    20, "epochs at the initial rate before the decay (paper: 20)", minimum=0
  )
  augment: bool = _field(True, "random flips and intensity scaling")
  flip_prob: float = _field(
    0.5, "probability of each in-plane flip, per sequence", minimum=0.0, maximum=1.0
  )
  intensity_scale: float = _field(
    0.1, "multiply each channel by U(1 - s, 1 + s)", minimum=0.0, maximum=1.0
  )
  rotate_deg: float = _field(
    0.0,
    "in-plane rotation by U(-r, r) degrees, per sequence "
    "(0: off; the paper's simple augmentation has none)",
    minimum=0.0,
    maximum=180.0,
  )
  scale_range: float = _field(
    0.0, "in-plane scaling by U(1 - s, 1 + s), per sequence (0: off)", minimum=0.0, maximum=0.5
  )
  gamma: float = _field(
    0.0, "intensity gamma exp(U(-g, g)) per channel and sequence (0: off)", minimum=0.0, maximum=1.0
  )
  invert: float = _field(
    0.0,
    "contrast moved toward its inversion inside the head, I' = (1 - a) I + a (1 - I), a ~ "
    "U(0, invert) per time point and channel (a = 0.5: every tissue the same grey, the "
    "isointense age; 0: off)",
    minimum=0.0,
    maximum=1.0,
  )
  invert_one: float = _field(
    0.0,
    "probability, per sequence, that one of its labeled time points (drawn at random) is "
    "moved toward its inversion by a ~ U(0, 1) per channel, its neighbours left as they are, "
    "so that the LSTM must take the tissue from the subject's other sessions (measured on "
    "cohort: no gain at the isointense time point, worse elsewhere; docs/trajectories.md; "
    "0: off)",
    minimum=0.0,
    maximum=1.0,
  )
  class_weighting: str = _field(
    "inverse",
    "cross-entropy class weights: inverse pixel "
    "count (the paper), its square root, or none "
    "(train/losses.py)",
    choices=("inverse", "sqrt", "none"),
  )
  prior_correction: str = _field(
    "none",
    "segment with the class weights divided out again (logits - s log w): the posterior at the "
    "data's class frequencies, not the weighted loss's; full: s = 1; fitted: the s that "
    "segments the labeled training voxels best (infer/prior.py; ours, not the paper's)",
    choices=PRIOR_CORRECTIONS,
  )
  dice_weight: float = _field(
    0.0,
    "add this times the soft Dice loss of the tissue classes (0: the paper's cross-entropy alone)",
    minimum=0.0,
  )
  pseudo_label_epochs: int = _field(
    0,
    "self-training: the last N epochs also train on the "
    "model's own confident predictions on every slice and "
    "session (train/pseudo_labels.py; 0: off; 2D only)",
    minimum=0,
  )
  pseudo_label_confidence: float = _field(
    0.9,
    "self-training: a prediction becomes a pseudo-label where its class probability reaches this",
    minimum=0.0,
    maximum=1.0,
  )
  pseudo_label_weight: float = _field(
    0.5,
    "self-training: loss weight of a pseudo-labeled voxel (a manual label weighs 1)",
    minimum=0.0,
  )
  propagate_labels: typing.Optional[float] = _field(
    0.0,
    "within-subject label propagation: each labeled slice also labels the same plane of the "
    "subject's other sessions, with this loss weight (data/propagate.py; 0: off; 2D only); "
    f"null: {PROPAGATE_2D} in 2D runs, off in 3D (the quick preset's)",
    minimum=0.0,
  )
  propagate_erosion: int = _field(
    2,
    "label propagation: carry only voxels this far (in-plane voxels) from a tissue boundary",
    minimum=0,
  )
  crop_margin: typing.Optional[int] = _field(
    None,
    "2D training on windows around the head (data/head_window.py): the training slices' "
    "nonzero box grown by this many pixels, rounded up to a multiple of 32, placed at random "
    "around the box each step; null: whole slices (the paper). Evaluation always segments "
    "the whole field of view; 3D runs train on patches and ignore it",
    minimum=0,
  )
  stages: tuple = _field(VGG16_QUARTER, "front-end stages as [[channels, convs], ...] (VGG-16 / 4)")
  spatial_dims: int = _field(
    2,
    "2: axial slices over time (the paper); 3: volumes over time [T, D, H, W], trained on patches",
    minimum=2,
    maximum=3,
  )
  stages_3d: tuple = _field(
    VGG16_EIGHTH, "front-end stages of the 3D models (3x3x3 convs; VGG-16 / 8)"
  )
  patch_size: typing.Optional[tuple] = _field(
    None,
    "3D training patch [d, h, w] in voxels (all T time points); null: "
    f"{list(PATCH_CPU)} on CPU, {list(PATCH_ACCELERATOR)} on accelerators",
  )
  window_overlap: float = _field(
    0.5,
    "3D sliding-window inference: overlap of neighbouring "
    "windows, a fraction of the window (nnU-Net: 0.5)",
    minimum=0.0,
    maximum=0.9,
  )
  score_every_epochs: typing.Optional[int] = _field(
    None,
    "score the training and held-out labels every N epochs (the last epoch always); "
    "null: the N that keeps scoring under ~20 % of the training time "
    "(train/loop.py: scoring_interval)",
    minimum=1,
  )
  remat: str = _field(
    "none",
    "rematerialization policy (model/networks.py); lean: least "
    "memory, for GPUs (much slower on CPU: bench/README.md)",
    choices=REMAT_POLICIES,
  )
  unroll: typing.Optional[int] = _field(
    None,
    "time steps unrolled per loop iteration; null: all on CPU, a while loop on accelerators",
    minimum=1,
  )
  chunk_pixels: typing.Optional[int] = _field(
    None, "pixels per call of the Psi_x stages (speed only); null: model/networks.py's default"
  )
  batching: typing.Optional[str] = _field(
    None,
    "how Bi-FCSLSTM runs its two directions' convolutions: loop (one after the other) or "
    "vmap (one grouped convolution; speed only); null: loop on CPU, vmap on accelerators",
    choices=("loop", "vmap"),
  )
  precision: str = _field(
    "float32", "convolution dtype (parameters stay float32)", choices=PRECISIONS
  )
  keep_checkpoints: int = _field(2, "latest checkpoints kept (besides the best)", minimum=1)
  log_every_steps: int = _field(
    10, "read the loss back (progress bar, NaN guard, agreed stop) every N steps", minimum=1
  )
  seed: int = _field(0, "parameter, data order and augmentation seed")
  age_input: str = _field(
    "none",
    "session age and gaps as input: 'film' conditions each LSTM layer on them "
    "(model/age.py; 2D FCSLSTM / Bi-FCSLSTM); 'none': the paper's model",
    choices=AGE_INPUTS,
  )
  context_slices: int = _field(
    0,
    "2.5D: each slice's input also holds the k working slices above and below it, every "
    "modality (edge slices repeated at the volume's ends); 0: the paper's one slice (2D only)",
    minimum=0,
  )

  def __post_init__(self):
    for f in dataclasses.fields(self):
      check_value(f, getattr(self, f.name))
    for name in STAGE_FIELDS:
      stages = getattr(self, name)
      if not stages or any(len(s) != 2 or min(s) < 1 for s in stages):
        raise ConfigError(
          f"--set {name}={json.dumps(stages)}: needs one or more "
          "[channels, convs] pairs of positive integers."
        )
    if self.batch_size % self.microbatches:
      raise ConfigError(
        f"--set microbatches={self.microbatches}: must divide the batch size ({self.batch_size})."
      )
    if self.age_input != "none" and (self.model == "fcn" or self.spatial_dims == 3):
      raise ConfigError(
        f"--set age_input={self.age_input}: for the 2D LSTM models (fcslstm, bi-fcslstm); "
        "the FCN sees each session alone, and 3D runs do not take ages yet."
      )
    if self.context_slices and self.spatial_dims == 3:
      raise ConfigError(
        f"--set context_slices={self.context_slices}: neighbouring slices as channels are for "
        "2D runs; a 3D run sees them already. Set it to 0 with --spatial-dims 3."
      )
    if self.propagate_labels and self.spatial_dims == 3:
      raise ConfigError(
        "--set propagate_labels: label propagation is for 2D runs only; set it to 0 with "
        "--spatial-dims 3."
      )
    if self.pseudo_label_epochs and self.spatial_dims == 3:
      raise ConfigError(
        "--set pseudo_label_epochs: self-training is for 2D runs only; set it "
        "to 0 with --spatial-dims 3."
      )
    if self.pseudo_label_epochs > self.epochs:
      raise ConfigError(
        f"--set pseudo_label_epochs={self.pseudo_label_epochs}: more than the "
        f"{self.epochs} epochs of the run."
      )
    if self.patch_size is not None and (len(self.patch_size) != 3 or min(self.patch_size) < 1):
      raise ConfigError(
        f"--set patch_size={json.dumps(list(self.patch_size))}: needs three "
        "positive integers [d, h, w]."
      )

  @property
  def propagation_weight(self) -> float:
    """The loss weight of propagated labels: ``propagate_labels``, or where that is null
    :data:`PROPAGATE_2D` in 2D and 0 in 3D (propagation is not implemented for patches)."""
    if self.propagate_labels is not None:
      return self.propagate_labels
    return PROPAGATE_2D if self.spatial_dims == 2 else 0.0

  @property
  def model_stages(self) -> tuple:
    """The front-end stages of this run's model: ``stages`` in 2D, ``stages_3d`` in 3D."""
    return self.stages if self.spatial_dims == 2 else self.stages_3d

  def replace(self, **changes) -> "Config":
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ConfigError(
        f"unknown config field(s) {sorted(unknown)}; known: "
        f"{', '.join(f.name for f in dataclasses.fields(self))}."
      )
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    for name in STAGE_FIELDS:
      d[name] = [list(s) for s in getattr(self, name)]
    if self.patch_size is not None:
      d["patch_size"] = list(self.patch_size)
    return d

  @classmethod
  def from_json(cls, d: dict, where="run.json") -> "Config":
    """The config a run recorded; fields added since then take their defaults (and
    ``prior_correction`` recorded as a boolean, as for a day, reads as ``full`` / ``none``)."""
    if isinstance(d.get("prior_correction"), bool):
      d = dict(d, prior_correction="full" if d["prior_correction"] else "none")
    fields = jsonfile.fields_from_json(d, cls, f"{where} (config)", JSON_TYPES)
    try:
      return cls(**fields)
    except ConfigError as e:
      raise ConfigError(f"{where}: {e}") from None


def _base_type(f):
  """``int`` for ``int`` and ``Optional[int]``; the field's declared type otherwise."""
  args = [a for a in typing.get_args(f.type) if a is not type(None)]
  return args[0] if args else f.type


def _optional(f):
  return type(None) in typing.get_args(f.type)


def _as_stages(value, where):
  try:
    return tuple(tuple(int(v) for v in s) for s in value)
  except (TypeError, ValueError):
    raise ConfigError(
      f"{where}: stages must be [[channels, convs], ...], got {json.dumps(value)}."
    ) from None


def _as_ints(value, where):
  try:
    return tuple(int(v) for v in value)
  except (TypeError, ValueError):
    raise ConfigError(
      f"{where}: must be a list of integers, e.g. [32, 64, 64], got {json.dumps(value)}."
    ) from None


STAGE_FIELDS = ("stages", "stages_3d")
# What a JSON config holds where a field's declared type says less.
JSON_TYPES = {
  "stages": tuple[tuple[int, ...], ...],
  "stages_3d": tuple[tuple[int, ...], ...],
  "patch_size": typing.Optional[tuple[int, ...]],
}
# Fields stored as JSON lists, and how a list becomes the field's tuple.
TUPLE_FIELDS = {"stages": _as_stages, "stages_3d": _as_stages, "patch_size": _as_ints}


def check_value(f, value):
  """Raises one clear error unless ``value`` fits field ``f`` (type, choices, range)."""
  kind, meta = _base_type(f), f.metadata
  flag = f"--set {f.name}={json.dumps(value) if not isinstance(value, str) else value}"
  if value is None:
    if not _optional(f):
      raise ConfigError(f"{flag}: {f.name} cannot be null.")
    return
  ok = (
    isinstance(value, bool)
    if kind is bool
    else isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float
    else isinstance(value, int) and not isinstance(value, bool)
    if kind is int
    else isinstance(value, kind)
  )
  if not ok:
    raise ConfigError(
      f"{flag}: {f.name} must be {kind.__name__}" + (" or null" if _optional(f) else "") + "."
    )
  if meta.get("choices") and value not in meta["choices"]:
    raise ConfigError(f"{flag}: choose one of {', '.join(meta['choices'])}.")
  if meta.get("minimum") is not None and value < meta["minimum"]:
    raise ConfigError(f"{flag}: {f.name} must be >= {meta['minimum']:g}.")
  if meta.get("maximum") is not None and value > meta["maximum"]:
    raise ConfigError(f"{flag}: {f.name} must be <= {meta['maximum']:g}.")


def parse_override(text: str) -> tuple:
  """``"name=value"`` (``--set``) -> ``(name, value)`` typed by the field (JSON for lists,
  ``null`` for none, ``true``/``false`` for booleans)."""
  name, sep, raw = text.partition("=")
  fields = {f.name: f for f in dataclasses.fields(Config)}
  if not sep or name not in fields:
    raise ConfigError(f"--set {text}: expected NAME=VALUE with NAME one of {', '.join(fields)}.")
  f, raw = fields[name], raw.strip()
  kind = _base_type(f)
  if raw.lower() in ("null", "none") and _optional(f):
    return name, None
  try:
    if kind is bool:
      if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(raw)
      return name, raw.lower() in ("true", "1", "yes")
    if kind is int:
      return name, int(raw)
    if kind is float:
      return name, float(raw)
    if kind is tuple:
      return name, TUPLE_FIELDS[name](json.loads(raw), f"--set {text}")
    return name, raw
  except (ValueError, json.JSONDecodeError):
    raise ConfigError(
      f"--set {text}: {name} must be {kind.__name__}" + (" or null" if _optional(f) else "") + "."
    ) from None


def describe_fields() -> str:
  """One line per field for ``--help``: name, default, choices or range, help."""
  lines = []
  for f in dataclasses.fields(Config):
    meta, extra = f.metadata, ""
    if meta.get("choices"):
      extra = f" {{{', '.join(meta['choices'])}}}"
    elif meta.get("minimum") is not None or meta.get("maximum") is not None:
      lo, hi = meta.get("minimum"), meta.get("maximum")
      extra = f" [{'' if lo is None else f'{lo:g}'}..{'' if hi is None else f'{hi:g}'}]"
    default = json.dumps(Config().to_json()[f.name])
    lines.append(f"  {f.name}={default}{extra}: {meta.get('help', '')}")
  return "\n".join(lines)


CONFIGS = {
  "paper": Config(),
  # 3D: windows overlap by a quarter (paper preset: nnU-Net's half), so that evaluate.py
  # segments a ~100 x 105 x 120 volume in 80-100 windows of 32^3, not 252 (docs/model.md, "3D +
  # time").
  # 2D: each labeled slice also labels its plane in the subject's other sessions (weight
  # 0.5), training steps see windows around the head (margin 8) instead of whole slices,
  # and the labeled slices are scored every 8 epochs, not every ~3; why 30 epochs and not
  # fewer: docs/trajectories.md (issue 33).
  "quick": Config(
    epochs=30,
    lr_decay_begin_epoch=10,
    window_overlap=0.25,
    prior_correction="fitted",
    propagate_labels=None,
    crop_margin=8,
    score_every_epochs=8,
  ),
  "tiny": Config(
    epochs=2,
    stages=((4, 1), (4, 1), (8, 1), (8, 1), (8, 1)),
    stages_3d=((4, 1), (4, 1), (8, 1), (8, 1), (8, 1)),
    keep_checkpoints=2,
    prior_correction="fitted",
  ),
}


# One line per preset for train.py --help.
PRESET_HELP = {
  "paper": "the paper's recipe, 200 epochs",
  "quick": "30 epochs, decay from epoch 10; 2D: labels propagated across sessions, training "
  "windows around the head; 3D windows overlap 0.25 (CPU-sized evaluation); prior correction "
  "fitted",
  "tiny": "a narrow network for tests and smoke runs",
}


def get_config(name: str = "quick", **overrides) -> Config:
  """The named config with ``overrides`` (fields left ``None`` are not overridden)."""
  if name not in CONFIGS:
    raise ConfigError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
  return CONFIGS[name].replace(**{k: v for k, v in overrides.items() if v is not None})
