"""3D + time data: whole volumes of a split, training patches, scoring slabs."""

import dataclasses

import numpy as np
import pytest

from fcslstm_jax.data import patches
from fcslstm_jax.data import protocol
from fcslstm_jax.data import study

PATCH = (8, 16, 16)


@pytest.fixture(scope="module")
def subjects(dataset3d):
  return study.load_study(dataset3d, protocol.BRIC, keep="all").subjects


def test_volumes_hold_only_the_split_labels(subjects):
  p = protocol.BRIC
  train = patches.make_volumes(subjects, p, "train")
  test = patches.make_volumes(subjects, p, "test")
  z, x, y = subjects[0].grid.shape[2], *subjects[0].grid.shape[:2]
  assert train.images.shape == (2, 5, z, x, y, 2)
  for t in range(5):
    seen = t in p.train_timepoints
    assert bool(train.label_mask[:, t].any()) == seen
    assert bool(test.label_mask[:, t].any()) == (t in p.test_timepoints)
    if not seen:
      assert not train.labels[:, t].any()  # held-out labels are not in the array at all
  # One labeled axial slice per session (the paper's protocol): one z of the volume.
  zs = np.flatnonzero(train.label_mask.any(axis=(0, 1, 3, 4)))
  assert len(zs) == 1
  np.testing.assert_array_equal(train.images, test.images)
  # The volume is the sessions' arrays, z first: an axial slice is the 2D path's slice.
  session = subjects[0].timepoints[0]
  np.testing.assert_array_equal(train.images[0, 0, 3], session.image[:, :, 3])


def test_patches_hold_labeled_training_voxels_and_never_held_out_labels(subjects):
  p = protocol.BRIC
  sampler = patches.PatchSampler(patches.make_volumes(subjects, p, "train"), PATCH, seed=0)
  labeled_z = np.flatnonzero(sampler.label_mask.any(axis=(0, 1, 3, 4)))
  held_out = list(p.test_timepoints)
  for epoch in range(20):
    for step in range(2):
      idx = np.array([1, 0]) if step else np.array([0, 1])
      batch = sampler.batch(idx, (epoch, step))
      assert batch["images"].shape == (2, 5) + PATCH + (2,)
      assert batch["labels"].shape == batch["label_mask"].shape == (2, 5) + PATCH
      for k in range(2):
        assert batch["label_mask"][k].sum() > 0  # labeled voxels of training time points
        assert not batch["label_mask"][k][held_out].any()
        assert not batch["labels"][k][held_out].any()
  # Each patch crosses the one labeled slice.
  starts = sampler.starts(np.array([0, 1]), (3, 0))
  assert all(s[0] <= labeled_z[0] < s[0] + PATCH[0] for s in starts)


def test_patches_are_a_function_of_the_key(subjects):
  sampler = patches.PatchSampler(
    patches.make_volumes(subjects, protocol.BRIC, "train"), PATCH, seed=0
  )
  idx = np.array([0, 1])
  a, b = sampler.batch(idx, (2, 1)), sampler.batch(idx, (2, 1))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  spread = {tuple(sampler.starts(idx, (e, 0))[0]) for e in range(30)}
  assert len(spread) > 5  # random positions, not one


def test_patch_start_contains_its_voxel():
  rng = np.random.default_rng(0)
  for _ in range(500):
    shape = rng.integers(4, 30, 3)
    patch = np.minimum(rng.integers(1, 30, 3), shape)
    center = rng.integers(0, shape)
    start = patches.patch_start(center, patch, shape, rng)
    assert np.all(start >= 0) and np.all(start + patch <= shape)
    assert np.all(start <= center) and np.all(center < start + patch)


def test_a_volume_smaller_than_the_patch_is_padded(subjects):
  volumes = patches.make_volumes(subjects, protocol.BRIC, "train")
  d = volumes.images.shape[2]
  sampler = patches.PatchSampler(volumes, (d + 5, 8, 8))
  batch = sampler.batch(np.array([0]), (0, 0))
  assert batch["images"].shape[2] == d + 5
  assert not batch["label_mask"][0, :, d:].any()


def test_slabs_count_every_labeled_voxel_once(subjects):
  volumes = patches.make_volumes(subjects, protocol.BRIC, "train")
  # Several labeled slices, as a densely labeled study would have.
  mask = volumes.label_mask.copy()
  mask[:, :2, 1:10] = 1.0
  volumes = dataclasses.replace(volumes, label_mask=mask)
  for depth in (1, 4, 8):
    slabs = patches.label_slabs(volumes, depth)
    assert slabs.images.shape[2] == depth
    assert slabs.label_mask.sum() == volumes.label_mask.sum()
    assert set(slabs.subject_ids) == set(volumes.subject_ids)


