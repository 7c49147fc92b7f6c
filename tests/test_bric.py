"""The built-in dataset: deterministic, BIDS layout, infant contrast course, protocol masks."""

import dataclasses
import hashlib
import json
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest

from fcslstm_jax import datasets
from fcslstm_jax.cli import preview
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import DataError
from fcslstm_jax.outputs import figures
from fcslstm_jax.synthetic import bric_like

# Reduced size: 2 subjects, 4 axial slices of 64 x 64 at 3 mm (same field of view).
SMALL = bric_like.GenerationConfig(num_subjects=2, grid=(64, 64), num_slices=4, voxel_mm=3.0)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
  return bric_like.generate(tmp_path_factory.mktemp("bric") / "seed0", seed=0, config=SMALL)


DENSE = dataclasses.replace(protocol.BRIC, labeled_slices_per_volume=100)


@pytest.fixture(scope="module")
def subjects(small_dir):
  """Every labeled slice counted (the generator labels the whole slab)."""
  return study.load_dataset(small_dir, DENSE)


def dataset_digest(root):
  """Hash of every file's voxel data, affine and of the text files (not of gzip bytes)."""
  h = hashlib.sha256()
  for path in sorted(pathlib.Path(root).rglob("*")):
    if path.is_dir():
      continue
    h.update(str(path.relative_to(root)).encode())
    if path.name.endswith(".nii.gz"):
      img = nib.load(str(path))
      h.update(np.ascontiguousarray(np.asarray(img.dataobj)).tobytes())
      h.update(img.affine.tobytes())
    else:
      h.update(path.read_bytes())
  return h.hexdigest()


def test_same_seed_same_dataset(small_dir, tmp_path):
  again = bric_like.generate(tmp_path / "again", seed=0, config=SMALL)
  assert dataset_digest(again) == dataset_digest(small_dir)
  other = bric_like.generate(tmp_path / "other", seed=1, config=SMALL)
  assert dataset_digest(other) != dataset_digest(small_dir)


def test_layout_and_description(small_dir):
  t1 = small_dir / "sub-02" / "ses-06mo" / "anat" / "sub-02_ses-06mo_T1w.nii.gz"
  dseg = (
    small_dir
    / "derivatives"
    / "manual"
    / "sub-02"
    / "ses-06mo"
    / "anat"
    / "sub-02_ses-06mo_dseg.nii.gz"
  )
  img = nib.load(str(t1))
  assert img.shape == (64, 64, 4) and img.get_data_dtype() == np.int16
  assert nib.aff2axcodes(img.affine) == ("L", "A", "S")  # the loader has to reorient
  assert nib.load(str(dseg)).get_data_dtype() == np.uint8
  desc = json.loads((small_dir / "dataset_description.json").read_text())
  assert "Generated" in desc["GeneratedBy"][0]["Description"]
  assert "ICBM152" in desc["GeneratedBy"][0]["Description"]
  assert desc["GeneratedBy"][0]["Parameters"]["num_subjects"] == 2
  tsv = (small_dir / "sub-01" / "sub-01_sessions.tsv").read_text().split("\n")
  assert tsv[0] == "session_id\tage" and tsv[1] == "ses-00mo\t0"


def test_every_class_in_every_session(small_dir):
  subjects = study.load_dataset(small_dir, protocol.BRIC)
  assert len(subjects) == 2
  for subject in subjects:
    assert [s.age for s in subject.sessions] == [0, 3, 6, 9, 12]
    z = SMALL.num_slices // 2  # the paper's one labeled slice: the middle of the slab
    for session in subject.sessions:
      assert session.counted_slices == (z,)
      assert set(np.unique(session.labels[:, :, z])) == {0, 1, 2, 3}, session.paths["dseg"]


def _tissue_means(session, z=None):
  """Mean normalized (T1w, T2w) of GM and WM."""
  labels, image = session.labels, session.image
  return {c: image[labels == c].mean(axis=0) for c in (2, 3)}


def test_contrast_inverts_over_time(subjects):
  for subject in subjects:
    wm_minus_gm = np.array([m[3] - m[2] for m in map(_tissue_means, subject.sessions)])  # [T, 2]
    t1, t2 = wm_minus_gm[:, 0], wm_minus_gm[:, 1]
    assert t1[0] < -0.05 and t1[-1] > 0.05, t1  # T1w: WM darker at birth, brighter at 12 mo
    assert t2[0] > 0.05 and t2[-1] < -0.05, t2  # T2w: the reverse
    assert np.all(np.diff(t1) > 0) and np.all(np.diff(t2) < 0)
    assert abs(t1[2]) < min(-t1[0], t1[-1])  # closest to isointense at 6 months


def test_brain_grows(subjects):
  for subject in subjects:
    brain = [int((s.labels > 0).sum()) for s in subject.sessions]
    assert all(b1 > b0 for b0, b1 in zip(brain, brain[1:])), brain


