"""run.json: one typed record, written and read in one place; older records still load."""

import dataclasses
import json

import pytest

from fcslstm_jax import run_record
from fcslstm_jax.config import Config
from fcslstm_jax.data import protocol
from fcslstm_jax.data.study import GridOptions
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.run_record import RunRecord


def test_round_trip(tmp_path):
  record = RunRecord(
    config=Config(seed=3),
    dataset="bric",
    protocol=protocol.IBIS_BUILTIN,
    grid=GridOptions(spacing=(1.0, 1.2)),
    config_name="quick",
    volume="whole",
  )
  run_record.write(tmp_path, record)
  assert run_record.read(tmp_path) == record
  assert json.loads((tmp_path / "run.json").read_text())["volume"] == "whole"


def test_an_older_record_loads(tmp_path):
  """A record with the protocol by name, no grid options, no volume, no data seed."""
  (tmp_path / "run.json").write_text(
    json.dumps({"config": {"model": "fcn"}, "dataset": "/data/study", "protocol": "ibis"})
  )
  record = run_record.read(tmp_path)
  assert record.config == Config(model="fcn") and record.protocol.name == "ibis"
  assert (record.grid, record.volume, record.data_seed, record.builtin) == (None, "slab", 0, False)
  assert "volume" not in record.to_json() and "grid" not in record.to_json()


def test_native_spacing_has_one_spelling_and_older_nulls_still_load(tmp_path):
  """A record's in-plane spacing is resolved once: "native" or (x, y) mm; run.json files from
  before wrote native as null, and the same run read from either is the same."""
  record = RunRecord(config=Config(), dataset="/data/s", protocol=protocol.BRIC, grid=GridOptions())
  run_record.write(tmp_path, record)
  written = json.loads((tmp_path / "run.json").read_text())
  assert written["grid"]["spacing"] == "native"
  written["grid"]["spacing"] = None  # as older versions wrote it
  (tmp_path / "run.json").write_text(json.dumps(written))
  assert run_record.read(tmp_path) == record
  with pytest.raises(ConfigError, match="must be resolved"):
    GridOptions(spacing="median")
  assert GridOptions(spacing=[1, 2]).spacing == (1.0, 2.0)


def test_differences_name_what_changed():
  record = RunRecord(config=Config(), dataset="bric", protocol=protocol.BRIC, grid=GridOptions())
  other = dataclasses.replace(
    record, config=Config(seed=1, epochs=7), grid=GridOptions(spacing=(2.0, 2.0))
  )
  assert record.differences(other) == [
    "seed: 0 -> 1",
    "grid: {'spacing': 'native', 'reference': 'first', 'register': 'none'} -> "
    "{'spacing': [2.0, 2.0], 'reference': 'first', 'register': 'none'}",
  ]
  assert dataclasses.replace(record, grid=None).differences(other) == ["seed: 0 -> 1"]


@pytest.mark.parametrize(
  "text,message",
  [
    (None, "not found"),
    ('{"config": {', "not valid JSON"),
    ('{"dataset": "bric"}', "no 'config' object"),
    ('{"config": {"seed": "1"}}', r"\(config\): key 'seed' must be an integer"),
    ('{"config": {}}', "no 'dataset'"),
  ],
)
def test_a_broken_record_is_one_error_line(tmp_path, text, message):
  if text is not None:
    (tmp_path / "run.json").write_text(text)
  with pytest.raises(ConfigError, match=message) as info:
    run_record.read(tmp_path)
  assert str(info.value).startswith(str(tmp_path / "run.json")) and "\n" not in str(info.value)
