"""train/augment: spatial and intensity augmentation inside the step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fcslstm_jax.config import get_config
from fcslstm_jax.train import augment


def batch_of(b=2, t=3, h=9, w=9, c=2, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, size=(b, t, h, w)).astype(np.int32)
  return {
    "images": jnp.asarray(rng.uniform(0, 1, size=(b, t, h, w, c)), jnp.float32),
    "labels": jnp.asarray(labels),
    "label_mask": jnp.asarray(labels > 0, jnp.float32),
    "valid": jnp.ones((b, t), bool),
  }


def test_a_quarter_turn_is_rot90_for_images_labels_and_mask():
  batch = batch_of()
  out = augment.warp_in_plane(batch, jnp.full(2, np.pi / 2), jnp.ones(2))
  for key, axes in (("images", (2, 3)), ("labels", (2, 3)), ("label_mask", (2, 3))):
    want = np.rot90(np.asarray(batch[key]), k=1, axes=axes)
    got = np.asarray(out[key])
    assert np.array_equal(got, want) or np.allclose(got, want, atol=1e-5), key


def test_identity_warp_changes_nothing_and_labels_stay_classes():
  batch = batch_of()
  same = augment.warp_in_plane(batch, jnp.zeros(2), jnp.ones(2))
  for key in ("images", "labels", "label_mask"):
    np.testing.assert_allclose(same[key], batch[key], atol=1e-6)
  moved = augment.warp_in_plane(batch, jnp.array([0.3, -0.2]), jnp.array([1.1, 0.9]))
  assert set(np.unique(moved["labels"]).tolist()) <= {0, 1, 2, 3}
  assert moved["labels"].dtype == batch["labels"].dtype
  # the mask moves with the labels: labeled voxels are where the moved labels are > 0 (or
  # moved in from outside: mask 0, labels 0)
  np.testing.assert_array_equal(
    np.asarray(moved["label_mask"]) > 0, np.asarray(moved["labels"]) > 0
  )
  # every time point of a sequence moves alike
  twins = dict(batch, images=jnp.repeat(batch["images"][:, :1], 3, axis=1))
  out = augment.warp_in_plane(twins, jnp.array([0.3, 0.5]), jnp.array([1.0, 1.2]))
  np.testing.assert_allclose(out["images"][:, 0], out["images"][:, 2], atol=1e-6)


def test_volumes_rotate_in_plane_only():
  b = batch_of(h=6, w=6)
  vol = {k: (jnp.repeat(v[:, :, None], 4, axis=2) if k != "valid" else v) for k, v in b.items()}
  out = augment.warp_in_plane(vol, jnp.full(2, np.pi / 2), jnp.ones(2))
  np.testing.assert_array_equal(out["labels"], np.rot90(np.asarray(vol["labels"]), 1, (3, 4)))


def test_gamma_keeps_the_unit_range_and_the_default_config_changes_nothing_new():
  batch = batch_of()
  out = augment.random_gamma(jax.random.PRNGKey(0), batch, 0.5)
  assert float(out["images"].min()) >= 0 and float(out["images"].max()) <= 1
  assert not np.allclose(out["images"], batch["images"])
  config = get_config("quick")
  rng = jax.random.PRNGKey(3)
  plain = augment.augment(rng, batch, config)
  np.testing.assert_array_equal(
    plain["images"],
    augment.flip_and_scale(rng, batch, config.flip_prob, config.intensity_scale)["images"],
  )
  richer = augment.augment(rng, batch, dataclasses.replace(config, rotate_deg=15.0, gamma=0.3))
  assert not np.allclose(richer["images"], plain["images"])


def test_toward_inversion_flattens_then_inverts_contrast_inside_the_head_only():
  """a = 0.5 makes every tissue the same grey (the isointense age), a = 1 inverts; the
  background (0) stays 0, and each time point gets its own draw."""
  images = np.zeros((1, 4, 6, 6, 2), np.float32)
  images[..., 1:5, 1:5, :] = np.linspace(0.2, 0.9, 16).reshape(4, 4, 1)  # a head of 4 x 4
  batch = {"images": jnp.asarray(images)}
  head = images > 0
  tiny = augment.toward_inversion(jax.random.PRNGKey(0), batch, 1e-9)["images"]
  np.testing.assert_allclose(tiny, images, atol=1e-6)  # strength ~0: unchanged
  out = np.asarray(augment.toward_inversion(jax.random.PRNGKey(1), batch, 1.0)["images"])
  assert (out[~head] == 0).all() and (out[head] > 0).all() and out.max() <= 1.0
  spreads = [np.ptp(out[0, t][head[0, t]]) for t in range(4)]
  assert len({round(float(x), 4) for x in spreads}) == 4  # one draw per time point
  for t in range(4):  # one a per time point and channel, the same map for every head voxel
    for c in range(2):
      x, y = images[0, t, 1:5, 1:5, c], out[0, t, 1:5, 1:5, c]
      a = (y[0, 0] - x[0, 0]) / (1 - 2 * x[0, 0])
      np.testing.assert_allclose(y, (1 - a) * x + a * (1 - x), atol=1e-5)


def test_augment_is_jit_compatible():
  config = get_config("quick").replace(rotate_deg=15.0, scale_range=0.15, gamma=0.3, invert=0.6)
  out = jax.jit(lambda r, b: augment.augment(r, b, config))(jax.random.PRNGKey(0), batch_of())
  assert out["images"].shape == (2, 3, 9, 9, 2)


def test_one_time_point_toward_inversion_moves_a_labeled_time_point_only():
  """prob 1: in every sequence exactly one time point changes, one that has a labeled voxel
  (the loss must be lowered through the other sessions), inside the head only; prob 0:
  nothing changes."""
  images = np.zeros((6, 4, 6, 6, 2), np.float32)
  images[..., 1:5, 1:5, :] = np.linspace(0.2, 0.9, 16).reshape(4, 4, 1)
  mask = np.zeros((6, 4, 6, 6), bool)
  for b in range(6):
    mask[b, (b % 3) + 1, 2, 2] = True  # one labeled time point per sequence, never t = 0
  batch = {"images": jnp.asarray(images), "label_mask": jnp.asarray(mask)}
  out = np.asarray(
    augment.one_time_point_toward_inversion(jax.random.PRNGKey(0), batch, 1.0)["images"]
  )
  changed = ~np.isclose(out, images).reshape(6, 4, -1).all(axis=-1)  # [B, T]
  assert (changed.sum(axis=1) == 1).all()
  np.testing.assert_array_equal(changed, mask.reshape(6, 4, -1).any(axis=-1))
  assert (out[images == 0] == 0).all()
  off = augment.one_time_point_toward_inversion(jax.random.PRNGKey(0), batch, 0.0)["images"]
  np.testing.assert_array_equal(off, images)
  config = get_config("quick").replace(invert_one=0.5)
  full = dict(batch, labels=jnp.zeros(mask.shape, jnp.int32))
  assert (
    jax.jit(lambda r, b: augment.augment(r, b, config))(jax.random.PRNGKey(1), full)["images"].shape
    == images.shape
  )
