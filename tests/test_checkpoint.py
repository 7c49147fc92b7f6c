"""Evaluation restores a checkpoint's parameters alone, without building an optimizer."""

import chex
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from fcslstm_jax.checkpoint import Checkpointer


def state_at(step, scale):
  params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), scale)}, "bias": jnp.arange(4.0) * scale}
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.rmsprop(1e-3))
  return state.replace(step=jnp.asarray(step))


def test_restore_params_alone(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=3)
  for step, scale in ((1, 1.0), (2, 2.0)):
    ckpt.save(state_at(step, scale))
  template = jax.tree_util.tree_map(jnp.zeros_like, state_at(0, 0.0).params)
  params, step = ckpt.restore_params(template)
  assert step == 2
  chex.assert_trees_all_equal(params, state_at(2, 2.0).params)
  params, step = ckpt.restore_params(template, step=1)
  chex.assert_trees_all_equal(params, state_at(1, 1.0).params)
  ckpt.close()
  assert Checkpointer(str(tmp_path / "none")).restore_params(template) == (template, None)


def test_restore_params_skips_an_unreadable_checkpoint(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=3)
  for step, scale in ((1, 1.0), (2, 2.0)):
    ckpt.save(state_at(step, scale))
  for f in (tmp_path / "checkpoints" / "2").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  template = state_at(0, 0.0).params
  params, step = ckpt.restore_params(template)
  assert step == 1 and ckpt.unreadable == {2}
  chex.assert_trees_all_equal(params, state_at(1, 1.0).params)
  ckpt.close()
