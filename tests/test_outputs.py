"""What a study needs after segmentation: probabilities, test-time flips,
ensembles, uncertainty and QC, tissue volumes over age, flags, the report.

Unit checks use stand-in models (pure functions of the pixels); the end-to-end checks run
evaluate.py on the tiny cohort and FCN run that tests/conftest.py shares with
tests/test_cohort.py."""

import dataclasses
import json
import shutil
import types

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from helpers import evaluate_args
from helpers import validator_errors

import evaluate
from fcslstm_jax import files
from fcslstm_jax.data import nifti_io
from fcslstm_jax.data.study import GridOptions
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.infer import ensemble
from fcslstm_jax.infer import pipeline
from fcslstm_jax.infer import predict
from fcslstm_jax.infer import tta
from fcslstm_jax.outputs import figures
from fcslstm_jax.outputs import flags
from fcslstm_jax.outputs import qc
from fcslstm_jax.outputs import volumes
from fcslstm_jax.outputs import writer
from fcslstm_jax.outputs.volumes import SessionVolumes
from fcslstm_jax.run_record import RunRecord

NAMES = ("background", "CSF", "GM", "WM")

# ------------------------------------------------------------------ stand-in models, TTA


def pixel_model(params, images, valid):
  """Flip-equivariant stand-in: logits of each pixel from that pixel alone (a 1x1 conv)."""
  del valid
  return jnp.einsum("bthwc,ck->bthwk", images, params["w"]) + params["b"][None, None, None, None]


def position_model(params, images, valid):
  """Not flip-equivariant: adds a ramp along x, so a flipped view sees other logits."""
  ramp = jnp.linspace(0.0, 3.0, images.shape[2])[None, None, :, None, None]
  return pixel_model(params, images, valid) + ramp * params["r"][None, None, None, None]


def as_apply(fn):
  return lambda variables, images, valid: fn(variables["params"], images, valid)


def stand_in_params(seed, c=4, channels=2):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {
    "w": jax.random.normal(k1, (channels, c)),
    "b": jax.random.normal(k2, (c,)),
    "r": jax.random.normal(k3, (c,)),
  }


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 2, 8, 6, 2)).astype(np.float32)  # [B, T, H, W, C]
  return images, np.ones((3, 2), bool)


def run_tta(model, params, images, valid, flips):
  fn = jax.jit(lambda p, x, v: tta.tta_proba(p, as_apply(model), x, v, tta.flip_variants(flips)))
  return np.asarray(fn(params, images, valid))


def test_flip_variants_and_parsing():
  assert tta.flip_variants(("x", "y")) == ((), (2,), (3,), (2, 3))
  assert tta.flip_variants(()) == ((),)
  assert tta.parse_flips("y, x") == ("x", "y") and tta.parse_flips("none") == ()
  with pytest.raises(ConfigError, match="unknown axis 'z'"):
    tta.parse_flips("x,z")


def test_flips_of_a_flip_equivariant_model_equal_the_plain_prediction(batch):
  images, valid = batch
  params = stand_in_params(0)
  plain = run_tta(pixel_model, params, images, valid, ())
  np.testing.assert_allclose(plain, jax.nn.softmax(pixel_model(params, images, valid)), rtol=1e-6)
  for flips in (("x",), ("y",), ("x", "y")):
    np.testing.assert_allclose(
      run_tta(pixel_model, params, images, valid, flips), plain, rtol=1e-6, atol=1e-7
    )


def test_flips_are_undone_before_averaging(batch):
  """A model that is not equivariant: TTA is the mean of un-flipped predictions of flipped
  inputs (and differs from the plain prediction, so the check above could fail)."""
  images, valid = batch
  params = stand_in_params(1)
  got = run_tta(position_model, params, images, valid, ("x", "y"))
  views = []
  for axes in ((), (2,), (3,), (2, 3)):
    flipped = np.flip(images, axes) if axes else images
    p = np.asarray(jax.nn.softmax(position_model(params, flipped, valid)))
    views.append(np.flip(p, axes) if axes else p)
  np.testing.assert_allclose(got, np.mean(views, axis=0), rtol=1e-5, atol=1e-7)
  plain = run_tta(position_model, params, images, valid, ())
  assert np.abs(got - plain).max() > 1e-2


