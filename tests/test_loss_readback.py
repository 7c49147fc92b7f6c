"""The training loop reads the loss back every ``log_every_steps`` steps, not every step.

Runs :func:`fcslstm_jax.train.loop.train_and_evaluate` on a small synthetic set of sequences
(``[N, T, H, W, C]`` = ``[8, 2, 32, 32, 2]``, batch 2: four steps per epoch) with the tiny
config, so that a read-back every 3 steps falls inside an epoch and at its end.
"""

import json

import numpy as np
import pytest

from fcslstm_jax.config import get_config
from fcslstm_jax.data import protocol
from fcslstm_jax.data.sequences import SliceSet
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.run_record import RunRecord
from fcslstm_jax.train import loop
from fcslstm_jax.train import nonfinite

CLASSES = ("background", "csf", "gm", "wm")


def synthetic_set(n=8, t=2, size=32, nan_at=None) -> SliceSet:
  rng = np.random.default_rng(0)
  images = rng.normal(size=(n, t, size, size, 2)).astype(np.float32)
  if nan_at is not None:
    images[nan_at][0, 5, 5, 0] = np.nan
  return SliceSet(
    images=images,
    labels=rng.integers(0, len(CLASSES), (n, t, size, size)).astype(np.int32),
    label_mask=np.ones((n, t, size, size), np.float32),
    valid=np.ones((n, t), bool),
    subject_ids=tuple(f"{j:02d}" for j in range(n)),
    slice_index=np.zeros(n, np.int32),
    session_labels=np.array([[f"{m}mo" for m in range(t)]] * n),
  )


class RecordingBar:
  """A progress bar that records what the loop shows: (step index, postfix)."""

  def __init__(self, steps, shown):
    self.steps, self.shown, self.i = steps, shown, None

  def __iter__(self):
    for self.i in self.steps:
      yield self.i

  def set_postfix(self, **postfix):
    self.shown.append((self.i, postfix["loss"]))


def run(workdir, log_every_steps, data, epochs=2):
  config = get_config("tiny", epochs=epochs, log_every_steps=log_every_steps)
  shown = []
  record = RunRecord(config=config, dataset="synthetic", protocol=protocol.BRIC)
  loop.train_and_evaluate(
    config,
    data,
    data,
    str(workdir),
    CLASSES,
    record,
    progress=lambda steps, epoch: RecordingBar(steps, shown),
    log=lambda *a: None,
  )
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line)["loss"] for line in f], shown


def test_first_nonfinite():
  assert nonfinite.first_nonfinite([0.5, 0.25]) is None
  assert nonfinite.first_nonfinite([0.5, np.inf, np.nan]) == 1
  assert nonfinite.first_nonfinite(np.array([np.nan], np.float32)) == 0


def test_losses_read_every_3_steps_equal_the_per_step_losses(tmp_path):
  data = synthetic_set()
  every_step, shown_1 = run(tmp_path / "n1", 1, data)
  every_3, shown_3 = run(tmp_path / "n3", 3, data)
  assert len(every_step) == 2 and every_step == every_3  # epoch means, bit for bit
  assert [i for i, _ in shown_1] == [0, 1, 2, 3] * 2
  assert [i for i, _ in shown_3] == [2, 3] * 2  # after step 3 of 4, and at the epoch's end
  assert shown_3 == [s for s in shown_1 if s[0] in (2, 3)]


def test_nan_guard_names_the_step_inside_the_window(tmp_path):
  """The NaN batch is the second of a 3-step window; the message names its step."""
  order = loop.epoch_order(0, 0, 8)  # the first epoch's order (seed 0 of "tiny")
  bad = int(order[2])  # first sequence of the second batch, i.e. step 2
  data = synthetic_set(nan_at=bad)
  with pytest.raises(nonfinite.NonFiniteLoss) as e:
    run(tmp_path / "run", 3, data)
  message = str(e.value)
  assert message.startswith("loss became nan at step 2 (epoch 1): ")
  assert f"sub-{bad:02d} ses-0mo" in message and "no checkpoint was written yet" in message
  assert not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_log_every_steps_must_be_positive(tmp_path):
  with pytest.raises(ConfigError, match="log_every_steps"):
    run(tmp_path / "run", 0, synthetic_set())
