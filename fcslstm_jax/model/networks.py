"""The concise FCN (paper Sec. 2.1, Fig. 1) and FCSLSTM / Bi-FCSLSTM (Sec. 2.3, Fig. 3).

Layout: inputs ``x`` are ``[B, T, H, W, n]`` (channels-last, ``n`` image channels, e.g. T1w and
T2w), an optional validity mask ``valid`` is ``[B, T]`` bool, and the output logits are
``[B, T, H, W, c]`` for ``c`` classes.

Front-end: the five VGG-16 conv stages with the channels divided by 4 (16, 32, 64, 128, 128;
2, 2, 3, 3, 3 convolutions of 3x3 + ReLU), 2x2 max-pooling between stages, no fully-connected
layers (Sec. 2.1 observations 2 and the channel shrinking by 4). Table 1 of the paper did not
survive in our copy of the text; these numbers follow its description of VGG-16 / 4.

Back-end: deconv6..deconv10, each one 4x4 stride-2 transposed convolution with ``c`` output
channels (observation 1: one convolution, ``c`` channels; borders reflect-padded, see
:func:`upsample_reflect`), and the highest fuse level
(observation 3): a 1x1, ``c``-channel projection ``fuse1..fuse5`` of every front-end stage is
added at that stage's resolution. Softmax is left to the loss.

FCSLSTM: five stacked structured LSTM layers. Layer k uses front-end stage k as its Ψx and a
3x3 convolution as its Ψh; pooling sits between layers, and the back-end reads the LSTM
outputs. Bi-FCSLSTM makes each layer bidirectional. The FCN baseline sees every time step
alone (time is folded into the batch).

Volumes (``spatial_dims=3``; ours, the paper segments 2D slices): the same modules with one
more spatial axis, inputs ``[B, T, D, H, W, n]`` -> logits ``[B, T, D, H, W, c]``: 3x3x3
convolutions in every stage and Ψh, 2x2x2 pooling, 4x4x4 stride-2 transposed convolutions
and 1x1x1 fuses in the back-end. One code path: every operator takes its kernel rank from
``spatial_dims`` (or from its input's rank), and Eq. 1 in :mod:`fcslstm_jax.model.slstm` does not
know how many spatial axes its state has. The 3D channel widths are a config value
(``stages_3d``, default VGG-16 / 8: 8, 16, 32, 64, 64), since 3x3x3 kernels hold 3x the
weights of 3x3 ones and a volume holds D times the voxels of a slice. Parameter counts
(``python -m fcslstm_jax.cli.summary --summary --spatial-dims 3``, n = 2, c = 4): see
docs/model.md,
"3D + time".

Arbitrary slice sizes: inputs whose H, W (and D) are not multiples of 32 (five poolings) are
zero-padded at the end of each axis inside ``__call__`` and the logits are cropped back, so
callers never see the padding. Normalized MRI is ~0 outside the head, so zero padding is
background.

Remat (``remat``, a config value as in maxtext): ``"none"``; ``"stages"`` wraps every conv
stage (front-end and Ψx) in ``nn.remat`` so that only its output, not its inner activations,
is kept for backpropagation through time; ``"full"`` also rematerializes each LSTM time step;
``"lean"`` (FCSLSTM only; the FCN treats it as ``"stages"``) applies each layer's Ψx inside
the time step (``psi_x_in_scan`` in :mod:`fcslstm_jax.model.slstm`) and rematerializes the whole
step, on a while loop by default (``unroll=1``), so that the backward pass recomputes one
time step's Ψx at a time and memory never holds all ``T`` Ψx outputs; its max-pooling is
:func:`max_pool_lean` (same function and gradient, no index arrays). Remat pays off where
the time loop is a real while loop (``unroll=1``, the accelerator default); with the loop
fully unrolled (the CPU default) XLA does not schedule the recomputation so that it saves
anything. ``bench/memory.py [--unroll 1]`` measures the compiled temp memory of each policy;
the numbers, on CPU and on an H200, are in bench/README.md ("Memory"). ``"lean"`` is for
accelerators: XLA:CPU runs convolutions inside a while loop many times slower than
unrolled (bench/README.md, "Targets").

Chunking (``chunk_pixels``): FCSLSTM's Ψx stages run on the folded ``B*T`` batch a few images
at a time on CPU, where that is faster (:func:`fcslstm_jax.model.psi.apply_in_chunks`); same
function. The FCN's stages, which emit 4x fewer channels, run in one call unless
``chunk_pixels`` is given (chunked they were not faster: bench/results/chunk_sweep). With
remat (asked for to save memory) the default is one call too, since chunked stages needed
more memory (bench/README.md). On several devices the default is one call (a chunk of one
image would sit on one device's share of the batch), and so it is for volumes: one volume
patch already holds far more than :data:`fcslstm_jax.model.psi.CPU_CHUNK_PIXELS` voxels.

"""