# ------------------------------------------------------------------------------ ensembles


def slices(images, valid):
  from fcslstm_jax.data.sequences import SliceSet

  n, t = images.shape[:2]
  return SliceSet(
    images=images,
    labels=np.zeros(images.shape[:4], np.int32),
    label_mask=np.zeros(images.shape[:4], np.float32),
    valid=valid,
    subject_ids=("01",) * n,
    slice_index=np.arange(n, dtype=np.int32),
  )


def test_an_ensemble_of_one_equals_that_member_and_of_two_their_mean(batch):
  images, valid = batch
  data = slices(images, valid)
  fn = jax.jit(lambda p, x, v: tta.tta_proba(p, as_apply(position_model), x, v))
  a, b = stand_in_params(2), stand_in_params(3)
  member = predict.predict_all(fn, a, data, batch_size=2)
  np.testing.assert_array_equal(ensemble.average_proba([a], [fn], data, 2), member)
  other = predict.predict_all(fn, b, data, batch_size=2)
  both = ensemble.average_proba([a, b], [fn, fn], data, 2)
  np.testing.assert_allclose(both, (member + other) / 2, rtol=1e-6)
  assert np.abs(both - member).max() > 1e-2


def test_members_must_share_protocol_and_grid():
  run = RunRecord.from_json(
    {
      "config": {},
      "dataset": "d",
      "grid": {"spacing": [1.0, 1.0]},
      "protocol": {"name": "p", "ages": [0, 6], "train_timepoints": [0]},
    }
  )
  ensemble.check_compatible([("a", run), ("b", RunRecord.from_json(run.to_json()))])
  other = dataclasses.replace(run, grid=GridOptions(spacing=(1.5, 1.5)))
  with pytest.raises(
    ConfigError,
    match=r"^b/run.json: grid 'spacing' is \[1.5, 1.5\], but "
    r"a/run.json has \[1.0, 1.0\]",
  ):
    ensemble.check_compatible([("a", run), ("b", other)])
  for field, value in (("spatial_dims", 3), ("age_input", "film"), ("context_slices", 1)):
    other = dataclasses.replace(run, config=run.config.replace(**{field: value}))
    with pytest.raises(ConfigError, match=rf"^b/run.json: {field} is {value!r}, but a/run.json"):
      ensemble.check_compatible([("a", run), ("b", other)])


# ------------------------------------------------------------------ back to the input grid


