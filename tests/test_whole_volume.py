"""What users see, scored: whole-volume groups in metrics.json, tissue volumes and their growth
against the truth (volumes_truth.tsv), and the trajectory flag.

Hand-made numbers for the pure functions and :class:`StudyWriter`'s grouping; one end-to-end
evaluation of the tiny cohort against its full labels (the FCN of tests/conftest.py)."""

import json
import types

import nibabel as nib
import numpy as np
import pytest
from helpers import evaluate_args

import evaluate
from fcslstm_jax import files
from fcslstm_jax import metrics
from fcslstm_jax.data import protocol
from fcslstm_jax.outputs import flags
from fcslstm_jax.outputs import volumes
from fcslstm_jax.outputs import writer
from fcslstm_jax.outputs.volumes import SessionVolumes

NAMES = ("background", "CSF", "GM", "WM")

# ------------------------------------------------------------------ volume and growth errors


def test_volume_error_is_the_mean_relative_error_and_its_signed_mean():
  pred = [[110.0, 50.0, 1.0], [90.0, 7.0, 2.0]]
  true = [[100.0, 40.0, 0.0], [100.0, 0.0, 0.0]]  # no true volume: left out of that class
  error, bias = volumes.volume_errors(pred, true)
  np.testing.assert_allclose(error[:2], [0.1, 0.25])
  np.testing.assert_allclose(bias[:2], [0.0, 0.25])
  assert np.isnan(error[2]) and np.isnan(bias[2])
  with pytest.raises(ValueError, match="must both be"):
    volumes.volume_errors(pred, true[:1])


def test_growth_error_by_hand():
  # Rows out of age order: subject a's first session is the 2nd row (age 3), its last the 1st
  # (age 12); b's at ages 1 and 5; c has one session (no growth).
  subjects = ["a", "a", "a", "b", "b", "c"]
  ages = [12.0, 3.0, 6.0, 1.0, 5.0, 2.0]
  true = [[200, 80], [100, 100], [150, 90], [50, 50.0], [60, 50.2], [70, 70]]
  pred = [[220, 90], [90, 100], [0, 0], [50, 40], [55, 60], [1, 1]]
  error, counted = volumes.growth_errors(subjects, ages, pred, true)
  # Class 0: a grows 100 true, 130 predicted (error 0.3); b 10 and 5 (0.5).
  # Class 1: a shrinks 20 true, 10 predicted (0.5); b's true change 0.2 mL (< 1 %) is skipped.
  np.testing.assert_allclose(error, [0.4, 0.5])
  np.testing.assert_array_equal(counted, [2, 1])
  assert [(s, a, b) for s, a, b in volumes.first_last(subjects, ages)] == [("a", 1, 0), ("b", 3, 4)]
  error, counted = volumes.growth_errors(["a"], [1.0], [[1.0]], [[2.0]])
  assert np.isnan(error[0]) and counted[0] == 0


def test_a_whole_volume_label_file_is_told_from_the_file_alone():
  truth = np.zeros((3, 3, 8), int)
  truth[:, :, 3] = 1  # one labeled slice of 8: sparse training labels
  assert not volumes.is_whole_volume(truth)
  truth[:, :, 5] = 1  # every other slice: still sparse
  truth[:, :, 7] = 1
  assert not volumes.is_whole_volume(truth)
  truth[:, :, 4] = truth[:, :, 6] = 1  # an unbroken run 3..7: a brain, empty slices around it
  assert volumes.is_whole_volume(truth)
  assert not volumes.is_whole_volume(np.zeros_like(truth))
  assert volumes.is_whole_volume(truth[:, :, 4:5])  # a 1-slice session labeled everywhere


def test_whole_volumes_score_every_slice():
  truth = np.zeros((3, 3, 6), int)
  truth[:, :, 1:4] = 2
  pred = truth.copy()
  pred[1, 1, 5] = 1  # false tissue on a slice with no brain
  sparse_cm = writer.score_against(pred, truth, 4)
  whole_cm = writer.score_against(pred, truth, 4, whole=True)
  assert sparse_cm[0, 1] == 0 and whole_cm[0, 1] == 1
  assert whole_cm.sum() == truth.size


# --------------------------------------------------------- the study writer's whole volumes


def truth_of(labels):
  return types.SimpleNamespace(data=labels, ref=types.SimpleNamespace(affine=np.eye(4) * 10))


def session_of(subject, label, t, age, pred):
  ml = volumes.class_volumes_ml(pred, np.eye(4) * 10, 4)
  return SessionVolumes(subject, label, t, age, dict(zip(NAMES[1:], ml[1:].tolist())), 0.1)


