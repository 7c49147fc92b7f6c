"""Real-study conditions (fcslstm_jax.synthetic.cohort): sparse labels on any slice, sessions and
subjects on their own grids, rigid registration, protocol files, unlabeled subjects.

Each condition is written by the built-in generator as a cohort would have it; the checks
read the files back the way a user's study is read."""

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from helpers import STUDY
from helpers import STUDY_EPOCHS
from helpers import evaluate_args

import evaluate
import train
from fcslstm_jax.data import nifti_io
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.infer import pipeline
from fcslstm_jax.synthetic import cohort


@pytest.fixture(scope="module")
def proto(study_dir):
  return protocol.get_protocol(None, study_dir)  # the study's protocol.json


def native_labels(path):
  return nifti_io.load_volume(path, kind="labels")


def working_z(subject, session, z):
  """The working-grid z index of the session's own axial slice ``z`` (whole voxels here)."""
  point = np.linalg.inv(subject.grid.affine) @ session.grid.affine @ [0.0, 0.0, z, 1.0]
  assert abs(point[2] - round(point[2])) < 1e-6
  return int(round(point[2]))


# ------------------------------------------------------------------------------- loading


def test_protocol_file_at_the_root_is_used(proto):
  assert proto.name == "cohort" and proto.ages == (0, 3, 6, 9, 12)
  assert proto.train_timepoints == (0, 1, 3, 4) and proto.test_timepoints == (2,)


def test_jittered_ages_place_every_session(study_dir, proto):
  loaded = study.load_study(study_dir, proto, spacing="native")
  assert loaded.unassigned == ()
  tsv = (study_dir / "sub-01" / "sub-01_sessions.tsv").read_text()
  assert any(f"ses-V{k}\t{a}" not in tsv for k, a in enumerate((0, 3, 6, 9, 12), 1))  # jittered
  for subject in loaded.subjects:
    for t, session in enumerate(subject.timepoints):
      assert session is None or session.label == f"V{t + 1}"


def test_sparse_labels_sit_exactly_at_their_sessions_slices(study_dir, proto):
  """Every session labeled one slice at its own z: mask and labels are 1 and exact there."""
  loaded = study.load_study(study_dir, proto, spacing="native")
  train_set = sequences.make_sequences(loaded.subjects, proto, "train")
  expected = {}  # (subject, working z) -> training time points labeled there
  for subject in loaded.subjects[:2]:
    zs = []
    for t, session in enumerate(subject.timepoints):
      truth = native_labels(session.paths["dseg"])
      (z,) = study.labeled_slices(truth.data)
      zw = working_z(subject, session, z)
      zs.append(zw)
      labeled_z = np.flatnonzero(session.label_mask.any(axis=(0, 1)))
      np.testing.assert_array_equal(labeled_z, [zw])
      # Whole-voxel offsets: the slice lands unchanged, mask 1 over the session's view.
      offset = np.linalg.inv(subject.grid.affine) @ session.grid.affine @ [0, 0, 0, 1.0]
      x0, y0 = int(round(offset[0])), int(round(offset[1]))
      nx, ny = truth.data.shape[:2]
      np.testing.assert_array_equal(
        session.labels[x0 : x0 + nx, y0 : y0 + ny, zw], truth.data[:, :, z]
      )
      assert session.label_mask[x0 : x0 + nx, y0 : y0 + ny, zw].all()
      assert session.label_mask.sum() == nx * ny
      if t in proto.train_timepoints:
        expected.setdefault((subject.subject_id, zw), set()).add(t)
    assert len(set(zs)) > 1  # the labeled z really differs between sessions
  got = {}
  for i, (sid, z) in enumerate(zip(train_set.subject_ids, train_set.slice_index)):
    got[sid, int(z)] = {t for t in range(proto.num_timepoints) if train_set.label_mask[i, t].any()}
  assert got == expected
  assert not train_set.label_mask[:, list(proto.test_timepoints)].any()
  assert not train_set.labels[:, list(proto.test_timepoints)].any()


