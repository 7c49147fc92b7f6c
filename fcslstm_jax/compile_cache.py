"""JAX's persistent compilation cache, on by default for ``train.py`` and ``evaluate.py``.

XLA compiles the network once per input shape and process; on CPU a Bi-FCSLSTM program takes
seconds to tens of seconds, paid again by every run and every evaluation. With the cache, a
second ``evaluate.py`` on the same study (or a resumed run) reads its programs from disk.

Where: ``--compile-cache DIR``, else ``$FCSLSTM_COMPILE_CACHE``, else JAX's own setting
(``$JAX_COMPILATION_CACHE_DIR``) if any, else ``$XDG_CACHE_HOME/fcslstm-jax/xla``
(``~/.cache/fcslstm-jax/xla``); ``off`` turns it off.
Every program is cached, however fast it compiled (JAX's default skips those under 1 s),
so that a repeated run compiles nothing at all; :class:`CompileCounter` counts both.
"""

import os

import jax
from jax._src import monitoring  # the documented events; no public listener API yet

OFF = ("off", "none", "")
HITS = "/jax/compilation_cache/cache_hits"
COMPILE_SECONDS = "/jax/core/compile/backend_compile_duration"
READ_SECONDS = "/jax/compilation_cache/cache_retrieval_time_sec"


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "fcslstm-jax", "xla")


def resolve(flag: str | None) -> str | None:
  """The cache folder for ``--compile-cache`` (None: the environment's or the default), or
  None when it is off."""
  value = (
    flag
    if flag is not None
    else os.environ.get(
      "FCSLSTM_COMPILE_CACHE", jax.config.jax_compilation_cache_dir or default_dir()
    )
  )
  return None if value.strip().lower() in OFF else os.path.abspath(os.path.expanduser(value))


def enable(flag: str | None = None) -> str | None:
  """Turns the cache on (before anything compiles); returns its folder, or None if off."""
  path = resolve(flag)
  if path is None:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # JAX default: 1 s
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


class CompileCounter:
  """Counts this process's programs: ``compiled`` by XLA (whether or not the cache is on) and
  read ``from_cache``; ``seconds`` spent getting them (compiling or reading), of which
  ``cache_read_seconds`` reading."""

  def __init__(self):
    self.programs = self.from_cache = 0
    self.seconds = {COMPILE_SECONDS: 0.0, READ_SECONDS: 0.0}
    monitoring.register_event_listener(self._event)
    monitoring.register_event_duration_secs_listener(self._duration)

  def _duration(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in self.seconds:
      self.seconds[event] += duration
    if event == COMPILE_SECONDS:  # each program, compiled or read from the cache
      self.programs += 1

  def _event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == HITS:
      self.from_cache += 1

  def to_json(self) -> dict:
    return {
      "compiled": self.programs - self.from_cache,
      "from_cache": self.from_cache,
      "seconds": round(self.seconds[COMPILE_SECONDS], 2),
      "cache_read_seconds": round(self.seconds[READ_SECONDS], 2),
    }
