"""Writing files so that a reader never sees half of one: a temporary sibling, then a rename;
and errors that name the file."""

import contextlib
import csv
import errno
import json
import os
import pathlib
import secrets

from fcslstm_jax.errors import ConfigError


@contextlib.contextmanager
def naming(path):
  """Adds the file name to an OSError that lacks it (a full disk fails in write())."""
  try:
    yield path
  except OSError as e:
    if e.filename:
      raise
    raise type(e)(e.errno, e.strerror, str(path)) from e


def _create_sibling(path: pathlib.Path) -> str:
  """A new, empty file beside ``path`` with a unique hidden name and the same extension,
  created as a plain ``open()`` creates files: mode 0o666 less the umask (``mkstemp`` makes
  0o600 files, unreadable to collaborators on a shared cluster). The umask is never read or
  changed: setting it, even briefly, would affect files other threads create meanwhile."""
  for _ in range(100):
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{_suffix(path)}"
    try:
      os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
      return str(tmp)
    except FileExistsError:
      continue
  raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def _suffix(path) -> str:
  name = str(path)
  return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


_RECORDERS: list = []  # the lists of :func:`recording` blocks now open


@contextlib.contextmanager
def recording():
  """Yields a list that collects the absolute path of every file :func:`atomic_path` (and so
  every writer here) completes inside the block: what a command wrote, for its manifest."""
  written = []
  _RECORDERS.append(written)
  try:
    yield written
  finally:
    _RECORDERS.remove(written)


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path beside ``path`` with the same extension (writers such as
  matplotlib and nibabel pick the format from it); renamed onto ``path`` when the block
  succeeds, removed when it fails (a full disk, a kill: the old file, if any, stays whole).
  The file gets the umask's mode (0o644 under umask 022), as ``open()`` would give it.
  OSErrors name ``path``."""
  path = pathlib.Path(path)
  with naming(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_sibling(path)
    try:
      yield tmp
      os.replace(tmp, path)
      for written in _RECORDERS:
        written.append(os.path.abspath(path))
    except BaseException:
      if os.path.exists(tmp):
        os.unlink(tmp)
      raise


def write_text(path, text: str) -> None:
  """``text`` into ``path`` (UTF-8), atomically."""
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)


def write_tsv(path, header, rows) -> None:
  """A tab-separated table with a header row, atomically."""
  with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def write_json(path, obj, indent=2) -> None:
  """``obj`` as JSON into ``path``, atomically."""
  write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_tsv(path) -> list:
  """``[{column: text}]`` of a table written by :func:`write_tsv`."""
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f, delimiter="\t"))


def check_outside_dataset(out_dir: str, input_root: str, flag: str = "--out", allow=None) -> None:
  """Outputs never go inside the input dataset (nothing can overwrite an input), except
  where ``allow(parts)`` says yes (``parts``: the path relative to the dataset, e.g.
  ``("derivatives", "fcslstm")``: :func:`fcslstm_jax.data.layout.output_place_allowed`)."""
  out, root = os.path.realpath(out_dir), os.path.realpath(input_root)
  if os.path.commonpath([out, root]) != root:
    return
  parts = pathlib.PurePath(os.path.relpath(out, root)).parts
  if allow is not None and parts != (".",) and allow(parts):
    return
  where = " (or a new derivatives/<name>/)" if allow is not None else ""
  raise ConfigError(
    f"{out_dir}: is inside the input dataset {input_root}. Choose a {flag} "
    f"folder outside it{where}; outputs never go next to the inputs."
  )


def check_output_dir(out_dir: str, input_root: str, allow=None) -> None:
  """Creates ``out_dir`` after checking it is outside the input dataset (but where ``allow``
  says yes: :func:`check_outside_dataset`) and writable."""
  check_outside_dataset(out_dir, input_root, allow=allow)
  out = os.path.realpath(out_dir)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise ConfigError(
      f"{out_dir}: cannot be created ({e.strerror}). Choose another --out folder."
    ) from e
  if not os.access(out, os.W_OK):
    raise ConfigError(f"{out_dir}: is not writable. Choose another --out folder.")
