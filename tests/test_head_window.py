"""Training windows around the head (Config.crop_margin, data/head_window.py): a 2D run trains
on a window of every batch that holds each tissue label and nonzero voxel, sized to a multiple
of 32, at a random position around the head."""

import numpy as np
import pytest

from fcslstm_jax.config import get_config
from fcslstm_jax.data import head_window
from fcslstm_jax.data import protocol
from fcslstm_jax.data.sequences import SliceSet
from fcslstm_jax.run_record import RunRecord
from fcslstm_jax.train import loop

CLASSES = ("background", "csf", "gm", "wm")


def head_set(n=4, t=2, shape=(70, 90), rows=(20, 50), cols=(15, 70), seed=0) -> SliceSet:
  """Sequences ``[n, t, *shape, 2]`` that are zero outside a head (``rows`` x ``cols``,
  inclusive), labeled everywhere: background outside, tissue inside."""
  rng = np.random.default_rng(seed)
  images = np.zeros((n, t, *shape, 2), np.float32)
  labels = np.zeros((n, t, *shape), np.int32)
  head = (slice(None), slice(None), slice(rows[0], rows[1] + 1), slice(cols[0], cols[1] + 1))
  images[head] = rng.normal(size=images[head].shape) + 2.0
  labels[head] = rng.integers(1, len(CLASSES), labels[head].shape)
  return SliceSet(
    images=images,
    labels=labels,
    label_mask=np.ones(labels.shape, np.float32),
    valid=np.ones((n, t), bool),
    subject_ids=tuple(f"{j:02d}" for j in range(n)),
    slice_index=np.zeros(n, np.int32),
    session_labels=np.array([[f"{m}mo" for m in range(t)]] * n),
  )


def test_the_window_holds_every_tissue_label_and_nonzero_voxel():
  data = head_set()
  box = head_window.head_box(data.images, data.labels, data.label_mask)
  assert box == ((20, 15), (50, 70))
  window = head_window.plan(box, (70, 90), margin=4, multiple=32)
  assert window.size == (64, 64)  # 39 x 64 rows / columns with the margin, rounded up to 32
  batch = {k: getattr(data, k) for k in loop.BATCH_KEYS}
  rng = np.random.default_rng(1)
  corners = set()
  for _ in range(50):
    corner = head_window.start(window, rng)
    corners.add(corner)
    cut = head_window.crop(batch, corner, window.size)
    assert cut["images"].shape == (4, 2, 64, 64, 2) and cut["labels"].shape == (4, 2, 64, 64)
    assert cut["valid"].shape == (4, 2)
    assert (cut["labels"] > 0).sum() == (data.labels > 0).sum()
    assert np.abs(cut["images"]).sum() == pytest.approx(np.abs(data.images).sum(), rel=1e-6)
    # The margin stays inside the window too.
    r, c = corner
    assert r <= window.lo[0] and r + 64 > window.hi[0]
    assert c <= window.lo[1] and c + 64 > window.hi[1]
  assert len(corners) > 5  # the position varies around the head


def test_no_window_where_it_saves_nothing():
  # The head with its margin needs the whole padded size: 60 + 2 x 4 rows -> 96 = pad(70).
  tall = head_set(rows=(5, 64))
  box = head_window.head_box(tall.images, tall.labels, tall.label_mask)
  assert head_window.plan(box, (70, 90), margin=4, multiple=32).size == (70, 64)  # columns only
  everywhere = head_set(rows=(0, 69), cols=(0, 89))
  box = head_window.head_box(everywhere.images, everywhere.labels, everywhere.label_mask)
  assert head_window.plan(box, (70, 90), margin=0, multiple=32) is None
  empty = head_set(rows=(0, -1), cols=(0, -1))
  assert head_window.head_box(empty.images, empty.labels, empty.label_mask) is None
  assert head_window.plan(None, (70, 90), margin=4, multiple=32) is None


def test_every_training_batch_is_cut_to_the_window(tmp_path, monkeypatch):
  """The real loop with the tiny network: every training batch is cut to the window (a spy
  on :func:`head_window.crop` records what the step gets); without ``crop_margin`` none."""
  cut_shapes = []
  real_crop = head_window.crop

  def spy(batch, corner, size):
    out = real_crop(batch, corner, size)
    cut_shapes.append(out["images"].shape)
    return out

  monkeypatch.setattr(loop.head_window, "crop", spy)
  data = head_set()
  config = get_config("tiny", epochs=1, batch_size=2, crop_margin=4)
  logged = []
  result = loop.train_and_evaluate(
    config,
    data,
    data,
    str(tmp_path),
    CLASSES,
    RunRecord(config=config, dataset="synthetic", protocol=protocol.BRIC),
    log=logged.append,
  )
  assert cut_shapes == [(2, 2, 64, 64, 2)] * 2  # two steps, each cut to the window
  assert any("training windows of 64 x 64" in str(line) for line in logged)
  assert np.isfinite(result.train["mpa"]) and np.isfinite(result.test["mpa"])
  # Without crop_margin nothing is cut.
  cut_shapes.clear()
  whole = get_config("tiny", epochs=1, batch_size=2)
  loop.train_and_evaluate(
    whole,
    data,
    data,
    str(tmp_path / "whole"),
    CLASSES,
    RunRecord(config=whole, dataset="synthetic", protocol=protocol.BRIC),
    log=logged.append,
  )
  assert cut_shapes == []
