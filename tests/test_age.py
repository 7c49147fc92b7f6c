"""Session age and the gaps between sessions as model input (Config.age_input, model/age.py):
uneven studies, missing sessions, ages no one trained on."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import STUDY
from helpers import train_args

import evaluate
import train
from fcslstm_jax import files
from fcslstm_jax import run_record
from fcslstm_jax.config import Config
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.model import age
from fcslstm_jax.model import networks
from fcslstm_jax.synthetic import cohort

TINY_STAGES = ((4, 1), (4, 1))


def test_a_missing_session_makes_the_gap_span_it():
  ages = jnp.array([[0.5, 1.0, 0.0, 2.0]])  # years: 6, 12, (missing), 24 months
  valid = jnp.array([[True, True, False, True]])
  t = np.asarray(age.timing(ages, valid))
  np.testing.assert_allclose(t[0, :, 0], [0.5, 1.0, 0.0, 2.0])
  np.testing.assert_allclose(t[0, [0, 1, 3], 1], [0.0, 0.5, 1.0])  # to the previous valid
  np.testing.assert_allclose(t[0, [0, 1, 3], 2], [0.5, 1.0, 0.0])  # to the next valid


def test_the_age_read_back_ignores_padding_and_keeps_negative_ages():
  images = np.zeros((1, 3, 4, 4, 2), np.float32)
  months = np.array([[-1.2, 6.0, 12.0]])  # a preterm infant's corrected age is negative
  x = sequences.with_age_channel(images, months, np.ones((1, 3), bool))
  x = np.pad(x, ((0, 0), (0, 0), (0, 4), (0, 4), (0, 0)))  # zero padding, as networks pad
  _, years = age.split_age(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(years) * 12, months, rtol=1e-6)


def test_the_uneven_study_gives_true_gaps_through_the_data_path(tmp_path):
  """The uneven generator (6 / 12 / 24 months, jittered, a missed visit): the age channel
  the data path adds holds each session's tsv age, and the gap over the missed visit is
  the true one."""
  config = dataclasses.replace(
    cohort.UNEVEN,
    num_subjects=2,
    num_unlabeled=0,
    missing_labeled=1,
    fov_mm=STUDY.fov_mm,
    voxel_mm=STUDY.voxel_mm,
    slice_mm=STUDY.slice_mm,
  )
  root = cohort.generate(tmp_path / "uneven", seed=3, config=config)  # sub-02 misses 12 mo
  proto = protocol.get_protocol(None, root)
  loaded = study.load_study(root, proto, spacing="native")
  first, second = loaded.subjects
  assert len(first.sessions) == 3 and len(second.sessions) == 2  # sub-02 missed a visit
  seq = sequences.make_sequences([second], proto, "all", inputs=sequences.Inputs(ages=True))
  images, years = age.split_age(jnp.asarray(seq.images))
  assert images.shape[-1] == len(proto.modalities)
  tsv = {
    r["session_id"]: float(r["age"])
    for r in files.read_tsv(root / "sub-02" / "sub-02_sessions.tsv")
  }
  present = [t for t, s in enumerate(second.timepoints) if s is not None]
  assert present == [0, 2]
  months = sorted(tsv.values())
  years = np.asarray(years)
  seen = [years[seq.valid[:, t], t] for t in present]  # the slices each session covers
  for got, want in zip(seen, months):
    np.testing.assert_allclose(got * 12, want, rtol=1e-5)
  ages = jnp.asarray([[seen[0][0], 0.0, seen[1][0]]])
  gaps = np.asarray(age.timing(ages, jnp.asarray([[True, False, True]])))[0, 2, 1] * 12
  assert gaps == pytest.approx(months[1] - months[0], rel=1e-5) and gaps > 12


def test_ages_change_the_output():
  config = Config(age_input="film", stages=TINY_STAGES)
  model = networks.build_model(config, 4)
  images = jax.random.uniform(jax.random.PRNGKey(0), (1, 3, 16, 16, 2))
  months = np.array([[6.0, 12.0, 24.0]])
  x = jnp.asarray(sequences.with_age_channel(np.asarray(images), months, np.ones((1, 3), bool)))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
  assert "film1" in params

  def out(ages_years):
    channel = jnp.broadcast_to(ages_years[:, :, None, None, None], x.shape[:-1] + (1,))
    return jnp.sum(model.apply({"params": params}, jnp.concatenate([images, channel], -1)) ** 2)

  grad = jax.jit(jax.grad(out))(jnp.asarray(months / 12, jnp.float32))
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0


def test_the_paper_model_is_the_default_and_older_records_load(tmp_path):
  assert Config().age_input == "none"
  params = networks.init_params(networks.build_model(Config(stages=TINY_STAGES), 4), 2)
  assert not any(k.startswith("film") for k in params)
  assert Config.from_json({"model": "bi-fcslstm"}).age_input == "none"
  record = {"config": {}, "dataset": "/d", "protocol": "bric"}
  (tmp_path / "run.json").write_text(json.dumps(record))
  assert run_record.read(tmp_path).age_range is None
  with pytest.raises(ConfigError, match="age_input=film: for the 2D LSTM models"):
    Config(model="fcn", age_input="film")


def test_an_age_outside_the_training_range_is_segmented_with_a_warning(study_dir, tmp_path, capsys):
  run = tmp_path / "run"
  args = train_args(study_dir, run, 1, "--model", "fcslstm", "--set", "age_input=film")
  assert train.main(args) == 0
  record = json.loads((run / "run.json").read_text())
  lo, hi = record["age_range"]
  assert record["config"]["age_input"] == "film" and 0 <= lo < hi <= 13

  shifted = tmp_path / "shifted"
  shutil.copytree(study_dir, shifted)
  tsv = shifted / "sub-01" / "sub-01_sessions.tsv"
  rows = files.read_tsv(tsv)
  rows[-1]["age"] = f"{hi + 0.5:.2f}"  # the oldest session, later than any training saw
  files.write_tsv(tsv, list(rows[0]), [tuple(r.values()) for r in rows])
  capsys.readouterr()
  out = tmp_path / "pred"
  argv = ["--workdir", str(run), "--data-dir", str(shifted), "--out", str(out), "--no-report"]
  assert evaluate.main(argv) == 0
  printed = capsys.readouterr().out
  assert f"warning: sub-01 ses-{rows[-1]['session_id'].removeprefix('ses-')}" in printed
  assert "outside the ages the model trained on" in printed
  assert len(list(out.glob("sub-01/ses-*/anat/*_dseg.nii.gz"))) == len(rows)
