"""Ψ operators of the structured LSTM (paper Sec. 2.2, Eq. 1).

A Ψ operator is any pure Flax module mapping ``[B, H, W, C_in] -> [B, H, W, features]``
(channels-last). The structured LSTM asks its Ψx and Ψh for ``4 * hidden`` features, one
slice per gate (i, f, g, o), the same way a ConvLSTM computes ``W * x`` for all gates in one
convolution. Which operator is used decides what the cell is:

* :class:`Dense`     - a per-pixel linear map: Eq. 1 becomes the classic LSTM [14].
* :class:`Conv`      - one convolution: Eq. 1 becomes the ConvLSTM of Shi et al. [11].
* :class:`ConvStage` - a VGG stage, ``n x (3x3 conv + ReLU)``: the paper's
  "conv1_1+relu1_1+conv1_2+relu1_2 as one operator Ψ" (Sec. 2.2 and 2.3), so that only the
  stage output, not every sub-layer, enters the LSTM memory.

Weights use Kaiming (He) normal initialization (paper Sec. 3).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

kaiming = nn.initializers.kaiming_normal()


class Dense(nn.Module):
  """Linear operator on the channel axis of ``[B, H, W, C]`` (classic LSTM)."""
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, use_bias=self.use_bias, kernel_init=kaiming,
                    dtype=self.dtype, name="dense")(x)


class Conv(nn.Module):
  """One ``k x k`` 'SAME' convolution of ``[B, H, W, C]`` (ConvLSTM)."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    return nn.Conv(self.features, (k, k), padding="SAME", use_bias=self.use_bias,
                   kernel_init=kaiming, dtype=self.dtype, name="conv")(x)


class ConvStage(nn.Module):
  """A VGG conv stage: ``num_convs x (3x3 conv + ReLU)`` on ``[B, H, W, C]``.

  The inner convolutions have ``width`` channels (``features`` when unset) and the last one
  emits ``features`` channels. Used alone it is a front-end stage of the concise FCN
  (Sec. 2.1); used as Ψx it is the stage whose output enters LSTM layer k (Sec. 2.3). As in
  the paper, the ReLU after the last convolution is part of the operator.
  """
  features: int
  num_convs: int = 2
  width: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_convs):
      last = j == self.num_convs - 1
      width = self.features if last else (self.width or self.features)
      x = nn.Conv(width, (3, 3), padding="SAME", kernel_init=kaiming, dtype=self.dtype,
                  name=f"conv{j + 1}")(x)
      x = nn.relu(x)
    return x
