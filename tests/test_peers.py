"""experiments/peers: the nnU-Net v2 conversion of a study and the way back (no nnunetv2
needed). The study is the tiny cohort of test_cohort: sessions on their own grids, moved
heads, one labeled slice per session at its own z, an unlabeled subject."""

import dataclasses
import json
import os
import pathlib
import subprocess

import nibabel as nib
import numpy as np
import pytest

from experiments import learning_curve
from experiments.peers import convert
from experiments.peers import run
from fcslstm_jax import run_record
from fcslstm_jax.config import get_config
from fcslstm_jax.data import grids
from fcslstm_jax.data import protocol
from fcslstm_jax.data import study as study_mod
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.infer import pipeline
from fcslstm_jax.synthetic import cohort

STUDY = dataclasses.replace(cohort.TINY, fov_mm=(144.0, 144.0, 18.0))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("peers")
  study_dir = cohort.generate(root / "study", seed=0, config=STUDY)
  proto = protocol.get_protocol(None, study_dir)
  study = convert.load_for_conversion(study_dir, proto)
  out = root / "nnUNet_raw" / "Dataset999_tiny"
  manifest = convert.write_dataset(study, str(out), out.name)
  return study_dir, study, out, manifest


def _read(path):
  img = nib.load(str(path))
  return np.asarray(img.dataobj), img.affine


def _sessions(study):
  return {
    convert.case_id(s.subject_id, ses.label): (s, t, ses)
    for s in study.subjects
    for t, ses in enumerate(s.timepoints)
    if ses is not None
  }


def test_labels_on_exactly_the_labeled_voxels_ignore_elsewhere(converted):
  study_dir, study, out, manifest = converted
  proto = study.protocol
  meta = json.loads((out / "dataset.json").read_text())
  ignore = proto.num_classes
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
  proto = study.protocol
  in_labels = {p.name[: -len(".nii.gz")] for p in (out / "labelsTr").iterdir()}
  in_train_images = {
    p.name[: -len("_0000.nii.gz")] for p in (out / "imagesTr").glob("*_0000.nii.gz")
  }
  assert in_labels == in_train_images
  roles = {c["case"]: c for c in manifest["cases"]}
  held_out = [k for k, c in roles.items() if c["timepoint"] in proto.test_timepoints]
  assert held_out and all(roles[k]["role"] != "train" for k in held_out)
  assert {c["role"] for c in roles.values()} == {"train", "held-out", "unlabeled"}
  for case, c in roles.items():
    labeled_ok = c["timepoint"] in proto.train_timepoints and c["subject"] != "03"
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
    truth_path = (
      full / f"sub-{case['subject']}" / f"ses-{case['session']}" / "anat" / f"{stem}_dseg.nii.gz"
    )
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


def test_fcslstm_is_segmented_on_its_runs_own_grids(converted, tmp_path):
  """A run trained on aligned sessions (run.json: ``register moments``) is segmented on
  aligned sessions, as evaluate.py would; one on unaligned sessions on the evaluation study
  itself (nnU-Net's, which never aligns)."""
  study_dir, _, _, _ = converted
  proto = protocol.get_protocol(None, study_dir)
  eval_study = study_mod.load_study(study_dir, pipeline.every_labeled_slice(proto))
  source = run.Source("tiny", str(study_dir), proto, None, ())
  for register in ("moments", "none"):
    workdir = str(tmp_path / register)
    options = study_mod.GridOptions(spacing=eval_study.options.spacing, register=register)
    record = run_record.RunRecord(
      config=get_config("tiny"), dataset=str(study_dir), protocol=proto, grid=options
    )
    run_record.write(workdir, record)
    segmented = run.fcslstm_study(workdir, source, eval_study)
    assert segmented.options.register == register
    assert (segmented is eval_study) == (register == "none")
    assert [s.subject_id for s in segmented.subjects] == [s.subject_id for s in eval_study.subjects]


def test_conversion_refuses_an_existing_folder_and_the_dataset_itself(converted):
  study_dir, study, out, _ = converted
  with pytest.raises(FileExistsError, match="exists"):
    convert.write_dataset(study, str(out), "again")
  with pytest.raises(Exception, match="inside the input dataset"):
    convert.write_dataset(study, os.path.join(study_dir, "nnunet"), "inside")


# --------------------------------------------------------------------------- run.py's guards


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
  path.write_text(
    json.dumps(
      {
        "command": "earlier",
        "budget_min": config["budget_min"],
        "tools": {"FCSLSTM (bi-fcslstm, quick)": tool},
      }
    )
  )
  return path


