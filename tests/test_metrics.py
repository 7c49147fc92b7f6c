import numpy as np
import pytest

from fcslstm_jax import metrics

NAMES = ("bg", "a", "b")


def test_confusion_matrix_and_scores_by_hand():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
  pred = np.array([0, 0, 1, 1, 2, 2, 2, 0])
  mask = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)  # last pixel unlabeled
  cm = np.asarray(metrics.confusion_matrix(pred, labels, mask, 3))
  np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 2]])
  np.testing.assert_allclose(metrics.pixel_accuracy_per_class(cm), [2 / 3, 1 / 2, 1.0])
  np.testing.assert_allclose(metrics.summarize(cm, NAMES)["mpa"], (2 / 3 + 1 / 2 + 1) / 3)
  # Dice = 2TP / (|pred| + |true|), IoU = TP / union.
  np.testing.assert_allclose(metrics.dice_per_class(cm), [4 / 5, 2 / 4, 4 / 5])
  np.testing.assert_allclose(metrics.iou_per_class(cm), [2 / 3, 1 / 3, 2 / 3])


def test_precision_and_recall_by_hand():
  # cm[true, pred] = [[2, 1, 0], [0, 1, 1], [0, 0, 2]]: predicted 2, 2, 3 voxels per class.
  cm = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 2]])
  np.testing.assert_allclose(metrics.precision_per_class(cm), [2 / 2, 1 / 2, 2 / 3])
  s = metrics.summarize(cm, NAMES)
  assert s["precision"] == pytest.approx({"bg": 1.0, "a": 0.5, "b": 2 / 3})
  assert s["recall"] == s["pixel_accuracy"] == pytest.approx({"bg": 2 / 3, "a": 0.5, "b": 1.0})
  # Never predicted: precision undefined (None), recall 0; absent from the truth: None.
  s = metrics.summarize(np.array([[3, 0, 1], [2, 0, 0], [0, 0, 0]]), NAMES)
  assert s["precision"] == {"bg": 0.6, "a": None, "b": None}
  assert s["recall"] == {"bg": 0.75, "a": 0.0, "b": None}


def test_absent_class_is_left_out_of_the_mean():
  labels = np.array([0, 0, 1, 1])
  pred = np.array([0, 2, 1, 1])
  cm = np.asarray(metrics.confusion_matrix(pred, labels, np.ones(4), 3))
  acc = metrics.pixel_accuracy_per_class(cm)
  assert np.isnan(acc[2])
  s = metrics.summarize(cm, NAMES)
  assert s["mpa"] == pytest.approx((0.5 + 1.0) / 2)
  assert s["pixel_accuracy"]["b"] is None and s["voxels"] == 4


def test_matches_sklearn_style_reference():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, (2, 3, 8, 8))
  pred = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 3, labels.shape))
  mask = (rng.random(labels.shape) < 0.8).astype(np.float32)
  cm = np.asarray(metrics.confusion_matrix(pred, labels, mask, 3))
  m = mask > 0
  for k in range(3):
    t, p = labels[m] == k, pred[m] == k
    assert metrics.pixel_accuracy_per_class(cm)[k] == pytest.approx((t & p).sum() / t.sum())
    assert metrics.dice_per_class(cm)[k] == pytest.approx(2 * (t & p).sum() / (t.sum() + p.sum()))
    assert metrics.iou_per_class(cm)[k] == pytest.approx((t & p).sum() / (t | p).sum())


def test_temporal_consistency():
  seg = np.zeros((1, 3, 2, 2), int)
  seg[0, 1, 0, 0] = 1  # one of four voxels changes between t0 and t1, and back at t2
  mask = np.ones_like(seg)
  np.testing.assert_allclose(metrics.temporal_consistency(seg, mask), [0.75, 0.75])
  mask[0, 2] = 0
  out = metrics.temporal_consistency(seg, mask)
  assert out[0] == 0.75 and np.isnan(out[1])


def test_mpa_without_background_and_numpy_confusion():
  labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
  pred = np.array([0, 0, 0, 0, 1, 0, 2, 2])
  mask = np.ones(8)
  cm = metrics.confusion_counts(pred, labels, mask, 3)
  np.testing.assert_array_equal(cm, np.asarray(metrics.confusion_matrix(pred, labels, mask, 3)))
  s = metrics.summarize(cm, NAMES)
  assert s["mpa"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
  assert s["mpa_fg"] == pytest.approx((0.5 + 1.0) / 2)  # background left out


def test_temporal_agreement_counts_sum_over_subjects():
  a, b = np.zeros((1, 3, 2, 2), int), np.zeros((2, 3, 3, 3), int)
  a[0, 1, 0, 0] = 1
  b[1, 2, 1, 1] = 2
  counts = metrics.temporal_agreement(a, np.ones_like(a)) + metrics.temporal_agreement(
    b, np.ones_like(b)
  )
  np.testing.assert_array_equal(counts, [[3 + 18, 3 + 17], [4 + 18, 4 + 18]])
