"""The structured LSTM (paper Sec. 2.2, Eq. 1) run over time with ``nn.scan``.

Eq. 1, with Ψ any operator (see :mod:`fcslstm_jax.psi`)::

  i_t = σ(Ψxi(x_t) + Ψhi(h_{t-1}) + b_i)      f_t = σ(Ψxf(x_t) + Ψhf(h_{t-1}) + b_f)
  o_t = σ(Ψxo(x_t) + Ψho(h_{t-1}) + b_o)      g_t = tanh(Ψxg(x_t) + Ψhg(h_{t-1}) + b_g)
  c_t = f_t ∘ c_{t-1} + i_t ∘ g_t             h_t = o_t ∘ tanh(c_t)

Layout: sequences are channels-last ``[B, T, H, W, C]``; the state ``(c, h)`` is ``[B, H, W, hidden]``.

Implementation notes (same function as Eq. 1, arranged to be cheap):

* Ψx depends on ``x_t`` only, so a layer applies it to all ``T`` time steps at once (time
  folded into the batch); only Ψh and the gate arithmetic run inside ``nn.scan``.
* The four gates share one Ψx and one Ψh call that emit ``4 * hidden`` channels (i, f, g, o).
* A per-step validity mask ``[B, T]`` marks missing time points (a session that was not
  acquired): there the state is carried through unchanged and the output is zero. The
  paper has no missing sessions; longitudinal cohorts do.
* The cell state and the gate arithmetic are kept in float32 even when the convolutions run
  in bfloat16 (``dtype``), because ``c_t`` accumulates over time.
* The forget-gate bias starts at 1 (Jozefowicz et al., 2015); the paper does not say.
* ``chunk_pixels``: Ψx runs on the folded batch a few images at a time where that is faster
  (XLA:CPU, see :func:`fcslstm_jax.psi.apply_in_chunks`); the function is the same.
* ``unroll``: on XLA:CPU the backward pass of convolutions inside a real while loop is
  ~30x slower than the unrolled graph, so ``None`` means "fully unroll on CPU, while loop
  (``unroll=1``) on accelerators", where the loop keeps compile time and memory flat.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcslstm_jax import psi

PsiFactory = Callable[..., nn.Module]  # called as factory(features=..., name=...)


def resolve_unroll(unroll: int | None, num_steps: int) -> int:
  """``unroll`` as given, or the backend default described in the module docstring."""
  if unroll is not None:
    return max(1, min(int(unroll), num_steps))
  return num_steps if jax.default_backend() == "cpu" else 1


def gate_bias_init(hidden: int):
  def init(key, shape, dtype=jnp.float32):
    del key
    # Gate order (i, f, g, o): forget-gate bias 1, the rest 0.
    return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)
  return init


class LSTMStep(nn.Module):
  """One time step of Eq. 1 given the precomputed ``Ψx(x_t)``; the body of the scan.

  carry: ``(c, h)``, each ``[B, H, W, hidden]`` float32.
  inputs: ``(xg, valid)``: ``Ψx(x_t)`` as ``[B, H, W, 4 * hidden]`` and ``valid`` ``[B]`` bool.
  Returns the new carry and the output ``h_t`` (zeros where ``valid`` is False).
  """
  hidden: int
  psi_h: PsiFactory
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, inputs):
    c, h = carry
    xg, valid = inputs
    hg = self.psi_h(features=4 * self.hidden, name="psi_h")(h.astype(self.dtype))
    b = self.param("bias", gate_bias_init(self.hidden), (4 * self.hidden,), jnp.float32)
    sd = c.dtype  # float32, or float64 when the model runs in float64
    z = xg.astype(sd) + hg.astype(sd) + b.astype(sd).reshape((1,) * (hg.ndim - 1) + (-1,))
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c_new = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h_new = nn.sigmoid(o) * jnp.tanh(c_new)
    keep = valid[:, None, None, None]
    c = jnp.where(keep, c_new, c)
    h = jnp.where(keep, h_new, h)
    return (c, h), jnp.where(keep, h_new, 0.0)


class StructuredLSTM(nn.Module):
  """One unidirectional structured LSTM layer over ``x`` ``[B, T, H, W, C_in]``.

  ``psi_x`` and ``psi_h`` are Ψ factories (e.g. ``functools.partial(psi.ConvStage, ...)``),
  called with ``features=4 * hidden``. Returns ``h`` for every step, ``[B, T, H, W, hidden]``.
  ``remat_step`` rematerializes the scan body (Ψh and gates) in the backward pass;
  ``chunk_pixels`` is passed to :func:`fcslstm_jax.psi.apply_in_chunks` for Ψx.
  """
  hidden: int
  psi_x: PsiFactory
  psi_h: PsiFactory
  unroll: int | None = None
  remat_step: bool = False
  chunk_pixels: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, valid=None):
    b, t = x.shape[:2]
    if valid is None:
      valid = jnp.ones((b, t), bool)
    # Ψx on all time steps at once: [B*T, H, W, C] -> [B*T, H, W, 4*hidden].
    psi_x = self.psi_x(features=4 * self.hidden, name="psi_x")
    xg = psi.apply_in_chunks(psi_x, x.reshape((b * t,) + x.shape[2:]).astype(self.dtype),
                             self.chunk_pixels)
    xg = xg.reshape((b, t) + xg.shape[1:])
    step = nn.remat(LSTMStep) if self.remat_step else LSTMStep
    scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1, unroll=resolve_unroll(self.unroll, t))
    state_dtype = jnp.promote_types(self.dtype, jnp.float32)
    zeros = jnp.zeros(xg.shape[:1] + xg.shape[2:4] + (self.hidden,), state_dtype)
    _, hs = scan(hidden=self.hidden, psi_h=self.psi_h, dtype=self.dtype, name="scan")((zeros, zeros), (xg, valid))
    return hs


class BidirectionalLSTM(nn.Module):
  """Two structured LSTM layers with their own parameters (a BRNN [20], paper Sec. 2.3).

  The backward layer scans the time-reversed sequence; its outputs are reversed back and
  concatenated with the forward ones on channels: ``[B, T, H, W, 2 * hidden]``.
  """
  hidden: int
  psi_x: PsiFactory
  psi_h: PsiFactory
  unroll: int | None = None
  remat_step: bool = False
  chunk_pixels: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, valid=None):
    if valid is None:
      valid = jnp.ones(x.shape[:2], bool)
    kw = dict(hidden=self.hidden, psi_x=self.psi_x, psi_h=self.psi_h, unroll=self.unroll,
              remat_step=self.remat_step, chunk_pixels=self.chunk_pixels, dtype=self.dtype)
    fwd = StructuredLSTM(**kw, name="forward")(x, valid)
    bwd = StructuredLSTM(**kw, name="backward")(x[:, ::-1], valid[:, ::-1])[:, ::-1]
    return jnp.concatenate([fwd, bwd], axis=-1)
