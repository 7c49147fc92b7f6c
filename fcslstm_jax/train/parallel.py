"""Data parallelism on every device of a node and across nodes, with JAX's own engine.

One ``jax.sharding.Mesh`` with a single ``data`` axis spans all devices of all processes.
The global batch ``[B, T, H, W, C]`` is sharded along ``data`` (``NamedSharding(mesh,
P('data'))``), so each device holds ``B / num_devices`` sequences; parameters and optimizer
state are replicated (``P()``). The same ``jax.jit``-compiled ``train_step`` serves one CPU,
one GPU, eight GPUs or several nodes: XLA's SPMD partitioner inserts the gradient all-reduce.

Several processes (one per node, or one per GPU): :func:`initialize` calls
``jax.distributed.initialize`` from the flags ``--coordinator-address``, ``--num-processes``,
``--process-id``, or from the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or from what Slurm / Open MPI set (JAX detects
those itself). Then:

* Data: process ``p`` of ``P`` loads only the subjects ``sorted_ids[p::P]``
  (:func:`subject_shard`) and feeds its ``B / P`` rows of each global batch
  (``jax.make_array_from_process_local_data``). Shards may hold different numbers of
  sequences; every process runs ``min_p(n_p // (B / P))`` steps per epoch (:func:`agree_min`,
  one small all-gather at start-up), so all processes take the same number of steps.
* Class weights and evaluation metrics are computed from counts summed over processes
  (:func:`sum_over_processes`), so they describe the whole dataset, as on one process. Each
  process evaluates its own subjects on its own devices.
* Checkpoints: every process calls orbax's ``CheckpointManager``, which is multi-host aware
  once ``jax.distributed`` is initialized: replicated arrays are written once (by the shard
  with replica id 0) and process 0 writes the metadata and finalizes the step.
* Logs, progress bars, ``run.json``, ``metrics.jsonl`` and ``results.json``: process 0 only
  (:func:`is_main_process`).
* Errors before training (bad data in one process's share, a work directory of another
  run, which only process 0 checks): :func:`agree_on_error` lets every process know before
  the first collective, so all stop with one error line instead of waiting for each other.

CPU clusters (and the tests) use gloo for cross-process collectives
(``jax_cpu_collectives_implementation``).
"""

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fcslstm_jax.errors import ConfigError

DATA = "data"  # the mesh axis the batch is split along
ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# ------------------------------------------------------------------------------- processes


def _scheduler_launched(environ) -> bool:
  """Slurm or Open MPI started several tasks: ``jax.distributed`` detects the rest itself."""
  slurm = int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in environ
  ompi = int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
  return slurm or ompi


def distributed_args(
  coordinator_address=None, num_processes=None, process_id=None, environ=None
) -> dict | None:
  """Keyword arguments for ``jax.distributed.initialize``, or None for a single process.

  Flags win over ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``.
  Under Slurm or Open MPI the missing values are left to JAX's cluster detection.
  """
  environ = os.environ if environ is None else environ
  given = {
    "coordinator_address": coordinator_address or environ.get(ENV[0]) or None,
    "num_processes": num_processes if num_processes is not None else environ.get(ENV[1]),
    "process_id": process_id if process_id is not None else environ.get(ENV[2]),
  }
  for key in ("num_processes", "process_id"):
    if given[key] is not None:
      try:
        given[key] = int(given[key])
      except ValueError:
        raise ConfigError(
          f"--{key.replace('_', '-')} must be an integer, got {given[key]!r}."
        ) from None
  scheduler = _scheduler_launched(environ)
  if all(v is None for v in given.values()) and not scheduler:
    return None
  if given["num_processes"] == 1 and not scheduler:
    return None
  missing = [k for k, v in given.items() if v is None]
  if missing and not scheduler:
    flags = ", ".join(f"--{k.replace('_', '-')}" for k in missing)
    raise ConfigError(
      f"multi-process training needs {flags} too (or the environment "
      f"variables {', '.join(ENV)}). See docs/cluster.md."
    )
  n, p = given["num_processes"], given["process_id"]
  if n is not None and p is not None and not 0 <= p < n:
    raise ConfigError(f"--process-id {p} must lie in 0..{n - 1} (--num-processes {n}).")
  return {k: v for k, v in given.items() if v is not None}


def initialize(
  coordinator_address=None, num_processes=None, process_id=None, environ=None, **kwargs
) -> bool:
  """Starts ``jax.distributed`` when several processes are asked for; True if it did.

  Call it before anything touches a device. ``kwargs`` go to ``jax.distributed.initialize``
  (e.g. ``initialization_timeout``).
  """
  args = distributed_args(coordinator_address, num_processes, process_id, environ)
  if args is None:
    return False
  # Cross-process collectives on CPU (the default in recent JAX; explicit for older ones).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**args, **kwargs)
  return True


def is_main_process() -> bool:
  """Process 0 logs, shows progress and writes the run's text files."""
  return jax.process_index() == 0


