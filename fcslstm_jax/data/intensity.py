"""Intensity normalization of MRI volumes, without labels.

Per subject, session and modality: the head is the set of voxels above the volume's Otsu
threshold; its 1st and 99th intensity percentiles are mapped to 0 and 1 and the result is
clipped to [0, 1]. This removes scanner gain and most of the effect of outliers. Voxels at
or below the lower percentile (air, a skull-stripped background, the fill of a resampled
field of view) are 0: zero is background everywhere, which the model's zero padding relies
on.
"""

import numpy as np


def otsu_threshold(values, bins=256):
  """Threshold maximizing the between-class variance of a 1D array."""
  values = np.asarray(values, dtype=np.float64)
  lo, hi = values.min(), values.max()
  if hi <= lo:
    return lo
  counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
  centers = (edges[:-1] + edges[1:]) / 2
  w0 = np.cumsum(counts)
  w1 = w0[-1] - w0
  m0 = np.cumsum(counts * centers)
  mean0 = m0 / np.maximum(w0, 1)
  mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
  between = w0 * w1 * (mean0 - mean1) ** 2
  return edges[1:][np.argmax(between)]


def normalize_intensity(volume, lower=1.0, upper=99.0):
  """Maps the head's ``lower``/``upper`` percentiles to 0/1 and clips (see module docstring).

  Args:
    volume: ``[X, Y, Z]`` raw intensities.

  Returns:
    ``float32 [X, Y, Z]`` in [0, 1].
  """
  volume = np.asarray(volume, dtype=np.float32)
  head = volume[volume > otsu_threshold(volume)]
  if head.size == 0:
    head = volume.ravel()
  lo, hi = np.percentile(head, [lower, upper])
  scale = 1.0 / (hi - lo) if hi > lo else 1.0
  return np.clip((volume - lo) * scale, 0.0, 1.0).astype(np.float32)