def test_held_out_labels_never_choose_training_slices(study_dir, proto, tmp_path):
  """Moving the held-out session's labeled slice changes nothing in the training arrays."""
  other = shutil.copytree(study_dir, tmp_path / "moved")
  for sid in ("01", "02"):
    path = (
      other
      / "derivatives"
      / "manual"
      / f"sub-{sid}"
      / "ses-V3"
      / "anat"
      / f"sub-{sid}_ses-V3_dseg.nii.gz"
    )
    img = nib.load(str(path))
    labels = np.asarray(img.dataobj)
    moved = np.zeros_like(labels)
    moved[:, :, -1] = np.where(labels.any(axis=2), 1, 0)  # another slice, other classes
    nib.save(nib.Nifti1Image(moved, img.affine, img.header), str(path))
  sets = [
    sequences.make_sequences(study.load_study(root, proto).subjects, proto, "train")
    for root in (study_dir, other)
  ]
  for field in ("images", "labels", "label_mask", "valid", "slice_index"):
    np.testing.assert_array_equal(getattr(sets[0], field), getattr(sets[1], field), field)


def test_subjects_on_other_voxel_sizes_meet_at_the_median_spacing(study_dir, proto):
  loaded = study.load_study(study_dir, proto)
  assert loaded.options.spacing == pytest.approx((5.4, 5.4))  # median of 6.0 and 4.8 mm
  for subject in loaded.subjects:
    np.testing.assert_allclose(subject.grid.spacing, [5.4, 5.4, STUDY.slice_mm], atol=1e-6)
  train_set = sequences.make_sequences(loaded.subjects, proto, "train")
  assert train_set.images.shape[2:4] == sequences.in_plane_size(loaded.subjects)
  assert set(train_set.subject_ids) == {"01", "02"}  # never the unlabeled sub-03
  fixed = study.load_study(study_dir, proto, spacing="4.0,5.0")
  assert fixed.options.spacing == (4.0, 5.0)


def test_prediction_goes_back_onto_the_input_grid(study_dir, proto, tmp_path):
  """A label volume on the working grid, written back, lands on the input's exact grid
  (shape, affine) and round-trips: exactly for whole-voxel shifts, and within
  interpolation error where the voxel size changed."""
  dense = dataclasses.replace(proto, labeled_slices_per_volume=100)
  full = study_dir / "sourcedata" / "full-labels"
  for spacing, least in (("native", 1.0), ("median", 0.85)):
    loaded = study.load_study(study_dir, dense, spacing=spacing, labels_root=full)
    for subject in loaded.subjects:
      for session in subject.sessions:
        onehot = np.eye(proto.num_classes)[session.labels]  # [X, Y, Z, c] "probabilities"
        back = pipeline.session_outputs(onehot, subject, session)[1]  # the argmax
        out = tmp_path / f"{spacing}-{subject.subject_id}-{session.label}.nii.gz"
        nifti_io.save_like(out, back, session.ref)
        written, source = nib.load(str(out)), nib.load(session.paths["T1w"])
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
        truth = np.asarray(nib.load(session.paths["dseg"]).dataobj)
        pred = np.asarray(written.dataobj)
        agree = (pred == truth).mean()
        assert agree >= least, (spacing, subject.subject_id, session.label, agree)
        for axis in (0, 1):  # better than the truth one voxel off: no misalignment
          assert agree > (pred == np.roll(truth, 1, axis)).mean() + 0.03
          assert agree > (pred == np.roll(truth, -1, axis)).mean() + 0.03