def test_keep_others_refuses_a_record_of_another_commit_configuration_or_no_commit(
  tmp_path, capsys, monkeypatch
):
  """``--keep-others`` with nnU-Net alone keeps the earlier FCSLSTM row only when it ran on
  this very code and configuration; otherwise one error line naming the file, before the
  study is loaded or --work touched."""
  monkeypatch.setattr(run, "study_source", _no_study)
  args = ["--study", "tiny", "--budget-min", "0.5", "--out", str(tmp_path)]
  argv = args + ["--tools", "nnunet", "--keep-others", "--work", str(tmp_path / "work")]
  here = run.code_version(exclude=run.outputs(str(tmp_path), "tiny"))
  head = subprocess.run(
    ["git", "rev-parse", "HEAD"], cwd=run.REPO, capture_output=True, text=True, check=True
  ).stdout.strip()
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
  path = _earlier(tmp_path, args + ["--set", "lr_decay_rate=0.75"], **here)  # another schedule
  line = _refused(capsys, argv)
  assert line.startswith(f"error: {path}: ") and "fcslstm_set" in line
  assert not (tmp_path / "work").exists()

  # The same code and configuration: kept, as it was.
  path = _earlier(tmp_path, args, **here)
  kept = run.kept_records(
    str(path), {"nnU-Net v2 (2d)"}, here, run.configuration(run.parse_args(args))
  )
  assert list(kept) == ["FCSLSTM (bi-fcslstm, quick)"]
  assert kept["FCSLSTM (bi-fcslstm, quick)"]["commit"] == here["commit"]


def test_code_version_sees_uncommitted_changes_except_the_scripts_outputs(tmp_path):
  """``dirty`` and ``diff_sha256`` follow the tracked files (untracked ones and the run's own
  output files aside); outside a git checkout the commit is None."""
  repo = tmp_path / "repo"
  (repo / "results").mkdir(parents=True)

  def git(*a):
    return subprocess.run(
      ["git", "-c", "user.name=t", "-c", "user.email=t@t", *a],
      cwd=repo,
      check=True,
      capture_output=True,
    )

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
  for ses, dz, nz, z0, labeled in (
    ("00mo", 3.0, 4, 0.0, [0]),
    ("12mo", 1.0, 12, -1.0, range(12)),
    ("30mo", 3.0, 4, 0.0, []),
  ):
    affine = np.diag([2.0, 2.0, dz, 1.0])
    affine[2, 3] = z0
    shape = (6, 5, nz)
    image = rng.uniform(0, 20, shape)
    image[1:-1, 1:-1] += rng.uniform(300, 1000, (4, 3, nz))
    anat = root / "sub-01" / f"ses-{ses}" / "anat"
    anat.mkdir(parents=True)
    for mod in ("T1w", "T2w"):
      nib.save(
        nib.Nifti1Image(image.astype(np.int16), affine),
        str(anat / f"sub-01_ses-{ses}_{mod}.nii.gz"),
      )
    if labeled:
      labels = np.zeros(shape, np.uint8)
      for k in labeled:
        labels[:, :, k] = 1 + k % 3
      seg = root / "derivatives" / "m" / "sub-01" / f"ses-{ses}" / "anat"
      seg.mkdir(parents=True)
      nib.save(nib.Nifti1Image(labels, affine), str(seg / f"sub-01_ses-{ses}_dseg.nii.gz"))
  proto = protocol.Protocol(
    name="two",
    num_timepoints=2,
    ages=(0.0, 12.0),
    train_timepoints=(0, 1),
    test_timepoints=(),
    labeled_slices_per_volume=100,
  )
  (root / "protocol.json").write_text(json.dumps(proto.to_json()))
  return root


def test_conversion_prints_the_studys_warnings(tmp_path, capsys):
  """The conversion (convert.py, and run.py through it) prints the loader's warnings as the
  CLIs do: one ``warning:`` line each on stderr."""
  study_dir = _warning_study(tmp_path / "study")
  assert (
    convert.main(["--data-dir", str(study_dir), "--out", str(tmp_path / "raw" / "Dataset998_two")])
    == 0
  )
  err = capsys.readouterr().err.splitlines()
  warnings = [line for line in err if line.startswith("warning: ")]
  assert len(warnings) == 2, err
  assert warnings[0].startswith("warning: sub-01 ses-30mo (age 30): fits no time point")
  assert warnings[1].startswith("warning: sub-01 ses-12mo: ")
  assert "8 labeled slice(s) not used" in warnings[1]


