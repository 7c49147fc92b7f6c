"""Training augmentation, inside the jit-compiled step: one draw per sequence, the same for
all its time points (a subject's sessions stay aligned for the LSTM).

Layout: ``images [B, T, (D,) H, W, C]``, ``labels`` and ``label_mask [B, T, (D,) H, W]``.
Spatial changes act on the in-plane axes H, W (never along D: slices are sparse and thick).

The paper uses "very simple data argumentation" (Sec. 1): flips and a small intensity
scaling here (``Config.augment``). Rotation, scaling and gamma (``Config.rotate_deg``,
``scale_range``, ``gamma``; off in the ``paper`` preset) follow nnU-Net's spatial and
intensity transforms: from one labeled slice per volume the model otherwise sees few
poses, head sizes and contrasts, while infant heads grow and their contrast changes with age.
"""

import jax
import jax.numpy as jnp
from jax.scipy import ndimage as jndimage

from fcslstm_jax.config import Config


def flip_and_scale(rng, batch: dict, flip_prob: float, intensity_scale: float) -> dict:
  """Random flips along H and W (same for every time step) and per-channel scaling.

  Volumes ``[B, T, D, H, W, C]`` are flipped along the same in-plane axes H, W (x and y),
  not along D (z), as test-time flips (:mod:`fcslstm_jax.infer.tta`)."""
  images, labels, mask = batch["images"], batch["labels"], batch["label_mask"]
  b, c = images.shape[0], images.shape[-1]
  k_h, k_w, k_s = jax.random.split(rng, 3)
  h_axis = labels.ndim - 2  # labels [B, T, (D,) H, W]
  for key, axis in ((k_h, h_axis), (k_w, h_axis + 1)):
    flip = jax.random.bernoulli(key, flip_prob, (b,))

    def sel(a, flip=flip, axis=axis):
      return jnp.where(flip.reshape((b,) + (1,) * (a.ndim - 1)), jnp.flip(a, axis), a)

    images, labels, mask = sel(images), sel(labels), sel(mask)
  scale = jax.random.uniform(
    k_s,
    (b,) + (1,) * (images.ndim - 2) + (c,),
    minval=1 - intensity_scale,
    maxval=1 + intensity_scale,
  )
  return dict(batch, images=images * scale, labels=labels, label_mask=mask)


def _warp_plane(plane, coords, order):
  """``plane [H, W]`` sampled at ``coords [2, H, W]`` (0 outside)."""
  return jndimage.map_coordinates(plane, list(coords), order=order, mode="constant", cval=0)


def warp_in_plane(batch: dict, angle, zoom) -> dict:
  """Each sequence ``b`` rotated by ``angle[b]`` (radians, counter-clockwise from H towards
  W) and scaled by ``zoom[b]`` about the slice center; images linearly, labels and their
  mask by nearest neighbour (a label never blends into another class; a voxel moved in from
  outside is unlabeled)."""
  images, labels, mask = batch["images"], batch["labels"], batch["label_mask"]
  b, (h, w) = images.shape[0], labels.shape[-2:]
  center = jnp.array([(h - 1) / 2, (w - 1) / 2], jnp.float32)
  grid = (
    jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"))
    .astype(jnp.float32)
    .reshape(2, -1)
    - center[:, None]
  )

  def coords(a, z):  # output voxel -> input voxel: rotate by -a, shrink by 1 / z
    c, s = jnp.cos(a), jnp.sin(a)
    m = jnp.array([[c, s], [-s, c]]) / z
    return (m @ grid + center[:, None]).reshape(2, h, w)

  where = jax.vmap(coords)(jnp.asarray(angle, jnp.float32), jnp.asarray(zoom, jnp.float32))

  def warp(a, order):  # a [B, ..., H, W]
    lead = a.shape[1:-2]
    flat = a.reshape((b, -1, h, w)).astype(jnp.float32)
    out = jax.vmap(lambda planes, c: jax.vmap(lambda p: _warp_plane(p, c, order))(planes))(
      flat, where
    )
    return out.reshape((b,) + lead + (h, w))

  moved = jnp.moveaxis(images, -1, 1)  # channels beside time: [B, C, T, ..., H, W]
  return dict(
    batch,
    images=jnp.moveaxis(warp(moved, 1), 1, -1).astype(images.dtype),
    labels=warp(labels, 0).astype(labels.dtype),
    label_mask=warp(mask, 0).astype(mask.dtype),
  )


def rotate_and_scale(rng, batch: dict, rotate_deg: float, scale_range: float) -> dict:
  """:func:`warp_in_plane` by U(-r, r) degrees and U(1 - s, 1 + s), one draw per sequence."""
  b = batch["images"].shape[0]
  k_r, k_s = jax.random.split(rng)
  angle = jnp.deg2rad(jax.random.uniform(k_r, (b,), minval=-rotate_deg, maxval=rotate_deg))
  zoom = jax.random.uniform(k_s, (b,), minval=1 - scale_range, maxval=1 + scale_range)
  return warp_in_plane(batch, angle, zoom)