import functools
import itertools
from typing import Any
from typing import Callable
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcslstm_jax.config import MODELS
from fcslstm_jax.config import REMAT_POLICIES
from fcslstm_jax.config import SPATIAL_DIMS
from fcslstm_jax.config import VGG16_EIGHTH
from fcslstm_jax.config import VGG16_QUARTER
from fcslstm_jax.model import age
from fcslstm_jax.model import psi
from fcslstm_jax.model import slstm

MULTIPLE = 32  # 2 ** number of poolings
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.precision -> conv dtype


def pad_to_multiple(x, multiple: int = MULTIPLE, spatial_dims: int = 2):
  """Zero-pads the ``spatial_dims`` axes before the channels of ``[..., *spatial, C]`` (H, W;
  or D, H, W) up to a multiple, at the end; returns ``(x, spatial shape before padding)``."""
  shape = x.shape[-1 - spatial_dims : -1]
  pads = [-n % multiple for n in shape]
  if any(pads):
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1 - spatial_dims) + [(0, p) for p in pads] + [(0, 0)])
  return x, tuple(shape)


def crop(y, shape):
  """``y`` ``[N, *spatial, C]`` cropped to the spatial ``shape`` (undoes
  :func:`pad_to_multiple`)."""
  return y[(slice(None),) + tuple(slice(0, n) for n in shape)]


def max_pool(x):
  """2x2 (2x2x2 for volumes) max-pooling of ``[N, *spatial, C]``, stride 2."""
  window = (2,) * (x.ndim - 2)
  return nn.max_pool(x, window, strides=window)


def _windows(x):
  """``[N, S1, ..., Sk, C] -> [N, S1/2, 2, ..., Sk/2, 2, C]`` (every pooling window's cells)."""
  shape = [x.shape[0]]
  for n in x.shape[1:-1]:
    shape += [n // 2, 2]
  return x.reshape(shape + [x.shape[-1]])


@jax.custom_vjp
def max_pool_lean(x):
  """:func:`max_pool` of ``[N, H, W, C]`` or ``[N, D, H, W, C]`` (spatial sizes even) with an
  elementwise gradient.

  Same values and the same gradient as :func:`max_pool`, ties included (the first maximum of
  a window in row-major order takes the gradient, as XLA's select-and-scatter does), but the
  gradient is one elementwise pass over the input: XLA:CPU's select-and-scatter materializes
  index arrays the size of the input (bench/README.md, "What limits memory"). Used by
  ``remat="lean"``.
  """
  return jnp.max(_windows(x), axis=tuple(range(2, 2 * (x.ndim - 2) + 1, 2)))


def _max_pool_lean_fwd(x):
  y = max_pool_lean(x)
  return y, (x, y)


def _max_pool_lean_bwd(res, g):
  x, y = res
  k = x.ndim - 2
  windows = _windows(x)
  taken = jnp.zeros(y.shape, bool)
  grads = {}
  for offset in itertools.product((0, 1), repeat=k):  # row-major order of a window's cells
    cell = (slice(None),) + tuple(v for o in offset for v in (slice(None), o))
    hit = (windows[cell] == y) & ~taken
    taken = taken | hit
    grads[offset] = jnp.where(hit, g, jnp.zeros_like(g))

  def assemble(prefix):  # the last axes first: -> [N, S1/2, ..., Sl/2, 2, ..., Sk/2, 2, C]
    level = len(prefix)
    if level == k:
      return grads[prefix]
    return jnp.stack([assemble(prefix + (o,)) for o in (0, 1)], axis=2 + level)

  return (assemble(()).reshape(x.shape),)


max_pool_lean.defvjp(_max_pool_lean_fwd, _max_pool_lean_bwd)


def fold_time(x):
  """``[B, T, ...] -> [B*T, ...]``."""
  return x.reshape((-1,) + x.shape[2:])


class BackEnd(nn.Module):
  """deconv6..deconv10 with fuse projections of all five stages (highest fuse level).

  ``feats[k]`` is stage k+1's output, ``[N, H / 2**k, W / 2**k, C_k]`` (or
  ``[N, D / 2**k, H / 2**k, W / 2**k, C_k]``: 4x4x4 transposed convolutions, 1x1x1 fuses).
  Returns ``[N, H, W, num_classes]`` (``[N, D, H, W, num_classes]``).
  """

  num_classes: int
  dtype: Any = jnp.float32
  pool: Callable[[jax.Array], jax.Array] = max_pool

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array]):
    c, k = self.num_classes, feats[0].ndim - 2
    y = self.pool(feats[-1])
    for j, s in enumerate(reversed(range(len(feats)))):
      y = Upsample(c, dtype=self.dtype, name=f"deconv{6 + j}")(y)
      y = y + nn.Conv(c, (1,) * k, kernel_init=psi.kaiming, dtype=self.dtype, name=f"fuse{s + 1}")(
        feats[s]
      )
    return y


