"""Checkpoints with orbax ``CheckpointManager``: atomic saves, last N + best kept, resume.

orbax writes each step into a temporary folder and renames it into place when complete, so
a run killed mid-save leaves the previous checkpoints intact. A checkpoint that cannot be
read back (truncated files) is skipped with a warning and the one before it is used; the next
save of that step replaces it. A save that fails (disk full, read-only folder) raises
:class:`CheckpointError`; orbax removes its partial folder when the folder is next opened
(``cleanup_tmp_directories``). orbax logs its own view of such failures through absl's
logger; the command-line tools set that logger's level (:func:`fcslstm_jax.cli.quiet_libraries`),
this module changes no global state.
"""

import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp

from fcslstm_jax.errors import CheckpointError

log = logging.getLogger(__name__)
BEST_METRIC = "train_mpa"  # see fcslstm_jax/train/loop.py: never the held-out time point


_OS_ERRORS = (
  "No space left on device",
  "Disk quota exceeded",
  "Read-only file system",
  "Permission denied",
)


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
  return (
    f"No space left on device: about {needed / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free"
  )


def _state_dict(state):
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


class Checkpointer:
  """Saves and restores a flax ``TrainState`` under ``workdir/checkpoints``."""

  def __init__(self, workdir: str, keep: int = 2):
    cm = ocp.checkpoint_managers
    policy = cm.AnyPreservationPolicy(
      [
        cm.LatestN(n=keep),
        cm.BestN(
          get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
        ),
      ]
    )
    # cleanup_tmp_directories: orbax removes the temporary folder of a save that was killed
    # or failed (disk full) when the next run opens the folder.
    options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, enable_async_checkpointing=False, cleanup_tmp_directories=True
    )
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
    fix = f"Free disk space or choose a writable --workdir, then rerun the same command ({kept})."
    full = _disk_space_error(self.directory, _state_dict(state))
    if full:
      raise CheckpointError(f"{self.directory}: could not write checkpoint {step} ({full}). {fix}")
    try:
      self.manager.save(step, args=ocp.args.StandardSave(_state_dict(state)), metrics=metrics)
      self.manager.wait_until_finished()
    except Exception as e:  # tensorstore reports a full disk as ValueError
      raise CheckpointError(
        f"{self.directory}: could not write checkpoint {step} ({_first_line(e)}). {fix}"
      ) from e

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore(self, state, step: int | None = None):
    """``state`` filled from checkpoint ``step`` (default: the newest readable one).

    Returns ``(state, step)``, or ``(state, None)`` untouched when there is no checkpoint.
    """
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _state_dict(state))
    restored, s = self._first_readable(
      step, lambda s: self.manager.restore(s, args=ocp.args.StandardRestore(abstract))
    )
    return (state, None) if s is None else (state.replace(**restored), s)

  def restore_params(self, params, step: int | None = None):
    """The model parameters alone, shaped like ``params``, from checkpoint ``step`` (default:
    the newest readable one); the optimizer state is not read (evaluation needs none).

    Returns ``(params, step)``, or ``(params, None)`` when there is no checkpoint.
    """
    item = {"params": jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, params)}
    args = ocp.args.PyTreeRestore(
      item=item,
      partial_restore=True,
      restore_args=ocp.checkpoint_utils.construct_restore_args(item),
    )

    def read(s):
      reader = ocp.PyTreeCheckpointer()
      try:  # the manager's one item of each step is "default"
        return reader.restore(os.path.join(self.directory, str(s), "default"), args=args)
      finally:
        reader.close()

    restored, s = self._first_readable(step, read)
    return (params, None) if s is None else (restored["params"], s)

  def _first_readable(self, step, read) -> tuple:
    """``(read(s), s)`` for checkpoint ``step``, or else the newest one ``read`` succeeds on;
    ``(None, None)`` when there is none."""
    steps = [step] if step is not None else self.steps()[::-1]
    for s in steps:
      try:
        restored = read(s)
      except Exception as e:  # orbax raises many types for truncated or missing files
        self.unreadable.add(s)
        log.warning(
          "checkpoint %s is unreadable (%s); trying an older one.",
          os.path.join(self.directory, str(s)),
          _first_line(e),
        )
        continue
      if self.unreadable:
        log.warning("using checkpoint %s instead.", os.path.join(self.directory, str(s)))
      return restored, s
    if not steps:
      return None, None
    raise CheckpointError(
      f"{self.directory}: no checkpoint could be read (tried steps {steps}). "
      "Delete the folder to start over, or point --workdir elsewhere."
    )

  def close(self):
    self.manager.close()