# ------------------------------------------------------------- run.py's volumes and growth


# Voxels of 2 x 2 x 2.5 mm: 10 mm^3 = 0.01 mL each.
VOXEL_AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])


def _labels(csf, gm, wm, shape=(8, 8, 4)):
  """A volume of ``shape`` holding ``csf``, ``gm``, ``wm`` voxels of classes 1, 2, 3 (the
  first ones in C order: the z axis varies fastest, so 4+ of them label every slice)."""
  flat = np.zeros(int(np.prod(shape)), np.int32)
  flat[: csf + gm + wm] = [1] * csf + [2] * gm + [3] * wm
  return flat.reshape(shape)


def _session(tmp_path, subject, label, age, truth):
  """A session of the evaluation study: its full label file ``truth`` on its own grid."""
  path = tmp_path / f"sub-{subject}_ses-{label}_dseg.nii.gz"
  nib.save(nib.Nifti1Image(truth.astype(np.uint8), VOXEL_AFFINE), str(path))
  ref = type("Ref", (), {"affine": VOXEL_AFFINE})()
  return type(
    "Session", (), {"label": label, "age": age, "ref": ref, "paths": {"dseg": str(path)}}
  )()


def test_run_records_volume_and_growth_errors_of_labeled_and_unlabeled_subjects(tmp_path):
  """Hand-made volumes (voxel counts; 0.01 mL each) of a labeled subject 01, an unlabeled
  subject 03 and a slice-labeled session of 02, through :meth:`run.Scores.add_session` into
  the record's ``scores.volumes`` and the table's volume columns.

  01: t0 true CSF/GM/WM 40/40/40, predicted 50/40/20; t1 true 40/60/80, predicted 40/60/100.
    Volume error 0.125 / 0 / 0.375 (CSF 10/40 and 0; WM 20/40 and 20/80), bias
    +0.125 / 0 / -0.125; growth CSF none (no true change), GM 0 (+20, +20), WM 1 (+40, +80).
  03: t0 true 20/20/20, predicted 20/30/20; t1 true 40/40/40, predicted 30/40/60.
    Volume error 0.125 / 0.25 / 0.25, bias -0.125 / +0.25 / +0.25; growth 0.5 / 0.5 / 1.
  """
  proto = protocol.Protocol(
    name="two", num_timepoints=2, ages=(0.0, 12.0), train_timepoints=(0,), test_timepoints=(1,)
  )
  scores = run.Scores(proto, unlabeled=["03"])
  cases = [
    ("01", 1, "12mo", 12.0, (40, 60, 80), (40, 60, 100)),  # out of age order
    ("01", 0, "00mo", 0.0, (40, 40, 40), (50, 40, 20)),
    ("03", 0, "00mo", 0.0, (20, 20, 20), (20, 30, 20)),
    ("03", 1, "12mo", 12.0, (40, 40, 40), (30, 40, 60)),
  ]
  for subject, t, label, age, true, pred in cases:
    scores.add_session(
      subject, t, _session(tmp_path, subject, label, age, _labels(*true)), _labels(*pred)
    )
  sparse = np.zeros((8, 8, 4), np.int32)
  sparse[:, :, 2] = 3  # one labeled slice: scored, but no volume
  scores.add_session("02", 0, _session(tmp_path, "02", "00mo", 0.0, sparse), sparse)

  result = scores.summary()
  volume_scores = result["volumes"]
  assert volume_scores["sessions_not_compared"] == 1
  labeled, unlabeled = volume_scores["labeled_subjects"], volume_scores["unlabeled_subjects"]
  assert (labeled["sessions"], labeled["subjects"]) == (2, 1)
  assert (unlabeled["sessions"], unlabeled["subjects"]) == (2, 1)

  def close(got, want):
    return list(got) == list(want) and all(
      (w is None and got[k] is None) or (got[k] is not None and abs(got[k] - w) < 1e-9)
      for k, w in want.items()
    )

  assert close(labeled["volume_error"], {"CSF": 0.125, "GM": 0.0, "WM": 0.375})
  assert close(labeled["volume_bias"], {"CSF": 0.125, "GM": 0.0, "WM": -0.125})
  assert close(labeled["growth_error"], {"CSF": None, "GM": 0.0, "WM": 1.0})
  assert labeled["growth_subjects"] == {"CSF": 0, "GM": 1, "WM": 1}
  assert close(unlabeled["volume_error"], {"CSF": 0.125, "GM": 0.25, "WM": 0.25})
  assert close(unlabeled["volume_bias"], {"CSF": -0.125, "GM": 0.25, "WM": 0.25})
  assert close(unlabeled["growth_error"], {"CSF": 0.5, "GM": 0.5, "WM": 1.0})
  # Each session's mL on its own grid (0.01 mL a voxel), subjects in order, sessions by age.
  first = volume_scores["per_session"][0]
  assert (first["subject"], first["session"], first["group"]) == ("01", "00mo", "train_timepoints")
  assert close(first["predicted_ml"], {"CSF": 0.5, "GM": 0.4, "WM": 0.2})
  assert close(first["true_ml"], {"CSF": 0.4, "GM": 0.4, "WM": 0.4})
  assert [r["group"] for r in volume_scores["per_session"]] == [
    "train_timepoints",
    "heldout",
    "unlabeled_subjects",
    "unlabeled_subjects",
  ]
  # The whole volumes are scored on every voxel; the slice labels on their slice.
  assert result["whole_volumes"]["per_timepoint"][0]["mpa"] is not None
  assert scores.whole[0].sum() == 2 * 256 + 64 and scores.whole[1].sum() == 2 * 256

  record = {
    "train_seconds": 60.0,
    "infer_seconds": 2.0,
    "scores": json.loads(json.dumps(result)),
  }  # as the JSON file holds it
  cells = run.row("FCSLSTM", record)[-6:]
  assert cells == [
    "0.125 / 0.000 / 0.375",
    "+0.125 / +0.000 / -0.125",
    "n/a / 0.000 / 1.000",
    "0.125 / 0.250 / 0.250",
    "-0.125 / +0.250 / +0.250",
    "0.500 / 0.500 / 1.000",
  ]
  table = run.markdown({"tools": {"FCSLSTM": record}})
  assert "| volume error CSF / GM / WM, unlabeled subjects |" in table.splitlines()[0] + " |"
  assert table.splitlines()[2].endswith("| 0.500 / 0.500 / 1.000 |")