def upsample_reflect(deconv, y):
  """``deconv`` (4x4, stride 2, 'SAME') of ``y [N, h, w, C]`` -> ``[N, 2h, 2w, c]``, with the
  border treated like the interior (the same along every axis of ``[N, d, h, w, C]``).

  Each output of a 4x4 stride-2 transposed convolution sums two neighbouring inputs; at the
  first and last row and column one of them lies outside, and 'SAME' takes it as zero, so
  the border outputs miss a term that every interior output has. On an empty (all-zero)
  slice, where the deep features are constant, that alone made a trained Bi-FCSLSTM
  predict tissue along one image edge (docs/data.md, "Empty image, no tissue"). Reflect-padding the
  input
  by one cell and cropping the output gives the border the neighbour an interior output
  would see (exactly so for constant and period-2 inputs); interior outputs are unchanged
  and so are the parameters. The paper's torch FCN used zero padding; we differ here. The
  model computes this function with :class:`Upsample` (faster, same parameters).
  """
  k = y.ndim - 2
  y = jnp.pad(y, ((0, 0),) + ((1, 1),) * k + ((0, 0),), mode="reflect")
  return deconv(y)[(slice(None),) + (slice(2, -2),) * k]


PHASES = (0, 1)  # output index 2 p + a of a stride-2 upsampling: phase a along each axis


class Upsample(nn.Module):
  """:func:`upsample_reflect` of a 4x4 (4x4x4) stride-2 ``nn.ConvTranspose``, computed as one
  dense 2x2 (2x2x2) convolution per output phase: ``[N, *s, C] -> [N, *2s, features]``.

  The same function and the same parameters (``kernel [4, 4, (4,) C, features]``, ``bias``,
  drawn as ``nn.ConvTranspose`` draws them): along one axis, output ``2p + a`` of the
  reflect-padded transposed convolution is ``w[a] x'[p + a] + w[a + 2] x'[p + a + 1]`` (``x'``
  the input reflect-padded by one), so a 'VALID' convolution of ``x'`` with the kernel's taps
  ``a, a + 2`` per axis, all phases stacked on the output channels, followed by an
  interleave, gives every output without the zeros a transposed convolution inserts. XLA:CPU
  runs transposed (input-dilated) convolutions on a slow generic path, most of a 3D forward
  pass (the step times are in docs/model.md, "3D + time", and bench/results/step3d_cpu.json). The
  paper's
  torch FCN used a plain ``ConvTranspose2d``; the function is ours
  (:func:`upsample_reflect`), the arithmetic order differs.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, y):
    k, c = y.ndim - 2, self.features
    kernel = self.param("kernel", psi.kaiming, (4,) * k + (y.shape[-1], c), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (c,), jnp.float32)
    y, kernel, bias = nn.dtypes.promote_dtype(y, kernel, bias, dtype=self.dtype)
    sizes = y.shape[1:-1]
    x = jnp.pad(y, ((0, 0),) + ((1, 1),) * k + ((0, 0),), mode="reflect")
    phases = list(itertools.product(PHASES, repeat=k))
    taps = jnp.stack([kernel[tuple(slice(a, None, 2) for a in ph)] for ph in phases], axis=-2)
    taps = taps.reshape((2,) * k + (y.shape[-1], len(phases) * c))
    axes = "DHW"[-k:]
    z = jax.lax.conv_general_dilated(
      x, taps, (1,) * k, "VALID", dimension_numbers=(f"N{axes}C", f"{axes}IO", f"N{axes}C")
    )
    z = z.reshape(z.shape[:-1] + (len(phases), c))
    parts = [
      z[(slice(None),) + tuple(slice(a, a + n) for a, n in zip(ph, sizes)) + (i,)]
      for i, ph in enumerate(phases)
    ]
    out = jnp.stack(parts, axis=-2).reshape((y.shape[0],) + sizes + (2,) * k + (c,))
    interleave = [0] + [v for i in range(k) for v in (1 + i, 1 + k + i)] + [1 + 2 * k]
    out = out.transpose(interleave).reshape((y.shape[0],) + tuple(2 * n for n in sizes) + (c,))
    return out + bias.reshape((1,) * (out.ndim - 1) + (c,))


def _stage_cls(remat: str, in_remat_step: bool = False):
  """The conv stage class: wrapped in ``nn.remat`` unless ``remat`` is ``"none"`` or the stage
  runs inside a time step that is rematerialized as a whole (``in_remat_step``)."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {remat!r}")
  return psi.ConvStage if remat == "none" or in_remat_step else nn.remat(psi.ConvStage)


