"""The training metrics log: ``workdir/metrics.jsonl`` (one JSON object per epoch) and
TensorBoard event files, kept true to the checkpoints on resume."""

import json
import logging
import os

from tensorboardX import SummaryWriter

from fcslstm_jax import files


class MetricsLog:
  """``workdir/metrics.jsonl`` (one JSON object per epoch) and TensorBoard event files.

  On resume, lines written after the restored step (a run killed between its metrics write
  and its checkpoint) are dropped, so the file matches the training that really happened;
  so is a line that cannot be read (cut short by a kill, or edited), with a warning.
  """

  def __init__(self, workdir: str, step: int):

    self.path = os.path.join(workdir, "metrics.jsonl")
    kept = []
    if os.path.exists(self.path):
      with open(self.path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
          record = _record(line)
          if record is None and line.strip():
            logging.getLogger(__name__).warning(
              "%s: line %d is unreadable (cut short by a kill?); dropped.", self.path, number
            )
          elif record is not None and record["step"] <= step:
            kept.append(json.dumps(record) + "\n")
    files.write_text(self.path, "".join(kept))
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, record: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for k, v in record.items():
      if k not in ("epoch", "step") and v is not None:
        self.tb.add_scalar(k, v, record["step"])
    self.tb.flush()

  def close(self):
    self.tb.close()


def _record(line: str):
  """A metrics.jsonl line as a dict with an integer ``step``, or None."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError:
    return None
  ok = isinstance(record, dict) and isinstance(record.get("step"), int)
  return record if ok else None
