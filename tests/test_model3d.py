"""3D + time: the same modules on volumes ``[B, T, D, H, W, C]`` (shapes, Eq. 1 against an
independent 3D ConvLSTM, causality, missing time points, remat)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcslstm_jax.model import networks
from fcslstm_jax.model import psi
from fcslstm_jax.model import slstm

TINY = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1))
VOLUME = (1, 3, 8, 10, 12, 2)  # [B, T, D, H, W, C]: padded to 32^3 inside the model


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("name", networks.MODELS)
@pytest.mark.parametrize("shape", [(2, 3, 20, 33, 40), (1, 1, 32, 32, 32)])
def test_output_shapes(name, shape):
  model = networks.create_model(name, num_classes=4, spatial_dims=3).clone(
    stages=networks.VGG16_EIGHTH
  )
  x = jax.ShapeDtypeStruct(shape + (2,), jnp.float32)
  params = jax.eval_shape(lambda: networks.init_params(model, 2))
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x)
  chex.assert_shape(out, shape + (4,))
  chex.assert_type(out, jnp.float32)
  kernel = params["backend"]["deconv6"]["kernel"]
  assert kernel.shape[:3] == (4, 4, 4), kernel.shape  # 3D transposed convolutions


def test_a_2d_model_refuses_a_volume():
  model = networks.FCSLSTM(3, stages=TINY)  # spatial_dims=2
  with pytest.raises(ValueError, match="spatial_dims=2"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(VOLUME)))


def test_parameter_counts_are_the_documented_ones():
  """docs/model.md, "3D + time": the default 3D widths (VGG-16 / 8, 3x3x3) and the 2D ones."""
  assert networks.summary(spatial_dims=3) == {
    "fcn": 711_688,
    "fcslstm": 2_515_280,
    "bi-fcslstm": 5_392_760,
  }
  assert networks.summary() == {"fcn": 931_368, "fcslstm": 3_337_016, "bi-fcslstm": 7_161_416}


def test_conv_psi_is_the_3d_conv_lstm():
  """One 3D ConvLSTM layer against Eq. 1 written with lax.conv on NCDHW / OIDHW."""
  hidden, cin, t = 2, 2, 3
  conv3 = functools.partial(psi.Conv, spatial_dims=3)
  layer = slstm.StructuredLSTM(hidden, psi_x=conv3, psi_h=functools.partial(conv3, use_bias=False))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, t, 4, 5, 6, cin))
  params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)["params"]
  got = jax.jit(layer.apply)({"params": params}, x)
  chex.assert_shape(got, (1, t, 4, 5, 6, hidden))

  def conv(a, k):
    out = jax.lax.conv_general_dilated(
      jnp.transpose(jnp.asarray(a, jnp.float32), (0, 4, 1, 2, 3)),
      jnp.transpose(k, (4, 3, 0, 1, 2)),
      (1, 1, 1),
      "SAME",
      precision=jax.lax.Precision.HIGHEST,
    )
    return np.transpose(np.asarray(out), (0, 2, 3, 4, 1))

  kx, bx = params["psi_x"]["conv"]["kernel"], params["psi_x"]["conv"]["bias"]
  kh, b = params["scan"]["psi_h"]["conv"]["kernel"], params["scan"]["bias"]
  assert kx.shape == (3, 3, 3, cin, 4 * hidden)
  h = np.zeros((1, 4, 5, 6, hidden))
  c = np.zeros_like(h)
  for step in range(t):
    z = conv(x[:, step], kx) + np.asarray(bx) + conv(h, kh) + np.asarray(b)
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    np.testing.assert_allclose(got[:, step], h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_missing_time_point_is_skipped_in_3d(bidirectional):
  """A volume sequence with a missing middle session equals the sequence without it."""
  conv3 = functools.partial(psi.Conv, spatial_dims=3)
  cls = slstm.BidirectionalLSTM if bidirectional else slstm.StructuredLSTM
  layer = cls(3, psi_x=conv3, psi_h=functools.partial(conv3, use_bias=False))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 4, 5, 4, 2))
  params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)
  with_gap = jax.jit(layer.apply)(params, x, jnp.array([[True, False, True]]))
  without = jax.jit(layer.apply)(params, x[:, ::2])
  chex.assert_trees_all_close(with_gap[:, ::2], without, atol=1e-6)
  chex.assert_trees_all_equal(with_gap[:, 1], jnp.zeros_like(with_gap[:, 1]))


def _per_step_sensitivity(model, steps, t_out):
  x = jax.random.normal(jax.random.PRNGKey(0), (1, steps) + VOLUME[2:])
  params = networks.init_params(model, 2, size=8)

  def f(x):
    return jnp.sum(model.apply({"params": params}, x)[:, t_out])

  g = jax.jit(jax.grad(f))(x)
  return np.abs(np.asarray(g)).sum(axis=(0, 2, 3, 4, 5))


def test_unidirectional_is_causal_in_3d():
  per_step = _per_step_sensitivity(networks.FCSLSTM(3, stages=TINY, spatial_dims=3), 3, t_out=1)
  assert per_step[0] > 0 and per_step[1] > 0
  assert per_step[2] == 0.0, per_step


def test_bidirectional_sees_the_future_in_3d():
  # T = 2 keeps it cheap (XLA:CPU's grouped 3D convolutions are slow, docs/model.md, "3D + time").
  per_step = _per_step_sensitivity(
    networks.FCSLSTM(3, bidirectional=True, stages=TINY, spatial_dims=3), 2, t_out=0
  )
  assert np.all(per_step > 0), per_step


def test_max_pool_lean_is_max_pool_in_3d():
  """Values and gradient, ties included (integers make many ties)."""
  x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 4, 6, 4, 3)), jnp.float32)
  g = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 3, 2, 3))
  y0, vjp0 = jax.vjp(networks.max_pool, x)
  y1, vjp1 = jax.vjp(networks.max_pool_lean, x)
  chex.assert_trees_all_equal(y0, y1)
  chex.assert_trees_all_equal(vjp0(g), vjp1(g))


def test_remat_gives_the_same_gradients_in_3d():
  """full (the rematerialized time step) and lean (Ψx inside it, 3D max_pool_lean, while loop)
  against none, T = 2 (backprop through time). FCSLSTM: the same policies as Bi-FCSLSTM
  (tests/test_model.py checks every policy on both in 2D) without XLA:CPU's slow grouped 3D
  convolutions; "stages" is nn.remat of the same stage module, checked in 2D."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 8, 8, 8, 2))
  base = networks.FCSLSTM(3, stages=TINY, spatial_dims=3)
  params = networks.init_params(base, 2, size=8)

  def grads(model):
    def loss(p):
      return jnp.mean(model.apply({"params": p}, x) ** 2)

    return jax.jit(jax.grad(loss))(params)

  g0 = grads(base)
  for remat in ("full", "lean"):
    chex.assert_trees_all_close(g0, grads(base.clone(remat=remat)), rtol=1e-5, atol=1e-7)