def tiny_volumes(depth, labeled_z, t=2):
  """One subject ``[1, T, depth, 4, 4]`` whose labeled slices are ``labeled_z``."""
  shape = (1, t, depth, 4, 4)
  mask = np.zeros(shape, np.float32)
  mask[:, :, list(labeled_z)] = 1.0
  images = np.broadcast_to(
    np.arange(depth, dtype=np.float32)[:, None, None, None], shape[1:] + (1,)
  )[None].copy()  # image value = z
  return patches.VolumeSet(
    images,
    mask.astype(np.int32),
    mask,
    np.ones((1, t, depth), bool),
    ("a",),
    np.array([["x"] * t]),
    np.zeros((1, 3), np.int32),
  )


@pytest.mark.parametrize("z, start", [(10, 6), (1, 0), (19, 12), (4, 0), (15, 11)])
def test_a_scoring_slab_is_centred_on_its_labeled_slice(z, start):
  """clip(z - depth // 2, 0, D - depth): the labeled slice in the middle of its slab."""
  depth, total = 8, 20
  slabs = patches.label_slabs(tiny_volumes(total, [z]), depth)
  assert len(slabs) == 1
  assert slabs.images[0, 0, 0, 0, 0, 0] == start  # the slab's first slice
  assert int(slabs.offsets[0, 0]) == -start
  (at,) = np.flatnonzero(slabs.label_mask[0, 0].any(axis=(1, 2)))
  assert at == z - start


def test_slabs_of_several_labeled_slices_are_centred_and_count_each_once():
  volumes = tiny_volumes(30, [3, 5, 6, 20, 29])
  slabs = patches.label_slabs(volumes, 8)
  assert slabs.label_mask.sum() == volumes.label_mask.sum()
  firsts = [int(s[0, 0, 0, 0, 0]) for s in slabs.images]
  assert firsts == [0, 16, 22]  # 3..6 centred at 4 (clipped to 0), 20 -> 16, 29 -> 22


def test_slabs_are_centred_on_the_labeled_slices_and_fewest(subjects):
  """One slab per labeled slice, centred on it (clipped inside the volume); labeled slices
  closer than the depth share one slab; slabs placed by a superset of the labeled z (both
  splits' labels) are the same volumes for either split."""
  volumes = patches.make_volumes(subjects, protocol.BRIC, "train")
  d = volumes.images.shape[2]
  (z,) = np.flatnonzero(volumes.label_mask.any(axis=(0, 1, 3, 4)))
  for depth in (2, 3, d - 1):
    slabs = patches.label_slabs(volumes, depth)
    start = int(np.clip(z - depth // 2, 0, d - depth))
    assert len(slabs) == len(volumes)
    np.testing.assert_array_equal(slabs.images, volumes.images[:, :, start : start + depth])
  assert patches.slab_starts([1, 3, 9], 8, 20) == [(0, 1, 3), (5, 9, 9)]
  assert patches.slab_starts([18, 19], 8, 20) == [(12, 18, 19)]
  assert patches.slab_starts([2, 9], 8, 20) == [(2, 2, 9)]
  others = [np.array([0, z, d - 1])] * len(volumes)
  shared = patches.label_slabs(volumes, 4, others)
  assert len(shared) == 3 * len(volumes)
  assert shared.label_mask.sum() == volumes.label_mask.sum()
  np.testing.assert_array_equal(shared.images[1::3], patches.label_slabs(volumes, 4).images)


def test_training_slabs_are_placed_by_training_labels_only(subjects):
  """Where the held-out time point's labeled slice sits must not move the slabs that score
  (and so select checkpoints on) the training split (issue 34)."""
  p = protocol.BRIC
  depth = 4
  (t_held,) = p.test_timepoints

  def moved(subject, shift):  # the held-out session's labels, `shift` slices deeper
    sessions = list(subject.timepoints)
    s = sessions[t_held]
    sessions[t_held] = dataclasses.replace(
      s, labels=np.roll(s.labels, shift, axis=2), label_mask=np.roll(s.label_mask, shift, axis=2)
    )
    return dataclasses.replace(subject, timepoints=sessions)

  runs = [
    patches.training_sets([moved(s, shift) for s in subjects], p, (depth, 16, 16))
    for shift in (0, 5)
  ]
  (_, train_a, test_a), (_, train_b, test_b) = runs
  assert not np.array_equal(test_a.label_mask, test_b.label_mask)  # the change is real
  np.testing.assert_array_equal(train_a.offsets, train_b.offsets)
  np.testing.assert_array_equal(train_a.label_mask, train_b.label_mask)
  np.testing.assert_array_equal(train_a.images, train_b.images)
  # Every labeled voxel of each split is still counted exactly once.
  for split, slabs in (("train", train_a), ("test", test_a)):
    volumes = patches.make_volumes(subjects, p, split)
    assert slabs.label_mask.sum() == volumes.label_mask.sum()
