"""Model tests: shapes, Eq. 1 against independent references, causality, remat, gradients."""

import functools

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcslstm_jax.model import networks
from fcslstm_jax.model import psi
from fcslstm_jax.model import slstm

TINY = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1))  # five stages, cheap enough for jacobians


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(xs, wx, bx, wh, b, hidden):
  """Classic LSTM [14] on ``xs`` ``[T, N, C]``, gate order (i, f, g, o), written from Eq. 1."""
  h = np.zeros((xs.shape[1], hidden))
  c = np.zeros_like(h)
  out = []
  for x in xs:
    z = x @ wx + bx + h @ wh + b
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    out.append(h)
  return np.stack(out)


def test_dense_psi_is_the_classic_lstm():
  hidden, cin, t = 3, 2, 4
  layer = slstm.StructuredLSTM(
    hidden, psi_x=psi.Dense, psi_h=functools.partial(psi.Dense, use_bias=False)
  )
  x = jax.random.normal(jax.random.PRNGKey(0), (2, t, 5, 6, cin))
  params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)["params"]
  # Random (not initial) bias, so that every term of Eq. 1 is exercised.
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
  got = jax.jit(layer.apply)({"params": params}, x)
  chex.assert_shape(got, (2, t, 5, 6, hidden))
  xs = np.moveaxis(np.asarray(x, np.float64), 1, 0).reshape(t, -1, cin)  # pixels as batch
  want = numpy_lstm(
    xs,
    np.asarray(params["psi_x"]["dense"]["kernel"]),
    np.asarray(params["psi_x"]["dense"]["bias"]),
    np.asarray(params["scan"]["psi_h"]["dense"]["kernel"]),
    np.asarray(params["scan"]["bias"]),
    hidden,
  )
  want = np.moveaxis(want.reshape(t, 2, 5, 6, hidden), 0, 1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_psi_is_the_conv_lstm():
  hidden, cin, t = 3, 2, 3
  layer = slstm.StructuredLSTM(
    hidden, psi_x=psi.Conv, psi_h=functools.partial(psi.Conv, use_bias=False)
  )
  x = jax.random.normal(jax.random.PRNGKey(0), (1, t, 7, 9, cin))
  params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)["params"]
  got = jax.jit(layer.apply)({"params": params}, x)

  def conv(a, k):  # independent reference: lax.conv on NCHW/OIHW
    out = jax.lax.conv_general_dilated(
      jnp.transpose(a, (0, 3, 1, 2)),
      jnp.transpose(k, (3, 2, 0, 1)),
      (1, 1),
      "SAME",
      precision=jax.lax.Precision.HIGHEST,
    )
    return np.transpose(np.asarray(out), (0, 2, 3, 1))

  kx, bx = params["psi_x"]["conv"]["kernel"], params["psi_x"]["conv"]["bias"]
  kh, b = params["scan"]["psi_h"]["conv"]["kernel"], params["scan"]["bias"]
  h = np.zeros((1, 7, 9, hidden))
  c = np.zeros_like(h)
  for step in range(t):
    z = (
      conv(x[:, step], kx) + np.asarray(bx) + conv(jnp.asarray(h, jnp.float32), kh) + np.asarray(b)
    )
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    np.testing.assert_allclose(got[:, step], h, rtol=1e-4, atol=1e-5)


def test_masked_step_keeps_state_and_outputs_zero():
  step = slstm.LSTMStep(4, psi_h=functools.partial(psi.Conv, use_bias=False))
  c = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))
  h = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 4))
  xg = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 5, 16))
  valid = jnp.array([False, True])
  params = jax.jit(step.init)(jax.random.PRNGKey(3), (c, h), (xg, valid))
  (c2, h2), out = jax.jit(step.apply)(params, (c, h), (xg, valid))
  chex.assert_trees_all_equal((c2[0], h2[0]), (c[0], h[0]))
  assert not np.allclose(c2[1], c[1]) and not np.allclose(h2[1], h[1])
  chex.assert_trees_all_equal(out[0], jnp.zeros_like(out[0]))
  chex.assert_trees_all_close(out[1], h2[1])


