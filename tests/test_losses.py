import jax
import jax.numpy as jnp
import numpy as np
import optax

from fcslstm_jax.train import losses


def test_weighted_cross_entropy_matches_hand_computation():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 2, 1])
  weights = np.array([1.0, 2.0, 0.5], np.float32)
  mask = jnp.ones(3)
  logp = np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
  ce = -logp[np.arange(3), np.array(labels)]
  w = weights[np.array(labels)]
  want = (w * ce).sum() / w.sum()
  got = losses.weighted_cross_entropy(logits, labels, mask, weights)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_unweighted_equals_optax_integer_label_mean():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5, 4))
  labels = jax.random.randint(jax.random.PRNGKey(1), (2, 3, 4, 5), 0, 4)
  got = losses.weighted_cross_entropy(logits, labels, jnp.ones(labels.shape), np.ones(4))
  want = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_masked_pixels_contribute_nothing():
  logits = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 6, 6, 3))
  labels = jax.random.randint(jax.random.PRNGKey(1), (1, 2, 6, 6), 0, 3)
  mask = jnp.zeros(labels.shape).at[:, 0].set(1.0)  # time point 1 unlabeled
  weights = np.array([0.5, 1.0, 2.0], np.float32)
  grad = jax.grad(losses.weighted_cross_entropy)(logits, labels, mask, weights)
  assert np.all(np.asarray(grad[:, 1]) == 0.0)
  assert np.any(np.asarray(grad[:, 0]) != 0.0)
  # Changing the labels under the mask changes nothing.
  other = labels.at[:, 1].set((labels[:, 1] + 1) % 3)
  np.testing.assert_array_equal(
    losses.weighted_cross_entropy(logits, labels, mask, weights),
    losses.weighted_cross_entropy(logits, other, mask, weights),
  )


def test_empty_mask_gives_zero_loss_and_gradient():
  logits = jnp.ones((1, 1, 2, 2, 3))
  labels = jnp.zeros((1, 1, 2, 2), jnp.int32)
  mask = jnp.zeros((1, 1, 2, 2))
  assert losses.weighted_cross_entropy(logits, labels, mask, np.ones(3)) == 0.0
  g = jax.grad(losses.weighted_cross_entropy)(logits, labels, mask, np.ones(3))
  assert np.all(np.asarray(g) == 0.0)


def test_class_weights_are_inverse_frequency():
  labels = np.array([0] * 60 + [1] * 30 + [2] * 10 + [3] * 5)
  mask = np.ones_like(labels, np.float32)
  mask[-5:] = 0  # class 3 only under the mask: absent, weight 0
  w = losses.class_weights(labels, mask, 4)
  assert w[3] == 0.0
  np.testing.assert_allclose(w[0] * 60, w[1] * 30, rtol=1e-6)
  np.testing.assert_allclose(w[1] * 30, w[2] * 10, rtol=1e-6)
  np.testing.assert_allclose((w[:3] * [60, 30, 10]).sum() / 100, 1.0, rtol=1e-6)


def test_class_weightings_follow_the_counts():
  counts = np.array([900, 100, 0, 25])
  inverse = losses.class_weights_from_counts(counts, "inverse")
  sqrt = losses.class_weights_from_counts(counts, "sqrt")
  none = losses.class_weights_from_counts(counts, "none")
  np.testing.assert_allclose(inverse[1] / inverse[0], 9.0, rtol=1e-5)
  np.testing.assert_allclose(sqrt[1] / sqrt[0], 3.0, rtol=1e-5)
  np.testing.assert_allclose(sqrt[3] / sqrt[1], 2.0, rtol=1e-5)
  np.testing.assert_allclose(none, [1.0, 1.0, 0.0, 1.0], rtol=1e-6)
  for w in (inverse, sqrt, none):  # count-weighted mean 1, absent class 0
    np.testing.assert_allclose((w * counts).sum() / counts.sum(), 1.0, rtol=1e-5)
    assert w[2] == 0


def test_soft_dice_loss_is_low_for_the_truth_and_masked_voxels_do_not_count():
  labels = jax.random.randint(jax.random.PRNGKey(0), (2, 3, 8, 8), 0, 4)
  right = 20.0 * jax.nn.one_hot(labels, 4)
  wrong = 20.0 * jax.nn.one_hot((labels + 1) % 4, 4)
  mask = jnp.ones(labels.shape)
  assert float(losses.soft_dice_loss(right, labels, mask)) < 1e-3
  assert float(losses.soft_dice_loss(wrong, labels, mask)) > 0.99
  half = mask.at[:, :, :4].set(0.0)
  mixed = jnp.concatenate([wrong[:, :, :4], right[:, :, 4:]], axis=2)
  assert float(losses.soft_dice_loss(mixed, labels, half)) < 1e-3  # wrong only where masked
  grad = jax.grad(lambda logits: losses.soft_dice_loss(logits, labels, half))(mixed * 0.01)
  assert np.isfinite(np.asarray(grad)).all()
  assert not np.asarray(grad[:, :, :4]).any()  # unlabeled voxels get no gradient
