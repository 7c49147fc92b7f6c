"""The merged bidirectional layer (both directions in one scan) against the two-scan layer.

The reference is the layer as it was before the merge: two independent
:class:`fcslstm_jax.model.slstm.StructuredLSTM` scans, the backward one on the time-reversed
sequence
(a BRNN, paper Sec. 2.3). Parameters are mapped one to one with
:func:`fcslstm_jax.model.slstm.merge_directions`.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from fcslstm_jax.model import networks
from fcslstm_jax.model import psi
from fcslstm_jax.model import slstm

TINY = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1))
PSI_X = functools.partial(psi.ConvStage, num_convs=2, width=3)
PSI_H = functools.partial(psi.Conv, use_bias=False)


class TwoScanBidirectionalLSTM(nn.Module):
  """The paper's bidirectional layer: two scans, parameters per direction."""

  hidden: int
  psi_x: slstm.PsiFactory
  psi_h: slstm.PsiFactory
  unroll: int | None = None
  remat_step: bool = False
  chunk_pixels: int | None = None
  dtype: object = jnp.float32
  psi_x_in_scan: bool = False  # the model passes it; the old layer had no such mode
  batching: object = None  # likewise

  @nn.compact
  def __call__(self, x, valid=None):
    assert not self.psi_x_in_scan
    if valid is None:
      valid = jnp.ones(x.shape[:2], bool)
    kw = dict(
      hidden=self.hidden,
      psi_x=self.psi_x,
      psi_h=self.psi_h,
      unroll=self.unroll,
      remat_step=self.remat_step,
      chunk_pixels=self.chunk_pixels,
      dtype=self.dtype,
    )
    fwd = slstm.StructuredLSTM(**kw, name="forward")(x, valid)
    bwd = slstm.StructuredLSTM(**kw, name="backward")(x[:, ::-1], valid[:, ::-1])[:, ::-1]
    return jnp.concatenate([fwd, bwd], axis=-1)


def _perturbed(params, scale=0.1):
  """Random offsets on every parameter, so that biases and both directions differ."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  return jax.tree_util.tree_unflatten(
    tree, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  )


def _logits_and_grads(apply, params, *args):
  """One compiled program: ``apply``'s output and the gradient of a loss of it."""

  def loss(p):
    out = apply({"params": p}, *args)
    return jnp.sum(jnp.sin(out)), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return out, grads


X = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8, 8, 2))
# Sequence 0 misses its middle time point, sequence 1 its first (the backward direction's last).
VALID = jnp.array([[True, False, True], [False, True, True]])


@pytest.mark.parametrize(
  "options",
  [
    {},
    {"remat_step": True},
    {"unroll": 1},
    {"chunk_pixels": 2 * 64},
    {"psi_x_in_scan": True, "remat_step": True},
    {"batching": "vmap"},
    {"batching": "vmap", "psi_x_in_scan": True, "remat_step": True},
  ],
  ids=str,
)
def test_merged_layer_equals_two_scan_layer(options):
  old_options = {k: v for k, v in options.items() if k not in ("psi_x_in_scan", "batching")}
  old = TwoScanBidirectionalLSTM(3, PSI_X, PSI_H, **old_options)
  new = slstm.BidirectionalLSTM(3, PSI_X, PSI_H, **options)
  init_old = jax.jit(old.init)(jax.random.PRNGKey(1), X)["params"]
  chex.assert_trees_all_equal(
    jax.jit(new.init)(jax.random.PRNGKey(1), X)["params"],  # same start
    slstm.merge_directions(init_old),
  )
  p_old = _perturbed(init_old)
  p_new = slstm.merge_directions(p_old)
  want, g_old = _logits_and_grads(old.apply, p_old, X, VALID)
  got, g_new = _logits_and_grads(new.apply, p_new, X, VALID)
  chex.assert_shape(got, (2, 3, 8, 8, 6))
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(g_new, slstm.merge_directions(g_old), rtol=1e-5, atol=1e-5)


