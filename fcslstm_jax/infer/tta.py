"""Test-time augmentation: class probabilities averaged over in-plane flips.

Layout: images ``[B, T, H, W, C]`` and probabilities ``[B, T, H, W, c]``, channels-last,
``[H, W] = [X, Y]`` of the canonical (RAS) working grid. Training flips sequences along H
and W (:mod:`fcslstm_jax.train.augment`), so the model has seen every mirrored view;
at test time each requested combination of flips is applied to the batch, the model runs
once on all of them stacked along the batch axis, each result is flipped back, and the
probabilities are averaged (nnU-Net's mirroring). The z axis is not a flip axis: the model
segments axial slices, each one on its own (a 3D run is not trained with z flips either).
"""

import itertools

import jax.numpy as jnp

from fcslstm_jax.errors import ConfigError
from fcslstm_jax.infer import predict

# Flip name -> axis of [B, T, H, W, C].
FLIP_AXES = {"x": 2, "y": 3}


def parse_flips(text) -> tuple:
  """``--tta-flips``: ``"x,y"``, ``"x"``, ``"none"`` or ``""`` -> sorted axis names."""
  if text is None:
    return ()
  if not isinstance(text, str):
    text = ",".join(text)
  names = [n.strip().lower() for n in text.split(",") if n.strip()]
  if names == ["none"]:
    return ()
  bad = [n for n in names if n not in FLIP_AXES]
  if bad:
    raise ConfigError(
      f"--tta-flips: unknown axis {', '.join(map(repr, bad))}; use a comma "
      f"list of {', '.join(FLIP_AXES)} (in-plane axes) or 'none'."
    )
  return tuple(sorted(set(names)))


def flip_variants(names, spatial_dims: int = 2) -> tuple:
  """Every combination of the named flips as tuples of axes, the identity first:
  ``("x", "y")`` -> ``((), (2,), (3,), (2, 3))``; for volumes (``spatial_dims=3``,
  ``[B, T, D, H, W, C]``) ``((), (3,), (4,), (3, 4))``."""
  axes = [FLIP_AXES[n] + spatial_dims - 2 for n in names]
  return tuple(c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k))


def _flip(a, axes):
  return jnp.flip(a, axes) if axes else a


def tta_proba(params, apply_fn, images, valid, variants=((),)):
  """Class probabilities ``[B, T, H, W, c]`` averaged over ``variants`` (static tuples of
  axes, :func:`flip_variants`). One forward pass over the ``len(variants) * B`` stacked
  flipped sequences; jit with ``variants`` static or closed over."""
  v, b = len(variants), images.shape[0]
  stacked = jnp.concatenate([_flip(images, axes) for axes in variants], axis=0)
  probs = predict.predict_proba(params, apply_fn, stacked, jnp.concatenate([valid] * v))
  probs = probs.reshape((v, b) + probs.shape[1:])
  return jnp.mean(jnp.stack([_flip(probs[i], axes) for i, axes in enumerate(variants)]), 0)