def test_held_out_labels_never_reach_training(small_dir):
  proto = protocol.BRIC
  subjects = study.load_dataset(small_dir, proto)
  train = sequences.make_sequences(subjects, proto, "train")
  test = sequences.make_sequences(subjects, proto, "test")
  assert train.images.shape == (2, 5, 64, 64, 2) and train.valid.all()
  labeled = train.label_mask.any(axis=(2, 3))  # [N, T]
  np.testing.assert_array_equal(labeled, np.tile([True, True, False, True, True], (2, 1)))
  assert not train.labels[:, 2].any()
  np.testing.assert_array_equal(
    test.label_mask.any(axis=(2, 3)), np.tile([False, False, True, False, False], (2, 1))
  )
  assert set(np.unique(test.labels[:, 2])) == {0, 1, 2, 3}


def test_ibis_protocol_uses_three_sessions(small_dir):
  ibis = protocol.IBIS_BUILTIN
  loaded = study.load_study(small_dir, ibis)
  assert [str(u).split(":")[0] for u in loaded.unassigned] == [
    f"sub-{s} ses-{a:02d}mo (age {a})" for s in ("01", "02") for a in (0, 3)
  ]  # named
  s = sequences.make_sequences(loaded.subjects, ibis, "test")
  assert s.images.shape[1] == 3 and s.valid.all()
  np.testing.assert_array_equal(s.label_mask.any(axis=(2, 3))[0], [True, False, False])
  six_months = loaded.subjects[0].sessions[0]
  np.testing.assert_array_equal(s.images[0, 0], six_months.image[:, :, s.slice_index[0]])


def test_preview_png(subjects, tmp_path):
  out = tmp_path / "preview.png"
  figures.subject_preview(out, subjects[0], protocol.BRIC)
  assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


def test_builtin_dir_env(monkeypatch, tmp_path):
  monkeypatch.delenv("FCSLSTM_DATA_DIR", raising=False)
  assert bric_like.builtin_dataset_dir("bric", 3) == pathlib.Path("data") / "bric-v1-seed3"
  monkeypatch.setenv("FCSLSTM_DATA_DIR", str(tmp_path))
  assert bric_like.builtin_dataset_dir("bric", 0) == tmp_path / "bric-v1-seed0"


def test_builtin_dataset_is_generated_once(monkeypatch, tmp_path, small_dir):
  monkeypatch.setenv("FCSLSTM_DATA_DIR", str(tmp_path))
  kwargs = dict(num_subjects=1, grid=(64, 64), num_slices=4, voxel_mm=3.0)
  root, proto = datasets.resolve("bric", generation=bric_like.GenerationConfig(**kwargs))
  assert proto is protocol.BRIC and len(study.load_dataset(root, proto)) == 1
  (folder,) = tmp_path.iterdir()  # nothing else left behind
  assert folder.name.startswith("bric-v1-seed0-")
  marker = folder / "dataset_description.json"
  before = marker.stat().st_mtime_ns
  monkeypatch.setattr(bric_like, "write_dataset", lambda *a: pytest.fail("regenerated"))
  root, proto = datasets.resolve("ibis", generation=bric_like.GenerationConfig(**kwargs))
  assert proto is protocol.IBIS_BUILTIN and study.load_dataset(root, proto)
  assert marker.stat().st_mtime_ns == before
  # Same anatomy as the 2-subject dataset: subject 1 does not depend on how many follow.
  a = nib.load(str(folder / "sub-01/ses-03mo/anat/sub-01_ses-03mo_T2w.nii.gz")).dataobj
  b = nib.load(str(small_dir / "sub-01/ses-03mo/anat/sub-01_ses-03mo_T2w.nii.gz")).dataobj
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stale_cache_is_reported(monkeypatch, tmp_path):
  monkeypatch.setenv("FCSLSTM_DATA_DIR", str(tmp_path))
  folder = bric_like.builtin_dataset_dir("bric", 0)
  folder.mkdir()
  desc = {"GeneratedBy": [{"Parameters": {"seed": 0, "num_subjects": 3}}]}
  (folder / "dataset_description.json").write_text(json.dumps(desc))
  with pytest.raises(DataError, match=str(folder)):
    bric_like.ensure_dataset(seed=0)


def test_interrupted_generation_leaves_nothing(monkeypatch, tmp_path):
  def crash(out_dir, seed, config):
    (pathlib.Path(out_dir) / "sub-01").mkdir()
    raise KeyboardInterrupt

  monkeypatch.setattr(bric_like, "write_dataset", crash)
  with pytest.raises(KeyboardInterrupt):
    bric_like.generate(tmp_path / "ds", seed=0, config=SMALL)
  assert os.listdir(tmp_path) == []


def test_preview_command(small_dir, tmp_path, capsys):
  out = tmp_path / "preview.png"
  assert preview.main(["--data-dir", str(small_dir), "--preview", str(out)]) == 0
  assert out.read_bytes()[:4] == b"\x89PNG" and f"wrote {out}" in capsys.readouterr().out
