"""fcslstm_jax.data.study: BIDS-like longitudinal loading, ordering, masks, protocol splits
and errors."""

import dataclasses
import gzip
import json
import pathlib

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations

from fcslstm_jax.cli import preview
from fcslstm_jax.data import intensity
from fcslstm_jax.data import layout
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import DataError

SHAPE = (8, 9, 6)  # canonical [X, Y, Z]
AFFINE = np.array([[1.2, 0, 0, -5.0], [0, 1.0, 0, -4.0], [0, 0, 2.0, -6.0], [0, 0, 0, 1]])
LABELED_Z = (2, 3)
TINY = protocol.Protocol(
  name="tiny",
  num_timepoints=3,
  ages=(0.0, 6.0, 12.0),
  train_timepoints=(0, 2),
  test_timepoints=(1,),
)
DENSE = dataclasses.replace(TINY, labeled_slices_per_volume=100)  # every labeled slice counts


def write(path, canonical, codes="RAS", dtype=None, affine=AFFINE):
  """Writes a canonical [X, Y, Z] array as a file stored in orientation ``codes``."""
  transform = orientations.ornt_transform(
    orientations.axcodes2ornt("RAS"), orientations.axcodes2ornt(codes)
  )
  stored = orientations.apply_orientation(canonical, transform)
  stored_affine = affine @ orientations.inv_ornt_aff(transform, canonical.shape)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(stored.astype(dtype or canonical.dtype), stored_affine), str(path))
  return path


def canonical_image(seed):
  """A head-like volume: noisy background, brighter block with structure."""
  rng = np.random.default_rng(seed)
  img = rng.uniform(0, 20, size=SHAPE)
  img[1:-1, 1:-1, :] += rng.uniform(300, 1000, size=(SHAPE[0] - 2, SHAPE[1] - 2, SHAPE[2]))
  return img.astype(np.float32)


def canonical_labels(seed):
  rng = np.random.default_rng(seed)
  labels = np.zeros(SHAPE, np.int16)
  for z in LABELED_Z:
    labels[:, :, z] = rng.integers(0, 4, size=SHAPE[:2])
    labels[3, 3, z] = 2  # never an all-background slice
  return labels