@pytest.mark.parametrize(
  "ages, register, margin",
  [
    ((9, 12), "rigid", 0.1),
    # The generator grows the head by a quarter from 0 to 12 months: a similarity (one scale)
    # from the head outline follows it (data/head_moments.py).
    ((0, 12), "moments", 0.15),
  ],
)
def test_registration_aligns_a_moved_session(tmp_path, ages, register, margin):
  """A session rotated by 8 degrees and shifted by up to 6 mm (and grown, from 0 months):
  registered, its labels overlap the reference session's clearly better than by the scanner
  affines alone."""
  config = dataclasses.replace(
    cohort.TINY,
    num_subjects=1,
    num_unlabeled=0,
    ages=ages,
    age_jitter=0.0,
    fov_mm=(176.0, 192.0, 40.0),
    voxel_mm=(4.0,),
    slice_mm=4.0,
    crop_vox=0,
    motion_deg=8.0,
    motion_mm=6.0,
    labels="dense",
    protocol={
      "name": "two",
      "ages": list(ages),
      "train_timepoints": [0, 1],
      "labeled_slices_per_volume": 100,
    },
  )
  root = cohort.generate(tmp_path / "moved", seed=3, config=config)
  proto = protocol.get_protocol(None, root)

  def overlap(register):
    (subject,) = study.load_dataset(root, proto, register=register)
    a, b = (s.labels for s in subject.timepoints)
    return np.mean(
      [2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in (1, 2, 3)]
    )

  plain, registered = overlap("none"), overlap(register)
  print(f"tissue Dice between the sessions: {plain:.3f} by affines, {registered:.3f} {register}")
  assert registered > plain + margin, (plain, registered)


# ------------------------------------------------------------------------------ protocols


BAD_PROTOCOLS = {
  "unknown key": ({"num_timepoints": 2, "train_timepoints": [0], "epochs": 3}, "'epochs'"),
  "wrong type": ({"ages": "0, 6", "train_timepoints": [0]}, "'ages' must be a list"),
  "list of the wrong type": ({"ages": [0, "six"], "train_timepoints": [0]}, "'ages'"),
  "index outside": ({"ages": [0, 6], "train_timepoints": [0, 2]}, "train_timepoints [2]"),
  "train and test overlap": (
    {"ages": [0, 6], "train_timepoints": [0, 1], "test_timepoints": [1]},
    "both train_timepoints",
  ),
  "names and classes": (
    {"ages": [0, 6], "train_timepoints": [0], "num_classes": 3},
    "class_names has 4 names for 3 classes",
  ),
  "no train time points": ({"ages": [0, 6]}, "'train_timepoints' is missing"),
  "ages not increasing": ({"ages": [6, 0], "train_timepoints": [0]}, "ages must increase"),
  "a boolean as a number": (
    {"num_timepoints": True, "train_timepoints": [0]},
    "'num_timepoints' must be an integer",
  ),
  "not JSON": ('{"ages": [0, 6],', "not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_PROTOCOLS)
def test_each_bad_protocol_file_gets_one_clear_error(case, tmp_path):
  content, message = BAD_PROTOCOLS[case]
  path = tmp_path / "p.json"
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  with pytest.raises(ConfigError) as info:
    protocol.load_file(path)
  assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_bad_protocol_file_through_the_cli(study_dir, tmp_path, capsys):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps({"ages": [0, 6], "train_timepoints": [0], "epochs": 3}))
  workdir = tmp_path / "run"
  assert (
    train.main(
      [
        "--data-dir",
        str(study_dir),
        "--protocol",
        str(path),
        "--config",
        "tiny",
        "--workdir",
        str(workdir),
      ]
    )
    == 2
  )
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and str(path) in err and "'epochs'" in err
  assert not workdir.exists()


def test_sessions_that_fit_no_time_point_are_named(study_dir):
  ibis = protocol.get_protocol("ibis")  # 6, 12, 24 months: 0, 3 and 9 fit nothing
  loaded = study.load_study(study_dir, ibis)
  lines = sequences.describe_unassigned(loaded)
  expected = [d for d in study_dir.glob("sub-*/ses-V[124]")]  # nominally 0, 3, 9 months
  assert len(lines) == len(expected) >= 7
  assert any(
    "sub-01 ses-V1 (age" in line and "nearest: time point 1 (age 6)" in line for line in lines
  )
  by_order = dataclasses.replace(ibis, ages=None)  # first 3 sessions in age order
  loaded = study.load_study(study_dir, by_order)
  assert [s.label for s in loaded.subjects[0].sessions] == ["V1", "V2", "V3"]
  assert any(
    "sub-01 ses-V4" in line and "first 3 sessions" in line
    for line in sequences.describe_unassigned(loaded)
  )


# ----------------------------------------------------------------------------- end to end


def test_trains_on_one_labeled_slice_per_volume(study_run, capsys):
  records = [json.loads(line) for line in (study_run / "metrics.jsonl").read_text().splitlines()]
  assert len(records) == STUDY_EPOCHS and records[-1]["loss"] < records[0]["loss"], records
  results = json.loads((study_run / "results.json").read_text())
  assert results["train"]["voxels"] > 0 and results["test"]["voxels"] > 0
  run = json.loads((study_run / "run.json").read_text())
  assert run["protocol"]["name"] == "cohort" and run["grid"]["spacing"] == [5.4, 5.4]


def test_evaluate_segments_every_session_of_every_subject(study_dir, study_run, tmp_path):
  out = tmp_path / "pred"
  full = study_dir / "sourcedata" / "full-labels"
  assert evaluate.main(evaluate_args(study_run, study_dir, out, "--labels", str(full))) == 0
  inputs = sorted(study_dir.glob("sub-*/ses-*/anat/*_T1w.nii.gz"))
  assert len(inputs) == 3 * 5 - 1  # the unlabeled subject too, its missing session not
  for t1 in inputs:
    sub, ses = t1.parts[-4], t1.parts[-3]
    (pred,) = (out / sub / ses / "anat").glob("*_dseg.nii.gz")
    ref, img = nib.load(str(t1)), nib.load(str(pred))
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-6)
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["metrics_available"] and metrics["predictions"] == len(inputs)
  # Scored on each session's own grid against the full volumes (every slice holding a
  # label), which training never saw: the unlabeled subject's too.
  full_voxels = 0
  for path in full.glob("sub-*/ses-*/anat/*_dseg.nii.gz"):
    labels = np.asarray(nib.load(str(path)).dataobj)
    full_voxels += int(labels.any(axis=(0, 1)).sum()) * labels.shape[0] * labels.shape[1]
  assert sum(m["voxels"] for m in metrics["per_timepoint"]) == full_voxels


