"""Property tests (hypothesis): the loader on random grids, orientations and label sets; the
metrics on random shapes and label sets."""

import pathlib
import tempfile

import nibabel as nib
import numpy as np
import test_study  # the loader tests' NIfTI writer
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from nibabel import orientations

from fcslstm_jax import metrics
from fcslstm_jax.data import nifti_io
from fcslstm_jax.data import study

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ORIENTATIONS = st.tuples(
  st.permutations([0, 1, 2]), st.tuples(*[st.sampled_from([-1, 1])] * 3)
).map(lambda a: "".join(orientations.ornt2axcodes([[axis, sign] for axis, sign in zip(*a)])))
SHAPES = st.tuples(*[st.integers(2, 6)] * 3)
AFFINES = st.tuples(
  st.tuples(*[st.floats(0.5, 3.0)] * 3), st.tuples(*[st.floats(-50, 50)] * 3)
).map(lambda zo: np.vstack([np.hstack([np.diag(zo[0]), np.array(zo[1])[:, None]]), [0, 0, 0, 1]]))


@SETTINGS
@given(
  codes=ORIENTATIONS,
  shape=SHAPES,
  affine=AFFINES,
  num_sessions=st.integers(1, 3),
  classes=st.sets(st.integers(0, 3), min_size=1),
  seed=st.integers(0, 2**16),
  suffix=st.sampled_from([".nii", ".nii.gz"]),
)
def test_loader_round_trips_affine_and_labels(
  codes, shape, affine, num_sessions, classes, seed, suffix
):
  rng = np.random.default_rng(seed)
  classes = sorted(classes)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    truth = {}
    for j in range(num_sessions):
      ses = f"{3 * j:02d}mo"
      anat = root / "sub-01" / f"ses-{ses}" / "anat"
      images = [rng.uniform(0, 1000, shape).astype(np.float32) for _ in range(2)]
      labels = rng.choice(classes, size=shape).astype(np.uint8)
      for mod, image in zip(("T1w", "T2w"), images):
        test_study.write(anat / f"sub-01_ses-{ses}_{mod}{suffix}", image, codes, affine=affine)
      test_study.write(
        root
        / "derivatives"
        / "manual"
        / "sub-01"
        / f"ses-{ses}"
        / "anat"
        / f"sub-01_ses-{ses}_dseg{suffix}",
        labels,
        codes,
        affine=affine,
      )
      truth[ses] = (images, labels)

    dense = test_study.dataclasses.replace(
      test_study.DENSE, ages=(0.0, 3.0, 6.0), train_timepoints=(0, 1, 2), test_timepoints=()
    )
    (subject,) = study.load_dataset(root, dense)
    assert [s.label for s in subject.sessions] == sorted(truth)
    for session in subject.sessions:
      images, labels = truth[session.label]
      np.testing.assert_allclose(session.affine, affine, atol=1e-4)  # canonical = RAS affine
      assert nib.aff2axcodes(session.affine) == ("R", "A", "S")
      assert session.image.shape == shape + (2,) and session.image.dtype == np.float32
      assert 0.0 <= session.image.min() and session.image.max() <= 1.0
      np.testing.assert_array_equal(session.labels, labels)
      # A prediction written back lands on the stored grid: same affine, same orientation.
      out = root / f"pred-{session.label}{suffix}"
      nifti_io.save_like(out, session.labels, session.ref)
      written = nib.load(str(out))
      stored = nib.load(session.paths["T1w"])
      np.testing.assert_allclose(written.affine, stored.affine, atol=1e-4)
      assert "".join(nib.aff2axcodes(written.affine)) == codes
      np.testing.assert_array_equal(
        np.asarray(written.dataobj), np.asarray(nib.load(session.paths["dseg"]).dataobj)
      )


ARRAY_SHAPES = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@st.composite
def segmentations(draw):
  """``(pred, labels, mask, num_classes)`` of one random shape, from random label sets."""
  shape = draw(ARRAY_SHAPES)
  c = draw(st.integers(2, 6))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  true_set = sorted(draw(st.sets(st.integers(0, c - 1), min_size=1)))
  pred_set = sorted(draw(st.sets(st.integers(0, c - 1), min_size=1)))
  labels = rng.choice(true_set, size=shape).astype(np.int32)
  pred = rng.choice(pred_set, size=shape).astype(np.int32)
  mask = (rng.uniform(size=shape) < draw(st.floats(0.0, 1.0))).astype(np.float32)
  return pred, labels, mask, c


def confusion(pred, labels, mask, c):
  """``metrics.confusion_matrix`` on the arrays flattened and padded (mask 0) to one length:
  the counts do not depend on the layout, and one length means one compiled program per
  class count instead of one per random shape (XLA compilation dominates on CPU)."""

  def pad(a):
    return np.pad(a.ravel(), (0, 5**4 - a.size))

  return np.asarray(metrics.confusion_matrix(pad(pred), pad(labels), pad(mask), c))


def in_unit_interval_or_nan(values):
  values = np.asarray(values, np.float64)
  ok = np.isnan(values) | ((values >= 0.0) & (values <= 1.0))
  return bool(ok.all())


@SETTINGS
@given(seg=segmentations())
def test_metrics_are_within_unit_interval(seg):
  pred, labels, mask, c = seg
  cm = confusion(pred, labels, mask, c)
  assert cm.shape == (c, c) and cm.min() >= 0
  assert cm.sum() == mask.sum()
  for per_class in (
    metrics.pixel_accuracy_per_class(cm),
    metrics.dice_per_class(cm),
    metrics.iou_per_class(cm),
  ):
    assert in_unit_interval_or_nan(per_class)
  summary = metrics.summarize(cm, [f"c{i}" for i in range(c)])
  for key in ("mpa", "mean_dice", "mean_iou"):
    assert summary[key] is None or 0.0 <= summary[key] <= 1.0
    assert (summary[key] is None) == (mask.sum() == 0)  # only an empty mask has no score


@SETTINGS
@given(seg=segmentations())
def test_perfect_prediction_scores_one(seg):
  _, labels, mask, c = seg
  mask = np.ones_like(mask)
  cm = confusion(labels, labels, mask, c)
  summary = metrics.summarize(cm, [f"c{i}" for i in range(c)])
  assert summary["mpa"] == summary["mean_dice"] == summary["mean_iou"] == 1.0
  present = set(np.unique(labels).tolist())
  assert {i for i in range(c) if summary["pixel_accuracy"][f"c{i}"] is not None} == present


@SETTINGS
@given(
  shape=st.tuples(st.integers(1, 3), st.integers(2, 4), st.integers(1, 4), st.integers(1, 4)),
  c=st.integers(2, 5),
  seed=st.integers(0, 2**16),
)
def test_temporal_consistency_is_a_fraction(shape, c, seed):
  rng = np.random.default_rng(seed)
  seg = rng.integers(0, c, size=shape)
  mask = rng.uniform(size=shape) < 0.7
  consistency = metrics.temporal_consistency(seg, mask)
  assert consistency.shape == (shape[1] - 1,)
  assert in_unit_interval_or_nan(consistency)
  constant = metrics.temporal_consistency(np.broadcast_to(seg[:, :1], shape), np.ones(shape))
  np.testing.assert_array_equal(constant, np.ones(shape[1] - 1))
