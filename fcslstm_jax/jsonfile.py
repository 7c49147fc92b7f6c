"""JSON files the user gives or a run wrote, read into checked dataclasses.

One reader for ``run.json``, protocol files, ``--flags`` files and a run's config: a file
that is missing, unreadable or not JSON, a key that is not a field, a value of the wrong
type, each gives one :class:`~fcslstm_jax.errors.ConfigError` line that names the file, the
key and the fix. Range and cross-field checks stay with each dataclass (``__post_init__``).
"""

import json
from typing import Any

from fcslstm_jax.errors import ConfigError


def read(path, missing: str, fix: str) -> Any:
  """The JSON value in ``path``.

  Args:
    missing: what to do when the file does not exist.
    fix: what to do when it cannot be read or is not JSON.
  """
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    raise ConfigError(f"{path}: not found. {missing}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"{path}: unreadable ({e}). {fix}") from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: unreadable, not valid JSON (line {e.lineno}, column {e.colno}: "
                      f"{e.msg}). {fix}") from None