# ------------------------------------------------------------------------- learning curve


HERE_CODE = {"commit": "c" * 40, "dirty": False, "diff_sha256": None}
FCSLSTM = "FCSLSTM (bi-fcslstm, quick)"


def _curve_record(path, args, budget, mpa, code=HERE_CODE, name=FCSLSTM, keep=False):
  """A budget's run.py record holding a ``name`` row of ``args``' configuration (``keep``:
  and the rows already in ``path``, as run.py ``--keep-others`` keeps them)."""
  config = run.configuration(run.parse_args(learning_curve.run_argv(args, budget, ["fcslstm"], [])))
  tool = {
    "train_seconds": budget * 60,
    "infer_seconds": 3.0,
    "configuration": config,
    **code,
    "measured_at": "then",
    "scores": {
      "labeled_slices": {"test": {"mpa": mpa, "mpa_fg": mpa - 0.1}},
      "whole_volumes": {
        "test": {"dice": {"background": 0.99, "CSF": mpa - 0.2, "GM": mpa - 0.1, "WM": mpa}}
      },
      "volumes": {
        "labeled_subjects": {
          "volume_error": {"CSF": 0.1, "GM": 0.2, "WM": budget / 100},
          "volume_bias": {"CSF": -0.1, "GM": 0.2, "WM": 0.0},
          "growth_error": {"CSF": 0.3, "GM": None, "WM": 0.5},
        },
        "unlabeled_subjects": None,
      },
    },
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rows = learning_curve.read_record(path).get("tools", {}) if keep else {}
  with open(path, "w") as f:
    json.dump({"machine": {"cpus": 2}, "tools": {**rows, name: tool}}, f)


def test_learning_curve_skips_current_budgets_and_tabulates_the_records(tmp_path, monkeypatch):
  """Budget 10 has a current record (skipped), 30 one from another commit (run again: the
  fake run.py writes a new record), 60's run fails; nnU-Net is not installed. One row per
  budget and tool, from the records, or saying why not."""
  argv = [
    "--study",
    "tiny",
    "--budgets",
    "10,30,60",
    "--tools",
    "fcslstm",
    "nnunet",
    "--out-dir",
    str(tmp_path / "out"),
    "--work-dir",
    str(tmp_path / "work"),
  ]
  args, _ = learning_curve.parse_args(argv)

  def record(b):
    return run.outputs(learning_curve.budget_out(args, b), "tiny")[0]

  _curve_record(record(10), args, 10, 0.8)
  _curve_record(record(30), args, 30, 0.5, code=dict(HERE_CODE, commit="0" * 40))
  monkeypatch.setattr(run, "code_version", lambda exclude=(), repo=None: HERE_CODE)
  monkeypatch.setattr(
    learning_curve,
    "missing_reason",
    lambda tool: "not run: no nnunetv2" if tool == "nnunet" else None,
  )
  calls = []

  def fake_run_py(command):
    assert command[:2] == [learning_curve.sys.executable, learning_curve.RUN_PY]
    a = run.parse_args(command[2:])
    calls.append(a)
    if a.budget_min == 60:
      return 1
    _curve_record(run.outputs(a.out, a.study)[0], args, a.budget_min, 0.9)
    return 0

  monkeypatch.setattr(learning_curve, "call", fake_run_py)
  assert learning_curve.main(argv) == 0
  assert [(a.budget_min, a.tools, a.keep_others) for a in calls] == [
    (30.0, ["fcslstm"], False),
    (60.0, ["fcslstm"], False),
  ]
  assert calls[0].out == str(tmp_path / "out" / "learning-curve" / "tiny-30min")
  assert calls[0].work == str(tmp_path / "work" / "tiny-30min" / "fcslstm")

  summary = json.loads((tmp_path / "out" / "learning-curve-tiny.json").read_text())
  rows = {(r["tool"], r["budget_min"]): r for r in summary["rows"]}
  assert len(rows) == 6
  ten, thirty = rows[(FCSLSTM, 10.0)], rows[(FCSLSTM, 30.0)]
  assert (ten["status"], ten["heldout_mpa"], ten["train_minutes"]) == ("measured", 0.8, 10.0)
  assert thirty["heldout_mpa"] == 0.9 and thirty["commit"] == HERE_CODE["commit"]
  assert ten["heldout_whole_volume_dice"] == {"CSF": 0.8 - 0.2, "GM": 0.8 - 0.1, "WM": 0.8}
  assert ten["volume_error"]["labeled_subjects"] == {"CSF": 0.1, "GM": 0.2, "WM": 0.1}
  assert ten["growth_error"] == {
    "labeled_subjects": {"CSF": 0.3, "GM": None, "WM": 0.5},
    "unlabeled_subjects": None,
  }
  assert rows[(FCSLSTM, 60.0)]["status"] == "failed: run.py exited with 1"
  assert all(rows[(run.NNUNET, b)]["status"] == "not run: no nnunetv2" for b in (10, 30, 60))

  table = (tmp_path / "out" / "learning-curve-tiny.md").read_text()
  lines = [line for line in table.splitlines() if line.startswith(f"| {FCSLSTM} |")]
  assert lines[0] == (
    f"| {FCSLSTM} | 10 | 10.0 | 0.800 (0.700) | 0.600 / 0.700 / 0.800 | "
    "0.100 / 0.200 / 0.100 | n/a | 0.300 / n/a / 0.500 | n/a | ccccccc |  |"
  )
  assert lines[2].endswith("| failed: run.py exited with 1 |")
  assert "| nnU-Net v2 (2d) | 30 | – |" in table

  # Run again: every budget with a record is current now; only the failed one runs.
  calls.clear()
  assert learning_curve.main(argv) == 0
  assert [a.budget_min for a in calls] == [60.0]
  # Another configuration (an argument passed on to run.py): no record is current.
  calls.clear()
  assert learning_curve.main(argv + ["--epochs", "5"]) == 0
  assert [(a.budget_min, a.epochs) for a in calls] == [(10.0, 5), (30.0, 5), (60.0, 5)]


def test_learning_curve_takes_a_record_committed_since_as_current(tmp_path):
  """A record from an earlier commit is current when the commits between differ only in the
  learning curve's own outputs; a change to any other file, or uncommitted changes, make
  it stale."""
  repo = tmp_path / "repo"
  (repo / "results" / "learning-curve").mkdir(parents=True)

  def git(*a):
    return subprocess.run(
      ["git", "-c", "user.name=t", "-c", "user.email=t@t", *a],
      cwd=repo,
      check=True,
      capture_output=True,
    )

  def head():
    return subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()

  git("init", "-q")
  (repo / "code.py").write_text("a = 1\n")
  git("add", "-A")
  git("commit", "-q", "-m", "code")
  ran_on = {"commit": head(), "dirty": False, "diff_sha256": None}
  (repo / "results" / "learning-curve" / "tiny-10min.json").write_text("{}")
  (repo / "results" / "learning-curve-tiny.md").write_text("table")
  git("add", "-A")
  git("commit", "-q", "-m", "records")
  ignored = [
    os.path.join("results", "learning-curve") + os.sep,
    os.path.join("results", "learning-curve-tiny.json"),
    os.path.join("results", "learning-curve-tiny.md"),
  ]
  now = {"commit": head(), "dirty": False, "diff_sha256": None}
  assert learning_curve.same_code(ran_on, now, ignored, str(repo))
  assert not learning_curve.same_code(
    ran_on, dict(now, dirty=True, diff_sha256="d"), ignored, str(repo)
  )
  # the records are not ignored
  assert not learning_curve.same_code(ran_on, now, ignored[1:], str(repo))
  (repo / "code.py").write_text("a = 2\n")
  git("commit", "-q", "-am", "code again")
  assert not learning_curve.same_code(ran_on, dict(now, commit=head()), ignored, str(repo))
  assert learning_curve.same_code(ran_on, ran_on, [], str(repo))
  assert not learning_curve.same_code(dict(ran_on, commit=None), ran_on, ignored, str(repo))


def test_learning_curve_runs_one_tool_per_call_and_resumes_after_the_last_that_finished(
  tmp_path, monkeypatch
):
  """Both tools run, one run.py call each, the second keeping the first's row; killed after
  the first, a rerun runs the second alone. A budget recorded by an earlier command on other
  code is tabulated as it stands, saying so; one with another configuration is not."""
  common = ["--study", "tiny", "--out-dir", str(tmp_path / "out")]
  common += ["--work-dir", str(tmp_path / "work")]
  argv = [*common, "--budgets", "60"]
  args, _ = learning_curve.parse_args(argv)
  path = run.outputs(learning_curve.budget_out(args, 60), "tiny")[0]
  earlier = run.outputs(learning_curve.budget_out(args, 10), "tiny")[0]
  _curve_record(earlier, args, 10, 0.7, code=dict(HERE_CODE, commit="0" * 40))
  other_config = run.outputs(learning_curve.budget_out(args, 20), "tiny")[0]
  _curve_record(other_config, args, 10, 0.6)  # its configuration says 10 min, not 20
  monkeypatch.setattr(run, "code_version", lambda exclude=(), repo=None: HERE_CODE)
  monkeypatch.setattr(learning_curve, "missing_reason", lambda tool: None)
  names = {"fcslstm": FCSLSTM, "nnunet": run.NNUNET}
  calls, killed = [], []

  def fake_run_py(command):
    a = run.parse_args(command[2:])
    calls.append((a.tools, a.keep_others))
    # its own work folder: run.py empties it, and must not take the other tool's model
    assert a.work == str(tmp_path / "work" / "tiny-60min" / a.tools[0])
    if a.tools == ["fcslstm"] and killed:
      killed.pop()
      return -9
    (tool,) = a.tools
    _curve_record(path, args, 60, 0.9, name=names[tool], keep=a.keep_others)
    return 0

  monkeypatch.setattr(learning_curve, "call", fake_run_py)
  killed.append(True)
  assert learning_curve.main(argv) == 0
  assert calls == [(["fcslstm"], False), (["nnunet"], False)]
  assert set(learning_curve.read_record(path)["tools"]) == {run.NNUNET}
  calls.clear()
  assert learning_curve.main(argv) == 0
  assert calls == [(["fcslstm"], True)]
  assert set(learning_curve.read_record(path)["tools"]) == {run.NNUNET, FCSLSTM}
  calls.clear()
  assert learning_curve.main(argv) == 0
  assert calls == []

  summary = json.loads((tmp_path / "out" / "learning-curve-tiny.json").read_text())
  got = [(r["tool"], r["budget_min"], r["status"], r.get("note")) for r in summary["rows"]]
  assert got == [
    (FCSLSTM, 10.0, "measured", "earlier code, not rerun by this command"),
    (FCSLSTM, 60.0, "measured", None),
    (run.NNUNET, 60.0, "measured", None),
  ]
  table = (tmp_path / "out" / "learning-curve-tiny.md").read_text()
  assert table.startswith("### tiny: learning curve, training wall-clock budgets of 10 / 60 min")
  assert "| 0000000 | earlier code, not rerun by this command |" in table
