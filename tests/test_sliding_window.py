"""Sliding-window inference (3D + time): window placement, Gaussian weights, stitching."""

import chex
import jax
import numpy as np
import pytest

from fcslstm_jax.infer import predict
from fcslstm_jax.infer import sliding_window
from fcslstm_jax.infer import tta
from fcslstm_jax.model import networks

TINY = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1))


@pytest.mark.parametrize(
  "size,window,overlap,want",
  [
    (10, 10, 0.5, [0]),
    (7, 10, 0.5, [0]),
    (20, 10, 0.5, [0, 5, 10]),
    (20, 10, 0.0, [0, 10]),
    (21, 10, 0.0, [0, 6, 11]),
    (64, 32, 0.5, [0, 16, 32]),
  ],
)
def test_window_starts_cover_the_axis(size, window, overlap, want):
  starts = sliding_window.window_starts(size, window, overlap)
  assert starts == want
  covered = np.zeros(max(size, window), bool)
  for s in starts:
    covered[s : s + window] = True
  assert covered.all()


def test_gaussian_importance():
  w = sliding_window.gaussian_importance((5, 8, 9))
  chex.assert_shape(w, (5, 8, 9))
  assert w.max() == pytest.approx(1.0, abs=0.05) and w.min() > 0
  assert np.unravel_index(np.argmax(w), w.shape) == (2, 3, 4)  # centred (8, 9: either middle)
  np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])


def test_stitching_a_constant_gives_the_constant():
  """Weights are normalised: overlapping windows that all predict p give p everywhere."""
  p = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
  calls = []

  def constant(params, x, valid):
    calls.append(x.shape)
    return np.broadcast_to(p, x.shape[:-1] + (4,))

  images = np.zeros((3, 10, 13, 17, 2), np.float32)
  out = sliding_window.sliding_window_proba(
    constant, None, images, np.ones(3, bool), (4, 6, 8), 0.5, 4
  )
  chex.assert_shape(out, (3, 10, 13, 17, 4))
  np.testing.assert_allclose(out, np.broadcast_to(p, out.shape), rtol=1e-6)
  assert all(s == (4, 3, 4, 6, 8, 2) for s in calls)  # always full batches of windows


def test_stitching_places_every_window_where_it_was_cut():
  """A voxelwise predictor gives the same voxelwise result after stitching."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 9, 11, 7, 3)).astype(np.float32)

  def softmax(a):
    return np.exp(a) / np.exp(a).sum(-1, keepdims=True)

  def voxelwise(params, x, valid):
    return softmax(np.asarray(x))

  out = sliding_window.sliding_window_proba(
    voxelwise, None, images, np.ones(2, bool), (4, 5, 8), 0.5, 3
  )
  np.testing.assert_allclose(out, softmax(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [(8, 8, 16), (16, 16, 16)])
def test_one_window_covering_the_volume_is_one_forward_pass(window):
  """Windows equal to (or larger than: zero-padded, as the model pads) the volume give the
  model's own probabilities of the whole volume."""
  model = networks.FCSLSTM(4, stages=TINY, spatial_dims=3)
  params = networks.init_params(model, 2, size=8)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16, 2))
  valid = np.array([True, True])
  fn = predict.make_predict_fn(model, proba=True)
  whole = np.asarray(fn(params, images[None], valid[None]))[0]
  out = sliding_window.sliding_window_proba(fn, params, np.asarray(images), valid, window)
  np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-6)


def test_volume_predict_fn_gives_class_maps():
  p = np.array([0.1, 0.6, 0.3], np.float32)

  def constant(params, x, valid):
    return np.broadcast_to(p, x.shape[:-1] + (3,))

  fn = sliding_window.volume_predict_fn(constant, (4, 4, 4), 0.5, 2)
  out = fn(None, np.zeros((2, 3, 6, 5, 4, 1), np.float32), np.ones((2, 3), bool))
  chex.assert_shape(out, (2, 3, 6, 5, 4))
  assert (out == 1).all() and out.dtype == np.int32


def test_test_time_flips_of_a_volume_are_its_in_plane_axes():
  assert tta.flip_variants(("x", "y")) == ((), (2,), (3,), (2, 3))  # [B, T, H, W, C]
  assert tta.flip_variants(("x", "y"), 3) == ((), (3,), (4,), (3, 4))  # [B, T, D, H, W, C]
