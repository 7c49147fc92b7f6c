"""Errors the user can act on. Each message names the file (or flag) and says how to fix it."""

import errno
import sys


class FcslstmError(Exception):
  """Base class: the CLIs print these as one line (no traceback unless ``--debug``)."""


class DataError(FcslstmError, ValueError):
  """An input file or dataset layout is unusable (shape, affine, NaN, labels, corrupt file...)."""


class ConfigError(FcslstmError, ValueError):
  """Flags or a work directory that do not fit together."""


class CheckpointError(FcslstmError, RuntimeError):
  """No usable checkpoint could be restored."""


# File-system conditions the user can fix: disk full, quota, read-only or forbidden folder.
USER_OS_ERRNOS = frozenset(
  {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}
)


def user_message(e: BaseException, fix: str):
  """The one line a CLI prints for an error the user can act on; None for anything else
  (a bug in this program: the CLI shows the traceback).

  Args:
    e: the exception.
    fix: what to do about a file-system error (e.g. "Free disk space or choose a writable
      --workdir.").
  """
  if isinstance(e, FcslstmError):
    return str(e)
  if isinstance(e, OSError) and e.errno in USER_OS_ERRNOS:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror}. {fix}"
  return None


def run_cli(fn, debug: bool, fix: str) -> int:
  """Runs a command-line tool's body: its return code, or 2 after one ``error: ...`` line on
  stderr for a mistake the user can fix; a bug in this program (anything else, or any error
  with ``debug``) keeps its traceback."""

  try:
    return fn()
  except Exception as e:
    message = None if debug else user_message(e, fix)
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    return 2
