"""Weighted cross-entropy with unlabeled-pixel masks (paper Sec. 2.3; 3D u-net [10]).

Layout: logits ``[..., c]`` (e.g. ``[B, T, H, W, c]``), labels and masks ``[...]``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def class_weights(labels: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
  """Weights inversely proportional to each class's labeled pixel count (Sec. 2.3).

  Computed once from the training labels (host side, numpy). Normalized so that the
  count-weighted mean weight is 1; classes absent from the labels get weight 0.
  """
  return class_weights_from_counts(class_counts(labels, mask, num_classes))


def class_counts(labels: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
  """Labeled pixels per class, ``int64 [num_classes]``."""
  return np.bincount(labels[mask > 0].ravel(), minlength=num_classes)[:num_classes]


def class_weights_from_counts(counts: np.ndarray) -> np.ndarray:
  """:func:`class_weights` from per-class counts (e.g. summed over processes)."""
  counts = np.asarray(counts).astype(np.float64)
  w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
  w *= counts.sum() / max((w * counts).sum(), 1e-12)
  return w.astype(np.float32)


def weighted_cross_entropy(logits, labels, mask, weights):
  """Σ w·CE / Σ w over pixels, ``w = weights[label] * mask`` (torch's weighted CE mean).

  One-hot labels with ``optax.softmax_cross_entropy`` rather than the integer-label variant:
  the latter's gather made XLA constant-fold a large scatter-add in the backward pass.
  Returns 0 for a batch without labeled pixels (their gradient is then zero too).
  """
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)
  w = (onehot @ jnp.asarray(weights, jnp.float32)) * mask
  return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-6)
