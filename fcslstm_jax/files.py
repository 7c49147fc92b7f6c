"""Writing files so that a reader never sees half of one: a temporary sibling, then a rename."""

import contextlib
import json
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=""):
  """Yields a temporary path beside ``path``; renamed onto ``path`` when the block succeeds,
  removed when it fails (a full disk, a kill: the old file, if any, stays whole)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path, text: str) -> None:
  """``text`` into ``path``, atomically."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json(path, obj, indent=2) -> None:
  """``obj`` as JSON into ``path``, atomically."""
  write_text(path, json.dumps(obj, indent=indent) + "\n")
