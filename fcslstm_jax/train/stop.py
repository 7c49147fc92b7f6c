"""Stopping on SIGINT / SIGTERM: the loop saves a checkpoint and stops, all processes at the
same step."""

import signal

import jax

from fcslstm_jax.train import parallel


class StopRequest:
  """SIGINT / SIGTERM set a flag; the loop saves a checkpoint and stops (:meth:`agreed`)."""

  CODES = {None: 0, "SIGINT": int(signal.SIGINT), "SIGTERM": int(signal.SIGTERM)}

  def __init__(self):
    self.signal = None

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
      return self.signal
    if not due:
      return None
    (code,) = parallel.agree_max([self.CODES.get(self.signal, 0)])
    return signal.Signals(code).name if code else None
