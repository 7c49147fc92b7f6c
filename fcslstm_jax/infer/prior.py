"""Prior correction: the segmentation of a network trained with class weights, brought back
to the class frequencies of the data.

The paper trains with class weights inversely proportional to each class's pixel count (Sec.
2.3). The minimizer of a cross-entropy weighted by ``w_c`` is not the class posterior
``p(c | x)`` but ``q(c | x) ∝ w_c p(c | x)``: the weights act as a change of class priors, so
the rare classes win every doubtful voxel (a rim of false CSF around the brain, CSF volumes
+33 %). Dividing by the weights again, ``p(c | x) ∝ q(c | x) / w_c`` (in logits,
``logits - log w``), recovers the posterior: Saerens et al., "Adjusting the outputs of a
classifier to new a priori probabilities" (Neural Computation 2002); Menon et al.,
"Long-tail learning via logit adjustment" (ICLR 2021). Ours, not the paper's: the weights
still shape what the network learns from the few labeled voxels of the rare classes; only
the segmentation it writes is corrected. The argmax then maximizes accuracy (and gets the
volumes right) instead of the mean per-class recall that the paper's mPA measures, so mPA
falls a little (measured: docs/trajectories.md). ``Config.prior_correction``; the weights are
the run's own, recorded in ``run.json`` (``class_weights``).

Layout: logits or probabilities ``[..., c]``, the classes last.
"""

import numpy as np


def log_shift(class_weights) -> np.ndarray:
  """``log w`` per class (float32 ``[c]``), to subtract from the logits; 0 for a class of
  weight 0 (absent from the training labels: nothing to correct)."""
  w = np.asarray(class_weights, np.float64)
  return np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), 0.0).astype(np.float32)


def scale(class_weights) -> np.ndarray:
  """``1 / w`` per class (float32 ``[c]``, normalized to sum 1), to multiply probabilities
  by; ``exp(-log_shift)``."""
  s = np.exp(-log_shift(class_weights).astype(np.float64))
  return (s / s.sum()).astype(np.float32)


def corrected(probs: np.ndarray, class_scale) -> np.ndarray:
  """``probs [..., c]`` times ``class_scale`` (:func:`scale`), renormalized over the classes;
  ``probs`` itself when ``class_scale`` is None."""
  if class_scale is None:
    return probs
  p = np.asarray(probs, np.float32) * np.asarray(class_scale, np.float32)
  return (p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-30)).astype(np.float32)
