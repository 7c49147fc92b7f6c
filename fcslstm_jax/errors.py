"""Errors the user can act on. Each message names the file (or flag) and says how to fix it."""


class FcslstmError(Exception):
  """Base class: the CLIs print these as one line (no traceback unless ``--debug``)."""


class DataError(FcslstmError, ValueError):
  """An input file or dataset layout is unusable (shape, affine, NaN, labels, corrupt file...)."""


class ConfigError(FcslstmError, ValueError):
  """Flags or a work directory that do not fit together."""


class CheckpointError(FcslstmError, RuntimeError):
  """No usable checkpoint could be restored."""