def test_merged_layer_skips_missing_time_points_in_both_directions():
  """A sequence with a gap equals the sequence without it, both directions' outputs."""
  layer = slstm.BidirectionalLSTM(3, PSI_X, PSI_H)
  params = {"params": _perturbed(jax.jit(layer.init)(jax.random.PRNGKey(1), X)["params"])}
  apply = jax.jit(layer.apply)
  for valid, kept in (
    ([True, False, True], [0, 2]),
    ([False, True, True], [1, 2]),
    ([True, True, False], [0, 1]),
  ):
    with_gap = apply(params, X, jnp.array([valid] * 2))
    without = apply(params, X[:, kept])
    chex.assert_trees_all_close(with_gap[:, kept], without, atol=1e-6)
    missing = [t for t in range(3) if t not in kept]
    chex.assert_trees_all_equal(with_gap[:, missing], jnp.zeros_like(with_gap[:, missing]))


def _scans(apply, params, *args):
  jaxpr = jax.make_jaxpr(apply)(params, *args).jaxpr
  return [e for e in jaxpr.eqns if e.primitive.name == "scan"]


def _convs(jaxpr):
  return [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]


@pytest.mark.parametrize("batching,convs", [("vmap", [(2, 1)]), ("loop", [(1, 2)])])
def test_one_scan_for_both_directions(batching, convs):
  """Half the sequential steps: one scan whose step runs both directions' Ψh, as one grouped
  convolution (``vmap``) or as one plain convolution per direction (``loop``, the CPU default:
  a scan of length 2 over the directions, unrolled). ``convs``: (feature groups, calls)."""
  new = slstm.BidirectionalLSTM(3, PSI_X, PSI_H, unroll=1, batching=batching)
  old = TwoScanBidirectionalLSTM(3, PSI_X, PSI_H, unroll=1)
  assert len(_scans(old.apply, jax.jit(old.init)(jax.random.PRNGKey(1), X), X)) == 2
  time_scans = [
    e
    for e in _scans(new.apply, jax.jit(new.init)(jax.random.PRNGKey(1), X), X)
    if e.params["length"] == X.shape[1]
  ]  # not ``loop``'s scans of 2 directions
  (scan,) = time_scans
  body = scan.params["jaxpr"].jaxpr
  found = [(c.params["feature_group_count"], 1) for c in _convs(body)]
  for inner in (e for e in body.eqns if e.primitive.name == "scan"):
    found += [
      (c.params["feature_group_count"], inner.params["length"])
      for c in _convs(inner.params["jaxpr"].jaxpr)
    ]
  assert found == convs


def merged(params):
  """A two-scan Bi-FCSLSTM's parameters (``slstm{k}/forward``, ``slstm{k}/backward``) in
  the merged layer's layout."""
  return {
    k: slstm.merge_directions(v) if set(v) == set(slstm.DIRECTIONS) else v
    for k, v in params.items()
  }


def test_merged_model_equals_two_scan_model(monkeypatch):
  """Bi-FCSLSTM initialization, logits and gradients, parameters mapped by
  merge_directions."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 32, 32, 2))
  valid = jnp.array([[True, False, True]])
  model = networks.FCSLSTM(3, bidirectional=True, stages=TINY)
  with monkeypatch.context() as m:
    m.setattr(slstm, "BidirectionalLSTM", TwoScanBidirectionalLSTM)
    init_old = networks.init_params(model, 2)
    p_old = _perturbed(init_old, 0.05)
    want, g_old = _logits_and_grads(model.apply, p_old, x, valid)
  # Same seed, same initial parameters (BidirectionalLSTM._two_scan_init).
  chex.assert_trees_all_equal(networks.init_params(model, 2), merged(init_old))
  p_new = merged(p_old)
  got, g_new = _logits_and_grads(model.apply, p_new, x, valid)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(g_new, merged(g_old), rtol=1e-4, atol=1e-5)


def test_merge_directions_needs_both():
  with pytest.raises(ValueError, match="forward"):
    slstm.merge_directions({"forward": {}})
