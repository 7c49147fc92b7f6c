"""Ensembles: class probabilities averaged over several trained runs (members).

Layout: a member predicts ``[N, T, H, W, c]`` probabilities for ``N`` axial slice sequences
(:class:`fcslstm_jax.data.sequences.SliceSet`); the ensemble's prediction is their mean, and its
hard label the argmax of that mean. Members must have been trained with the same protocol
(time points, classes, modalities) and grid options (in-plane spacing, reference session,
registration): they then read the same working grids, so their outputs can be averaged
voxel by voxel. Members whose networks are the same (model, stages, precision, ...) share
one jit-compiled program; only their parameters differ.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from fcslstm_jax.config import Config
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.infer import predict
from fcslstm_jax.infer import prior
from fcslstm_jax.infer import tta
from fcslstm_jax.run_record import RunRecord

# Config fields that define the compiled program; the others only change training.
PROGRAM_FIELDS = (
  "model",
  "stages",
  "remat",
  "unroll",
  "chunk_pixels",
  "batching",
  "precision",
  "spatial_dims",
  "stages_3d",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
  """One trained run of an ensemble.

  Attributes:
    workdir: the run's folder.
    run: its record (``run.json``).
    config: its :class:`~fcslstm_jax.config.Config`.
    model: the Flax module.
    params: restored parameters.
    step: the checkpoint step they come from.
    prior_scale: the prior correction's per-class factors (:func:`fcslstm_jax.infer.prior.scale`),
      or None: the network's own probabilities.
  """

  workdir: str
  run: RunRecord
  config: Config
  model: nn.Module
  params: Any
  step: int
  prior_scale: Any = None


def program_key(config: Config) -> tuple:
  """Members with equal keys run the same compiled program."""
  d = config.to_json()
  return tuple((k, repr(d[k])) for k in PROGRAM_FIELDS)


# Config fields whose members read other inputs: (field, what must be equal, the rule).
SHARED_INPUTS = (
  ("spatial_dims", lambda c: c.spatial_dims, "all segment slices (2) or all volumes (3)"),
  ("age_input", lambda c: c.age_input != "none", "all take the session age as input or none"),
  ("context_slices", lambda c: c.context_slices, "all see the same neighbouring slices"),
)


def check_compatible(runs) -> None:
  """Refuses members trained with another protocol or other grid options: one line naming
  the member's ``run.json``, the first difference and the fix.

  Args:
    runs: ``[(workdir, RunRecord)]``, the first one the reference.
  """
  (ref_dir, ref), others = runs[0], runs[1:]
  for workdir, run in others:
    for field, key, must in SHARED_INPUTS:
      if key(ref.config) != key(run.config):
        raise ConfigError(
          f"{workdir}/run.json: {field} is {getattr(run.config, field)!r}, but {ref_dir}/run.json "
          f"has {getattr(ref.config, field)!r}. Ensemble members must {must}; leave this "
          "--workdir out."
        )
    for field in ("protocol", "grid"):
      a, b = (getattr(r, field) for r in (ref, run))
      a, b = (x.to_json() if x is not None else {} for x in (a, b))
      diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
      if diff:
        k = diff[0]
        raise ConfigError(
          f"{workdir}/run.json: {field} {k!r} is {b.get(k)!r}, but {ref_dir}/run.json has "
          f"{a.get(k)!r}. Ensemble members must share the protocol and grid options "
          "(--spacing, --reference, --register); leave this --workdir out or retrain it."
        )


def predict_fns(members, variants) -> list:
  """One jit-compiled :func:`fcslstm_jax.infer.tta.tta_proba` per distinct program, one entry
  per member (members with equal :func:`program_key` share it)."""
  compiled = {}
  for m in members:
    key = program_key(m.config)
    if key not in compiled:
      apply_fn = m.model.apply
      compiled[key] = jax.jit(
        lambda p, x, v, apply_fn=apply_fn: tta.tta_proba(p, apply_fn, x, v, variants)
      )
  return [compiled[program_key(m.config)] for m in members]


def members_mean(params_list, fns, scales=None):
  """``fn(images [B, ...], valid [B, ...])`` -> the mean of the members' probabilities
  ``[B, ..., c]`` (float32), each prior-corrected by its ``scales`` entry (None: as predicted);
  one member: exactly its own probabilities."""
  scales = scales or [None] * len(fns)

  def mean(images, valid):
    total = None
    for params, fn, scale in zip(params_list, fns, scales):
      probs = prior.corrected(np.asarray(fn(params, images, valid)), scale)
      total = probs if total is None else total + probs
    return (total / np.float32(len(fns))).astype(np.float32)

  return mean


def average_proba(params_list, fns, data, batch_size: int, scales=None) -> np.ndarray:
  """Mean of the members' probabilities ``[N, T, H, W, c]`` (float32) over ``data``'s
  sequences (:func:`members_mean`)."""
  return predict.predict_batched(members_mean(params_list, fns, scales), data, batch_size)


def stream_proba(params_list, fns, parts, batch_size: int, scales=None):
  """:func:`average_proba` of each ``(key, SliceSet)`` of ``parts``, yielded as
  ``(key, probabilities)`` in order; consecutive parts of one shape share batches
  (:func:`fcslstm_jax.infer.predict.predict_stream`)."""
  mean = members_mean(params_list, fns, scales)
  arrays = ((key, data.images, data.valid) for key, data in parts)
  yield from predict.predict_stream(mean, arrays, batch_size)
