import os
import tempfile

# One on-disk XLA compilation cache for the whole test session, inherited by the CLI
# subprocesses the end-to-end tests start: the same tiny programs are compiled once, not
# once per test or per process. (XLA:CPU compilation, not running, dominates these tests.)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="fcslstm-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

# Strict numpy promotion, as in equinox's conftest: silent broadcasting bugs become errors.
jax.config.update("jax_numpy_rank_promotion", "raise")
