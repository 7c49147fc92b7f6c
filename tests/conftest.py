import os
import tempfile

# One on-disk XLA compilation cache for the whole test session, inherited by the CLI
# subprocesses the end-to-end tests start: the same tiny programs are compiled once, not
# once per test or per process. (XLA:CPU compilation, not running, dominates these tests.)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="fcslstm-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# XLA:CPU's LLVM optimization level 0: the same HLO programs (same fusion, same buffers),
# compiled several times faster because LLVM does not optimize the generated loops; results
# can differ from the default level in the last bits. Compiling, not running, is what these
# tests spend their time on (the suite went from ~8.5 to ~4.5 min on 2 cores). Inherited by
# the CLI subprocesses, so in-process and subprocess runs share cached programs.
os.environ["XLA_FLAGS"] = " ".join(filter(None, (os.environ.get("XLA_FLAGS", ""),
                                                 "--xla_backend_optimization_level=0")))

import jax  # noqa: E402

# Strict numpy promotion, as in equinox's conftest: silent broadcasting bugs become errors.
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402

from fcslstm_jax.synthetic import bric_like as bric  # noqa: E402


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


def tiny_train_args(data_dir, workdir, epochs, *extra):
  """train.py's flags for the end-to-end tests: tiny config, batch 2 (one compiled program)."""
  return ["--data-dir", str(data_dir), "--config", "tiny", "--epochs", str(epochs),
          "--batch-size", "2", "--workdir", str(workdir), *extra]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
  """The built-in generator's tiny dataset (bric.TINY), written once per test session."""
  return bric.generate(tmp_path_factory.mktemp("data") / "tiny", seed=0, config=bric.TINY)


@pytest.fixture(scope="session")
def dataset3d(tmp_path_factory):
  """The built-in generator's tiny whole-volume dataset (bric.TINY_3D: 2 subjects,
  32x32x12), for the 3D + time tests."""
  return bric.generate(tmp_path_factory.mktemp("data3d") / "tiny3d", seed=0,
                       config=bric.TINY_3D)
