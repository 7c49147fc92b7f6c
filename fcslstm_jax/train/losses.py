"""Losses on the labeled pixels: weighted cross-entropy (paper Sec. 2.3; unlabeled pixels
weighted 0 as in 3D u-net [10]) and a soft Dice term.

Layout: logits ``[..., c]`` (e.g. ``[B, T, H, W, c]``), labels and masks ``[...]``. A mask
may be fractional (a per-voxel weight); 0 leaves a voxel out.

Class weights (``Config.class_weighting``): the paper's are inversely proportional to each
class's pixel count ("inverse"). That makes the loss a balanced one that maximizes the mean
per-class recall, i.e. the paper's mPA, and pays for it with false positives of the rare
class (a rim of false CSF around the brain; measured: docs/trajectories.md, "Whole volumes and
volumes
over age"). "sqrt" (inverse square root) tempers it, "none" weighs every labeled
voxel alike; the soft Dice term (``Config.dice_weight``; nnU-Net's Dice + CE) balances
precision against recall per class instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

CLASS_WEIGHTINGS = ("inverse", "sqrt", "none")


def class_weights(
  labels: np.ndarray, mask: np.ndarray, num_classes: int, kind: str = "inverse"
) -> np.ndarray:
  """Weights inversely proportional to each class's labeled pixel count (Sec. 2.3), or to
  its square root, or equal (``kind``; see the module docstring).

  Computed once from the training labels (host side, numpy). Normalized so that the
  count-weighted mean weight is 1; classes absent from the labels get weight 0.
  """
  return class_weights_from_counts(class_counts(labels, mask, num_classes), kind)


def class_counts(labels: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
  """Labeled pixels per class, ``int64 [num_classes]``."""
  return np.bincount(labels[mask > 0].ravel(), minlength=num_classes)[:num_classes]


def class_weights_from_counts(counts: np.ndarray, kind: str = "inverse") -> np.ndarray:
  """:func:`class_weights` from per-class counts (e.g. summed over processes)."""
  if kind not in CLASS_WEIGHTINGS:
    raise ValueError(f"class weighting {kind!r}: choose one of {CLASS_WEIGHTINGS}")
  counts = np.asarray(counts).astype(np.float64)
  power = {"inverse": 1.0, "sqrt": 0.5, "none": 0.0}[kind]
  w = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
  w *= counts.sum() / max((w * counts).sum(), 1e-12)
  return w.astype(np.float32)


def weighted_cross_entropy(logits, labels, mask, weights, total=None):
  """Σ w·CE / Σ w over pixels, ``w = weights[label] * mask`` (torch's weighted CE mean).

  ``total``: divide by this instead of the batch's own Σ w (:func:`label_weight` of a whole
  batch, when it is computed in parts). One-hot labels with ``optax.softmax_cross_entropy``
  rather than the integer-label variant: the latter's gather made XLA constant-fold a large
  scatter-add in the backward pass. Returns 0 for a batch without labeled pixels (their
  gradient is then zero too).
  """
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)
  w = (onehot @ jnp.asarray(weights, jnp.float32)) * mask
  total = jnp.sum(w) if total is None else total
  return jnp.sum(w * ce) / jnp.maximum(total, 1e-6)


def label_weight(labels, mask, weights):
  """Σ w over pixels, ``w = weights[label] * mask``: :func:`weighted_cross_entropy`'s
  divisor."""
  return jnp.sum(jnp.asarray(weights, jnp.float32)[labels] * mask)


def soft_dice_loss(logits, labels, mask, smooth: float = 1.0):
  """1 - the mean soft Dice of the tissue classes (1..c-1) over the batch's labeled voxels.

  Dice per class over the whole batch ("batch Dice", as nnU-Net for sparse 2D data): one
  labeled slice holds too few voxels of a rare class for a per-slice Dice. ``smooth`` keeps
  a class absent from the batch from dividing by zero (its prediction is then pushed to 0).
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1:]
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)[..., 1:]
  m = jnp.asarray(mask, jnp.float32)[..., None]
  axes = tuple(range(probs.ndim - 1))
  inter = jnp.sum(probs * onehot * m, axis=axes)
  total = jnp.sum(probs * m, axis=axes) + jnp.sum(onehot * m, axis=axes)
  return 1.0 - jnp.mean((2.0 * inter + smooth) / (total + smooth))
