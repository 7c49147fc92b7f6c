"""experiments/peers: the nnU-Net v2 conversion of a study and the way back (no nnunetv2
needed). The study is the tiny cohort of test_study: sessions on their own grids, moved
heads, one labeled slice per session at its own z, an unlabeled subject."""

import dataclasses
import json
import os
import pathlib
import subprocess

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


# --------------------------------------------------------------------------- run.py's guards

from experiments.peers import run  # noqa: E402
from fcslstm_jax.errors import ConfigError  # noqa: E402


def _no_study(name):
  raise AssertionError("run.py went on past its checks")


def _refused(capsys, argv):
  """run.main's exit code and its error output, never past the checks (no study, no tool)."""
  code = run.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  return err[0]


def _earlier(out, args, **record):
  """An earlier results file holding an FCSLSTM record of the configuration of ``args``."""
  config = run.configuration(run.parse_args(args))
  tool = {"train_seconds": 60.0, "scores": {}, "configuration": config, **record}
  path = out / "peers-tiny.json"
  path.write_text(json.dumps({"command": "earlier", "budget_min": config["budget_min"],
                              "tools": {"FCSLSTM (bi-fcslstm, quick)": tool}}))
  return path


def test_keep_others_refuses_a_record_of_another_commit_configuration_or_no_commit(
    tmp_path, capsys, monkeypatch):
  """``--keep-others`` with nnU-Net alone keeps the earlier FCSLSTM row only when it ran on
  this very code and configuration; otherwise one error line naming the file, before the
  study is loaded or --work touched."""
  monkeypatch.setattr(run, "study_source", _no_study)
  args = ["--study", "tiny", "--budget-min", "0.5", "--out", str(tmp_path)]
  argv = args + ["--tools", "nnunet", "--keep-others", "--work", str(tmp_path / "work")]
  here = run.code_version(exclude=run.outputs(str(tmp_path), "tiny"))
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=run.REPO, capture_output=True,
                        text=True, check=True).stdout.strip()
  assert here["commit"] == head and isinstance(here["dirty"], bool)
  assert (here["diff_sha256"] is not None) == here["dirty"]
  # This checkout as main() sees it, fixed: others may be editing the tree meanwhile.
  monkeypatch.setattr(run, "code_version", lambda exclude=(): here)

  path = _earlier(tmp_path, args, **{**here, "commit": "0" * 40})
  line = _refused(capsys, argv)
  assert line.startswith(f"error: {path}: ") and "commit 0000000" in line
  assert here["commit"][:7] in line and "rerun" in line

  path = _earlier(tmp_path, args)  # a record from before commits were recorded
  line = _refused(capsys, argv)
  assert line.startswith(f"error: {path}: ") and "no commit" in line
  assert "rerun both tools" in line

  path = _earlier(tmp_path, args[:2] + ["--budget-min", "1"] + args[4:], **here)
  line = _refused(capsys, argv)
  assert line.startswith(f"error: {path}: ") and "budget_min" in line
  assert not (tmp_path / "work").exists()

  # The same code and configuration: kept, as it was.
  path = _earlier(tmp_path, args, **here)
  kept = run.kept_records(str(path), {"nnU-Net v2 (2d)"}, here,
                          run.configuration(run.parse_args(args)))
  assert list(kept) == ["FCSLSTM (bi-fcslstm, quick)"]
  assert kept["FCSLSTM (bi-fcslstm, quick)"]["commit"] == here["commit"]


def test_code_version_sees_uncommitted_changes_except_the_scripts_outputs(tmp_path):
  """``dirty`` and ``diff_sha256`` follow the tracked files (untracked ones and the run's own
  output files aside); outside a git checkout the commit is None."""
  repo = tmp_path / "repo"
  (repo / "results").mkdir(parents=True)
  git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a],
                                  cwd=repo, check=True, capture_output=True)
  git("init", "-q")
  (repo / "code.py").write_text("a = 1\n")
  out = run.outputs(str(repo / "results"), "tiny")
  for path in out:
    pathlib.Path(path).write_text("{}")
  git("add", "-A")
  git("commit", "-q", "-m", "one")
  clean = run.code_version(exclude=out, repo=str(repo))
  assert len(clean["commit"]) == 40 and not clean["dirty"] and clean["diff_sha256"] is None
  (repo / "new.py").write_text("untracked")
  for path in out:
    pathlib.Path(path).write_text('{"tools": {}}')
  assert run.code_version(exclude=out, repo=str(repo)) == clean
  assert run.code_version(repo=str(repo))["dirty"]  # the outputs count unless left out
  (repo / "code.py").write_text("a = 2\n")
  one = run.code_version(exclude=out, repo=str(repo))
  assert one["commit"] == clean["commit"] and one["dirty"] and one["diff_sha256"]
  (repo / "code.py").write_text("a = 3\n")
  assert run.code_version(exclude=out, repo=str(repo))["diff_sha256"] != one["diff_sha256"]
  (tmp_path / "plain").mkdir()
  assert run.code_version(repo=str(tmp_path / "plain"))["commit"] is None