def _as_logits(y, dtype):
  """float32 logits whatever the compute dtype (bfloat16 too); float64 for a float64 model."""
  return y.astype(jnp.promote_types(dtype, jnp.float32))


def _check_input(x, spatial_dims: int, who: str):
  if spatial_dims not in SPATIAL_DIMS:
    raise ValueError(f"{who}: spatial_dims must be one of {SPATIAL_DIMS}, got {spatial_dims}")
  if x.ndim != spatial_dims + 3:
    axes = ", ".join("DHW"[-spatial_dims:])
    raise ValueError(
      f"{who} (spatial_dims={spatial_dims}): expected inputs [B, T, {axes}, n], got shape {x.shape}"
    )


class FCN(nn.Module):
  """The concise FCN, applied to each time step alone: ``[B, T, H, W, n] -> [B, T, H, W, c]``
  (``[B, T, D, H, W, n] -> [B, T, D, H, W, c]`` with ``spatial_dims=3``)."""

  num_classes: int
  stages: Sequence[tuple[int, int]] = VGG16_QUARTER
  remat: str = "none"
  chunk_pixels: int | None = None
  dtype: Any = jnp.float32
  spatial_dims: int = 2

  @nn.compact
  def __call__(self, x, valid=None):
    del valid  # every time step is segmented on its own
    _check_input(x, self.spatial_dims, "FCN")
    b, t = x.shape[:2]
    y, shape = pad_to_multiple(fold_time(x).astype(self.dtype), spatial_dims=self.spatial_dims)
    stage = _stage_cls(self.remat)
    feats = []
    for k, (ch, n) in enumerate(self.stages):
      conv = stage(
        ch, num_convs=n, dtype=self.dtype, spatial_dims=self.spatial_dims, name=f"conv{k + 1}"
      )
      y = psi.apply_in_chunks(conv, max_pool(y) if k else y, self.chunk_pixels or 0)
      feats.append(y)
    logits = crop(BackEnd(self.num_classes, self.dtype, name="backend")(feats), shape)
    return _as_logits(logits.reshape((b, t) + logits.shape[1:]), self.dtype)


def slice_validity(valid, depth: int, spatial_dims: int):
  """``valid`` as the LSTM layers take it: None, ``[B, T]``, or for volumes ``[B, T, D]`` per
  axial slice (a session's field of view; ours, the paper has no cropped sessions), padded
  at the end to the padded depth ``depth`` like the slice beside it."""
  if valid is None or valid.ndim == 2:
    return valid
  if spatial_dims != 3 or valid.ndim != 3:
    raise ValueError(f"valid must be [B, T] (or [B, T, D] for volumes), got {valid.shape}")
  pad = depth - valid.shape[2]
  return jnp.pad(valid, [(0, 0), (0, 0), (0, pad)], mode="edge") if pad else valid


