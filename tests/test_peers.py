"""experiments/peers: the nnU-Net v2 conversion of a study and the way back (no nnunetv2
needed). The study is the tiny cohort of test_study: sessions on their own grids, moved
heads, one labeled slice per session at its own z, an unlabeled subject."""

import dataclasses
import json
import os

import nibabel as nib
import numpy as np
import pytest

from experiments.peers import convert
from fcslstm_jax.synthetic import cohort
from fcslstm_jax.data import grids
from fcslstm_jax.data import protocol as protocol_lib

STUDY = dataclasses.replace(cohort.TINY, fov_mm=(144.0, 144.0, 18.0))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("peers")
  study_dir = cohort.generate(root / "study", seed=0, config=STUDY)
  protocol = protocol_lib.get_protocol(None, study_dir)
  study = convert.load_for_conversion(study_dir, protocol)
  out = root / "nnUNet_raw" / "Dataset999_tiny"
  manifest = convert.write_dataset(study, str(out), out.name)
  return study_dir, study, out, manifest


def _read(path):
  img = nib.load(str(path))
  return np.asarray(img.dataobj), img.affine


def _sessions(study):
  return {convert.case_id(s.subject_id, ses.label): (s, t, ses) for s in study.subjects
          for t, ses in enumerate(s.timepoints) if ses is not None}


def test_labels_on_exactly_the_labeled_voxels_ignore_elsewhere(converted):
  study_dir, study, out, manifest = converted
  protocol = study.protocol
  meta = json.loads((out / "dataset.json").read_text())
  ignore = protocol.num_classes
  assert meta["labels"]["ignore"] == ignore == max(meta["labels"].values())
  assert meta["channel_names"] == {"0": "T1w", "1": "T2w"}
  train = [c for c in manifest["cases"] if c["role"] == "train"]
  assert meta["numTraining"] == len(train) == len(list((out / "labelsTr").iterdir())) > 0
  sessions = _sessions(study)
  assert sorted(c["case"] for c in manifest["cases"]) == sorted(sessions)  # each session once
  for case in train:
    subject, t, session = sessions[case["case"]]
    labels, affine = _read(out / "labelsTr" / f"{case['case']}.nii.gz")
    image, image_affine = _read(out / "imagesTr" / f"{case['case']}_0001.nii.gz")
    assert labels.shape == image.shape == subject.grid.shape
    np.testing.assert_allclose(affine, subject.grid.affine, atol=1e-5)
    np.testing.assert_allclose(image_affine, subject.grid.affine, atol=1e-5)
    np.testing.assert_allclose(image, session.image[..., 1], atol=1e-6)
    labeled = labels != ignore
    np.testing.assert_array_equal(labeled, session.label_mask > 0)
    np.testing.assert_array_equal(labels[labeled], session.labels[labeled])
    # One axial slice, the one the session's own label file labels (moved onto the
    # working grid: a whole-voxel z shift here), holding tissue.
    (z,) = np.flatnonzero(labeled.any(axis=(0, 1)))
    (own_z,) = session.counted_slices
    point = np.linalg.inv(subject.grid.affine) @ session.grid.affine @ [0.0, 0.0, own_z, 1.0]
    assert z == round(point[2])
    assert set(np.unique(labels[:, :, z])) >= {0, 1, 2, 3}


def test_held_out_and_unlabeled_sessions_carry_no_labels(converted):
  _, study, out, manifest = converted
  protocol = study.protocol
  in_labels = {p.name[:-len(".nii.gz")] for p in (out / "labelsTr").iterdir()}
  in_train_images = {p.name[:-len("_0000.nii.gz")] for p in (out / "imagesTr").glob("*_0000.nii.gz")}
  assert in_labels == in_train_images
  roles = {c["case"]: c for c in manifest["cases"]}
  held_out = [k for k, c in roles.items() if c["timepoint"] in protocol.test_timepoints]
  assert held_out and all(roles[k]["role"] != "train" for k in held_out)
  assert {c["role"] for c in roles.values()} == {"train", "held-out", "unlabeled"}
  for case, c in roles.items():
    labeled_ok = c["timepoint"] in protocol.train_timepoints and c["subject"] != "03"
    assert (case in in_labels) == labeled_ok, case  # sub-03 has no label files
    if case not in in_labels:
      for k in range(2):
        assert (out / "imagesTs" / f"{case}_{k:04d}.nii.gz").exists()
  assert not any(p.name.startswith(tuple(held_out)) for p in (out / "imagesTr").iterdir())


def test_predictions_come_back_on_each_sessions_own_grid(converted, tmp_path):
  """A fake nnU-Net output for every case, in nnU-Net's array order ``[c, k, j, i]`` on the
  converted image's own grid (the full labels moved onto it), goes back onto the session's
  input grid: its shape and affine, and the labels it came from."""
  study_dir, study, out, manifest = converted
  c = study.protocol.num_classes
  full = study_dir / "sourcedata" / "full-labels"
  for case in manifest["cases"]:
    subject, t, session = _sessions(study)[case["case"]]
    image, _ = _read(out / case["folder"] / f"{case['case']}_0000.nii.gz")
    stem = f"sub-{case['subject']}_ses-{case['session']}"
    truth_path = full / f"sub-{case['subject']}" / f"ses-{case['session']}" / "anat" / \
        f"{stem}_dseg.nii.gz"
    truth = convert.nifti_io.load_volume(str(truth_path), kind="labels").data
    on_work = grids.resample(truth, session.grid, subject.grid, 0, session.to_session)
    assert on_work.shape == image.shape
    fake = np.transpose(convert.one_hot(on_work, c), (3, 2, 1, 0))
    np.savez_compressed(tmp_path / "fake.npz", probabilities=fake)
    probs = convert.read_probabilities(str(tmp_path / "fake.npz"))
    back = convert.to_session_labels(probs, subject, session)
    written_path = tmp_path / f"{case['case']}.nii.gz"
    convert.write_session_labels(str(written_path), back, session)
    written, source = nib.load(str(written_path)), nib.load(session.paths["T1w"])
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    pred = np.asarray(written.dataobj)
    stored_truth = np.asarray(nib.load(str(truth_path)).dataobj)
    agree = (pred == stored_truth).mean()
    assert agree >= 0.85, (case["case"], agree)
    for axis in (0, 1):  # better than the truth one voxel off: no misalignment
      assert agree > (pred == np.roll(stored_truth, 1, axis)).mean() + 0.03


def test_conversion_refuses_an_existing_folder_and_the_dataset_itself(converted):
  study_dir, study, out, _ = converted
  with pytest.raises(FileExistsError, match="exists"):
    convert.write_dataset(study, str(out), "again")
  with pytest.raises(Exception, match="inside the input dataset"):
    convert.write_dataset(study, os.path.join(study_dir, "nnunet"), "inside")
