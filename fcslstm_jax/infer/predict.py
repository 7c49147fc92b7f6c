"""Predictions of a trained network: class maps and probabilities, batch by batch.

Layout: images ``[B, T, H, W, C]`` (volumes ``[B, T, D, H, W, C]``), channels-last, with
``valid [B, T]``; class maps ``[B, T, H, W]`` (int32), probabilities ``[B, T, H, W, c]``
(float32 softmax of the logits). Used by training to score its splits and by evaluation.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcslstm_jax.data.sequences import SliceSet


def predict(state_or_params, apply_fn, images, valid):
  """Class map ``[B, T, H, W]`` (int32) for images ``[B, T, H, W, C]``."""
  params = getattr(state_or_params, "params", state_or_params)
  return jnp.argmax(apply_fn({"params": params}, images, valid), axis=-1).astype(jnp.int32)


def predict_proba(state_or_params, apply_fn, images, valid):
  """Class probabilities ``[B, T, H, W, c]`` (float32 softmax) for images ``[B, T, H, W, C]``."""
  params = getattr(state_or_params, "params", state_or_params)
  logits = apply_fn({"params": params}, images, valid)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def predict_all(predict_fn, params, data: SliceSet, batch_size: int) -> np.ndarray:
  """Predictions for every sequence of ``data``, batched; the last batch is padded so that
  one compiled program serves every batch."""
  n = len(data)
  if n == 0:
    raise ValueError("predict_all: no sequences to predict")
  out = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % n
    out.append(np.asarray(predict_fn(params, data.images[idx], data.valid[idx])))
  return np.concatenate(out)[:n]


def make_predict_fn(model: nn.Module, proba: bool = False):
  """``fn(params, images [B, T, H, W, C], valid [B, T])`` -> class map ``[B, T, H, W]``, or
  probabilities ``[B, T, H, W, c]`` with ``proba``; jit-compiled."""
  predict_with = predict_proba if proba else predict
  return jax.jit(lambda p, x, v: predict_with(p, model.apply, x, v))
