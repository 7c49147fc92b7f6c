"""Stopping on SIGINT / SIGTERM, or when a wall-clock budget is spent (``train.py
--max-minutes``): the loop saves a checkpoint and stops, all processes at the same step."""

import signal
import time

import jax

from fcslstm_jax.train import parallel

BUDGET = "time budget"  # what a budget stop is called (in logs and RunResult.stopped_by)


class StopRequest:
  """SIGINT / SIGTERM set a flag, and so does passing ``deadline`` (a ``time.monotonic()``
  value); the loop saves a checkpoint and stops (:meth:`agreed`)."""

  CODES = {None: 0, "SIGINT": int(signal.SIGINT), "SIGTERM": int(signal.SIGTERM), BUDGET: 1000}

  def __init__(self, deadline: float | None = None):
    self.signal = None
    self.deadline = deadline

  def pending(self):
    """The reason to stop this process has seen, or None (a signal before the budget)."""
    if self.signal:
      return self.signal
    if self.deadline is not None and time.monotonic() >= self.deadline:
      return BUDGET
    return None

  def __enter__(self):
    self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)

  def agreed(self, due: bool):
    """The signal the run stops for, or None: at once with one process; with several, only
    at ``due`` points (the loss read-backs, the same steps everywhere) and then for all of
    them together, whichever process got it, so that all save the same step and none waits
    in a collective for another that stopped (a ``max`` over the processes' signal codes)."""
    if jax.process_count() == 1:
      return self.pending()
    if not due:
      return None
    (code,) = parallel.agree_max([self.CODES[self.pending()]])
    return {v: k for k, v in self.CODES.items()}[int(code)]
