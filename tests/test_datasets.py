"""One resolver of --dataset NAME | --data-dir DIR (train.py, evaluate.py, compare, preview)."""

import json

from fcslstm_jax import datasets
from fcslstm_jax.config import Config
from fcslstm_jax.data import protocol
from fcslstm_jax.run_record import RunRecord
from fcslstm_jax.synthetic import bric_like


def generated(monkeypatch):
  """Calls of the built-in generator, recorded instead of run: ``[(seed, config)]``."""
  calls = []
  monkeypatch.setattr(
    bric_like, "ensure_dataset", lambda seed, config: calls.append((seed, config)) or f"/gen/{seed}"
  )
  return calls


def test_data_dir_with_its_protocol_file(tmp_path, monkeypatch):
  calls = generated(monkeypatch)
  assert datasets.resolve(data_dir=tmp_path) == (str(tmp_path), protocol.BRIC)
  assert datasets.resolve(data_dir=tmp_path, protocol_name="ibis")[1].ages == (6, 12, 24)
  (tmp_path / "protocol.json").write_text(json.dumps({"ages": [0, 6], "train_timepoints": [0]}))
  assert datasets.resolve("ibis", tmp_path)[1].ages == (0, 6)  # --data-dir wins
  assert calls == []


def test_builtin_dataset_and_a_runs_own(monkeypatch):
  calls = generated(monkeypatch)
  assert datasets.resolve() == ("/gen/0", protocol.BRIC)
  assert datasets.resolve("ibis", data_seed=2, volume="whole") == ("/gen/2", protocol.IBIS_BUILTIN)
  run = RunRecord(config=Config(), dataset="bric", protocol=protocol.BRIC, data_seed=1)
  assert datasets.of_run(run) == "/gen/1"
  assert calls == [
    (0, bric_like.VOLUMES["slab"]),
    (2, bric_like.VOLUMES["whole"]),
    (1, bric_like.VOLUMES["slab"]),
  ]
  assert (
    datasets.of_run(RunRecord(config=Config(), dataset="/studies/a", protocol=protocol.BRIC))
    == "/studies/a"
  )