def make_dataset(
  root,
  subjects=("01",),
  sessions=(("00mo", 0), ("06mo", 6), ("12mo", 12)),
  codes="RAS",
  suffix=".nii.gz",
  dtype=np.int16,
  tsv=False,
  labels=True,
  modalities=("T1w", "T2w"),
):
  """Writes a small dataset; returns {(sub, ses): (canonical images dict, labels)}."""
  root = pathlib.Path(root)
  truth = {}
  for i, sub in enumerate(subjects):
    for j, (ses, age) in enumerate(sessions):
      anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
      images = {}
      for k, mod in enumerate(modalities):
        images[mod] = canonical_image([i, j, k])
        write(anat / f"sub-{sub}_ses-{ses}_{mod}{suffix}", images[mod], codes, dtype)
      lab = canonical_labels([i, j]) if labels else None
      if labels:
        write(
          root
          / "derivatives"
          / "manual"
          / f"sub-{sub}"
          / f"ses-{ses}"
          / "anat"
          / f"sub-{sub}_ses-{ses}_dseg{suffix}",
          lab,
          codes,
          np.uint8,
        )
      truth[sub, ses] = (images, lab)
    if tsv:
      rows = "".join(f"ses-{ses}\t{age}\n" for ses, age in sessions)
      (root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tage\n" + rows)
  return truth


@pytest.mark.parametrize(
  "codes,suffix,dtype",
  [("RAS", ".nii", np.float32), ("LAS", ".nii.gz", np.int16), ("PIR", ".nii.gz", np.float32)],
)
def test_loader_returns_reoriented_arrays(tmp_path, codes, suffix, dtype):
  truth = make_dataset(tmp_path, codes=codes, suffix=suffix, dtype=dtype)
  (subject,) = study.load_dataset(tmp_path, DENSE)
  assert subject.subject_id == "01"
  assert [s.label for s in subject.sessions] == ["00mo", "06mo", "12mo"]
  for session in subject.sessions:
    images, labels = truth["01", session.label]
    assert session.image.shape == SHAPE + (2,)
    assert session.image.dtype == np.float32
    np.testing.assert_allclose(session.affine, AFFINE, atol=1e-4)
    np.testing.assert_array_equal(session.labels, labels)
    np.testing.assert_array_equal(session.counted_slices, LABELED_Z)
    for c, mod in enumerate(("T1w", "T2w")):
      expected = intensity.normalize_intensity(images[mod].astype(dtype))
      np.testing.assert_allclose(session.image[..., c], expected, atol=1e-6)
    assert session.paths["T1w"].endswith(f"_T1w{suffix}")


def test_sessions_ordered_by_number_in_label(tmp_path):
  make_dataset(tmp_path, sessions=(("12mo", 12), ("3mo", 3), ("6mo", 6)))
  (subject,) = study.load_dataset(tmp_path)
  assert [s.label for s in subject.sessions] == ["3mo", "6mo", "12mo"]  # not "12mo" first
  assert [s.age for s in subject.sessions] == [3, 6, 12]


def test_sessions_ordered_by_tsv_age(tmp_path):
  make_dataset(tmp_path, sessions=(("a", 9), ("b", 1), ("c", 5)), tsv=True)
  (subject,) = study.load_dataset(tmp_path)
  assert [s.label for s in subject.sessions] == ["b", "c", "a"]


def test_label_ages_need_a_unit_and_years_are_twelve_months(tmp_path):
  assert [
    layout.label_age(line)
    for line in ("06mo", "12m", "9months", "1y", "1.5yr", "V06", "T2", "6", "2w")
  ] == [6, 12, 9, 12, 18, None, None, None, None]
  make_dataset(tmp_path / "years", sessions=(("1y", 12), ("06mo", 6)))
  (subject,) = study.load_dataset(tmp_path / "years", TINY)
  assert [(s.label, s.age) for s in subject.sessions] == [("06mo", 6), ("1y", 12)]
  make_dataset(tmp_path / "visits", sessions=(("T1", 6), ("T2", 12)))
  with pytest.raises(DataError, match="cannot tell the session's age") as info:
    study.load_dataset(tmp_path / "visits", TINY)
  assert "ses-T1" in str(info.value) and "\n" not in str(info.value)


def test_modalities_are_configurable(tmp_path):
  truth = make_dataset(tmp_path)
  (subject,) = study.load_dataset(tmp_path, dataclasses.replace(TINY, modalities=("T2w",)))
  assert subject.sessions[0].image.shape == SHAPE + (1,)
  expected = intensity.normalize_intensity(truth["01", "00mo"][0]["T2w"].astype(np.int16))
  np.testing.assert_allclose(subject.sessions[0].image[..., 0], expected, atol=1e-6)


def test_normalize_intensity_maps_head_percentiles_to_unit_range():
  vol = canonical_image(0) * 3.7 + 100  # gain and offset must not matter
  out = intensity.normalize_intensity(vol)
  assert out.min() == 0.0 and out.max() == 1.0
  np.testing.assert_allclose(out, intensity.normalize_intensity(canonical_image(0)), atol=1e-5)
  head = out[1:-1, 1:-1, :]
  assert 0.3 < np.median(head) < 0.7  # background did not drag the percentiles down
  assert np.all(out[0] < 0.05)


def test_missing_session_is_invalid_and_zero(tmp_path):
  make_dataset(tmp_path, sessions=(("00mo", 0), ("12mo", 12)))
  (subject,) = study.load_dataset(tmp_path, TINY)
  assert [s is not None for s in subject.timepoints] == [True, False, True]
  assert len(sequences.make_sequences([subject], TINY, "test")) == 0  # nothing held out
  for split in ("train", "all"):
    s = sequences.make_sequences([subject], TINY, split)
    assert len(s) and np.all(s.valid == [True, False, True])
    assert np.all(s.images[:, 1] == 0) and np.all(s.label_mask[:, 1] == 0)
    assert np.any(s.images[:, 0] != 0)


def test_train_split_hides_test_labels(tmp_path):
  truth = make_dataset(tmp_path)
  subjects = study.load_dataset(tmp_path, TINY)
  train = sequences.make_sequences(subjects, TINY, "train")
  test = sequences.make_sequences(subjects, TINY, "test")
  z = LABELED_Z[1]  # 'center' of each session's labeled slices (2, 3)
  for s in (train, test):
    assert s.images.shape == (1, 3) + SHAPE[:2] + (2,)
    assert s.labels.dtype == np.int32 and s.label_mask.dtype == np.float32
    np.testing.assert_array_equal(s.slice_index, [z])
    assert s.subject_ids == ("01",)
  np.testing.assert_array_equal(train.label_mask[0].any(axis=(1, 2)), [True, False, True])
  np.testing.assert_array_equal(test.label_mask[0].any(axis=(1, 2)), [False, True, False])
  assert np.all(train.labels[:, 1] == 0)  # held-out labels are not even in the array
  np.testing.assert_array_equal(test.labels[0, 1], truth["01", "06mo"][1][:, :, z])
  np.testing.assert_array_equal(train.labels[0, 2], truth["01", "12mo"][1][:, :, z])
  np.testing.assert_allclose(train.images, test.images)  # all time points are inputs


def test_only_labeled_slices_count(tmp_path):
  make_dataset(tmp_path)
  proto = protocol.Protocol(
    name="x",
    num_timepoints=3,
    ages=(0.0, 6.0, 12.0),
    train_timepoints=(0, 1, 2),
    slice_selection=(0, 2),
  )
  subjects = study.load_dataset(tmp_path, proto)
  assert all(s.counted_slices == (2,) for s in subjects[0].sessions)  # slice 0 has no labels
  s = sequences.make_sequences(subjects, proto, "train")
  np.testing.assert_array_equal(s.slice_index, [2])
  assert s.label_mask.all()  # slice 2 is labeled everywhere (background included)
  # Said per session: slice_selection z=0 (canonical RAS z) has no label.
  assert len(subjects[0].warnings) == 3
  for ses, line in zip(("00mo", "06mo", "12mo"), subjects[0].warnings):
    assert line.startswith(f"sub-01 ses-{ses}: ") and f"ses-{ses}_dseg" in line
    assert "no label at slice_selection z=[0] (canonical RAS z" in line
    assert "its labeled slices: [2, 3]" in line


def test_all_split_covers_every_slice_and_labeled_voxel(tmp_path):
  make_dataset(tmp_path, subjects=("01", "02"))
  subjects = study.load_dataset(tmp_path, DENSE)
  s = sequences.make_sequences(subjects, DENSE, "all")
  assert len(s) == 2 * SHAPE[2]
  assert s.subject_ids == ("01",) * SHAPE[2] + ("02",) * SHAPE[2]
  np.testing.assert_array_equal(s.slice_index, list(range(SHAPE[2])) * 2)
  per_slice = s.label_mask.any(axis=(1, 2, 3))
  np.testing.assert_array_equal(np.flatnonzero(per_slice[: SHAPE[2]]), LABELED_Z)
  assert s.label_mask[per_slice].all()


def test_center_selection_spreads_several_slices(tmp_path):
  make_dataset(tmp_path)
  two = protocol.Protocol(
    name="x", num_timepoints=3, ages=(0.0, 6.0, 12.0), labeled_slices_per_volume=2
  )
  (subject,) = study.load_dataset(tmp_path, two)
  assert all(s.counted_slices == LABELED_Z for s in subject.sessions)
  (subject,) = study.load_dataset(tmp_path, TINY)
  assert all(s.counted_slices == (LABELED_Z[1],) for s in subject.sessions)


def test_unlabeled_dataset_has_no_training_sequences(tmp_path):
  make_dataset(tmp_path, labels=False)
  subjects = study.load_dataset(tmp_path, TINY)
  assert subjects[0].sessions[0].labels is None
  assert len(sequences.make_sequences(subjects, TINY, "train")) == 0
  counts = sequences.split_counts(subjects, TINY, "train")
  assert counts.sum() == 0
  with pytest.raises(DataError, match="no labeled voxel at the training time points"):
    sequences.check_training_labels(counts, TINY, tmp_path)
  assert len(sequences.make_sequences(subjects, TINY, "all")) == SHAPE[2]  # still segmented


def test_a_class_without_training_voxels_is_refused(tmp_path):
  make_dataset(tmp_path)
  five = dataclasses.replace(TINY, num_classes=5, class_names=("bg", "a", "b", "c", "d"))
  counts = sequences.split_counts(study.load_dataset(tmp_path, five), five, "train")
  with pytest.raises(DataError, match=r"class d \(4\) has no labeled voxel"):
    sequences.check_training_labels(counts, five, tmp_path)


def test_modality_on_another_grid_is_resampled_onto_the_first(tmp_path):
  truth = make_dataset(tmp_path)
  t2 = _t1(tmp_path).with_name("sub-01_ses-06mo_T2w.nii.gz")
  shifted = AFFINE.copy()
  shifted[0, 3] += 2 * AFFINE[0, 0]  # two voxels along x
  write(t2, truth["01", "06mo"][0]["T2w"], affine=shifted)
  (subject,) = study.load_dataset(tmp_path, TINY)
  image = subject.timepoints[1].image[..., 1]
  expected = intensity.normalize_intensity(truth["01", "06mo"][0]["T2w"])
  np.testing.assert_allclose(image[2:], expected[:-2], atol=1e-5)  # moved by whole voxels
  assert np.all(image[:2] == 0)  # outside the T2w's field of view


def test_sessions_on_different_grids_share_one_working_grid(tmp_path):
  make_dataset(tmp_path)
  bigger = (9, 9, 6)
  for mod in ("T1w", "T2w"):
    write(
      _t1(tmp_path, "12mo").with_name(f"sub-01_ses-12mo_{mod}.nii.gz"), np.ones(bigger, np.float32)
    )
  write(_dseg(tmp_path, "12mo"), np.zeros(bigger, np.uint8))
  (subject,) = study.load_dataset(tmp_path, TINY, spacing="native")
  assert subject.grid.shape == bigger  # covers the larger session
  assert all(s.image.shape == bigger + (2,) for s in subject.sessions)
  assert np.all(subject.timepoints[0].image[:, -1] == 0)  # outside the first session's view


# ------------------------------------------------------------------------------ errors


def _t1(root, ses="06mo"):
  return pathlib.Path(root) / "sub-01" / f"ses-{ses}" / "anat" / f"sub-01_ses-{ses}_T1w.nii.gz"


def _dseg(root, ses="06mo"):
  return (
    pathlib.Path(root)
    / "derivatives"
    / "manual"
    / "sub-01"
    / f"ses-{ses}"
    / "anat"
    / f"sub-01_ses-{ses}_dseg.nii.gz"
  )


def assert_error_names(path, root, **kwargs):
  with pytest.raises(DataError) as info:
    study.load_dataset(root, **kwargs)
  assert str(path) in str(info.value), str(info.value)
  return str(info.value)


def test_error_no_subjects(tmp_path):
  (tmp_path / "derivatives").mkdir()
  assert "no subjects" in assert_error_names(tmp_path, tmp_path)


def test_error_missing_modality(tmp_path):
  make_dataset(tmp_path)
  t2 = _t1(tmp_path).with_name("sub-01_ses-06mo_T2w.nii.gz")
  t2.unlink()
  assert "T2w" in assert_error_names(t2, tmp_path)


def test_error_modality_outside_the_first_ones_view(tmp_path):
  make_dataset(tmp_path)
  t2 = _t1(tmp_path).with_name("sub-01_ses-06mo_T2w.nii.gz")
  shifted = AFFINE.copy()
  shifted[0, 3] += 300.0
  write(t2, canonical_image(1), affine=shifted)
  assert "does not overlap" in assert_error_names(t2, tmp_path)


def test_error_nan_voxels(tmp_path):
  make_dataset(tmp_path)
  img = canonical_image(0)
  img[2, 2, 2] = np.nan
  write(_t1(tmp_path), img)
  assert "NaN" in assert_error_names(_t1(tmp_path), tmp_path)


def test_error_labels_out_of_range(tmp_path):
  make_dataset(tmp_path)
  labels = canonical_labels(0)
  labels[0, 0, 2] = 4
  write(_dseg(tmp_path), labels, dtype=np.uint8)
  assert "0..3" in assert_error_names(_dseg(tmp_path), tmp_path)


def test_error_negative_labels(tmp_path):
  make_dataset(tmp_path)
  labels = canonical_labels(0)
  labels[0, 0, 2] = -1
  write(_dseg(tmp_path), labels, dtype=np.int16)
  assert_error_names(_dseg(tmp_path), tmp_path)


def test_error_non_integer_labels(tmp_path):
  make_dataset(tmp_path)
  labels = canonical_labels(0).astype(np.float32)
  labels[0, 0, 2] = 0.5
  write(_dseg(tmp_path), labels)
  assert "integer" in assert_error_names(_dseg(tmp_path), tmp_path)


def test_error_unreadable_file(tmp_path):
  make_dataset(tmp_path)
  _t1(tmp_path).write_bytes(b"this is not a NIfTI file at all" * 20)
  assert_error_names(_t1(tmp_path), tmp_path)


def test_error_truncated_file(tmp_path):
  make_dataset(tmp_path)
  raw = _t1(tmp_path).read_bytes()
  _t1(tmp_path).write_bytes(raw[: len(raw) * 2 // 3])
  assert "truncated" in assert_error_names(_t1(tmp_path), tmp_path)


def test_error_4d_image(tmp_path):
  make_dataset(tmp_path)
  write(_t1(tmp_path), np.ones(SHAPE + (3,), np.float32))
  assert "3D" in assert_error_names(_t1(tmp_path), tmp_path)


def test_error_memory_limit_before_loading(tmp_path):
  make_dataset(tmp_path)
  write(_t1(tmp_path), np.zeros((64, 64, 64), np.float32))
  with gzip.open(_t1(tmp_path)) as f:
    header = f.read(352)
  _t1(tmp_path).write_bytes(gzip.compress(header))  # header only: data would fail to read
  assert "limit" in assert_error_names(_t1(tmp_path), tmp_path, max_bytes=100_000)


def test_error_ambiguous_time_point(tmp_path):
  make_dataset(tmp_path, sessions=(("05mo", 5), ("06mo", 6)))
  with pytest.raises(DataError, match="sub-01.*05mo and 06mo both fit time point 2"):
    study.load_dataset(tmp_path, TINY)


def test_cli_preview_on_folder(tmp_path):
  make_dataset(tmp_path / "ds")
  out = tmp_path / "preview.png"
  # Sessions 0, 6, 12 months: BRIC time points 1, 3, 5; 3 and 9 months are missing.
  assert (
    preview.main(["--data-dir", str(tmp_path / "ds"), "--protocol", "bric", "--preview", str(out)])
    == 0
  )
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_data_errors(tmp_path, capsys):
  assert preview.main(["--data-dir", str(tmp_path)]) == 2
  assert str(tmp_path) in capsys.readouterr().err


# ------------------------------------------------------- sessions of other slice spacings


def spacing_study(root, ref_dz, ref_z, ses_dz, ses_z, labeled, origin=(0.0, 0.0)):
  """Two sessions of one subject (0 and 12 months, both labeled): the reference with
  ``ref_z`` slices ``ref_dz`` mm apart, the later one ``ses_z`` slices ``ses_dz`` mm apart
  and labels on its slices ``labeled`` (label k + 1 on slice k, so a slice's labels say
  where they came from). ``origin``: the z (mm) of each session's slice 0. Returns the
  later session's labels."""
  later = None
  for (ses, dz, nz, z0), labels_at in (
    (("00mo", ref_dz, ref_z, origin[0]), [0]),
    (("12mo", ses_dz, ses_z, origin[1]), labeled),
  ):
    affine = np.diag([2.0, 2.0, dz, 1.0])
    affine[2, 3] = z0
    shape = (6, 5, nz)
    anat = root / "sub-01" / f"ses-{ses}" / "anat"
    image = canonical_image(nz)[:6, :5, :1] * np.ones(shape)
    for mod in ("T1w", "T2w"):
      write(anat / f"sub-01_ses-{ses}_{mod}.nii.gz", image, dtype=np.int16, affine=affine)
    labels = np.zeros(shape, np.uint8)
    for k in labels_at:
      labels[:, :, k] = 1 + k % 3
      labels[0, 0, k] = 1 + (k + 1) % 3  # not uniform: in-plane placement is checked too
    write(
      root
      / "derivatives"
      / "m"
      / "sub-01"
      / f"ses-{ses}"
      / "anat"
      / f"sub-01_ses-{ses}_dseg.nii.gz",
      labels,
      dtype=np.uint8,
      affine=affine,
    )
    later = labels
  return later


TWO = dataclasses.replace(
  TINY, ages=(0.0, 12.0), num_timepoints=2, train_timepoints=(0, 1), test_timepoints=()
)
TWO_DENSE = dataclasses.replace(TWO, labeled_slices_per_volume=100)


def placed_slices(session):
  return np.flatnonzero(session.label_mask.any(axis=(0, 1))).tolist()


def test_fine_session_labels_on_a_coarse_reference_each_on_its_nearest_slice(tmp_path):
  """Reference 3 mm, later session 1 mm labeled on all 12 slices: 4 working slices hold the
  labels of the 4 nearest source slices exactly; the 8 others are named in a warning."""
  truth = spacing_study(tmp_path, 3.0, 4, 1.0, 12, range(12), origin=(0.0, -1.0))
  (subject,) = study.load_dataset(tmp_path, TWO_DENSE)
  later = subject.timepoints[1]
  assert placed_slices(later) == [0, 1, 2, 3]
  for k in range(4):  # working slice k (z = 3k mm) <- session slice 3k + 1 (z = 3k mm)
    np.testing.assert_array_equal(later.labels[:, :, k], truth[:, :, 3 * k + 1])
  assert later.counted_slices == (1, 4, 7, 10)
  (line,) = subject.warnings
  assert line.startswith("sub-01 ses-12mo: ") and "8 labeled slice(s) not used" in line
  assert "z=0 shares working slice 0 with z=1 (kept)" in line and "z=11 shares" in line
  assert "1 mm apart, the working grid's 3 mm" in line
  loaded = study.load_study(tmp_path, TWO_DENSE)
  assert sequences.describe_warnings(loaded) == [f"warning: {line}"]


def test_coarse_session_label_on_a_fine_reference_lands_on_one_slice(tmp_path):
  """Reference 1 mm, later session 3 mm labeled at its slice 1 (z = 3 mm): the labels go to
  working slice 4 (z = 3 mm) alone, not to the interpolated slices 3 and 5 beside it."""
  truth = spacing_study(tmp_path, 1.0, 12, 3.0, 4, [1], origin=(-1.0, 0.0))
  (subject,) = study.load_dataset(tmp_path, TWO)
  later = subject.timepoints[1]
  assert placed_slices(later) == [4]
  np.testing.assert_array_equal(later.labels[:, :, 4], truth[:, :, 1])
  assert subject.warnings == ()


@pytest.mark.parametrize("ref_dz, ses_dz, lost", [(1.0, 1.05, 0), (1.05, 1.0, 1)])
def test_nearly_equal_slice_spacings_neither_copy_nor_drop_silently(tmp_path, ref_dz, ses_dz, lost):
  """1.0 vs 1.05 mm, every slice labeled: each labeled slice on one working slice; where
  two fall on one working slice, one is kept and the other named."""
  n = 20
  spacing_study(tmp_path, ref_dz, n, ses_dz, n, range(n))
  (subject,) = study.load_dataset(tmp_path, TWO_DENSE)
  later = subject.timepoints[1]
  assert len(placed_slices(later)) == len(later.counted_slices) == n - lost
  for z, k in zip(later.counted_slices, placed_slices(later)):
    assert later.labels[1, 1, k] == 1 + z % 3  # slice z's own labels
  assert len(subject.warnings) == (1 if lost else 0)
  if lost:
    assert f"{lost} labeled slice(s) not used" in subject.warnings[0]


def test_a_cropped_session_is_no_time_point_outside_its_view(tmp_path):
  """The later session covers working slices 0..3 of 12: its blank slices 4..11 are not
  valid time points, in slice sequences (training and inference) and in volumes."""
  from fcslstm_jax.data import patches

  spacing_study(tmp_path, 1.0, 12, 1.0, 4, [1])
  (subject,) = study.load_dataset(tmp_path, TWO)
  view = [True] * 4 + [False] * 8
  np.testing.assert_array_equal(subject.timepoints[1].in_view, view)
  assert subject.timepoints[0].in_view.all()
  for split in ("train", "all"):
    s = sequences.make_sequences([subject], TWO, split)
    np.testing.assert_array_equal(s.valid[:, 1], np.array(view)[s.slice_index])
    assert s.valid[:, 0].all()
    assert not s.images[~s.valid[:, 1], 1].any()  # the blank slices it stands for
  volumes = patches.make_volumes([subject], TWO, "all", shape=(14, 6, 5))  # 1 slice padding
  np.testing.assert_array_equal(volumes.valid[0, 1], [True] * 5 + [False] * 9)
  assert volumes.valid[0, 0].all()
  kept = study.load_dataset(tmp_path, TWO, keep="labeled")[0]  # training keeps z 0 and 1
  np.testing.assert_array_equal(kept.timepoints[1].in_view, [True, True])


def test_labels_train_with_the_image_of_their_own_plane_when_origins_differ(tmp_path):
  """Equal 3 mm slices, the later session's origin 1.4 mm off the reference's: its labeled
  slice 5 (z = 16.4 mm) lands on working slice 5 (z = 15 mm), whose interpolated image is
  47 % slice 4. Training (train.py's loader) must pair the labels with slice 5's own image."""
  import argparse

  from fcslstm_jax.cli import train
  from fcslstm_jax.config import get_config

  sessions = {}
  for ses, z0, labeled in (("00mo", 0.0, 2), ("12mo", 1.4, 5)):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[2, 3] = z0
    shape = (6, 5, 10)
    anat = tmp_path / "sub-01" / f"ses-{ses}" / "anat"
    image = canonical_image(7)[:6, :5, :1] * (1 + np.arange(10))  # every slice its own
    for mod in ("T1w", "T2w"):
      write(anat / f"sub-01_ses-{ses}_{mod}.nii.gz", image, dtype=np.int16, affine=affine)
    labels = np.zeros(shape, np.uint8)
    labels[:, :, labeled] = 2
    dseg = write(
      tmp_path
      / "derivatives"
      / "m"
      / "sub-01"
      / f"ses-{ses}"
      / "anat"
      / f"sub-01_ses-{ses}_dseg.nii.gz",
      labels,
      dtype=np.uint8,
      affine=affine,
    )
    sessions[ses] = layout.SessionFiles(
      label=ses,
      age=0.0,
      images={m: str(anat / f"sub-01_ses-{ses}_{m}.nii.gz") for m in ("T1w", "T2w")},
      dseg=str(dseg),
    )
  (tmp_path / "protocol.json").write_text(json.dumps(TWO.to_json()))
  args = argparse.Namespace(
    dataset=None,
    data_dir=str(tmp_path),
    protocol=None,
    data_seed=0,
    volume=None,
    spacing="native",
    reference="first",
    register="none",
    labels=None,
  )
  loaded = train.load_study(args, get_config("tiny"))
  (subject,) = loaded.subjects
  later = subject.timepoints[1]
  (k,) = np.flatnonzero(later.label_mask.any(axis=(0, 1)))
  assert subject.working_z([k])[0] == 5
  own_image = study.read_session(sessions["12mo"], loaded.protocol, 1 << 30).image  # its own grid
  np.testing.assert_allclose(later.image[:, :, k], own_image[:, :, 5], atol=1e-6)
  # Evaluation interpolates every working slice at its own place, labeled or not.
  (whole,) = study.load_dataset(tmp_path, loaded.protocol, spacing="native")
  f = (15.0 - 1.4) / 3.0 - 4  # working slice 5 lies 0.53 of the way from slice 4 to 5
  blend = (1 - f) * own_image[:, :, 4] + f * own_image[:, :, 5]
  np.testing.assert_allclose(whole.timepoints[1].image[:, :, 5], blend, atol=1e-4)


def test_a_tilted_labeled_plane_keeps_its_own_image():
  """A session tilted 10 degrees about x (registration's map): its labeled plane crosses
  several working slices. The image placed with its labels is that plane's own (every value
  of slice 4), not the working slice's cut through neighbouring slices."""
  from fcslstm_jax.data import grids

  src = grids.Grid((12, 12, 8), np.diag([2.0, 2.0, 3.0, 1.0]))
  work = grids.Grid((12, 12, 8), np.diag([2.0, 2.0, 3.0, 1.0]))
  c, s = np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10))
  world = np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]])
  volume = np.broadcast_to(np.arange(8, dtype=np.float32), (12, 12, 8))[..., None] + 1.0
  k = grids.place_slices([4], src, work, world)[0][4]
  plane = grids.image_plane_on(volume[:, :, 4], src, work, k, world)
  _, inside = grids.slice_on(np.ones((12, 12)), src, work, k, world)
  np.testing.assert_allclose(plane[inside], 5.0)
  cut = grids.resample(volume, src, work, 1, world)[:, :, k]
  assert np.abs(cut[inside] - 5.0).max() > 0.5  # what interpolation at slice k would give
