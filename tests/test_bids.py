"""A study as it sits on disk in BIDS: the outputs as a derivative dataset the BIDS validator
accepts, label pipelines chosen by name, label values mapped through their dseg.tsv, an
"unlabeled" value that trains nothing, and this tool's own outputs never read as labels."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from helpers import train_args
from helpers import validator_errors

import train
from fcslstm_jax import files
from fcslstm_jax.cli import bids_app
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.errors import DataError
from fcslstm_jax.train import losses

IBEAT = (0, 10, 150, 250)  # iBEAT's values for background / CSF / GM / WM


def relabel(folder, mapping, tsv_rows=None) -> None:
  """Maps every ``*_dseg`` value under ``folder`` through ``mapping`` (and writes a
  ``dseg.tsv``)."""
  for path in folder.rglob("*_dseg.nii.gz"):
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.int32)
    out = np.zeros_like(data)
    for a, b in mapping.items():
      out[data == a] = b
    nib.save(nib.Nifti1Image(out.astype(np.int16), img.affine, img.header), str(path))
  if tsv_rows:
    files.write_tsv(folder / "dseg.tsv", ["index", "name"], tsv_rows)


@pytest.fixture
def copied(study_dir, tmp_path):
  root = tmp_path / "bids"
  shutil.copytree(study_dir, root)
  return root


# ---------------------------------------------------------------------------- label values


def test_label_values_map_to_classes_and_unknown_values_name_the_file():
  proto = protocol.Protocol(name="p", num_timepoints=1, label_values=IBEAT, ignore_label=255)
  data = np.array([0, 10, 150, 250, 255, 10])
  classes, drawn = protocol.to_classes(data, proto, "x_dseg.nii.gz")
  np.testing.assert_array_equal(classes, [0, 1, 2, 3, 0, 1])
  np.testing.assert_array_equal(drawn, [1, 1, 1, 1, 0, 1])
  with pytest.raises(DataError, match=r"x_dseg.nii.gz: label value\(s\) \[3\] not in"):
    protocol.to_classes(np.array([0, 3]), proto, "x_dseg.nii.gz")
  with pytest.raises(ConfigError, match="ignore_label 150 is also the value of class 'GM'"):
    protocol.Protocol(name="p", num_timepoints=1, label_values=IBEAT, ignore_label=150)


def test_dseg_tsv_names_give_the_values(tmp_path):
  tsv = tmp_path / "dseg.tsv"
  rows = [(250, "WM"), (10, "csf"), (150, "GM"), (0, "background"), (99, "unlabeled")]
  files.write_tsv(tsv, ["index", "name"], rows)
  assert protocol.values_from_dseg_tsv(tsv, protocol.BRIC) == (IBEAT, 99)
  files.write_tsv(tsv, ["index", "name"], [(10, "CSF"), (150, "cortex"), (250, "WM")])
  with pytest.raises(DataError, match=r"dseg.tsv: names \['cortex'\] match no class.*\['GM'\]"):
    protocol.values_from_dseg_tsv(tsv, protocol.BRIC)


# ---------------------------------------------------------------------- the unlabeled value


def training_arrays(root, proto):
  loaded = study.load_study(root, proto, spacing="native", keep="labeled", label_planes=True)
  return sequences.make_sequences(loaded.subjects, loaded.protocol, "train")


def test_a_half_drawn_slice_trains_only_on_its_drawn_voxels(copied):
  """Half of every labeled slice set to the protocol's ignore value: those voxels leave the
  loss mask, the drawn half keeps its labels, and the loss and its gradient do not change
  whatever the network predicts on the undrawn half."""
  proto = protocol.get_protocol(None, copied)
  full = training_arrays(copied, proto)
  for path in (copied / "derivatives" / "manual").rglob("*_dseg.nii.gz"):
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.int16)
    data[: data.shape[0] // 2] = 255  # undrawn: half of every slice (labeled or not)
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))
  half = training_arrays(copied, dataclasses.replace(proto, ignore_label=255))
  drawn_full, drawn_half = full.label_mask > 0, half.label_mask > 0
  assert 0 < drawn_half.sum() < drawn_full.sum()
  assert not (drawn_half & ~drawn_full).any()  # only voxels drawn before
  np.testing.assert_array_equal(half.labels[drawn_half], full.labels[drawn_half])

  labels, mask = jnp.asarray(half.labels), jnp.asarray(half.label_mask)
  weights = losses.class_weights(half.labels, half.label_mask, 4)

  def loss(logits):
    return losses.weighted_cross_entropy(logits, labels, mask, weights) + losses.soft_dice_loss(
      logits, labels, mask
    )

  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  logits = jax.random.normal(key_a, labels.shape + (4,))
  undrawn = (mask == 0)[..., None]
  other = jnp.where(undrawn, 10 * jax.random.normal(key_b, logits.shape), logits)
  np.testing.assert_allclose(loss(logits), loss(other), rtol=1e-6)
  grad = jax.grad(loss)(logits)
  assert float(jnp.abs(jnp.where(undrawn, grad, 0)).max()) == 0.0
  assert float(jnp.abs(grad).max()) > 0.0


# ------------------------------------------------------------------------- end to end


def test_bids_app_round_trip_label_values_pipelines_and_own_derivatives(copied, tmp_path, capsys):
  """Labels drawn as 10 / 150 / 250 with a dseg.tsv, beside a second pipeline: training
  without a choice stops and names the flag; the BIDS-App's group level with ``--labels
  derivatives/manual`` trains, its participant level writes ``derivatives/fcslstm`` in 10 /
  150 / 250, which the BIDS validator accepts, and the loader of the next training run does
  not read those predictions as labels."""
  rows = [(0, "background"), (10, "CSF"), (150, "GM"), (250, "WM")]
  relabel(copied / "derivatives" / "manual", dict(zip(range(4), IBEAT)), rows)
  shutil.copytree(copied / "derivatives" / "manual", copied / "derivatives" / "other")
  relabel(copied / "derivatives" / "other", {0: 0, 10: 1, 150: 3, 250: 2})
  (copied / "derivatives" / "other" / "dseg.tsv").unlink()

  assert train.main(train_args(copied, tmp_path / "run", 1)) == 2
  err = capsys.readouterr().err
  assert "several dseg files match" in err and "--labels derivatives/<name>" in err

  out = copied / "derivatives" / "fcslstm"
  # --config tiny --epochs 1 --batch-size 2, the FCN: conftest's study_run compiled it already
  tiny = [*train_args(copied, "unused", 1)[2:-2], "--model", "fcn"]
  assert (
    bids_app.main([str(copied), str(out), "group", "--labels", "derivatives/manual", *tiny]) == 0
  )
  capsys.readouterr()  # training's progress
  model = out / "sourcedata" / "model"
  record = json.loads((model / "run.json").read_text())
  assert record["protocol"]["label_values"] == list(IBEAT)
  assert record["labels"] == str(copied / "derivatives" / "manual")

  assert bids_app.main([str(copied), str(out), "participant", "--participant-label", "99"]) == 2
  assert_one_line(capsys.readouterr().err, str(copied), "no participant(s) sub-99")
  assert bids_app.main([str(copied), str(out), "participant", "--no-report"]) == 0
  dsegs = sorted(out.rglob("*_dseg.nii.gz"))
  assert {p.parts[-4] for p in dsegs} == {"sub-01", "sub-02", "sub-03"}
  values = set().union(*(np.unique(nib.load(str(p)).dataobj).tolist() for p in dsegs))
  assert values <= set(IBEAT) and len(values) > 2
  assert [tuple(r.values()) for r in files.read_tsv(out / "dseg.tsv")] == [
    (str(v), n) for v, n in rows
  ]
  description = json.loads((out / "dataset_description.json").read_text())
  assert description["DatasetType"] == "derivative"
  assert description["GeneratedBy"][0]["Name"] == "fcslstm-jax"
  sidecar = json.loads((dsegs[0].parent / dsegs[0].name.replace(".nii.gz", ".json")).read_text())
  assert sidecar["Sources"][0].startswith("bids:raw:sub-") and sidecar["Runs"][0]["Step"] > 0
  assert validator_errors(out) == []

  shutil.rmtree(copied / "derivatives" / "other")  # manual + this tool's own outputs remain
  again = study.load_study(copied, protocol.get_protocol(None, copied))  # as training reads it
  dsegs = [s.dseg for f in again.files for s in f.sessions if s.dseg]
  assert dsegs and all("/derivatives/manual/" in d for d in dsegs)
  assert again.protocol.label_values == IBEAT


def assert_one_line(err, *parts):
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and all(p in lines[0] for p in parts), err


def test_the_input_studies_pass_the_validator(dataset, copied):
  assert validator_errors(dataset) == []
  assert validator_errors(copied) == []