def pool_validity(valid):
  """Per-slice validity ``[B, T, D]`` at the next layer's depth ``D / 2``: a pooled slice is
  valid where either of its two is (it holds image there); ``[B, T]`` and None unchanged."""
  if valid is None or valid.ndim == 2:
    return valid
  return valid.reshape(valid.shape[:2] + (valid.shape[2] // 2, 2)).any(axis=-1)


class FCSLSTM(nn.Module):
  """Stacked structured LSTM with the concise FCN's stages as Ψx (Fig. 3).

  ``[B, T, H, W, n]`` (+ ``valid`` ``[B, T]``) ``-> [B, T, H, W, c]`` logits; with
  ``spatial_dims=3``, ``[B, T, D, H, W, n] -> [B, T, D, H, W, c]`` (3D Ψx stages and Ψh),
  ``valid`` ``[B, T]`` or per axial slice ``[B, T, D]`` (:func:`slice_validity`): where a
  time point is not valid the LSTM keeps its state (:mod:`fcslstm_jax.model.slstm`).
  """

  num_classes: int
  bidirectional: bool = False
  stages: Sequence[tuple[int, int]] = VGG16_QUARTER
  psi_h_kernel: int = 3
  remat: str = "none"
  unroll: int | None = None
  chunk_pixels: int | None = None
  dtype: Any = jnp.float32
  spatial_dims: int = 2
  batching: str | None = None  # Bi-FCSLSTM: how both directions' Ψ run (slstm.resolve_batching)
  age_input: str = "none"  # "film": x's last channel is the age (fcslstm_jax.model.age)

  @nn.compact
  def __call__(self, x, valid=None):
    _check_input(x, self.spatial_dims, "FCSLSTM")
    b, t = x.shape[:2]
    conditions = None
    if self.age_input == "film":  # ours (issue 29): age and gaps modulate each layer's x_t
      x, ages = age.split_age(x)
      steps = valid if valid is None or valid.ndim == 2 else valid.any(axis=-1)
      conditions = age.timing(ages, steps)
    y, shape = pad_to_multiple(x.astype(self.dtype), spatial_dims=self.spatial_dims)
    layer_cls = slstm.BidirectionalLSTM if self.bidirectional else slstm.StructuredLSTM
    lean = self.remat == "lean"
    stage = _stage_cls(self.remat, in_remat_step=lean)
    pool = max_pool_lean if lean else max_pool
    psi_h = functools.partial(
      psi.Conv,
      kernel_size=self.psi_h_kernel,
      use_bias=False,
      dtype=self.dtype,
      spatial_dims=self.spatial_dims,
    )
    chunk_pixels = self.chunk_pixels
    if chunk_pixels is None:  # see "Chunking" in the module docstring
      chunk_pixels = default_chunk_pixels("fcslstm", self.remat, self.spatial_dims)
    valid = slice_validity(valid, y.shape[2], self.spatial_dims)
    feats = []
    for k, (ch, n) in enumerate(self.stages):
      if k:
        y = pool(fold_time(y))
        y = y.reshape((b, t) + y.shape[1:])
        valid = pool_validity(valid)
      psi_x = functools.partial(
        stage, num_convs=n, width=ch, dtype=self.dtype, spatial_dims=self.spatial_dims
      )
      if conditions is not None:
        y = age.AgeFiLM(name=f"film{k + 1}")(y, conditions)
      y = layer_cls(
        hidden=ch,
        psi_x=psi_x,
        psi_h=psi_h,
        unroll=self.unroll,
        remat_step=self.remat in ("full", "lean"),
        chunk_pixels=chunk_pixels,
        dtype=self.dtype,
        psi_x_in_scan=lean,
        batching=self.batching,
        name=f"slstm{k + 1}",
      )(y, valid)
      feats.append(fold_time(y).astype(self.dtype))
    logits = crop(BackEnd(self.num_classes, self.dtype, pool, name="backend")(feats), shape)
    return _as_logits(logits.reshape((b, t) + logits.shape[1:]), self.dtype)


def create_model(
  name: str,
  num_classes: int,
  *,
  remat: str = "none",
  unroll: int | None = None,
  chunk_pixels: int | None = None,
  dtype: Any = jnp.float32,
  spatial_dims: int = 2,
) -> nn.Module:
  """The model called ``name`` (one of :data:`MODELS`), on slices (``spatial_dims=2``) or
  volumes (3)."""
  if name == "fcn":
    return FCN(
      num_classes, remat=remat, chunk_pixels=chunk_pixels, dtype=dtype, spatial_dims=spatial_dims
    )
  if name in ("fcslstm", "bi-fcslstm"):
    return FCSLSTM(
      num_classes,
      bidirectional=name == "bi-fcslstm",
      remat=remat,
      unroll=unroll,
      chunk_pixels=chunk_pixels,
      dtype=dtype,
      spatial_dims=spatial_dims,
    )
  raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")


def build_model(config, num_classes: int) -> nn.Module:
  """The network a :class:`~fcslstm_jax.config.Config` describes, for ``num_classes``."""
  model = create_model(
    config.model,
    num_classes,
    remat=config.remat,
    unroll=config.unroll,
    chunk_pixels=config.chunk_pixels,
    dtype=DTYPES[config.precision],
    spatial_dims=config.spatial_dims,
  )
  if config.model != "fcn":
    model = model.clone(batching=config.batching)
  if config.age_input != "none":
    model = model.clone(age_input=config.age_input)
  return model.clone(stages=config.model_stages)


def default_chunk_pixels(model: str, remat: str, spatial_dims: int, backend=None, devices=None):
  """Ψx chunking when ``chunk_pixels`` is null ("Chunking" above): FCSLSTM's 2D stages without
  remat a few images at a time where that is faster
  (:func:`fcslstm_jax.model.psi.default_chunk_pixels`), everything else in one call (0)."""
  if model == "fcn" or remat != "none" or spatial_dims == 3:
    return 0
  return psi.default_chunk_pixels(backend, devices)


# Config fields that only say how the network is compiled (same function, other speed or
# memory); left null, they are the backend's choice (:func:`with_backend_defaults`).
COMPILE_FIELDS = ("unroll", "chunk_pixels", "batching")


def with_backend_defaults(config, num_steps: int, backend=None, devices=None):
  """``config`` with its :data:`COMPILE_FIELDS` that are null resolved for ``backend`` and
  ``devices`` (default: JAX's) and ``num_steps`` time points, as the modules would resolve
  them at trace time (:func:`fcslstm_jax.model.slstm.resolve_unroll`,
  :func:`~fcslstm_jax.model.slstm.resolve_batching`,
  :func:`fcslstm_jax.model.psi.default_chunk_pixels`, "Chunking" above), so that run.json
  records what was compiled. The FCN has no time loop: only its chunking is resolved."""
  chunk = config.chunk_pixels
  if chunk is None:
    chunk = default_chunk_pixels(config.model, config.remat, config.spatial_dims, backend, devices)
  if config.model == "fcn":
    return config.replace(chunk_pixels=chunk)
  return config.replace(
    chunk_pixels=chunk,
    unroll=slstm.resolve_unroll(config.unroll, num_steps, config.remat == "lean", backend),
    batching=(
      slstm.resolve_batching(config.batching, backend)
      if config.model == "bi-fcslstm"
      else config.batching
    ),
  )


def count_params(params) -> int:
  return sum(p.size for p in jax.tree_util.tree_leaves(params))


def init_params(model: nn.Module, in_channels: int, rng=None, size: int = 32, steps: int = 2):
  """Parameters for ``model`` (their shapes do not depend on D, H, W or T)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  spatial = (size,) * getattr(model, "spatial_dims", 2)
  x = jnp.zeros((1, steps) + spatial + (in_channels,), jnp.float32)
  return jax.jit(model.init)(rng, x)["params"]


def summary(
  num_classes: int = 4, in_channels: int = 2, spatial_dims: int = 2, stages=None
) -> dict[str, int]:
  """Parameter counts of FCN, FCSLSTM and Bi-FCSLSTM (shapes only, nothing is computed);
  ``stages`` default: the config's for ``spatial_dims`` (``VGG16_QUARTER``, ``VGG16_EIGHTH``)."""
  stages = stages or (VGG16_QUARTER if spatial_dims == 2 else VGG16_EIGHTH)
  out = {}
  for name in MODELS:
    model = create_model(name, num_classes, spatial_dims=spatial_dims).clone(stages=stages)
    shapes = jax.eval_shape(lambda m=model: init_params(m, in_channels))
    out[name] = count_params(shapes)
  return out
