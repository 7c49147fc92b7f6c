"""Ψ operators of the structured LSTM (paper Sec. 2.2, Eq. 1).

A Ψ operator is any pure Flax module mapping ``[B, H, W, C_in] -> [B, H, W, features]``
(channels-last), or ``[B, D, H, W, C_in] -> [B, D, H, W, features]`` for volumes
(``spatial_dims=3``: 3x3x3 kernels; the paper has 2D slices only, the 3D operators are ours).
The structured LSTM asks its Ψx and Ψh for ``4 * hidden`` features, one slice per gate
(i, f, g, o), the same way a ConvLSTM computes ``W * x`` for all gates in one convolution.
Which operator is used decides what the cell is:

* :class:`Dense`     - a per-pixel linear map: Eq. 1 becomes the classic LSTM [14].
* :class:`Conv`      - one convolution: Eq. 1 becomes the ConvLSTM of Shi et al. [11].
* :class:`ConvStage` - a VGG stage, ``n x (3x3 conv + ReLU)``: the paper's
  "conv1_1+relu1_1+conv1_2+relu1_2 as one operator Ψ" (Sec. 2.2 and 2.3), so that only the
  stage output, not every sub-layer, enters the LSTM memory.

Weights use Kaiming (He) normal initialization (paper Sec. 3).

:func:`apply_in_chunks` applies a Ψ to a large folded batch a few images at a time: the
same function, computed in pieces whose activations stay in the CPU's cache (see
:data:`CPU_CHUNK_PIXELS`).
"""

import math
from typing import Any
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

kaiming = nn.initializers.kaiming_normal()


def check_rank(x, spatial_dims: int, who: str):
  """Refuses an input that is not ``[B, *spatial, C]`` with ``spatial_dims`` spatial axes (a
  2D kernel on a volume would otherwise run slice by slice, treating D as a batch axis)."""
  if x.ndim != spatial_dims + 2:
    raise ValueError(
      f"{who}: expected [B, {', '.join('DHW'[-spatial_dims:])}, C] "
      f"(spatial_dims={spatial_dims}), got shape {x.shape}"
    )


class Dense(nn.Module):
  """Linear operator on the channel axis of ``[B, ..., C]`` (classic LSTM); any spatial rank."""

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(
      self.features, use_bias=self.use_bias, kernel_init=kaiming, dtype=self.dtype, name="dense"
    )(x)


class Conv(nn.Module):
  """One ``k x k`` 'SAME' convolution of ``[B, H, W, C]`` (ConvLSTM); ``k x k x k`` of
  ``[B, D, H, W, C]`` with ``spatial_dims=3``."""

  features: int
  kernel_size: int = 3
  use_bias: bool = True
  dtype: Any = jnp.float32
  spatial_dims: int = 2

  @nn.compact
  def __call__(self, x):
    check_rank(x, self.spatial_dims, "psi.Conv")
    k = (self.kernel_size,) * self.spatial_dims
    return nn.Conv(
      self.features,
      k,
      padding="SAME",
      use_bias=self.use_bias,
      kernel_init=kaiming,
      dtype=self.dtype,
      name="conv",
    )(x)


class ConvStage(nn.Module):
  """A VGG conv stage: ``num_convs x (3x3 conv + ReLU)`` on ``[B, H, W, C]``; with
  ``spatial_dims=3``, ``num_convs x (3x3x3 conv + ReLU)`` on ``[B, D, H, W, C]``.

  The inner convolutions have ``width`` channels (``features`` when unset) and the last one
  emits ``features`` channels. Used alone it is a front-end stage of the concise FCN
  (Sec. 2.1); used as Ψx it is the stage whose output enters LSTM layer k (Sec. 2.3). As in
  the paper, the ReLU after the last convolution is part of the operator.
  """

  features: int
  num_convs: int = 2
  width: int | None = None
  dtype: Any = jnp.float32
  spatial_dims: int = 2

  @nn.compact
  def __call__(self, x):
    check_rank(x, self.spatial_dims, "psi.ConvStage")
    for j in range(self.num_convs):
      last = j == self.num_convs - 1
      width = self.features if last else (self.width or self.features)
      x = nn.Conv(
        width,
        (3,) * self.spatial_dims,
        padding="SAME",
        kernel_init=kaiming,
        dtype=self.dtype,
        name=f"conv{j + 1}",
      )(x)
      x = nn.relu(x)
    return x


# Pixels per Ψ call on XLA:CPU. Its convolutions of 16-128 channels at 64-128 pixels square
# run slower on a large folded batch than on a few images at a time (their activations no
# longer stay in cache); 8192 was the fastest of the sizes swept by
# `bench/train_step.py --chunk-pixels N` (bench/README.md, the `chunk_pixels` table; JSON in
# bench/results/chunk_sweep). Accelerators get the whole batch in one call.
CPU_CHUNK_PIXELS = 8192
# Each call is a copy of the stage in the compiled program, so compile time grows with the
# number of calls: at most this many per stage.
MAX_CHUNKS = 16


def default_chunk_pixels(backend: str | None = None, devices: int | None = None) -> int:
  """:data:`CPU_CHUNK_PIXELS` on a single CPU device, else 0 (everything at once); ``backend``
  and ``devices`` default to JAX's."""
  one_cpu = (backend or jax.default_backend()) == "cpu" and (devices or jax.device_count()) == 1
  return CPU_CHUNK_PIXELS if one_cpu else 0


def chunk_size(chunk_pixels: int | None, num_images: int, image_pixels: int) -> int:
  """Images per call: ``chunk_pixels // image_pixels``, at least 1 and ``N / MAX_CHUNKS``.

  ``None`` is the default: :data:`CPU_CHUNK_PIXELS` on a single CPU device; everything at
  once on accelerators and where the batch is split over several devices (a chunk of one
  image would sit on one device). 0 or less means everything at once.
  """
  if chunk_pixels is None:
    chunk_pixels = default_chunk_pixels()
  if chunk_pixels <= 0:
    return num_images
  fewest = -(-num_images // MAX_CHUNKS)  # ceil
  return max(1, fewest, min(num_images, chunk_pixels // image_pixels))


def apply_in_chunks(
  fn: Callable[[jax.Array], jax.Array],
  x: jax.Array,
  chunk_pixels: int | None = None,
  out_axis: int = 0,
) -> jax.Array:
  """``fn(x)`` for ``x`` ``[N, H, W, C]`` (or ``[N, D, H, W, C]``) computed on slices of the
  batch axis, concatenated; an image's pixels are all its spatial positions.

  ``fn`` must treat images independently (a Ψ does), so the result equals ``fn(x)`` up to
  floating-point rounding. Gradients flow through the slices as usual. ``out_axis``: the
  axis of ``fn``'s output that holds the images (1 for a Ψ of both directions of a
  bidirectional layer, whose output is ``[2, N, H, W, F]``).
  """
  n = x.shape[0]
  size = chunk_size(chunk_pixels, n, math.prod(x.shape[1:-1]))
  if size >= n:
    return fn(x)
  return jnp.concatenate([fn(x[i : i + size]) for i in range(0, n, size)], axis=out_axis)
