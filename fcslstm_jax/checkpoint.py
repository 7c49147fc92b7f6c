"""Checkpoints with orbax ``CheckpointManager``: atomic saves, last N + best kept, resume.

orbax writes each step into a temporary folder and renames it into place when complete, so
a run killed mid-save leaves the previous checkpoints intact. A checkpoint that cannot be
read back (truncated files) is skipped with a warning and the one before it is used.
"""

import logging
import os

import jax
import orbax.checkpoint as ocp

from fcslstm_jax.errors import CheckpointError

log = logging.getLogger(__name__)
BEST_METRIC = "train_mpa"  # see train_lib: never the held-out time point


def _state_dict(state):
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


class Checkpointer:
  """Saves and restores a flax ``TrainState`` under ``workdir/checkpoints``."""

  def __init__(self, workdir: str, keep: int = 2):
    cm = ocp.checkpoint_managers
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           enable_async_checkpointing=False)
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, state, metrics: dict | None = None) -> None:
    step = int(state.step)
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(_state_dict(state)), metrics=metrics)
    self.manager.wait_until_finished()

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
      try:
        restored = self.manager.restore(s, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # orbax raises many types for truncated or missing files
        log.warning("checkpoint %s/%s is unreadable (%s: %s); trying an older one.",
                    self.directory, s, type(e).__name__, str(e).splitlines()[0][:200])
        continue
      return state.replace(**restored), s
    raise CheckpointError(
        f"{self.directory}: no checkpoint could be read (tried steps {steps}). "
        "Delete the folder to start over, or point --workdir elsewhere.")

  def close(self):
    self.manager.close()
