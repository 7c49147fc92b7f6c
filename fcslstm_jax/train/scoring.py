"""Scoring during training: mPA / Dice / IoU of the labeled voxels of each split, and for a
3D run the sliding-window predictor and how often scoring may run (docs/model.md, "3D + time")."""

import flax.linen as nn
import numpy as np

from fcslstm_jax import metrics
from fcslstm_jax.config import Config
from fcslstm_jax.data.sequences import SliceSet
from fcslstm_jax.infer import sliding_window
from fcslstm_jax.infer.predict import make_predict_fn
from fcslstm_jax.infer.predict import predict_all
from fcslstm_jax.train import parallel


def make_volume_predict_fn(
  model: nn.Module,
  config: Config,
  mesh,
  window_batch: int,
  overlap: float | None = None,
  desc: str | None = None,
):
  """``fn(params, volumes [N, T, D, H, W, C], valid [N, T, D])`` -> class map ``[N, T, D, H, W]``
  by sliding windows of ``config.patch_size`` (``window_batch`` at a time, split over this
  process's devices), overlapping by ``overlap`` (default ``config.window_overlap``); with
  ``desc``, a progress bar over the windows."""
  windows = parallel.on_local_devices(make_predict_fn(model, proba=True), mesh)
  overlap = config.window_overlap if overlap is None else overlap
  return sliding_window.volume_predict_fn(
    windows, sliding_window.window_shape(config), overlap, window_batch, desc=desc
  )


# Scoring a 3D run during training (docs/model.md, "3D + time"): the labeled slabs are cut into
# windows that do not overlap (the fewest that cover them); evaluate.py blends overlapping
# windows (config window_overlap).
SCORING_OVERLAP = 0.0
# The auto interval (score_every_epochs null, 3D) keeps scoring under this share of the
# training time, counting one window's forward pass as FORWARD_COST of one patch's training
# step (forward and backward: the backward pass costs about two forward passes).
SCORING_SHARE = 0.2
FORWARD_COST = 1.0 / 3.0


def same_images(a, b) -> bool:
  """Whether two sets hold the same image sequences (then one forward pass serves both)."""
  return a.images is b.images or (
    a.images.shape == b.images.shape and np.array_equal(a.images, b.images)
  )


def scoring_windows(splits, window) -> int:
  """Windows one scoring of ``splits`` (3D slabs) segments: sets with the same images once."""
  distinct = []
  for data in splits:
    if len(data.images) and not any(same_images(d, data) for d in distinct):
      distinct.append(data)
  return sum(
    len(d.images)
    * len(sliding_window.window_corners(d.images.shape[2:-1], window, SCORING_OVERLAP))
    for d in distinct
  )


def scoring_interval(config: Config, windows: int, patches_per_epoch: int) -> int:
  """Epochs between scorings: ``score_every_epochs``, or when null the smallest N for which
  ``windows`` forward passes (3D windows; 2D slice sequences) every N epochs cost at most
  ``SCORING_SHARE`` of N epochs of ``patches_per_epoch`` training sequences or patches
  (what scoring every epoch cost: bench/README.md, "Scoring during training")."""
  if config.score_every_epochs is not None:
    return config.score_every_epochs
  return max(1, int(np.ceil(windows * FORWARD_COST / (SCORING_SHARE * patches_per_epoch))))


def is_scored(run, epoch: int) -> bool:
  """Whether epoch ``epoch`` (0-based) is scored: every ``run.score_every`` epochs and the
  last one."""
  return (epoch + 1) % run.score_every == 0 or epoch + 1 == run.config.epochs


def evaluate_splits(predict_fn, params, splits: list[SliceSet], class_names, batch_size: int):
  """mPA / Dice / IoU over the labeled voxels (``label_mask``) of each split.

  Splits that hold the same image sequences (the paper's protocol: train and test differ only
  in which time points' labels they show) share one forward pass.
  """
  out, cache = [], []
  c = len(class_names)
  for data in splits:
    if len(data) == 0:  # e.g. no labels at the held-out time point (in this process's share)
      cm = np.zeros((c, c))
    else:
      pred = next((p for d, p in cache if same_images(d, data)), None)
      if pred is None:
        pred = predict_all(predict_fn, params, data, batch_size)
        cache.append((data, pred))
      cm = metrics.confusion_matrix(pred, data.labels, data.label_mask, c)
    cm = parallel.sum_over_processes(cm)  # each process holds its own subjects
    out.append(metrics.summarize(cm, class_names))
  return out
