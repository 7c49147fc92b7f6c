"""Checkpoints with orbax ``CheckpointManager``: atomic saves, last N + best kept, resume.

orbax writes each step into a temporary folder and renames it into place when complete, so
a run killed mid-save leaves the previous checkpoints intact. A checkpoint that cannot be
read back (truncated files) is skipped with a warning and the one before it is used; the next
save of that step replaces it. A save that fails (disk full, read-only folder) raises
:class:`CheckpointError`; orbax removes its partial folder when the folder is next opened
(``cleanup_tmp_directories``). orbax logs its own view of such failures through absl's
logger; the command-line tools set that logger's level (:func:`fcslstm_jax.cli.quiet_libraries`),
this module changes no global state.

Checkpoints of Bi-FCSLSTM written before both directions shared one scan store each layer's
parameters per direction (``slstm{k}/forward``, ``slstm{k}/backward``). They are loaded, not
refused: :meth:`Checkpointer.restore` sees that layout in the checkpoint's metadata, restores
it and converts parameters and optimizer state (whose RMSprop statistics have the parameters'
tree) with :func:`fcslstm_jax.model.networks.from_two_scan_params`, a one-to-one map, and says so in a
warning. The checkpoint on disk is left as it is.
"""

import logging
import os
import shutil
from collections.abc import Mapping

import jax
import orbax.checkpoint as ocp

from fcslstm_jax.model import networks as model_lib
from fcslstm_jax.errors import CheckpointError

log = logging.getLogger(__name__)
BEST_METRIC = "train_mpa"  # see train_lib: never the held-out time point


_OS_ERRORS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
              "Permission denied")


def _first_line(e: BaseException) -> str:
  """A short reason: the OS error buried in a tensorstore message, else its first line."""
  text = str(e).strip()
  known = [m for m in _OS_ERRORS if m in text]
  if known:
    return known[0]
  lines = text.splitlines()
  return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def _disk_space_error(directory: str, state) -> str | None:
  """Why a checkpoint of ``state`` would not fit on the disk, or None.

  Checked before writing: orbax's worker threads fail noisily on a full disk.
  """
  needed = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
  needed = int(needed * 1.1) + (1 << 20)  # metadata
  try:
    free = shutil.disk_usage(directory).free
  except OSError:  # not a local folder: let the write tell
    return None
  if free >= needed:
    return None
  return (f"No space left on device: about {needed / 2**20:.1f} MiB needed, "
          f"{free / 2**20:.1f} MiB free")


def _state_dict(state):
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def _is_param_tree(x) -> bool:
  """A model's parameter tree (``params``, or an optimizer's statistics of the same shape)."""
  return isinstance(x, Mapping) and any(str(k).startswith("slstm") for k in x)


def _map_param_trees(tree, fn):
  """``tree`` with ``fn`` applied to every parameter tree inside it (see :func:`_is_param_tree`)."""
  return jax.tree_util.tree_map(lambda x: fn(x) if _is_param_tree(x) else x, tree,
                                is_leaf=_is_param_tree)


class Checkpointer:
  """Saves and restores a flax ``TrainState`` under ``workdir/checkpoints``."""

  def __init__(self, workdir: str, keep: int = 2):
    cm = ocp.checkpoint_managers
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    # cleanup_tmp_directories: orbax removes the temporary folder of a save that was killed
    # or failed (disk full) when the next run opens the folder.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.unreadable = set()  # steps restore() could not read; save() replaces them

  def save(self, state, metrics: dict | None = None) -> None:
    step = int(state.step)
    if step in self.manager.all_steps():
      if step not in self.unreadable:
        return
      self.manager.delete(step)
      self.unreadable.discard(step)
    older = [s for s in self.steps() if s < step]
    kept = f"step {older[-1]} is kept" if older else "no earlier checkpoint exists"
    fix = (f"Free disk space or choose a writable --workdir, then rerun the same command "
           f"({kept}).")
    full = _disk_space_error(self.directory, _state_dict(state))
    if full:
      raise CheckpointError(f"{self.directory}: could not write checkpoint {step} ({full}). {fix}")
    try:
      self.manager.save(step, args=ocp.args.StandardSave(_state_dict(state)), metrics=metrics)
      self.manager.wait_until_finished()
    except Exception as e:  # tensorstore reports a full disk as ValueError
      raise CheckpointError(
          f"{self.directory}: could not write checkpoint {step} ({_first_line(e)}). {fix}") from e

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore(self, state, step: int | None = None):
    """``state`` filled from checkpoint ``step`` (default: the newest readable one).

    Returns ``(state, step)``, or ``(state, None)`` untouched when there is no checkpoint.
    """
    steps = [step] if step is not None else self.steps()[::-1]
    if not steps:
      return state, None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _state_dict(state))
    for s in steps:
      layers = self._two_scan_layers(s)
      try:
        if layers:
          restored = self._restore_two_scan(s, abstract, layers)
        else:
          restored = self.manager.restore(s, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # orbax raises many types for truncated or missing files
        self.unreadable.add(s)
        log.warning("checkpoint %s is unreadable (%s%s); trying an older one.",
                    os.path.join(self.directory, str(s)), _first_line(e),
                    ", written by the two-scan Bi-FCSLSTM layout" if layers else "")
        continue
      if self.unreadable:
        log.warning("using checkpoint %s instead.",
                    os.path.join(self.directory, str(s)))
      return state.replace(**restored), s
    raise CheckpointError(
        f"{self.directory}: no checkpoint could be read (tried steps {steps}). "
        "Delete the folder to start over, or point --workdir elsewhere.")

  def _two_scan_layers(self, step: int) -> list[str]:
    """The ``slstm{k}`` layers that checkpoint ``step`` stores in the two-scan layout."""
    try:
      stored = self.manager.item_metadata(step).tree["params"]
    except Exception:  # unreadable metadata: the restore itself reports it
      return []
    return sorted(k for k, v in stored.items() if model_lib.is_two_scan_layer(v))

  def _restore_two_scan(self, step: int, abstract, layers: list[str]):
    """Checkpoint ``step`` in the two-scan layout, converted to ``abstract``'s layout."""
    old = _map_param_trees(abstract, lambda p: model_lib.to_two_scan_params(p, layers))
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(old))
    restored = _map_param_trees(restored, model_lib.from_two_scan_params)
    restored = jax.tree_util.tree_map(  # where the standard restore would put them
        lambda a, ref: jax.device_put(a, getattr(ref, "sharding", None)), restored, abstract)
    log.warning("checkpoint %s was written by the two-scan Bi-FCSLSTM layout (layers %s "
                "stored per direction); converted with "
                "fcslstm_jax.model.networks.from_two_scan_params.",
                os.path.join(self.directory, str(step)), ", ".join(layers))
    return restored

  def close(self):
    self.manager.close()
