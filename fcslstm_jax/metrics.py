"""Segmentation metrics as pure functions of arrays.

``pred`` and ``labels`` are integer class maps of any shape (e.g. ``[N, T, H, W]``), ``mask``
the same shape with 1 where a voxel is labeled. Every metric derives from the confusion
matrix ``cm[true, predicted]``; classes absent from the ground truth are NaN in per-class
results and left out of means.

mPA (paper Sec. 3): "the ratio between the amount of properly classified pixels and the
total number of them in a per-class basis, averaged over the number of classes", i.e. the
mean of per-class pixel accuracy (recall), background included. Background is most of a
slice and nearly always right, which lifts every mean; ``mpa_fg`` (the mean over the
tissue classes, background left out) is reported beside it.
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred, labels, mask, num_classes: int):
  """``[c, c]`` float counts, rows = ground truth, columns = prediction (jit-able)."""
  t = jax.nn.one_hot(labels, num_classes) * jnp.asarray(mask, jnp.float32)[..., None]
  p = jax.nn.one_hot(pred, num_classes)
  return jnp.einsum("...i,...j->ij", t, p)


def confusion_counts(pred, labels, mask, num_classes: int) -> np.ndarray:
  """:func:`confusion_matrix` in numpy (int64), for whole volumes on the host."""
  m = np.asarray(mask) > 0
  index = np.asarray(labels)[m].astype(np.int64) * num_classes + np.asarray(pred)[m]
  return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num, den):
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def pixel_accuracy_per_class(cm):
  cm = np.asarray(cm, np.float64)
  return _ratio(np.diag(cm), cm.sum(1))


def dice_per_class(cm):
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  present = cm.sum(1) > 0
  return np.where(present, _ratio(2 * tp, cm.sum(0) + cm.sum(1)), np.nan)


def iou_per_class(cm):
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  present = cm.sum(1) > 0
  return np.where(present, _ratio(tp, cm.sum(0) + cm.sum(1) - tp), np.nan)


def precision_per_class(cm):
  """TP / predicted voxels of each class: NaN where the class is absent from the ground
  truth (as every per-class score) or never predicted (undefined, not 0)."""
  cm = np.asarray(cm, np.float64)
  present = cm.sum(1) > 0
  return np.where(present, _ratio(np.diag(cm), cm.sum(0)), np.nan)


def summarize(cm, class_names) -> dict:
  """mPA, mean Dice and IoU, and the per-class values (``recall`` is ``pixel_accuracy``
  under its usual name, beside ``precision``), as plain floats (JSON-ready)."""
  acc, dice, iou = pixel_accuracy_per_class(cm), dice_per_class(cm), iou_per_class(cm)

  def per(v):
    return {n: (None if np.isnan(x) else float(x)) for n, x in zip(class_names, v)}

  def nanmean(v):
    return None if np.all(np.isnan(v)) else float(np.nanmean(v))

  return {
    "mpa": nanmean(acc),
    "mpa_fg": nanmean(acc[1:]),
    "mean_dice": nanmean(dice),
    "mean_iou": nanmean(iou),
    "pixel_accuracy": per(acc),
    "dice": per(dice),
    "iou": per(iou),
    "precision": per(precision_per_class(cm)),
    "recall": per(acc),
    "voxels": int(np.asarray(cm).sum()),
  }


def temporal_agreement(seg, mask) -> np.ndarray:
  """``[2, T - 1]`` counts behind :func:`temporal_consistency`: voxels keeping their class,
  and voxels counted, per consecutive pair (sums over subjects of any size)."""
  seg, mask = np.asarray(seg), np.asarray(mask) > 0
  both = mask[:, 1:] & mask[:, :-1]
  same = (seg[:, 1:] == seg[:, :-1]) & both
  return np.stack([same.sum((0, 2, 3)), both.sum((0, 2, 3))]).astype(np.float64)


def temporal_consistency(seg, mask):
  """For each consecutive pair of time points, the fraction of voxels keeping their class.

  ``seg`` and ``mask`` are ``[N, T, H, W]``; a voxel counts for the pair ``(t, t+1)`` where
  ``mask`` is 1 at both. Returns ``T - 1`` fractions (NaN where no voxel counts). Apply it
  to the prediction and to the ground truth with the same mask to compare the two: scans
  are not registered over time, so even the ground truth is below 1 where the head grows.
  """
  same, both = temporal_agreement(seg, mask)
  return _ratio(same, both)