def subject_shard(items, index=None, count=None):
  """This process's share ``items[index::count]`` (default: ``jax.process_index()`` of
  ``jax.process_count()``). Deterministic: every process computes every share alike."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  items = list(items)
  if len(items) < count:
    raise ConfigError(
      f"{len(items)} subjects cannot be shared by {count} processes: each "
      "process needs at least one. Use fewer processes."
    )
  return items[index::count]


def sum_over_processes(x: np.ndarray) -> np.ndarray:
  """Elementwise sum of a host array over all processes (identity for one process)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0).astype(x.dtype)


def agree_min(value: int) -> int:
  """The smallest of every process's ``value`` (identity for one process)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.min(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def agree_max(values) -> tuple:
  """Elementwise largest of every process's integer ``values`` (identity for one process)."""
  values = np.asarray(values, np.int64)
  if jax.process_count() > 1:
    values = np.max(multihost_utils.process_allgather(values), axis=0)
  return tuple(int(v) for v in np.atleast_1d(values))


# Bytes of an error message that processes exchange (longer ones are cut).
MESSAGE_BYTES = 2048


def agree_on_error(fn):
  """``fn()`` on every process, then one small all-gather, so that no process enters a
  later collective while another has stopped: if ``fn`` raised on any process, every
  process raises (its own error, or a :class:`~fcslstm_jax.errors.ConfigError` that quotes
  the first failing process's message); else each returns its own result. One process:
  ``fn()`` itself. Call it before the first collective of a run (the checks of the data and
  the work directory, which may fail on one process only)."""
  if jax.process_count() == 1:
    return fn()
  error, result = None, None
  try:
    result = fn()
  except Exception as e:
    error = e
  text = "" if error is None else (str(error) or type(error).__name__)
  mine = np.zeros(MESSAGE_BYTES + 1, np.uint8)
  encoded = text.encode("utf-8")[:MESSAGE_BYTES]
  mine[0] = error is not None
  mine[1 : 1 + len(encoded)] = np.frombuffer(encoded, np.uint8)
  every = np.asarray(multihost_utils.process_allgather(mine))
  if error is not None:
    raise error
  failed = np.flatnonzero(every[:, 0])
  if failed.size:
    p = int(failed[0])
    message = every[p, 1:].tobytes().rstrip(b"\0").decode("utf-8", "replace")
    raise ConfigError(f"process {p} stopped the run: {message}")
  return result


def shard_for_this_process():
  """:func:`subject_shard` with several processes, else None (every subject)."""
  return subject_shard if jax.process_count() > 1 else None


# ------------------------------------------------------------------------------------ mesh


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh with axis ``data`` over the first ``num_devices`` devices (default: all,
  of all processes)."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else int(num_devices)
  if not 1 <= n <= len(devices):
    raise ConfigError(
      f"--mesh {n}: this run sees {len(devices)} device(s) "
      f"({devices[0].platform}). Use a number in 1..{len(devices)}, or 'auto'."
    )
  if n != len(devices) and jax.process_count() > 1:
    raise ConfigError(
      f"--mesh {n}: with {jax.process_count()} processes the mesh must span "
      f"all {len(devices)} devices. Use --mesh auto."
    )
  return Mesh(np.asarray(devices[:n]), (DATA,))


def local_mesh(mesh: Mesh) -> Mesh:
  """The part of ``mesh`` on this process's devices (``mesh`` itself for one process)."""
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  return mesh if len(local) == mesh.size else Mesh(np.asarray(local), (DATA,))


def process_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Rows of each global batch this process feeds; checks the batch splits evenly."""
  n = mesh.size
  if global_batch % n:
    lower, upper = global_batch // n * n, (global_batch // n + 1) * n
    hint = f"{lower} or {upper}" if lower else f"{upper}"
    raise ConfigError(
      f"--batch-size {global_batch} is not divisible by the {n} devices of the "
      f"mesh: every device needs the same number of sequences. Use --batch-size "
      f"{hint} (or --mesh to use fewer devices)."
    )
  return global_batch // jax.process_count()


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicate(tree, mesh: Mesh):
  """Every leaf of ``tree`` as a global array replicated on ``mesh``.

  With several processes, process 0's values are broadcast first, so all replicas agree
  even if initialization differed between processes.
  """
  if jax.process_count() > 1:
    tree = multihost_utils.broadcast_one_to_all(tree)
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree_util.tree_map(put, tree)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """This process's rows of a global batch (dict of ``[B / P, ...]`` host arrays) as global
  arrays ``[B, ...]`` sharded along ``data``."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def local_replica(tree, mesh: Mesh):
  """``tree`` (replicated on ``mesh``) replicated on this process's part of it only, for
  computations that each process runs on its own data (evaluation)."""
  local = local_mesh(mesh)
  if local is mesh:
    return tree
  sharding = replicated(local)
  return jax.tree_util.tree_map(lambda x: jax.device_put(x.addressable_data(0), sharding), tree)


def on_local_devices(fn, mesh: Mesh):
  """``fn(params, *arrays)`` with the host ``arrays`` split over this process's devices along
  their first axis (which must be divisible by their number)."""
  sharding = batch_sharding(local_mesh(mesh))

  def wrapped(params, *arrays):
    return fn(params, *(jax.device_put(np.asarray(a), sharding) for a in arrays))

  return wrapped
