"""Which study a command reads: ``--dataset NAME`` (built in, generated on first use) or
``--data-dir DIR`` (a BIDS-like folder, docs/data.md), as its root folder and
protocol; for a trained run, the study it trained on.

The one place that joins the loader (the ``fcslstm_jax/data/`` folder) with the generators
(``fcslstm_jax/synthetic/``): the loader never imports a generator.
"""

from fcslstm_jax.data import protocol
from fcslstm_jax.run_record import RunRecord
from fcslstm_jax.synthetic import bric_like

BUILTIN = tuple(protocol.BUILTIN)  # --dataset choices


def resolve(
  dataset=None,
  data_dir=None,
  protocol_name=None,
  *,
  data_seed: int = 0,
  volume: str = "slab",
  generation=None,
) -> tuple:
  """``(root, protocol)`` of ``--data-dir`` (with ``protocol_name``, ``--protocol``: a shipped
  name or a JSON file; default ``DIR/protocol.json`` if present, else bric) or else of built-in
  ``dataset`` (default bric; its own protocol), generated on first use.

  Args:
    data_seed, volume: the built-in dataset's seed and extent (``slab`` or ``whole``).
    generation: a :class:`fcslstm_jax.synthetic.bric_like.GenerationConfig` instead of
      ``volume``'s (small datasets for tests and smoke runs).
  """
  if data_dir:
    return str(data_dir), protocol.get_protocol(protocol_name, data_dir)
  return builtin_root(data_seed, volume, generation), protocol.builtin(dataset or "bric")


def builtin_root(data_seed: int = 0, volume: str = "slab", generation=None) -> str:
  """The built-in dataset's folder, generated on first use."""

  config = generation or bric_like.VOLUMES[volume]
  return str(bric_like.ensure_dataset(seed=data_seed, config=config))


def of_run(record: RunRecord) -> str:
  """The root of the study a run trained on."""
  if record.builtin:
    return builtin_root(record.data_seed, record.volume)
  return record.dataset