@pytest.mark.parametrize("sessions", [1, 3])
def test_evaluate_without_any_labels(study_dir, study_run, tmp_path, sessions, capsys):
  """No labels anywhere, 1 to T sessions per subject: predictions, and no metrics."""
  root = tmp_path / "unlabeled"
  shutil.copytree(study_dir, root, ignore=shutil.ignore_patterns("derivatives", "sourcedata"))
  for subject in root.glob("sub-*"):
    for extra in sorted(subject.glob("ses-*"))[sessions:]:
      shutil.rmtree(extra)
  out = tmp_path / "pred"
  assert (
    evaluate.main(["--workdir", str(study_run), "--data-dir", str(root), "--out", str(out)]) == 0
  )
  assert "metrics are not available" in capsys.readouterr().out
  assert len(list(out.glob("sub-*/ses-*/anat/*_dseg.nii.gz"))) == 3 * sessions
  assert not json.loads((out / "metrics.json").read_text())["metrics_available"]


def test_training_without_labels_is_refused_before_compiling(study_dir, tmp_path, capsys):
  root = tmp_path / "unlabeled"
  shutil.copytree(study_dir, root, ignore=shutil.ignore_patterns("derivatives"))
  workdir = tmp_path / "run"
  assert train.main(["--data-dir", str(root), "--config", "tiny", "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert "no labeled voxel at the training time points (1, 2, 4, 5)" in err
  assert not workdir.exists()


def test_training_keeps_only_the_labeled_slices(study_dir, proto):
  """Training loads the slices some session labels, not whole volumes; same sequences."""
  full = study.load_study(study_dir, proto)
  lean = study.load_study(study_dir, proto, keep="labeled")
  for a, b in zip(full.subjects, lean.subjects):
    depth = [s.image.shape[2] for s in b.sessions]
    assert len(set(depth)) == 1 and depth[0] == len(sequences.labeled_z(a, range(5)))
  for split in ("train", "test"):
    x, y = (sequences.make_sequences(s.subjects, proto, split) for s in (full, lean))
    for field in ("images", "labels", "label_mask", "valid", "slice_index", "subject_ids"):
      np.testing.assert_array_equal(getattr(x, field), getattr(y, field), field)
