"""--register moments (fcslstm_jax/data/head_moments.py): a similarity between sessions from the
head outline, recovered from known transforms (on a grown, moved head of the generator:
tests/test_cohort.py, test_registration_aligns_a_moved_session)."""

import dataclasses

import numpy as np
import pytest

from fcslstm_jax.data import grids
from fcslstm_jax.data import head_moments
from fcslstm_jax.data import protocol
from fcslstm_jax.data import study
from fcslstm_jax.synthetic import cohort


def _rotation_z(angle):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _head(grid: grids.Grid, to_head: np.ndarray, rng) -> np.ndarray:
  """``[X, Y, Z, 2]``: an ellipsoidal head (semi-axes 60, 75, 55 mm in head coordinates;
  ``to_head`` maps world mm to them), bright in one modality and mid-grey in the other,
  with a dark interior blob (the outline, not the contrast, must decide) and noise."""
  idx = np.indices(grid.shape).reshape(3, -1).T.astype(np.float64)
  world = idx @ grid.affine[:3, :3].T + grid.affine[:3, 3]
  head = world @ to_head[:3, :3].T + to_head[:3, 3]
  r = np.sqrt(((head / np.array([60.0, 75.0, 55.0])) ** 2).sum(axis=1))
  inside = (r < 1.0).reshape(grid.shape)
  blob = (np.sqrt(((head - [10.0, 0.0, 0.0]) ** 2).sum(axis=1)) < 15).reshape(grid.shape)
  t1 = np.where(inside & ~blob, 0.9, 0.05 * inside)
  t2 = np.where(inside, 0.5, 0.0)
  noise = rng.normal(0.0, 0.02, size=(*grid.shape, 2))
  return np.abs(np.stack([t1, t2], axis=-1) + noise).astype(np.float32)


def _grid(spacing, shape) -> grids.Grid:
  affine = np.diag([*spacing, 1.0])
  affine[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2
  return grids.Grid(shape=tuple(shape), affine=affine)


@pytest.mark.parametrize("angle_deg, scale", [(0.0, 1.0), (6.0, 1.25), (-4.0, 0.85)])
def test_a_known_similarity_is_recovered(angle_deg, scale):
  """The moving head is the reference head scaled, turned about z and shifted in-plane, on
  another grid (other voxel size, a slab through the middle of the head): the returned map
  carries reference points to where they lie in the moving session."""
  rng = np.random.default_rng(0)
  truth = np.eye(4)  # reference world -> moving world
  truth[:3, :3] = scale * _rotation_z(np.deg2rad(angle_deg))
  truth[:3, 3] = [4.0, -3.0, 0.0]
  ref_grid = _grid((1.5, 1.5, 3.0), (110, 130, 20))
  mov_grid = _grid((1.8, 1.6, 3.0), (110, 130, 20))
  ref = _head(ref_grid, np.eye(4), rng)
  mov = _head(mov_grid, np.linalg.inv(truth), rng)
  found = head_moments.register_moments(ref, ref_grid, mov, mov_grid)
  points = np.array([[0.0, 0.0, 0.0], [40.0, 0.0, 10.0], [0.0, -50.0, -10.0], [-30, 30, 0]])
  moved = points @ found[:3, :3].T + found[:3, 3]
  expected = points @ truth[:3, :3].T + truth[:3, 3]
  error = np.linalg.norm(moved - expected, axis=1)
  assert error.max() < 2.0, (found.round(3), error)  # mm; voxels are 1.5-3 mm


def test_no_head_gives_the_identity():
  grid = _grid((2.0, 2.0, 3.0), (20, 20, 4))
  empty = np.zeros((*grid.shape, 2), np.float32)
  np.testing.assert_array_equal(head_moments.register_moments(empty, grid, empty, grid), np.eye(4))


def test_an_implausible_similarity_is_named_and_the_session_placed_by_its_affine(
  tmp_path, monkeypatch
):
  """A misread outline (here: a scale of 3) is not applied: the session keeps its affine
  placement and the subject's warnings say why."""
  config = dataclasses.replace(
    cohort.TINY, num_subjects=1, num_unlabeled=0, ages=(0, 12), age_jitter=0.0,
    protocol={"name": "two", "ages": [0, 12], "train_timepoints": [0, 1]},
  )  # fmt: skip
  root = cohort.generate(tmp_path / "study", seed=1, config=config)
  proto = protocol.get_protocol(None, root)
  wild = np.diag([3.0, 3.0, 3.0, 1.0])
  monkeypatch.setattr(head_moments, "register_moments", lambda *a: wild)
  (subject,) = study.load_dataset(root, proto, register="moments")
  np.testing.assert_array_equal(subject.timepoints[1].to_session, np.eye(4))
  (line,) = [w for w in subject.warnings if "--register moments" in w]
  assert "scaled by 3.00" in line and "placed by its affine alone" in line, line
  assert head_moments.implausible(np.eye(4)) is None
  turned = np.eye(4)
  turned[:3, :3] = _rotation_z(np.deg2rad(45.0))
  assert "turned by 45 degrees" in head_moments.implausible(turned)
