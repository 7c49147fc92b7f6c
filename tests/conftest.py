import os
import tempfile

# One on-disk XLA compilation cache for the whole test session, inherited by the CLI
# subprocesses the end-to-end tests start: the same tiny programs are compiled once, not
# once per test or per process. (XLA:CPU compilation, not running, dominates these tests.)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="fcslstm-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Compiling, not running, is what these tests spend their time on, so XLA:CPU compiles for
# speed of compiling: LLVM optimization level 0 (the generated loops are not optimized), and
# fused elementwise code from XLA's classic emitter instead of its MLIR fusion emitters
# (several times faster to compile these programs; see docs/performance.md). The HLO
# programs are the same (same fusion, same buffers); results can differ from the default
# flags in the last bits. Inherited by the CLI subprocesses, so in-process and subprocess
# runs share cached programs.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join(filter(None, (os.environ.get("XLA_FLAGS", ""), *FAST_COMPILE)))

import jax

# Strict numpy promotion, as in equinox's conftest: silent broadcasting bugs become errors.
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest
from helpers import STUDY
from helpers import STUDY_EPOCHS
from helpers import train_args

from fcslstm_jax.synthetic import bric_like
from fcslstm_jax.synthetic import cohort


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
  """The built-in generator's tiny dataset (bric_like.TINY), written once per test session."""
  return bric_like.generate(tmp_path_factory.mktemp("data") / "tiny", seed=0, config=bric_like.TINY)


@pytest.fixture(scope="session")
def dataset3d(tmp_path_factory):
  """The built-in generator's tiny whole-volume dataset (bric_like.TINY_3D: 2 subjects,
  32x32x12), for the 3D + time tests."""
  return bric_like.generate(
    tmp_path_factory.mktemp("data3d") / "tiny3d", seed=0, config=bric_like.TINY_3D
  )


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory):
  """A study with real-study conditions (helpers.STUDY), written once per test session."""
  return cohort.generate(tmp_path_factory.mktemp("cohort") / "study", seed=0, config=STUDY)


@pytest.fixture(scope="session")
def study_run(study_dir, tmp_path_factory):
  """An FCN trained on ``study_dir`` with the study's protocol.json."""
  import train

  workdir = tmp_path_factory.mktemp("runs") / "fcn"
  assert (
    train.main(
      train_args(
        study_dir,
        workdir,
        STUDY_EPOCHS,
        "--model",
        "fcn",
        "--protocol",
        str(study_dir / "protocol.json"),
      )
    )
    == 0
  )
  return workdir
