"""Prior correction: the segmentation of a network trained with class weights, brought back
to the class frequencies of the data.

The paper trains with class weights inversely proportional to each class's pixel count (Sec.
2.3). The minimizer of a cross-entropy weighted by ``w_c`` is not the class posterior
``p(c | x)`` but ``q(c | x) ∝ w_c p(c | x)``: the weights act as a change of class priors, so
the rare classes win every doubtful voxel (a rim of false CSF around the brain). Dividing by
the weights again, ``p(c | x) ∝ q(c | x) / w_c`` (in logits, ``logits - log w``), recovers
the posterior: Saerens et al., "Adjusting the outputs of a classifier to new a priori
probabilities" (Neural Computation 2002); Menon et al., "Long-tail learning via logit
adjustment" (ICLR 2021). Ours, not the paper's: the weights still shape what the network
learns from the few labeled voxels of the rare classes; only the segmentation it writes is
corrected. The argmax then maximizes accuracy (and gets the volumes right) instead of the
mean per-class recall that the paper's mPA measures, so mPA falls a little (measured:
docs/trajectories.md). ``Config.prior_correction``: ``none``, ``full`` or ``fitted``. The
theory holds for a calibrated network; ours is not always (on the built-in dataset the full
correction undershoots CSF: README.md), so ``fitted`` chooses a strength ``s`` in
:data:`STRENGTHS` (``logits - s log w``) after training, the one whose segmentation of the
labeled training voxels has the best mean tissue Dice: chosen on the labels training had,
never on held-out ones. The weights and the strength are the run's own, recorded in
``run.json`` (``class_weights``, ``prior_strength``).

Layout: logits or probabilities ``[..., c]``, the classes last.
"""

import numpy as np

from fcslstm_jax import metrics


def log_shift(class_weights) -> np.ndarray:
  """``log w`` per class (float32 ``[c]``), to subtract from the logits; 0 for a class of
  weight 0 (absent from the training labels: nothing to correct)."""
  w = np.asarray(class_weights, np.float64)
  return np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), 0.0).astype(np.float32)


def scale(class_weights, strength: float = 1.0) -> np.ndarray:
  """``w ** -strength`` per class (float32 ``[c]``, normalized to sum 1), to multiply
  probabilities by; ``exp(-strength * log_shift)``. Strength 1 is the full correction, 0
  none."""
  s = np.exp(-strength * log_shift(class_weights).astype(np.float64))
  return (s / s.sum()).astype(np.float32)


# The strengths ``fitted`` chooses from (Config.prior_correction).
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def confusions(probs, labels, mask, class_weights, strengths=STRENGTHS) -> np.ndarray:
  """For each strength, the confusion matrix (:func:`fcslstm_jax.metrics.confusion_counts`)
  of the corrected segmentation on the labeled voxels (``mask > 0``), int64
  ``[len(strengths), c, c]``: sums over processes or batches add up."""
  c = np.shape(probs)[-1]
  logp = np.log(np.maximum(probs, 1e-30))
  return np.stack(
    [
      metrics.confusion_counts(np.argmax(logp - s * log_shift(class_weights), -1), labels, mask, c)
      for s in strengths
    ]
  )


def best_strength(cms, strengths=STRENGTHS) -> tuple[float, list]:
  """``(strength, mean Dice per strength)``: the strength whose segmentation has the highest
  mean Dice of the tissue classes present (from :func:`confusions`); the weaker one on a
  tie."""
  dice = [float(np.nanmean(metrics.dice_per_class(cm)[1:])) for cm in cms]
  return float(strengths[int(np.nanargmax(dice))]), [round(d, 4) for d in dice]


def corrected(probs: np.ndarray, class_scale) -> np.ndarray:
  """``probs [..., c]`` times ``class_scale`` (:func:`scale`), renormalized over the classes;
  ``probs`` itself when ``class_scale`` is None."""
  if class_scale is None:
    return probs
  p = np.asarray(probs, np.float32) * np.asarray(class_scale, np.float32)
  return (p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-30)).astype(np.float32)