def test_writer_groups_sessions_by_the_datasets_own_labels(tmp_path):
  """Subject 01 has training labels (t 0 test, t 1 train), 03 has none in the dataset: its
  sessions are the unlabeled group whatever labels are scored; 1 voxel = 1 mL."""
  bric = protocol.BRIC
  w = writer.StudyWriter(str(tmp_path), "fcn", bric, unlabeled_subjects={"03"})
  truth = np.zeros((2, 2, 2), int)
  truth[0] = 1  # CSF 4 mL, WM 4 mL
  truth[1] = 3
  grown = truth.copy()
  grown[1, 0, 0] = 1  # CSF 5, WM 3
  pred = truth.copy()
  pred[1, :, 0] = 2  # CSF 4, GM 2, WM 2
  for subject, t, age, p, y in (
    ("01", 2, 6.0, pred, truth),
    ("01", 1, 3.0, truth, truth),
    ("01", 4, 12.0, truth, grown),
    ("03", 0, 0.0, pred, grown),
  ):
    row = session_of(subject, f"V{t}", t, age, p)
    w.add_truth(row, t, p, truth_of(y), writer.score_against(p, y, 4))
  sparse = np.zeros((2, 2, 4), int)
  sparse[:, :, 1] = 1
  w.add_truth(
    session_of("01", "V0", 0, 0.0, np.ones_like(sparse)),
    0,
    np.ones_like(sparse),
    truth_of(sparse),
    writer.score_against(np.ones_like(sparse), sparse, 4),
  )
  wv = writer.whole_volume_summary(w.group_cms, w.group_sessions, w.truth, w.uncompared, NAMES)
  held, train, unlabeled = wv["heldout"], wv["train_timepoints"], wv["unlabeled_subjects"]
  assert (held["sessions"], train["sessions"], unlabeled["sessions"]) == (1, 3, 1)
  cm = writer.score_against(pred, truth, 4)
  for key in ("dice", "precision", "recall"):
    assert held[key] == metrics.summarize(cm, NAMES)[key]
  assert held["precision"]["WM"] == 1.0 and held["recall"]["WM"] == 0.5
  assert held["volume_error"] == {"CSF": 0.0, "GM": None, "WM": 0.5}
  assert held["volume_bias"] == {"CSF": 0.0, "GM": None, "WM": -0.5}
  # The sparse session is scored (a training time point) but has no volume.
  assert (train["volume_sessions"], wv["volumes_not_compared"]) == (2, 1)
  # Labeled subject 01 from age 3 to 12: CSF +1 true, 0 predicted; WM -1 true, 0 predicted.
  growth = wv["growth_error"]
  assert growth["labeled_subjects"]["error"] == {"CSF": 1.0, "GM": None, "WM": 1.0}
  assert growth["labeled_subjects"]["subjects"] == {"CSF": 1, "GM": 0, "WM": 1}
  assert growth["unlabeled_subjects"] is None  # one session
  header, rows = volumes.truth_rows(w.truth, NAMES)
  assert header == ["subject", "session", "age", "class", "predicted_ml", "true_ml"]
  assert rows[:3] == [
    ["sub-01", "ses-V1", "3", "CSF", "4.000", "4.000"],
    ["sub-01", "ses-V1", "3", "GM", "0.000", "0.000"],
    ["sub-01", "ses-V1", "3", "WM", "4.000", "4.000"],
  ]
  assert len(rows) == 4 * 3
  empty = writer.StudyWriter(str(tmp_path), "fcn", bric)
  wv = writer.whole_volume_summary(empty.group_cms, empty.group_sessions, [], 0, NAMES)
  assert wv["heldout"] is None and wv["growth_error"]["labeled_subjects"] is None


# ---------------------------------------------------------------------- the trajectory flag


def growing_cohort(n_subjects=6, ages=(1.0, 3.0, 6.0, 12.0), flat=None):
  """Volumes growing linearly with age, 3 % apart in rate between subjects; WM of subject
  ``flat`` stays where it started."""
  rows = []
  for i in range(n_subjects):
    sid, size = f"{i + 1:02d}", 1 + 0.03 * (i - 3)
    for t, age in enumerate(ages):
      wm = 100.0 + (0.0 if sid == flat else 10.0 * size * age)
      rows.append(
        SessionVolumes(
          sid,
          f"V{t + 1}",
          t,
          age,
          {"CSF": 50 + 2 * size * age, "GM": 200 + 15 * size * age, "WM": wm},
          0.1,
        )
      )
  return rows


