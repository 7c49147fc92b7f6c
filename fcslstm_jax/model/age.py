"""Session age and the time between sessions as model input (issue 29; ours, not the paper's).

FCSLSTM's LSTM (paper Eq. 1, :mod:`fcslstm_jax.model.slstm`) treats its steps as evenly
spaced: step t follows step t-1 whatever the months between them. Real studies are uneven
(IBIS at 6, 12, 24 months; missed sessions; ages that jitter by weeks), and infant contrast
changes fastest in the first months. With ``Config.age_input = "film"``:

- each session's age reaches the model as data: one more input channel, constant over the
  slice, holding the age in years (:func:`fcslstm_jax.data.sequences.with_age_channel`; the
  data pipeline adds it, so flips, windows and padding carry it untouched; augmentations
  leave it out);
- the model reads it back (:func:`split_age`: the channel's value of largest magnitude over
  space, so zero padding and missing sessions do not change it) and computes per time step
  ``[age, Δt to the previous valid step, Δt to the next valid step]`` (:func:`timing`; a
  missing session makes the gap span it: from 6 to 12 months skipping 9 is a 6-month step);
- FiLM (Perez et al. 2018) modulates every LSTM layer's input ``x_t`` by those three numbers:
  ``x_t * (1 + γ) + β`` per channel (:class:`AgeFiLM`). ``x_t`` enters every gate of Eq. 1
  through Ψx, so the input, forget and output gates of a step depend on its age and on the
  gaps around it (a time-aware LSTM in the sense of Baytas et al. 2017, through the input
  rather than a separate decay term).

The paper's model is ``age_input = "none"`` (the default): no age channel, no FiLM.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def split_age(x):
  """``(images [B, T, ..., C-1], ages [B, T] in years)`` of an input with an age channel: the
  channel's value of largest magnitude over space (zero padding does not change it, and a
  negative age, e.g. a preterm infant's corrected age, reads as itself)."""
  spatial = tuple(range(2, x.ndim - 1))
  hi, lo = jnp.max(x[..., -1], axis=spatial), jnp.min(x[..., -1], axis=spatial)
  return x[..., :-1], jnp.where(hi >= -lo, hi, lo).astype(jnp.float32)


def timing(ages, valid=None):
  """``[B, T, 3]``: each step's age and its gaps (years) to the previous and the next valid
  step (0 at the ends); ``valid [B, T]`` (None: all). Ages increase along T."""
  b, t = ages.shape
  valid = jnp.ones((b, t), bool) if valid is None else valid.astype(bool)
  big = jnp.float32(1e6)
  prev = jnp.where(valid, ages, -big)
  start = jnp.full((b, 1), -big)
  prev = jnp.concatenate([start, jax.lax.cummax(prev, axis=1)[:, :-1]], axis=1)
  nxt = jnp.where(valid, -ages, -big)[:, ::-1]
  nxt = -jnp.concatenate([start, jax.lax.cummax(nxt, axis=1)[:, :-1]], axis=1)[:, ::-1]
  before = jnp.where(prev > -big / 2, ages - prev, 0.0)
  after = jnp.where(nxt < big / 2, nxt - ages, 0.0)
  return jnp.stack([ages, before, after], axis=-1)


class AgeFiLM(nn.Module):
  """``y [B, T, ..., C] -> y * (1 + γ) + β`` with ``γ, β [B, T, C]`` from ``features [B, T, F]``
  (a small MLP; its last layer starts near 0, so the model starts near the paper's)."""

  hidden: int = 16

  @nn.compact
  def __call__(self, y, features):
    c = y.shape[-1]
    h = nn.tanh(nn.Dense(self.hidden, name="hidden")(features))
    gb = nn.Dense(2 * c, kernel_init=nn.initializers.normal(0.01), name="out")(h)
    gamma, beta = jnp.split(gb, 2, axis=-1)
    shape = gamma.shape[:2] + (1,) * (y.ndim - 3) + (c,)
    gamma, beta = gamma.reshape(shape), beta.reshape(shape)
    return (y * (1.0 + gamma) + beta).astype(y.dtype)