def test_work_folder_not_made_by_the_script_is_never_deleted(tmp_path, capsys, monkeypatch):
  """--work is deleted before a run only when run.py made it (its marker file); a non-empty
  folder without the marker is refused with one line; an empty one is used."""
  monkeypatch.setattr(run, "study_source", _no_study)
  work = tmp_path / "mine"
  (work / "sub").mkdir(parents=True)
  (work / "sub" / "precious.txt").write_text("keep me")
  line = _refused(capsys, ["--study", "tiny", "--work", str(work), "--out", str(tmp_path)])
  assert line.startswith(f"error: {work}: ") and run.WORK_MARKER in line
  assert (work / "sub" / "precious.txt").read_text() == "keep me"

  made = tmp_path / "made"
  run.prepare_work(str(made))  # created, marked
  assert sorted(os.listdir(made)) == [run.WORK_MARKER]
  (made / "nnUNet_raw").mkdir()
  (made / "old.log").write_text("an earlier run")
  run.prepare_work(str(made))  # marked: emptied and used again
  assert sorted(os.listdir(made)) == [run.WORK_MARKER]

  empty = tmp_path / "empty"
  empty.mkdir()
  run.prepare_work(str(empty))
  assert sorted(os.listdir(empty)) == [run.WORK_MARKER]
  with pytest.raises(ConfigError, match="marker"):
    run.prepare_work(str(work))
  assert (work / "sub" / "precious.txt").exists()


def _warning_study(root):
  """One subject: a reference session of 3 mm slices, a 12-month one of 1 mm slices labeled
  on all 12 (8 of them share a working slice with a nearer one: Subject.warnings), and a
  30-month session no time point fits (unassigned)."""
  rng = np.random.default_rng(0)
  for ses, dz, nz, z0, labeled in (("00mo", 3.0, 4, 0.0, [0]), ("12mo", 1.0, 12, -1.0, range(12)),
                                   ("30mo", 3.0, 4, 0.0, [])):
    affine = np.diag([2.0, 2.0, dz, 1.0])
    affine[2, 3] = z0
    shape = (6, 5, nz)
    image = rng.uniform(0, 20, shape)
    image[1:-1, 1:-1] += rng.uniform(300, 1000, (4, 3, nz))
    anat = root / "sub-01" / f"ses-{ses}" / "anat"
    anat.mkdir(parents=True)
    for mod in ("T1w", "T2w"):
      nib.save(nib.Nifti1Image(image.astype(np.int16), affine),
               str(anat / f"sub-01_ses-{ses}_{mod}.nii.gz"))
    if labeled:
      labels = np.zeros(shape, np.uint8)
      for k in labeled:
        labels[:, :, k] = 1 + k % 3
      seg = root / "derivatives" / "m" / "sub-01" / f"ses-{ses}" / "anat"
      seg.mkdir(parents=True)
      nib.save(nib.Nifti1Image(labels, affine), str(seg / f"sub-01_ses-{ses}_dseg.nii.gz"))
  protocol = protocol_lib.Protocol(name="two", num_timepoints=2, ages=(0.0, 12.0),
                                   train_timepoints=(0, 1), test_timepoints=(),
                                   labeled_slices_per_volume=100)
  (root / "protocol.json").write_text(json.dumps(protocol.to_json()))
  return root


def test_conversion_prints_the_studys_warnings(tmp_path, capsys):
  """The conversion (convert.py, and run.py through it) prints the loader's warnings as the
  CLIs do: one ``warning:`` line each on stderr."""
  study_dir = _warning_study(tmp_path / "study")
  assert convert.main(["--data-dir", str(study_dir), "--out",
                       str(tmp_path / "raw" / "Dataset998_two")]) == 0
  err = capsys.readouterr().err.splitlines()
  warnings = [line for line in err if line.startswith("warning: ")]
  assert len(warnings) == 2, err
  assert warnings[0].startswith("warning: sub-01 ses-30mo (age 30): fits no time point")
  assert warnings[1].startswith("warning: sub-01 ses-12mo: ")
  assert "8 labeled slice(s) not used" in warnings[1]