def test_a_flat_white_matter_curve_is_flagged_once_on_its_last_session(capsys):
  rule = flags.TrajectoryRule()
  (f,) = flags.trajectory_flags(growing_cohort(flat="06"), rule, NAMES[1:])
  assert (f.subject, f.session, f.cls, f.rule) == ("06", "V4", "WM", "trajectory")
  assert f.value < -rule.z
  assert "WM grew +0.00 mL per unit of age from ses-V1 (age 1) to ses-V4 (age 12)" in f.message
  assert "the cohort's median +9.55 over 6 subjects" in f.message
  assert "sub-06 ses-V4 (age 12): trajectory: WM" in f.line()
  # The same cohort without the flat curve, and 3 subjects (too few for a cohort): no flag.
  assert flags.trajectory_flags(growing_cohort(), rule, NAMES[1:]) == []
  others = [r for r in growing_cohort(flat="06") if r.subject != "06"]
  assert flags.trajectory_flags(others, rule, NAMES[1:]) == []
  few = [r for r in growing_cohort(flat="06") if r.subject in ("01", "02", "06")]
  assert flags.trajectory_flags(few, rule, NAMES[1:]) == []
  assert flags.trajectory_flags(few, flags.TrajectoryRule(min_subjects=3), NAMES[1:])
  # Through every default rule (the outlier rule also names the flat curve's late sessions).
  found = flags.check(growing_cohort(flat="06"), flags.FlagRules(), NAMES)
  assert [(x.subject, x.cls) for x in found if x.rule == "trajectory"] == [("06", "WM")]
  assert flags.check(growing_cohort(), flags.FlagRules(), NAMES) == []


def test_flags_files_written_before_the_trajectory_rule_still_load(tmp_path):
  old = flags.FlagRules().to_json()
  del old["trajectory"]
  path = tmp_path / "flags.json"
  path.write_text(json.dumps(old))
  assert flags.load(path) == flags.FlagRules()
  path.write_text(json.dumps({"trajectory": {"floor": 0.5}}))
  assert flags.load(path).trajectory == flags.TrajectoryRule(floor=0.5)


# ------------------------------------------------------------------------------ end to end


def test_evaluate_against_full_labels_scores_whole_volumes_and_volumes(
  study_dir, study_run, tmp_path, capsys
):
  out, full = tmp_path / "pred", study_dir / "sourcedata" / "full-labels"
  assert (
    evaluate.main(evaluate_args(study_run, study_dir, out, "--labels", str(full), "--no-report"))
    == 0
  )
  printed = capsys.readouterr().out
  wv = json.loads((out / "metrics.json").read_text())["whole_volume"]
  # 2 labeled subjects x 5 sessions (time point 3 held out), and sub-03 (4 sessions), which
  # has no label file in the dataset, though --labels gives it some.
  assert [wv[g]["sessions"] for g in writer.GROUPS] == [2, 8, 4]
  for g in writer.GROUPS:
    assert set(wv[g]["precision"]) == set(NAMES) and wv[g]["voxels"] > 0
  truth_rows = files.read_tsv(out / "volumes_truth.tsv")
  predicted = {(r["subject"], r["session"]): r for r in files.read_tsv(out / "volumes.tsv")}
  assert wv["volumes_not_compared"] == 0 and len(truth_rows) == 3 * 14
  for r in truth_rows:
    (path,) = (full / r["subject"] / r["session"] / "anat").glob("*_dseg.nii.gz")
    img = nib.load(str(path))
    ml = volumes.class_volumes_ml(np.asarray(img.dataobj), img.affine, 4)
    assert float(r["true_ml"]) == pytest.approx(ml[NAMES.index(r["class"])], abs=1e-3)
    assert r["predicted_ml"] == predicted[r["subject"], r["session"]][f"{r['class']}_ml"]
  assert set(wv["growth_error"]) == {"labeled_subjects", "unlabeled_subjects"}
  block = printed[printed.index("whole volumes") :].splitlines()
  assert block[1].startswith("  held-out time points (2 sessions): Dice CSF ")
  assert "| precision CSF" in block[1] and "| volume error CSF" in block[1]
  assert block[3].startswith("  unlabeled subjects (4 sessions)")
  assert block[4].startswith("  growth error, first to last session")
  # The dataset's own labels: one slice per session, so no volume (unless the session has
  # only that slice); sub-03 has none at all.
  assert (
    evaluate.main(
      ["--workdir", str(study_run), "--data-dir", str(study_dir), "--out", str(out), "--no-report"]
    )
    == 0
  )
  wv = json.loads((out / "metrics.json").read_text())["whole_volume"]
  own = list(study_dir.glob("derivatives/*/sub-*/ses-*/anat/*_dseg.nii.gz"))
  several = [p for p in own if nib.load(str(p)).shape[2] > 1]
  assert len(own) == 10 and wv["volumes_not_compared"] == len(several) >= 8
  assert wv["unlabeled_subjects"] is None
  assert sum(wv[g]["volume_sessions"] for g in writer.GROUPS[:2]) == len(own) - len(several)
  rows = files.read_tsv(out / "volumes_truth.tsv")  # rewritten: none of the first's is left
  assert len(rows) == 3 * (len(own) - len(several))