def random_gamma(rng, batch: dict, gamma: float) -> dict:
  """Each channel of each sequence raised to ``exp(U(-g, g))`` (intensities in [0, 1] after
  normalization stay there): tissue contrasts shift as they do with age and scanner."""
  images = batch["images"]
  b, c = images.shape[0], images.shape[-1]
  g = jnp.exp(
    jax.random.uniform(rng, (b,) + (1,) * (images.ndim - 2) + (c,), minval=-gamma, maxval=gamma)
  )
  return dict(batch, images=jnp.power(jnp.clip(images, 0.0, None), g).astype(images.dtype))


def toward_inversion(rng, batch: dict, strength: float) -> dict:
  """Each time point and channel of each sequence moved toward its inverted contrast inside
  the head (image > 0; the background stays 0): ``I' = (1 - a) I + a (1 - I)``, ``a ~ U(0,
  strength)``, one draw per time point (unlike the other augmentations: contrast changes
  between sessions). Infant T1w and T2w contrast inverts over the first year and passes
  through an isointense phase near 6 months (``a = 0.5``: every tissue the same grey), which
  the labeled time points alone never show. Ours; the paper has no such augmentation."""
  images = batch["images"]
  lead = images.shape[:2]  # [B, T]
  a = jax.random.uniform(
    rng, lead + (1,) * (images.ndim - 3) + images.shape[-1:], minval=0.0, maxval=strength
  )
  moved = (1.0 - a) * images + a * (1.0 - images)
  return dict(batch, images=jnp.where(images > 0, moved, images).astype(images.dtype))


def one_time_point_toward_inversion(rng, batch: dict, prob: float) -> dict:
  """With probability ``prob`` per sequence, one time point moved toward its inversion as in
  :func:`toward_inversion` (``a ~ U(0, 1)`` per channel), the other time points untouched.
  The time point is drawn among those with a labeled voxel (``label_mask [B, T, ...]``;
  among all where none has one), so that its loss can only be lowered by what the LSTM
  carries over from the subject's other sessions. At the isointense age (near 6 months) a
  session's own GM / WM contrast says little, and no labeled time point shows it; the
  ``invert`` augmentation, which draws every time point, measured much worse on ``cohort``
  (docs/trajectories.md). Measured there (lever ``invert-one``), this one does not help either:
  the held-out time point's GM / WM stay where they were and the other sessions get worse; it
  is off in every preset. Ours; the paper has no such augmentation."""
  images, mask = batch["images"], batch["label_mask"]
  (b, t), c = images.shape[:2], images.shape[-1]
  k_on, k_t, k_a = jax.random.split(rng, 3)
  labeled = mask.reshape(b, t, -1).any(axis=-1)
  weight = jnp.where(labeled.any(axis=1, keepdims=True), labeled, True)
  chosen = jax.random.categorical(k_t, jnp.log(weight.astype(jnp.float32)))  # [B]
  on = jax.random.bernoulli(k_on, prob, (b,))
  pick = (jnp.arange(t)[None, :] == chosen[:, None]) & on[:, None]  # [B, T]
  a = jax.random.uniform(k_a, (b, 1, c)) * pick[..., None]  # [B, T, C]
  a = a.reshape((b, t) + (1,) * (images.ndim - 3) + (c,))
  moved = (1.0 - a) * images + a * (1.0 - images)
  return dict(batch, images=jnp.where(images > 0, moved, images).astype(images.dtype))


def augment(rng, batch: dict, config: Config) -> dict:
  """Every augmentation ``config`` asks for (see the module docstring). Flips and scaling
  take ``rng`` itself (the draws of runs before the others existed), the others keys folded
  from it. An age channel (``config.age_input``) is left out of them: it is constant over
  each slice, so a flip or warp would not change it and an intensity change must not."""
  if config.age_input != "none":
    images = batch["images"]
    out = augment(rng, dict(batch, images=images[..., :-1]), config.replace(age_input="none"))
    return dict(out, images=jnp.concatenate([out["images"], images[..., -1:]], axis=-1))
  if config.rotate_deg or config.scale_range:
    batch = rotate_and_scale(
      jax.random.fold_in(rng, 1), batch, config.rotate_deg, config.scale_range
    )
  slices = 2 * config.context_slices + 1
  if slices == 1:
    return _per_channel(rng, batch, config)
  # Neighbouring slices (Config.context_slices): channels [S * C] seen as [S, C], so that
  # a modality's slices share its per-channel draws, as one volume's slices would.
  images = batch["images"]
  out = _per_channel(
    rng, dict(batch, images=images.reshape(images.shape[:-1] + (slices, -1))), config
  )
  return dict(out, images=out["images"].reshape(images.shape))


def _per_channel(rng, batch: dict, config: Config) -> dict:
  """The augmentations drawn per channel (gamma, inversions, scaling) and the flips."""
  if config.gamma:
    batch = random_gamma(jax.random.fold_in(rng, 2), batch, config.gamma)
  if config.invert:
    batch = toward_inversion(jax.random.fold_in(rng, 3), batch, config.invert)
  if config.invert_one:
    batch = one_time_point_toward_inversion(jax.random.fold_in(rng, 4), batch, config.invert_one)
  return flip_and_scale(rng, batch, config.flip_prob, config.intensity_scale)
