"""nifti_io: reorientation to RAS, round trips back to the input grid, clear errors."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from nibabel import orientations

from fcslstm_jax.data import nifti_io
from fcslstm_jax.errors import DataError

CANONICAL_AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 2.0, 0, 20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])


def stored_as(canonical, canonical_affine, codes):
  """The array and affine a file in orientation ``codes`` holds for a canonical (RAS) volume."""
  transform = orientations.ornt_transform(
    orientations.axcodes2ornt("RAS"), orientations.axcodes2ornt(codes)
  )
  data = orientations.apply_orientation(canonical, transform)
  return data, canonical_affine @ orientations.inv_ornt_aff(transform, canonical.shape)


def write(path, data, affine, dtype=None):
  img = nib.Nifti1Image(np.asarray(data, dtype=dtype or np.asarray(data).dtype), affine)
  nib.save(img, str(path))
  return str(path)


def canonical_volume(shape=(4, 5, 6), seed=0):
  return np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.int16)


def test_las_file_is_flipped_to_ras(tmp_path):
  canonical = canonical_volume()
  flip = np.eye(4)
  flip[0, 0], flip[0, 3] = -1, canonical.shape[0] - 1
  path = write(tmp_path / "las.nii.gz", canonical[::-1], CANONICAL_AFFINE @ flip)
  assert nib.aff2axcodes(nib.load(path).affine) == ("L", "A", "S")
  vol = nifti_io.load_volume(path)
  np.testing.assert_array_equal(vol.data, canonical)
  np.testing.assert_allclose(vol.affine, CANONICAL_AFFINE, atol=1e-5)
  assert vol.data.dtype == np.float32
  assert vol.ref.shape == canonical.shape


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LPS", "PSR", "ILA"])
@pytest.mark.parametrize("suffix,dtype", [(".nii", np.int16), (".nii.gz", np.float32)])
def test_orientations_suffixes_dtypes(tmp_path, codes, suffix, dtype):
  canonical = canonical_volume()
  data, affine = stored_as(canonical, CANONICAL_AFFINE, codes)
  path = write(tmp_path / f"x{suffix}", data, affine, dtype)
  vol = nifti_io.load_volume(path)
  assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
  np.testing.assert_array_equal(vol.data, canonical)
  np.testing.assert_allclose(vol.affine, CANONICAL_AFFINE, atol=1e-4)
  np.testing.assert_array_equal(nifti_io.to_original_orientation(vol.data, vol.ref), data)


def test_save_like_writes_on_original_grid(tmp_path):
  canonical = canonical_volume()
  data, affine = stored_as(canonical, CANONICAL_AFFINE, "LPS")
  vol = nifti_io.load_volume(write(tmp_path / "t1.nii.gz", data, affine))
  prediction = (vol.data > 500).astype(np.int32) + 1
  out = tmp_path / "pred" / "seg.nii.gz"
  nifti_io.save_like(out, prediction, vol.ref)
  written = nib.load(str(out))
  assert written.get_data_dtype() == np.uint8
  np.testing.assert_allclose(written.affine, affine, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(written.dataobj), (data > 500).astype(np.uint8) + 1)
  assert sorted(os.listdir(out.parent)) == ["seg.nii.gz"]  # no temporary file left


def test_save_like_uses_int16_for_large_labels(tmp_path):
  vol = nifti_io.load_volume(write(tmp_path / "t1.nii", canonical_volume(), CANONICAL_AFFINE))
  nifti_io.save_like(tmp_path / "seg.nii", np.full(vol.data.shape, 300), vol.ref)
  assert nib.load(str(tmp_path / "seg.nii")).get_data_dtype() == np.int16


def test_save_like_refuses_float(tmp_path):
  vol = nifti_io.load_volume(write(tmp_path / "t1.nii", canonical_volume(), CANONICAL_AFFINE))
  with pytest.raises(ValueError):
    nifti_io.save_like(tmp_path / "seg.nii", vol.data, vol.ref)


def test_trailing_singleton_dimension_is_dropped(tmp_path):
  canonical = canonical_volume()
  path = write(tmp_path / "x.nii", canonical[..., None], CANONICAL_AFFINE)
  assert nifti_io.load_volume(path).data.shape == canonical.shape


def test_labels_are_int32(tmp_path):
  path = write(
    tmp_path / "dseg.nii.gz", np.arange(24).reshape(2, 3, 4) % 4, CANONICAL_AFFINE, np.float32
  )
  vol = nifti_io.load_volume(path, kind="labels")
  assert vol.data.dtype == np.int32
  np.testing.assert_array_equal(vol.data, np.arange(24).reshape(2, 3, 4) % 4)


def _raises_naming(path, **kwargs):
  with pytest.raises(DataError) as info:
    nifti_io.load_volume(path, **kwargs)
  assert str(path) in str(info.value)
  return str(info.value)


def test_error_missing_file(tmp_path):
  _raises_naming(tmp_path / "nope.nii.gz")


def test_error_not_nifti(tmp_path):
  path = tmp_path / "x.nii.gz"
  path.write_text("hello, not an image")
  _raises_naming(path)


def test_error_wrong_suffix(tmp_path):
  path = tmp_path / "x.mgz"
  path.write_bytes(b"\0" * 400)
  _raises_naming(path)


def test_error_truncated_gzip(tmp_path):
  full = write(tmp_path / "full.nii.gz", canonical_volume((20, 20, 20)), CANONICAL_AFFINE)
  raw = open(full, "rb").read()
  path = tmp_path / "cut.nii.gz"
  path.write_bytes(raw[: len(raw) // 2])
  assert "truncated" in _raises_naming(path)


def test_error_truncated_nii(tmp_path):
  full = write(tmp_path / "full.nii", canonical_volume((20, 20, 20)), CANONICAL_AFFINE)
  raw = open(full, "rb").read()
  path = tmp_path / "cut.nii"
  path.write_bytes(raw[: len(raw) - 1000])
  _raises_naming(path)


def test_error_4d(tmp_path):
  path = write(tmp_path / "bold.nii.gz", np.zeros((3, 3, 3, 2), np.int16), CANONICAL_AFFINE)
  assert "3D" in _raises_naming(path)


def test_error_memory_limit_checked_before_reading(tmp_path):
  path = write(tmp_path / "big.nii.gz", np.zeros((10, 10, 10), np.int16), CANONICAL_AFFINE)
  # Keep only the header: if data were read first, a truncation error would come instead.
  with gzip.open(path, "rb") as f:
    header_only = f.read(352)
  with open(path, "wb") as f:
    f.write(gzip.compress(header_only))
  assert "limit" in _raises_naming(path, max_bytes=1000)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_error_non_finite(tmp_path, bad):
  data = np.ones((3, 3, 3), np.float32)
  data[1, 1, 1] = bad
  _raises_naming(write(tmp_path / "x.nii.gz", data, CANONICAL_AFFINE))


def test_error_non_integer_labels(tmp_path):
  data = np.zeros((3, 3, 3), np.float32)
  data[0, 0, 0] = 1.5
  assert "integer" in _raises_naming(
    write(tmp_path / "dseg.nii", data, CANONICAL_AFFINE), kind="labels"
  )


def test_read_header_does_not_need_data(tmp_path):
  path = write(tmp_path / "x.nii", np.zeros((4, 5, 6), np.int16), CANONICAL_AFFINE)
  assert nifti_io.read_header(path) == ((4, 5, 6), np.dtype(np.int16))


AXES = st.permutations([0, 1, 2])
SIGNS = st.tuples(*[st.sampled_from([-1, 1])] * 3)


@settings(max_examples=25, deadline=None)
@given(
  axes=AXES,
  signs=SIGNS,
  shape=st.tuples(*[st.integers(1, 5)] * 3),
  zooms=st.tuples(*[st.floats(0.5, 3.0)] * 3),
  gz=st.booleans(),
)
def test_property_round_trip(tmp_path_factory, axes, signs, shape, zooms, gz):
  """load -> to_original_orientation -> save_like reproduces the stored array and affine."""
  tmp = tmp_path_factory.mktemp("rt")
  ornt = np.array([[a, s] for a, s in zip(axes, signs)], dtype=float)
  canonical = canonical_volume(shape)
  canonical_affine = np.diag(list(zooms) + [1.0])
  canonical_affine[:3, 3] = [-3.0, 7.0, 1.0]
  codes = "".join(orientations.ornt2axcodes(ornt))
  data, affine = stored_as(canonical, canonical_affine, codes)
  suffix = ".nii.gz" if gz else ".nii"
  vol = nifti_io.load_volume(write(tmp / f"x{suffix}", data, affine))
  np.testing.assert_array_equal(vol.data, canonical)
  np.testing.assert_allclose(vol.affine, canonical_affine, atol=1e-4)
  np.testing.assert_array_equal(nifti_io.to_original_orientation(vol.data, vol.ref), data)
  out = tmp / f"y{suffix}"
  nifti_io.save_like(out, vol.data.astype(np.int32), vol.ref)
  written = nib.load(str(out))
  np.testing.assert_array_equal(np.asarray(written.dataobj), data)
  np.testing.assert_allclose(written.affine, affine, atol=1e-4)