def test_missing_time_point_is_skipped_by_the_sequence():
  """A sequence with a missing middle session equals the same sequence without it."""
  layer = slstm.StructuredLSTM(3, psi_x=psi.Conv, psi_h=functools.partial(psi.Conv, use_bias=False))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 6, 6, 2))
  params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)
  with_gap = jax.jit(layer.apply)(params, x, jnp.array([[True, False, True]]))
  without = jax.jit(layer.apply)(params, x[:, ::2])
  chex.assert_trees_all_close(with_gap[:, ::2], without, atol=1e-6)
  chex.assert_trees_all_equal(with_gap[:, 1], jnp.zeros_like(with_gap[:, 1]))


@pytest.mark.parametrize("name", networks.MODELS)
@pytest.mark.parametrize("t", [1, 3, 5])
@pytest.mark.parametrize("hw", [(64, 64), (97, 115), (33, 40)])
def test_output_shapes(name, t, hw):
  model = networks.create_model(name, num_classes=4)
  x = jax.ShapeDtypeStruct((2, t) + hw + (2,), jnp.float32)
  params = jax.eval_shape(lambda: networks.init_params(model, 2))
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x)
  chex.assert_shape(out, (2, t) + hw + (4,))
  chex.assert_type(out, jnp.float32)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_odd_size_forward_is_finite_and_crops(bidirectional):
  model = networks.FCSLSTM(3, bidirectional=bidirectional, stages=TINY)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 97, 115, 2))
  params = networks.init_params(model, 2)
  out = jax.jit(model.apply)({"params": params}, x)
  chex.assert_shape(out, (1, 3, 97, 115, 3))
  chex.assert_tree_all_finite(out)


def _output_input_jacobian(model, t_out):
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 32, 32, 2))  # t_out=1: one step each side
  params = networks.init_params(model, 2)

  def f(x):
    return jnp.sum(model.apply({"params": params}, x)[:, t_out])

  return jax.jit(jax.grad(f))(x)  # [1, T, H, W, C]


def test_unidirectional_is_causal():
  g = _output_input_jacobian(networks.FCSLSTM(3, stages=TINY), t_out=1)
  per_step = np.abs(np.asarray(g)).sum(axis=(0, 2, 3, 4))
  assert per_step[0] > 0 and per_step[1] > 0
  assert per_step[2] == 0.0, per_step


def test_bidirectional_sees_the_future():
  g = _output_input_jacobian(networks.FCSLSTM(3, bidirectional=True, stages=TINY), t_out=1)
  per_step = np.abs(np.asarray(g)).sum(axis=(0, 2, 3, 4))
  assert np.all(per_step > 0), per_step


def test_fcn_sees_only_its_own_time_point():
  g = _output_input_jacobian(networks.FCN(3, stages=TINY), t_out=1)
  per_step = np.abs(np.asarray(g)).sum(axis=(0, 2, 3, 4))
  assert per_step[1] > 0 and per_step[0] == 0 and per_step[2] == 0, per_step


def _loss_fn(model):
  def loss(params, x):
    return jnp.mean(model.apply({"params": params}, x) ** 2)

  return loss


@pytest.mark.parametrize("remat", ["stages", "full"])
def test_remat_gives_the_same_gradients(remat):
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 32, 32, 2))  # T = 2: backprop through time
  base = networks.FCSLSTM(3, bidirectional=True, stages=TINY)
  params = networks.init_params(base, 2)
  g0 = jax.jit(jax.grad(_loss_fn(base)))(params, x)
  g1 = jax.jit(jax.grad(_loss_fn(base.clone(remat=remat))))(params, x)
  chex.assert_trees_all_close(g0, g1, rtol=1e-5, atol=1e-7)


