"""Helpers the test modules share (fixtures are in conftest.py)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

from fcslstm_jax.synthetic import cohort

# 2 labeled subjects (6 mm and 4.8 mm voxels) + 1 unlabeled with a missing session; every
# session cropped differently and the head moved; one labeled slice per session, each at
# its own z; jittered ages; small enough that the tiny model's batches are 32 x 32.
STUDY = dataclasses.replace(cohort.TINY, fov_mm=(144.0, 144.0, 18.0))
STUDY_EPOCHS = 4  # of the FCN trained on it (conftest.study_run)


def train_args(data_dir, workdir, epochs, *extra):
  """train.py's flags for the end-to-end tests: tiny config, batch 2 (one compiled program)."""
  return [
    "--data-dir",
    str(data_dir),
    "--config",
    "tiny",
    "--epochs",
    str(epochs),
    "--batch-size",
    "2",
    "--workdir",
    str(workdir),
    *extra,
  ]


def evaluate_args(run, data_dir, out, *extra):
  """evaluate.py's flags for a run, a dataset and an output folder (and ``extra``)."""
  return ["--workdir", str(run), "--data-dir", str(data_dir), "--out", str(out), *extra]


def assert_predictions_on_input_grids(dataset, out, num_scans, num_classes=4):
  """Every T1w image of ``dataset`` has one ``*_dseg.nii.gz`` under ``out``, on its grid
  (shape, affine, orientation), of integer labels in ``0..num_classes-1``."""
  import nibabel as nib
  import numpy as np

  inputs = sorted(dataset.glob("sub-*/ses-*/anat/*_T1w.nii*"))
  assert len(inputs) == num_scans
  for t1 in inputs:
    sub, ses = t1.parts[-4], t1.parts[-3]
    (pred_path,) = (out / sub / ses / "anat").glob("*_dseg.nii.gz")
    ref, pred = nib.load(t1), nib.load(pred_path)
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
    assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(ref.affine)
    values = np.asarray(pred.dataobj)
    assert np.issubdtype(values.dtype, np.integer)
    assert values.min() >= 0 and values.max() <= num_classes - 1


def validator_errors(folder) -> list:
  """The official BIDS validator's errors on ``folder`` (bids-validator-deno, in
  requirements-dev.txt)."""
  exe = shutil.which("bids-validator-deno") or os.path.join(
    os.path.dirname(sys.executable), "bids-validator-deno"
  )
  done = subprocess.run(
    [exe, str(folder), "--format", "json"], capture_output=True, text=True, timeout=300
  )
  report = json.loads(done.stdout)
  return [i for i in report["issues"]["issues"] if i["severity"] == "error"]