def test_probabilities_on_a_session_grid_reaching_past_the_working_grid_sum_to_one():
  """A session grid shifted by half a voxel and wider than the working grid: inside, linear
  interpolation of the probabilities; outside, background with probability 1."""
  import types

  from fcslstm_jax.data.grids import Grid

  rng = np.random.default_rng(0)
  work = Grid((6, 5, 3), np.diag([2.0, 2.0, 3.0, 1.0]))
  affine = np.diag([2.0, 2.0, 3.0, 1.0])
  affine[:3, 3] = [-3.0, -1.0, 0.0]  # 1.5 voxels left, half a voxel back
  session = types.SimpleNamespace(grid=Grid((9, 7, 3), affine), to_session=np.eye(4))
  logits = rng.normal(size=work.shape + (4,))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  native = pipeline.to_session_probs(probs, types.SimpleNamespace(grid=work), session)
  assert native.shape == (9, 7, 3, 4) and native.dtype == np.float32
  np.testing.assert_allclose(native.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(native[0, :, :, 0], 1.0)  # outside the working grid
  # Session voxel (3, 3) is working voxel (1.5, 2.5): the mean of its four neighbours.
  np.testing.assert_allclose(native[3, 3, 1], probs[1:3, 2:4, 1].mean((0, 1)), atol=1e-6)
  labels = pipeline.session_outputs(probs, types.SimpleNamespace(grid=work), session)[1]
  np.testing.assert_array_equal(labels, np.argmax(native, -1))


# ---------------------------------------------------------------------------- uncertainty


def test_uncertainty_is_zero_where_all_members_agree_with_probability_one():
  one_hot = np.eye(4, dtype=np.float32)[np.array([[0, 1], [2, 3]])]  # [2, 2, c]
  members = [one_hot, one_hot.copy(), one_hot.copy()]
  u = qc.normalized_entropy(np.mean(members, axis=0))
  np.testing.assert_array_equal(u, 0.0)
  split = qc.normalized_entropy((np.eye(4)[0] + np.eye(4)[1]) / 2)  # two members disagree
  assert split == pytest.approx(np.log(2) / np.log(4))
  assert qc.normalized_entropy(np.full(4, 0.25)) == pytest.approx(1.0)


def test_qc_score_is_mean_uncertainty_in_the_predicted_brain():
  labels = np.array([0, 0, 1, 2])
  assert qc.qc_score(np.array([0.9, 0.9, 0.2, 0.4]), labels) == pytest.approx(0.3)
  assert qc.qc_score(np.zeros(4), np.zeros(4, int)) == qc.EMPTY_BRAIN_SCORE


# -------------------------------------------------------------------------------- volumes


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LPI"])
def test_volumes_are_exact_in_ml_for_any_orientation_and_voxel_size(codes, tmp_path):
  """Known counts on anisotropic 1.25 x 0.75 x 3.5 mm voxels (exact in the header's
  float32), stored in several orientations and read back the way inputs are: the volumes
  are the same, in mL."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, size=(7, 5, 3))
  counts = np.bincount(labels.ravel(), minlength=4)
  spacing = np.array([1.25, 0.75, 3.5])
  signs = np.array([1 if c in "RAS" else -1 for c in codes])
  affine = np.diag(list(spacing * signs) + [1.0])
  path = tmp_path / f"{codes}.nii.gz"
  nifti_io.write_volume(path, labels, affine, np.uint8)
  vol = nifti_io.load_volume(path, kind="labels")
  assert nib.aff2axcodes(vol.ref.affine) == tuple(codes)
  expected = counts * np.prod(spacing) / 1000.0
  for a in (vol.ref.affine, vol.affine):  # stored and canonical grids
    np.testing.assert_allclose(volumes.class_volumes_ml(vol.data, a, 4), expected, rtol=1e-12)
  assert volumes.voxel_ml(affine) == pytest.approx(1.25 * 0.75 * 3.5 / 1000, rel=1e-12)


def test_volumes_of_an_oblique_grid():
  rotation = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
  affine = np.eye(4)
  affine[:3, :3] = rotation @ np.diag([2.0, 0.5, 4.0])
  labels = np.ones((10, 10, 10), int)
  np.testing.assert_allclose(volumes.class_volumes_ml(labels, affine, 2), [0.0, 4.0])


# ---------------------------------------------------------------------------------- flags


def smooth_cohort(n_subjects=6, ages=(0.5, 3, 6, 9, 12, 30)):
  """Tissue volumes growing smoothly with age, a few per cent apart between subjects."""
  rows = []
  for i in range(n_subjects):
    for t, age in enumerate(ages):
      growth = 1 + 0.08 * age - 0.0012 * age**2
      size = 1 + 0.03 * (i - n_subjects / 2)
      rows.append(
        SessionVolumes(
          f"{i + 1:02d}",
          f"V{t + 1}",
          t,
          float(age),
          {"CSF": 60 * size * growth, "GM": 200 * size * growth, "WM": 150 * size * growth**1.1},
          0.05 + 0.01 * i,
        )
      )
  return rows


def change(rows, subject, session, **updates):
  out = []
  for r in rows:
    if (r.subject, r.session) != (subject, session):
      out.append(r)
      continue
    vol = dict(r.volumes_ml)
    for cls, factor in updates.get("scale", {}).items():
      vol[cls] *= factor
    out.append(dataclasses.replace(r, volumes_ml=vol, qc=updates.get("qc", r.qc)))
  return out


def test_no_rule_fires_on_a_smooth_cohort():
  assert flags.check(smooth_cohort(), flags.FlagRules(), NAMES) == []


BROKEN = {  # rule -> (what breaks it, the session that must be named)
  "shrink": (dict(scale={"GM": 0.7}), ("03", "V4")),  # -21 % at 9 months
  "outlier": (dict(scale={"WM": 1.6}), ("02", "V3")),  # far from its time point
  "empty": (dict(scale={"CSF": 0.001}), ("05", "V2")),  # iBEAT's "volume equals 0"
  "uncertain": (dict(qc=0.6), ("01", "V5")),  # the others 0.05-0.10
}


@pytest.mark.parametrize("rule", BROKEN)
def test_each_rule_fires_on_a_trajectory_built_to_break_it(rule, capsys):
  updates, (subject, session) = BROKEN[rule]
  rows = change(smooth_cohort(), subject, session, **updates)
  only = dataclasses.replace(flags.FlagRules(), **{r: None for r in flags.RULES if r != rule})
  found = flags.check(rows, only, NAMES)
  assert found and all(f.rule == rule for f in found)
  assert {(f.subject, f.session) for f in found} == {(subject, session)}
  assert f"sub-{subject} ses-{session}" in found[0].line() and rule in found[0].line()
  assert flags.check(smooth_cohort(), only, NAMES) == []


def test_shrink_names_the_later_session_and_its_numbers_and_spares_older_ages():
  rows = change(smooth_cohort(), "03", "V4", scale={"GM": 0.7})
  (f, *rest) = flags.shrink_flags(rows, flags.ShrinkRule(), ["GM"])
  assert (f.subject, f.session, f.cls) == ("03", "V4", "GM") and f.value > 0.1
  assert "since ses-V3" in f.message and "limit -10 % before age 24" in f.message
  # The recovery V4 -> V5 is growth, not a flag; the same drop at 30 months is not flagged.
  assert rest == []
  late = change(smooth_cohort(), "03", "V6", scale={"GM": 0.5})  # -35 % at 30
  assert flags.shrink_flags(late, flags.ShrinkRule(), ["GM"]) == []
  assert flags.shrink_flags(late, flags.ShrinkRule(before_age=None), ["GM"])


def test_uncertain_is_relative_to_the_cohort_unless_a_limit_is_set():
  rows = [dataclasses.replace(r, qc=0.4 + 0.001 * k) for k, r in enumerate(smooth_cohort())]
  assert flags.uncertain_flags(rows, flags.UncertainRule()) == []  # all alike
  (f,) = flags.uncertain_flags(rows, flags.UncertainRule(z=None, qc=0.4345))
  assert (f.subject, f.session) == ("06", "V6") and "limit 0.4345" in f.message
  worse = change(rows, "02", "V2", qc=0.6)
  (f,) = flags.uncertain_flags(worse, flags.UncertainRule())
  assert (f.subject, f.session) == ("02", "V2") and "robust z" in f.message


def test_outlier_needs_enough_sessions_at_the_time_point():
  rows = change(smooth_cohort(n_subjects=4), "02", "V3", scale={"WM": 1.6})
  assert flags.outlier_flags(rows, flags.OutlierRule(min_sessions=5), NAMES[1:]) == []
  assert flags.outlier_flags(rows, flags.OutlierRule(min_sessions=4), NAMES[1:])


def test_flag_rules_file(tmp_path):
  path = tmp_path / "rules.json"
  path.write_text(json.dumps({"shrink": {"fraction": 0.05}, "outlier": None, "classes": ["GM"]}))
  rules = flags.load(path)
  assert rules.shrink == flags.ShrinkRule(fraction=0.05, before_age=24.0)
  assert rules.outlier is None and rules.empty == flags.EmptyRule()
  assert rules.classes == ("GM",)
  assert flags.from_json(rules.to_json()) == rules
  for bad, message in (
    ({"shrnk": {}}, "unknown key 'shrnk'"),
    ({"shrink": {"fraction": "10%"}}, "'fraction' must be a number"),
    ({"outlier": {"min_sessions": 2.5}}, "must be an integer"),
  ):
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=message) as info:
      flags.load(path)
    assert str(path) in str(info.value)
  with pytest.raises(ConfigError, match="not tissue classes"):
    flags.check(smooth_cohort(), flags.FlagRules(classes=("Gm",)), NAMES)


@pytest.mark.parametrize("num_classes", [3, 4, 7])
def test_trajectories_show_every_tissue_and_the_total(num_classes, tmp_path):
  names = ("background",) + tuple(f"tissue{k}" for k in range(1, num_classes))
  rows = [
    SessionVolumes(s, f"V{t}", t, float(3 * t), {n: 10.0 + t for n in names[1:]}, 0.1)
    for s in ("01", "02")
    for t in range(3)
  ]
  titles = figures.trajectories(tmp_path / "t.png", rows, names, {("01", "V1", "")})
  assert titles == list(names[1:]) + ["total (tissues)"]
  assert (tmp_path / "t.png").stat().st_size > 0


def test_label_files_get_the_label_display_range_and_no_stale_probabilities(tmp_path):
  """dseg: cal_min 0, cal_max c-1 (not the T1w header's display range it copies); a later
  evaluation without --probabilities into the same --out removes the probseg it wrote."""
  t1 = nib.Nifti1Image(np.full((4, 5, 3), 700, np.int16), np.eye(4))
  t1.header["cal_min"], t1.header["cal_max"] = 100.0, 900.0
  nib.save(t1, str(tmp_path / "t1.nii.gz"))
  session = types.SimpleNamespace(
    label="06mo", ref=nifti_io.load_volume(tmp_path / "t1.nii.gz").ref
  )
  out = tmp_path / "out"
  probs = np.full((4, 5, 3, 7), 1 / 7, np.float32)
  labels = np.zeros((4, 5, 3), np.int32)
  labels[0] = 2  # the largest label present is not c - 1
  for asked in (True, False):
    writer.write_session(
      str(out), "fcn", "01", session, probs, labels, np.zeros((4, 5, 3), np.float32), asked
    )
    dseg = nib.load(str(out / "sub-01/ses-06mo/anat/sub-01_ses-06mo_desc-fcn_dseg.nii.gz"))
    assert (float(dseg.header["cal_min"]), float(dseg.header["cal_max"])) == (0.0, 6.0)
    probseg = out / "sub-01/ses-06mo/anat/sub-01_ses-06mo_desc-fcn_probseg.nii.gz"
    assert probseg.exists() == asked
  assert (tmp_path / "t1.nii.gz").exists()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def evaluated(study_dir, study_run, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval") / "pred"
  assert evaluate.main(evaluate_args(study_run, study_dir, out, "--probabilities")) == 0
  return out


def session_files(out, suffix):
  """A suffix's files (``uncertainty``: the ``*_label-uncertainty_desc-fcn_probseg``)."""
  if suffix == "uncertainty":
    return sorted(out.glob("sub-*/ses-*/anat/*_label-uncertainty_desc-fcn_probseg.nii.gz"))
  return sorted(
    p for p in out.glob(f"sub-*/ses-*/anat/*_desc-fcn_{suffix}.nii.gz") if "_label-" not in p.name
  )


def test_probabilities_sum_to_one_and_their_argmax_is_the_written_label(study_dir, evaluated):
  probsegs = session_files(evaluated, "probseg")
  assert len(probsegs) == 3 * 5 - 1
  for path in probsegs:
    sub, ses = path.parts[-4], path.parts[-3]
    (t1,) = (study_dir / sub / ses / "anat").glob("*_T1w.nii.gz")
    prob, dseg = nib.load(str(path)), nib.load(str(path).replace("_probseg", "_dseg"))
    p = np.asarray(prob.dataobj)
    assert p.dtype == np.float32 and p.shape == nib.load(str(t1)).shape + (4,)
    np.testing.assert_allclose(prob.affine, nib.load(str(t1)).affine, atol=1e-6)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert p.min() >= 0.0
    np.testing.assert_array_equal(np.argmax(p, -1), np.asarray(dseg.dataobj))
    u = np.asarray(nib.load(str(path).replace("_desc-", "_label-uncertainty_desc-")).dataobj)
    np.testing.assert_allclose(u, qc.normalized_entropy(p), atol=0.5 / 255 + 1e-6)  # uint8


def test_volumes_and_qc_tables_follow_the_written_labels(study_dir, evaluated):
  rows = files.read_tsv(evaluated / "volumes.tsv")
  assert len(rows) == 3 * 5 - 1 and list(rows[0])[:4] == ["subject", "session", "timepoint", "age"]
  for row in rows:
    (dseg,) = (evaluated / row["subject"] / row["session"] / "anat").glob("*_dseg.nii.gz")
    img = nib.load(str(dseg))
    counts = np.bincount(np.asarray(img.dataobj).ravel(), minlength=4)
    voxel = np.prod(img.header.get_zooms()[:3]) / 1000
    for k, name in enumerate(NAMES[1:], 1):
      assert float(row[f"{name}_ml"]) == pytest.approx(counts[k] * voxel, abs=1e-3)
  qc_rows = files.read_tsv(evaluated / "qc.tsv")
  scores = [float(r["qc"]) for r in qc_rows]
  assert scores == sorted(scores, reverse=True) and [r["rank"] for r in qc_rows][:2] == ["1", "2"]
  assert all(r["dice_tissues"] == "n/a" for r in qc_rows if r["subject"] == "sub-03")
  assert any(r["dice_tissues"] != "n/a" for r in qc_rows)
  ages = {r["session"]: float(r["age"]) for r in rows if r["subject"] == "sub-01"}
  tsv = files.read_tsv(study_dir / "sub-01" / "sub-01_sessions.tsv")
  assert ages == {r["session_id"]: pytest.approx(float(r["age"])) for r in tsv}


def test_report_and_the_other_outputs(evaluated):
  for name in (
    "metrics.json",
    "flags.tsv",
    "flags.json",
    "dseg.tsv",
    "trajectories.png",
    "qc_worst.png",
    "segmentation.png",
  ):
    assert (evaluated / name).stat().st_size > 0, name
  page = (evaluated / "report.html").read_text()
  metrics = json.loads((evaluated / "metrics.json").read_text())
  assert (evaluated / "flagged.png").exists() == (metrics["flags"] > 0)
  assert page.count("data:image/png;base64,") == 2 + (metrics["flags"] > 0)
  assert 'src="http' not in page
  assert "Tissue volumes over age" in page and "Dice" in page
  assert metrics["tta_flips"] == [] and len(metrics["members"]) == 1
  assert flags.from_json(json.loads((evaluated / "flags.json").read_text())) == flags.FlagRules()
  assert not list(evaluated.rglob("*.tmp*"))
  assert validator_errors(evaluated) == []


def test_an_ensemble_of_a_run_and_its_copy_equals_the_run(
  study_dir, study_run, evaluated, tmp_path
):
  twin = shutil.copytree(study_run, tmp_path / "twin")
  out = tmp_path / "ens"
  assert (
    evaluate.main(
      [
        "--workdir",
        str(study_run),
        "--workdir",
        str(twin),
        "--data-dir",
        str(study_dir),
        "--out",
        str(out),
        "--probabilities",
      ]
    )
    == 0
  )
  for path in session_files(evaluated, "probseg"):
    other = out / path.relative_to(evaluated)
    other = other.with_name(other.name.replace("desc-fcn", "desc-ensemble"))
    np.testing.assert_array_equal(
      np.asarray(nib.load(str(other)).dataobj), np.asarray(nib.load(str(path)).dataobj)
    )
  assert len(json.loads((out / "metrics.json").read_text())["members"]) == 2


def test_an_ensemble_member_on_other_grid_options_is_one_error_line(
  study_dir, study_run, tmp_path, capsys
):
  other = shutil.copytree(study_run, tmp_path / "other")
  run = json.loads((other / "run.json").read_text())
  run["grid"]["spacing"] = [4.0, 4.0]
  (other / "run.json").write_text(json.dumps(run))
  out = tmp_path / "never"
  assert (
    evaluate.main(
      [
        "--workdir",
        str(study_run),
        "--workdir",
        str(other),
        "--data-dir",
        str(study_dir),
        "--out",
        str(out),
      ]
    )
    == 2
  )
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and f"{other}/run.json: grid 'spacing'" in err
  assert not out.exists()


def test_unlabeled_study_with_missing_sessions_gets_every_output_but_metrics(
  study_dir, study_run, tmp_path, capsys
):
  root = tmp_path / "unlabeled"
  shutil.copytree(study_dir, root, ignore=shutil.ignore_patterns("derivatives", "sourcedata"))
  shutil.rmtree(root / "sub-02" / "ses-V3")  # sub-03 already misses one
  out = tmp_path / "pred"
  assert (
    evaluate.main(
      [
        "--workdir",
        str(study_run),
        "--data-dir",
        str(root),
        "--out",
        str(out),
        "--tta-flips",
        "x,y",
      ]
    )
    == 0
  )
  printed = capsys.readouterr().out
  assert "metrics are not available" in printed
  assert len(session_files(out, "dseg")) == len(session_files(out, "uncertainty")) == 3 * 5 - 2
  assert not session_files(out, "probseg")  # only with --probabilities
  rows = files.read_tsv(out / "volumes.tsv")
  assert [r["session"] for r in rows if r["subject"] == "sub-02"] == [
    "ses-V1",
    "ses-V2",
    "ses-V4",
    "ses-V5",
  ]
  assert all(r["dice_tissues"] == "n/a" for r in files.read_tsv(out / "qc.tsv"))
  metrics = json.loads((out / "metrics.json").read_text())
  assert not metrics["metrics_available"] and metrics["tta_flips"] == ["x", "y"]
  page = (out / "report.html").read_text()
  assert "No labels in this dataset" in page
  flag_lines = [line for line in printed.splitlines() if line.startswith("flag: ")]
  assert len(flag_lines) == len(files.read_tsv(out / "flags.tsv"))


def test_bad_tta_flips_and_flags_file_are_one_error_line(study_run, tmp_path, capsys):
  assert evaluate.main(["--workdir", str(study_run), "--tta-flips", "z"]) == 2
  assert "--tta-flips: unknown axis 'z'" in capsys.readouterr().err
  bad = tmp_path / "rules.json"
  bad.write_text("{")
  assert evaluate.main(["--workdir", str(study_run), "--flags", str(bad)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"{bad}: not valid JSON" in err


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_batch_size_below_one_is_one_usage_line(tmp_path, value, capsys):
  """Checked where it enters (once a traceback: range() arg 3 must not be zero), before any
  run folder is read."""
  with pytest.raises(SystemExit) as e:
    evaluate.main(["--workdir", str(tmp_path / "no-run"), "--batch-size", value])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert f"--batch-size {value}: must be 1 or more" in err and "Traceback" not in err
