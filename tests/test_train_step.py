"""The pure train step (fcslstm_jax/train/loop.py): a batch run in parts (``microbatches``)
has the whole batch's loss and gradient."""

import chex
import jax
import numpy as np
import pytest

from fcslstm_jax.config import Config
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.model import networks
from fcslstm_jax.train import loop
from fcslstm_jax.train import losses

TINY = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1))


def batch_of(b=4, t=2, size=32, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.zeros((b, t, size, size), np.float32)
  mask[0] = 1.0  # the parts hold very different numbers of labeled pixels
  mask[1, :, :4] = 1.0
  mask[2, 0, 8:20] = 1.0
  mask[3, 1] = 0.5
  return {
    "images": rng.normal(size=(b, t, size, size, 2)).astype(np.float32),
    "labels": rng.integers(0, 4, (b, t, size, size)).astype(np.int32),
    "label_mask": mask,
    "valid": np.ones((b, t), bool),
  }


def test_microbatches_give_the_whole_batch_loss_and_gradient():
  batch = batch_of()
  weights = losses.class_weights(batch["labels"], batch["label_mask"], 4)
  model = networks.FCN(4, stages=TINY)  # any network: the parts are split around it
  params = networks.init_params(model, 2)
  out = {}
  for parts in (1, 2):
    config = Config(batch_size=4, microbatches=parts)
    out[parts] = jax.jit(lambda p, b, c=config: loop.loss_and_grads(p, model.apply, b, weights, c))(
      params, batch
    )
  (loss, grads), (part_loss, part_grads) = out[1], out[2]
  np.testing.assert_allclose(part_loss, loss, rtol=1e-5)
  chex.assert_trees_all_close(part_grads, grads, rtol=1e-4, atol=1e-7)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-4  # not all zero


def test_microbatches_must_divide_the_batch():
  with pytest.raises(ConfigError, match="microbatches=3: must divide the batch size"):
    Config(batch_size=4, microbatches=3)
