"""JSON files the user gives or a run wrote, read into checked dataclasses.

One reader for ``run.json``, protocol files, ``--flags`` files and a run's config: a file
that is missing, unreadable or not JSON, a key that is not a field, a value of the wrong
type, each gives one :class:`~fcslstm_jax.errors.ConfigError` line that names the file, the
key and the fix. Range and cross-field checks stay with each dataclass (``__post_init__``).
"""

import dataclasses
import json
import typing
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
    raise ConfigError(
      f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). {fix}"
    ) from None


def _options(kind) -> list:
  """The types a field declared ``kind`` accepts (``Optional`` / ``Union`` spelled out)."""
  if typing.get_origin(kind) is typing.Union:
    return list(typing.get_args(kind))
  return [kind]


def _describe(kind) -> str:
  """How an error names the JSON type of a field."""
  options = _options(kind)
  if len(options) > 1:
    named = [_describe(k) for k in options if k is not type(None)]
    return " or ".join(named + (["null"] if type(None) in options else []))
  if typing.get_origin(kind) is tuple:
    element = typing.get_args(kind)[0]
    plural = {int: "integers", float: "numbers", str: "strings"}.get(element)
    return "a list of " + (plural or _describe(element).replace("a list", "lists", 1))
  if dataclasses.is_dataclass(kind) or kind is dict:
    return "an object"
  return {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    tuple: "a list",
  }.get(kind, getattr(kind, "__name__", str(kind)))


def _fits(kind, value) -> bool:
  options = _options(kind)
  if len(options) > 1:
    return any(_fits(k, value) for k in options)
  if kind is type(None):
    return value is None
  if typing.get_origin(kind) is tuple:
    element = typing.get_args(kind)[0]
    return isinstance(value, list) and all(_fits(element, v) for v in value)
  if kind is bool:
    return isinstance(value, bool)
  if isinstance(value, bool):  # JSON true/false are ints in Python; never a number here
    return False
  if kind is float:
    return isinstance(value, (int, float))
  if kind is tuple:
    return isinstance(value, list)
  if dataclasses.is_dataclass(kind):
    return isinstance(value, dict)
  return isinstance(value, kind)


def check_object(d, cls, where: str) -> None:
  """``d`` must be a JSON object whose keys are fields of dataclass ``cls``."""
  known = [f.name for f in dataclasses.fields(cls)]
  if not isinstance(d, dict):
    raise ConfigError(
      f"{where}: must hold a JSON object with keys {', '.join(known)}; got {json.dumps(d)}."
    )
  unknown = sorted(set(d) - set(known))
  if unknown:
    raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}.")


def _to_field(value):
  """A checked JSON value as the field's Python value: lists become tuples."""
  return tuple(_to_field(v) for v in value) if isinstance(value, list) else value


def fields_from_json(d, cls, where: str, types: dict = None) -> dict:
  """The keyword arguments of dataclass ``cls`` that JSON object ``d`` gives, each checked
  against the field's type: an unknown key or a wrong type is one error line naming
  ``where`` and the key. Lists become tuples; a dataclass-typed value stays a dict for the
  caller. ``types``: field -> type, where the declared type says less (``tuple``)."""
  check_object(d, cls, where)
  hints = typing.get_type_hints(cls)
  out = {}
  for key, value in d.items():
    kind = (types or {}).get(key, hints[key])
    if not _fits(kind, value):
      raise ConfigError(f"{where}: key {key!r} must be {_describe(kind)}, got {json.dumps(value)}.")
    out[key] = _to_field(value)
  return out