def test_validity_per_slice_masks_the_slices_outside_a_sessions_view():
  """``valid [B, T, D]`` (a session cropped in z): the layer's output is zero exactly at the
  (time point, slice) pairs outside the view; the model pads it like the slice beside it
  and pools it with the volume (a slice stays valid where either half is)."""
  conv3 = functools.partial(psi.Conv, spatial_dims=3)
  layer = slstm.StructuredLSTM(3, psi_x=conv3, psi_h=functools.partial(conv3, use_bias=False))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 4, 5, 4, 2))
  params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)
  valid = np.ones((1, 3, 4), bool)
  valid[0, 1, 2:] = False  # time point 2 sees slices 0, 1 only
  h = np.asarray(jax.jit(layer.apply)(params, x, jnp.asarray(valid)))
  assert np.all(h[0, 1, 2:] == 0) and np.all(np.abs(h[0, 1, :2]).sum(axis=(1, 2, 3)) > 0)
  padded = networks.slice_validity(jnp.asarray(valid[:, :, :3]), 4, 3)
  np.testing.assert_array_equal(np.asarray(padded), valid)  # the last slice repeated
  np.testing.assert_array_equal(
    np.asarray(networks.pool_validity(padded))[0], [[True, True], [True, False], [True, True]]
  )
  assert networks.slice_validity(jnp.ones((1, 3), bool), 32, 3).shape == (1, 3)