def test_chunk_size():
  assert psi.chunk_size(0, 10, 1024) == 10  # 0: all at once
  assert psi.chunk_size(2048, 10, 1024) == 2
  assert psi.chunk_size(100, 10, 1024) == 1  # never less than one image
  assert psi.chunk_size(10**9, 10, 1024) == 10
  assert psi.chunk_size(100, 40, 1024) == 3  # at most MAX_CHUNKS = 16 calls
  one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
  assert psi.chunk_size(None, 10, 1024) == (psi.CPU_CHUNK_PIXELS // 1024 if one_cpu else 10)


@pytest.mark.parametrize("name", ["fcn", "bi-fcslstm"])
def test_chunked_conv_stages_give_the_same_function(name):
  """3 images per stage call, in pieces of 2 + 1 at full size and 3 at the smaller stages."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 32, 32, 2))
  whole = networks.create_model(name, 3, chunk_pixels=0).clone(stages=TINY)
  chunked = whole.clone(chunk_pixels=2 * 32 * 32)
  params = networks.init_params(whole, 2)
  convs = [
    str(jax.make_jaxpr(m.apply)({"params": params}, x)).count("conv_general_dilated")
    for m in (whole, chunked)
  ]
  assert convs[1] > convs[0], convs  # the chunked model really makes more, smaller calls
  for model in (whole, chunked):
    chex.assert_shape(jax.jit(model.apply)({"params": params}, x), (1, 3, 32, 32, 3))
  chex.assert_trees_all_close(
    jax.jit(whole.apply)({"params": params}, x),
    jax.jit(chunked.apply)({"params": params}, x),
    rtol=1e-5,
    atol=1e-6,
  )
  g0 = jax.jit(jax.grad(_loss_fn(whole)))(params, x)
  g1 = jax.jit(jax.grad(_loss_fn(chunked)))(params, x)
  chex.assert_trees_all_close(g0, g1, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(
  jax.default_backend() != "cpu" or jax.device_count() != 1,
  reason="the default chunks on a single CPU device only",
)
def test_remat_turns_default_chunking_off():
  """128x128 is over CPU_CHUNK_PIXELS: by default one image per call, unless remat is on."""
  x = jax.ShapeDtypeStruct((1, 3, 128, 128, 2), jnp.float32)
  base = networks.FCSLSTM(3, bidirectional=True, stages=TINY)
  params = jax.eval_shape(lambda: networks.init_params(base, 2))

  def convs(model):
    return str(jax.make_jaxpr(model.apply)({"params": params}, x)).count("conv_general_dilated")

  one_call = convs(base.clone(chunk_pixels=0))
  assert convs(base) > one_call
  assert convs(base.clone(remat="full")) == convs(base.clone(remat="stages")) == one_call
  assert convs(base.clone(remat="full", chunk_pixels=1024)) > one_call  # asked for explicitly


def test_remat_lowers_compiled_temp_memory():
  """5-step 128x128 sequence, the while-loop path (unroll=1) that accelerators use.

  ``"lean"`` keeps no Ψx output for all T steps and no max-pool index arrays, so it must
  need well under ``"full"``'s temp memory.
  """
  x = jax.ShapeDtypeStruct((1, 5, 128, 128, 2), jnp.float32)
  temps = {}
  for remat in ("none", "full", "lean"):
    model = networks.FCSLSTM(4, remat=remat, unroll=1)
    params = jax.eval_shape(lambda m=model: networks.init_params(m, 2))
    compiled = jax.jit(jax.grad(_loss_fn(model))).lower(params, x).compile()
    temps[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert temps["full"] < 0.8 * temps["none"], temps
  assert temps["lean"] < 0.5 * temps["full"], temps


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lean_remat_gives_the_same_function_and_gradients(bidirectional):
  """``remat="lean"`` (Ψx inside the rematerialized step, while loop, max_pool_lean) against
  ``"none"`` (CPU default: loop unrolled), with a missing time point."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 32, 32, 2))
  valid = jnp.array([[True, False, True]])
  base = networks.FCSLSTM(3, bidirectional=bidirectional, stages=TINY)
  lean = base.clone(remat="lean")
  params = networks.init_params(base, 2)

  def logits_and_grads(model):
    def loss(p):
      logits = model.apply({"params": p}, x, valid)
      return jnp.mean(jnp.sin(logits)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads

  (l0, g0), (l1, g1) = logits_and_grads(base), logits_and_grads(lean)
  chex.assert_trees_all_close(l0, l1, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(g0, g1, rtol=1e-5, atol=1e-7)
  jaxpr = jax.make_jaxpr(lean.apply)({"params": params}, x, valid).jaxpr
  scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
  assert len(scans) == 5 and all(e.params["length"] == 3 for e in scans)
  assert all("conv_general_dilated" in str(e.params["jaxpr"]) for e in scans)
  outside = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert len(outside) == 10, len(outside)  # only the back-end's: Ψx runs in the time loops


def test_max_pool_lean_is_max_pool():
  """Same values and the same gradient, ties included (first maximum in a window wins)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 6, 4))
  x = x.at[0].set(0.0).at[1, :4].set(1.0).at[2, 0, 0, 0].set(x[2, 1, 1, 0])
  g = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 3, 4))
  y0, vjp0 = jax.vjp(networks.max_pool, x)
  y1, vjp1 = jax.vjp(networks.max_pool_lean, x)
  chex.assert_trees_all_equal(y0, y1)
  chex.assert_trees_all_equal(vjp0(g), vjp1(g))


def test_finite_difference_gradients_float64():
  """Reverse-mode gradients against central differences, everything in float64.

  The point must be one where the model is differentiable. At initialization it is not:
  the biases start at 0, so wherever a Ψx ReLU is dead the first LSTM step sees only the
  gate bias, its ``h`` is the same number at every such pixel, and a 2x2 max-pool over four
  of them is an exact tie (a kink; autodiff takes one side, central differences the mean;
  measured: 2e-5 apart on one gate bias, and equal to 1e-10 once either the ReLU or the
  max-pool is made smooth). Random biases (as in the Eq. 1 tests) break the ties.
  The central-difference step must not cross a kink either: ``check_grads`` steps along a
  standard-normal tangent of all parameters (norm ~ sqrt(#parameters)), and at its default
  eps (1e-4) that crossed a kink at the point used here (the two projections 2.7e-5 apart;
  they agree at eps 1e-5 and 1e-6), so eps is 1e-6, still far above float64 rounding.
  """
  with jax.enable_x64(True):
    model = networks.FCSLSTM(2, bidirectional=True, stages=((2, 1),) * 5, dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 32, 32, 1), jnp.float64)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree_util.tree_unflatten(
      tree,
      [  # biases: [C], or [2, C] per direction
        p.astype(jnp.float64)
        + (0.1 * jax.random.normal(k, p.shape, jnp.float64) if path[-1].key == "bias" else 0.0)
        for (path, p), k in zip(leaves, keys)
      ],
    )
    loss = jax.jit(lambda p: jnp.mean(jnp.sin(model.apply({"params": p}, x))))
    # A small step: with 1e-4 (the default) along a random direction of every parameter at
    # once, a ReLU or max-pool close to its kink can switch within the step.
    jax.test_util.check_grads(
      loss, (params,), order=1, modes=["rev"], atol=1e-5, rtol=1e-5, eps=1e-6
    )


@pytest.mark.parametrize("name", networks.MODELS)
def test_every_parameter_gets_a_gradient(name):
  model = networks.create_model(name, 3)
  model = model.clone(stages=TINY)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 32, 32, 2))
  params = networks.init_params(model, 2)
  grads = jax.jit(jax.grad(lambda p: jnp.mean(jnp.sin(model.apply({"params": p}, x)))))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.any(np.asarray(g) != 0), jax.tree_util.keystr(path)


def test_fcn_parameter_count_is_concise():
  counts = networks.summary(num_classes=4, in_channels=2)
  assert 0.9e6 <= counts["fcn"] <= 1.6e6, counts
  assert counts["fcn"] < counts["fcslstm"] < counts["bi-fcslstm"]


@pytest.mark.parametrize("pattern", ["constant", "period 2"])
def test_upsampling_treats_the_border_like_the_interior(pattern):
  """A 4x4 stride-2 transposed convolution sums two neighbouring inputs per output. With
  'SAME' zero padding the first and last outputs miss one (a trained model then drew tissue
  along an image edge of empty slices); reflect padding gives them the interior's input, so
  a constant or period-2 input yields an output periodic up to the very border."""
  deconv = flax.linen.ConvTranspose(3, (4, 4), strides=(2, 2), padding="SAME")
  y = (
    jnp.ones((1, 6, 6, 2))
    if pattern == "constant"
    else jnp.tile(jnp.array([[1.0, -2.0], [0.5, 3.0]])[None, :, :, None], (1, 3, 3, 2))
  )
  params = jax.jit(deconv.init)(jax.random.PRNGKey(0), y)
  reflect = networks.upsample_reflect(functools.partial(deconv.apply, params), y)
  zeros = jax.jit(deconv.apply)(params, y)
  chex.assert_shape(reflect, (1, 12, 12, 3))
  period = 2 if pattern == "constant" else 4
  for out, periodic in ((reflect, True), (zeros, False)):
    same = jnp.allclose(out[:, :period], out[:, period : 2 * period], atol=1e-6) and jnp.allclose(
      out[:, :, -period:], out[:, :, -2 * period : -period], atol=1e-6
    )
    assert bool(same) == periodic
  # Away from the border the two agree: only the border outputs change.
  np.testing.assert_allclose(reflect[:, 1:-1, 1:-1], zeros[:, 1:-1, 1:-1], atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_upsample_by_phases_is_the_reflect_padded_transposed_convolution(spatial_dims):
  """``Upsample`` (one dense convolution per output phase) draws the parameters
  ``nn.ConvTranspose`` draws and computes ``upsample_reflect`` of it, values and gradients,
  with an input that is not symmetric along any axis (an axis or phase mixed up fails)."""
  k = spatial_dims
  y = jax.random.normal(jax.random.PRNGKey(1), (2,) + (3, 4, 5)[-k:] + (3,))
  ours = networks.Upsample(4)
  deconv = flax.linen.ConvTranspose(
    4, (4,) * k, strides=(2,) * k, padding="SAME", kernel_init=networks.psi.kaiming
  )
  params = jax.jit(ours.init)(jax.random.PRNGKey(0), y)
  chex.assert_trees_all_equal(params, jax.jit(deconv.init)(jax.random.PRNGKey(0), y))
  params = jax.tree_util.tree_map(  # a non-zero bias too
    lambda p: p + jax.random.normal(jax.random.PRNGKey(2), p.shape), params
  )

  def reference(p, y):
    return networks.upsample_reflect(functools.partial(deconv.apply, p), y)

  np.testing.assert_allclose(
    jax.jit(ours.apply)(params, y), reference(params, y), rtol=1e-5, atol=1e-5
  )

  def loss(f):
    return lambda p, y: jnp.sum(jnp.sin(f(p, y)))

  chex.assert_trees_all_close(
    jax.grad(loss(ours.apply), argnums=(0, 1))(params, y),
    jax.grad(loss(reference), argnums=(0, 1))(params, y),
    rtol=1e-4,
    atol=1e-5,
  )


def test_backend_defaults_resolve_as_the_modules_would():
  from fcslstm_jax.config import Config

  bi = Config(model="bi-fcslstm")
  cpu = networks.with_backend_defaults(bi, 5, backend="cpu", devices=1)
  gpu = networks.with_backend_defaults(bi, 5, backend="gpu", devices=1)
  assert (cpu.unroll, cpu.chunk_pixels, cpu.batching) == (5, psi.CPU_CHUNK_PIXELS, "loop")
  assert (gpu.unroll, gpu.chunk_pixels, gpu.batching) == (1, 0, "vmap")
  lean = networks.with_backend_defaults(bi.replace(remat="lean"), 5, backend="cpu", devices=1)
  assert (lean.unroll, lean.chunk_pixels) == (1, 0)
  two_cpus = networks.with_backend_defaults(bi, 5, backend="cpu", devices=2)
  assert two_cpus.chunk_pixels == 0
  fcn = networks.with_backend_defaults(Config(model="fcn"), 5, backend="cpu", devices=1)
  assert (fcn.unroll, fcn.chunk_pixels, fcn.batching) == (None, 0, None)
  given = bi.replace(unroll=2, chunk_pixels=4096, batching="vmap")
  assert networks.with_backend_defaults(given, 5, backend="cpu", devices=1) == given
