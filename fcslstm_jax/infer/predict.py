"""Predictions of a trained network: class maps and probabilities, batch by batch.

Layout: images ``[B, T, H, W, C]`` (volumes ``[B, T, D, H, W, C]``), channels-last, with
``valid [B, T]``; class maps ``[B, T, H, W]`` (int32), probabilities ``[B, T, H, W, c]``
(float32 softmax of the logits). Used by training to score its splits and by evaluation.
"""

import collections

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
  return predict_batched(lambda x, v: np.asarray(predict_fn(params, x, v)), data, batch_size)


def predict_batched(run_batch, data: SliceSet, batch_size: int) -> np.ndarray:
  """``run_batch`` (see :func:`predict_stream`) over every sequence of ``data``."""
  if len(data) == 0:
    raise ValueError("predict_all: no sequences to predict")
  return next(predict_stream(run_batch, [(None, data.images, data.valid)], batch_size))[1]


def predict_stream(run_batch, parts, batch_size: int):
  """Yields ``(key, outputs [N, ...])`` for each ``(key, images [N, ...], valid [N, ...])`` of
  ``parts`` (any iterable, read lazily), in order; ``run_batch(images [B, ...], valid [B, ...])``
  -> numpy ``[B, ...]`` predicts one batch of ``B = batch_size`` sequences.

  Consecutive parts whose sequences have the same shape share batches (a study's subjects:
  every batch is full but the last of each shape, instead of one part-filled batch per
  subject); a part is yielded as soon as its last sequence is predicted. Each sequence's
  output does not depend on its batch neighbours, so it is what the part alone would get.
  The last batch of a shape is padded by repeating its own sequences, so that one compiled
  program serves every batch of that shape."""
  waiting = collections.deque()  # [key, sequences, outputs so far]; outputs fill the front
  images, valid = [], []  # sequences read but not yet predicted, in order

  def run(flush: bool):
    # One array (a single part, or what is left of one): no copy of the whole.
    x = (images[0] if len(images) == 1 else np.concatenate(images)) if images else None
    v = (valid[0] if len(valid) == 1 else np.concatenate(valid)) if valid else None
    done = 0
    while x is not None and (len(x) - done >= batch_size or (flush and len(x) > done)):
      k = min(batch_size, len(x) - done)
      idx = done + np.arange(batch_size) % k
      out = run_batch(x[idx], v[idx])[:k]
      done += k
      for part in waiting:  # hand the outputs to the first parts still short of theirs
        need = part[1] - sum(len(o) for o in part[2])
        if need > 0:
          part[2].append(out[:need])
          out = out[need:]
        if not len(out):
          break
    images[:] = [x[done:]] if x is not None and done < len(x) else []
    valid[:] = [v[done:]] if v is not None and done < len(v) else []
    finished = []
    while waiting and sum(len(o) for o in waiting[0][2]) == waiting[0][1]:
      key, n, outs = waiting.popleft()
      finished.append((key, np.concatenate(outs) if outs else np.zeros((0,))))
    return finished

  shape = None
  for key, x, v in parts:
    if shape is not None and x.shape[1:] != shape:
      yield from run(flush=True)
    shape = x.shape[1:]
    waiting.append([key, len(x), []])
    images.append(np.asarray(x))
    valid.append(np.asarray(v))
    yield from run(flush=False)
  yield from run(flush=True)


def make_predict_fn(model: nn.Module, proba: bool = False):
  """``fn(params, images [B, T, H, W, C], valid [B, T])`` -> class map ``[B, T, H, W]``, or
  probabilities ``[B, T, H, W, c]`` with ``proba``; jit-compiled."""
  predict_with = predict_proba if proba else predict
  return jax.jit(lambda p, x, v: predict_with(p, model.apply, x, v))
