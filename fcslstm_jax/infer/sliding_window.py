"""Sliding-window inference over whole volumes, all T time points at once (3D + time).

Layout: a volume sequence is ``images [T, D, H, W, C]`` with ``valid [T]`` or ``[T, D]``; a window
is
``[T, d, h, w]`` (every time point, so the structured LSTM sees the whole sequence); the
result is class probabilities ``[T, D, H, W, c]``. Nothing here depends on the number of
spatial axes (``[T, H, W, C]`` works the same way).

As nnU-Net does (Isensee et al., Nature Methods 2021): neighbouring windows overlap by a
fraction of the window (config ``window_overlap``, 0.5), each window's probabilities are
weighted by a Gaussian importance map centred on it (sigma = 1/8 of the window along each
axis; its smallest values raised to the smallest non-zero one, so no voxel gets weight 0),
and a voxel's probabilities are the weighted sum over the windows covering it divided by the
sum of their weights (the weights are normalised: stitching a constant gives that constant).
Windows are cut on the host and run ``batch_size`` at a time through one jit-compiled
function (a last partial batch is filled with repeats), so one compiled program serves every
volume of any size. A volume smaller than the window along an axis is zero-padded at the
end (background, as the model's own padding) and cropped back.
"""

import itertools
import math

import numpy as np
from tqdm import tqdm

from fcslstm_jax.errors import ConfigError

SIGMA_SCALE = 1.0 / 8  # nnU-Net's


def window_starts(size: int, window: int, overlap: float) -> list:
  """Window corners along one axis: first at 0, last at ``size - window``, evenly spaced at
  most ``window * (1 - overlap)`` apart (nnU-Net's placement). ``[0]`` when the window
  covers the axis."""
  if size <= window:
    return [0]
  step = max(1, math.ceil(window * (1 - overlap)))
  n = math.ceil((size - window) / step) + 1
  return [int(round(i * (size - window) / (n - 1))) for i in range(n)]


def window_corners(spatial, window, overlap: float) -> list:
  """Every window's corner over a volume of shape ``spatial`` (padded up to the window)."""
  return list(
    itertools.product(*(window_starts(max(n, w), w, overlap) for n, w in zip(spatial, window)))
  )


def gaussian_importance(window, sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
  """``float32 [*window]``: a Gaussian centred in the window, sigma = ``sigma_scale`` of the
  window along each axis, maximum 1, no value below the smallest non-zero one."""
  out = np.ones((), np.float64)
  for n in window:
    x = np.arange(n) - (n - 1) / 2
    g = np.exp(-(x**2) / (2 * max(n * sigma_scale, 1e-6) ** 2))
    out = np.multiply.outer(out, g)
  out = out / out.max()
  tiny = out[out > 0].min()
  return np.maximum(out, tiny).astype(np.float32)


def sliding_window_proba(
  predict_fn,
  params,
  images,
  valid,
  window,
  overlap: float = 0.5,
  batch_size: int = 1,
  on_batch=None,
) -> np.ndarray:
  """Class probabilities ``float32 [T, *S, c]`` of one volume sequence ``images [T, *S, C]``.

  ``predict_fn(params, x [B, T, *window, C], valid [B, T] or [B, T, d]) -> probabilities
  [B, T, *window, c]`` (e.g. :func:`fcslstm_jax.infer.tta.tta_proba` jitted); it is called with
  ``B = batch_size`` windows every time. ``valid``: ``[T]``, or ``[T, D]`` per slice of a
  volume (``[T, D, H, W]``: a session's field of view), cut per window like the images.
  ``on_batch(n)``, if given, is called after each call with the number of windows it
  segmented (a progress bar).
  """
  images = np.asarray(images)
  spatial = images.shape[1:-1]
  window = tuple(int(w) for w in window)
  if len(window) != len(spatial):
    raise ValueError(f"window {window} does not match the volume's spatial shape {spatial}")
  padded = tuple(max(n, w) for n, w in zip(spatial, window))
  if padded != spatial:
    images = np.pad(images, [(0, 0)] + [(0, p - n) for n, p in zip(spatial, padded)] + [(0, 0)])
  corners = window_corners(padded, window, overlap)
  weight = gaussian_importance(window)
  total = weight_sum = None
  valid = np.asarray(valid, bool)
  per_slice = valid.ndim == 2
  if per_slice and padded[0] != spatial[0]:
    valid = np.pad(valid, [(0, 0), (0, padded[0] - spatial[0])], mode="edge")
  for first in range(0, len(corners), batch_size):
    chunk = corners[first : first + batch_size]
    filled = chunk + [chunk[-1]] * (batch_size - len(chunk))
    boxes = [tuple(slice(o, o + w) for o, w in zip(c, window)) for c in filled]
    x = np.stack([images[(slice(None),) + box] for box in boxes])
    v = (
      np.stack([valid[:, box[0]] for box in boxes])
      if per_slice
      else np.broadcast_to(valid, (batch_size,) + valid.shape)
    )
    probs = np.asarray(predict_fn(params, x, v))
    if total is None:
      total = np.zeros((images.shape[0],) + padded + probs.shape[-1:], np.float32)
      weight_sum = np.zeros(padded, np.float32)
    for k, box in enumerate(boxes[: len(chunk)]):
      total[(slice(None),) + box] += probs[k] * weight[..., None]
      weight_sum[box] += weight
    if on_batch is not None:
      on_batch(len(chunk))
  out = total / weight_sum[..., None]
  return out[(slice(None),) + tuple(slice(0, n) for n in spatial)]


def volume_predict_fn(
  proba_fn, window, overlap: float, batch_size: int, proba: bool = False, desc: str | None = None
):
  """``fn(params, images [N, T, *S, C], valid [N, T] or [N, T, D])`` -> class map
  ``int32 [N, T, *S]``
  (probabilities ``[N, T, *S, c]`` with ``proba``) by :func:`sliding_window_proba` of each
  volume, for :func:`fcslstm_jax.train.scoring.evaluate_splits`; with ``desc``, a progress bar
  over the windows of each call."""

  def fn(params, images, valid):
    images = np.asarray(images)
    bar = None
    if desc is not None:
      total = len(images) * len(window_corners(images.shape[2:-1], window, overlap))
      bar = tqdm(total=total, desc=desc, unit="window", leave=False, dynamic_ncols=True)
    out = [
      sliding_window_proba(
        proba_fn, params, x, v, window, overlap, batch_size, bar.update if bar is not None else None
      )
      for x, v in zip(images, np.asarray(valid))
    ]
    if bar is not None:
      bar.close()
    out = np.stack(out)
    return out if proba else np.argmax(out, axis=-1).astype(np.int32)

  return fn


def window_shape(config) -> tuple:
  """A 3D run's training patch and inference window ``(d, h, w)`` (its config's
  ``patch_size``)."""
  if config.patch_size is None:
    raise ConfigError(
      "patch_size is null: a 3D run records its patch size in run.json "
      "(resolved by train.py); set it with --set patch_size=[d,h,w]."
    )
  return tuple(config.patch_size)
