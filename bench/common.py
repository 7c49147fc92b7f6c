"""Shared pieces of the benchmarks: the JAX train step, batches, timing, the machine.

The JAX step is training's own: :func:`fcslstm_jax.train.loop.train_step` with the optimizer
of :func:`fcslstm_jax.train.loop.make_optimizer` and the paper's hyperparameters from
:class:`fcslstm_jax.config.Config` (weighted cross-entropy, Sec. 2.3; RMSprop with smoothing
constant 0.95, learning rate 1e-3, eps outside the square root as torch's, Sec. 3). Only the
augmentation is off, so that JAX and the PyTorch reference do the same work.
"""

import json
import os
import platform
import statistics
import sys
import time

# PyTorch's OpenMP workers spin after their work by default; interleaved with XLA's thread
# pool on a 2-core machine they took CPU from JAX's steps and JAX's from theirs (PyTorch ran
# 2.5x slower interleaved than alone). Passive waiting makes the interleaved rounds fair.
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from fcslstm_jax.config import Config
from fcslstm_jax.model import networks
from fcslstm_jax.train import loop

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
IN_CHANNELS = 2
NUM_CLASSES = 4
CONFIG = Config(augment=False)  # training's hyperparameters; the same step minus augmentation
LEARNING_RATE = CONFIG.learning_rate
RMSPROP_DECAY = CONFIG.rmsprop_decay  # the paper's smoothing constant alpha
RMSPROP_EPS = CONFIG.rmsprop_eps


def write_result(result, path, table):
  """Writes ``result`` as JSON to ``path``, prints its markdown ``table``; returns ``result``."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(table(result))
  return result


def rmsprop():
  """Training's optimizer (:func:`fcslstm_jax.train.loop.make_optimizer`) at its initial
  learning rate: torch.optim.RMSprop(lr=1e-3, alpha=0.95, eps=1e-8), eps outside the root."""
  return loop.make_optimizer(CONFIG, steps_per_epoch=1)


def make_batch(batch, steps, size, seed=0):
  """Random images ``[B, T, H, W, 2]``, labels and mask ``[B, T, H, W]``, class weights.

  ``size``: H = W, or the spatial shape as a tuple (``(D, H, W)`` for a 3D model)."""
  spatial = (size, size) if isinstance(size, int) else tuple(size)
  shape = (batch, steps) + spatial
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(k1, shape + (IN_CHANNELS,), jnp.float32)
  labels = jax.random.randint(k2, shape, 0, NUM_CLASSES)
  mask = (jax.random.uniform(k3, shape) < 0.9).astype(jnp.float32)
  class_weights = jnp.array([0.5, 1.0, 1.5, 2.0], jnp.float32)[:NUM_CLASSES]
  return x, labels, mask, class_weights


def torch_device():
  """``"cuda"`` where PyTorch sees a GPU, else ``"cpu"`` (the same device JAX would pick)."""
  import torch

  return "cuda" if torch.cuda.is_available() else "cpu"


def jax_model(name, remat="none", unroll=None, stages=None, dtype=jnp.float32, chunk_pixels=None):
  model = networks.create_model(
    name, NUM_CLASSES, remat=remat, unroll=unroll, dtype=dtype, chunk_pixels=chunk_pixels
  )
  return model.clone(stages=stages) if stages is not None else model


def jax_train_step(model, config=CONFIG):
  """``step(params, opt_state, x, labels, mask, class_weights) -> (params, opt_state, loss)``:
  :func:`fcslstm_jax.train.loop.train_step` (the step training runs, at step 0 of the
  schedule, augmentation off), jitted with the parameters and optimizer state donated."""
  tx = rmsprop()
  rng = jax.random.PRNGKey(0)

  def step(params, opt_state, x, labels, mask, class_weights):
    state = loop.TrainState(
      step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params, tx=tx, opt_state=opt_state
    )
    batch = {
      "images": x,
      "labels": labels,
      "label_mask": mask,
      "valid": jnp.ones(x.shape[:2], bool),
    }
    state, out = loop.train_step(state, batch, rng, class_weights=class_weights, config=config)
    return state.params, state.opt_state, out["loss"]

  return jax.jit(step, donate_argnums=(0, 1)), tx


def lower_train_step(model, batch, steps, size, config=CONFIG):
  """The train step of ``model`` lowered for ``[batch, steps, size, size, 2]``, shapes only
  (``config``: training's, e.g. with ``microbatches``).

  Nothing is initialized or allocated: for compiled-program analyses (memory, FLOPs).
  """
  step, tx = jax_train_step(model, config)
  params = jax.eval_shape(lambda: networks.init_params(model, IN_CHANNELS))
  opt_state = jax.eval_shape(tx.init, params)
  data = jax.eval_shape(lambda: make_batch(batch, steps, size))
  return step.lower(params, opt_state, *data)


def jax_state(model):
  params = networks.init_params(model, IN_CHANNELS)
  _, tx = jax_train_step(model)
  return params, tx.init(params)


def median_time(fn, steps, warmup=2):
  """Median wall time of ``fn()`` over ``steps`` calls after ``warmup`` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def cpu_name() -> str:
  """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine():
  import flax

  return {
    "cpu": cpu_name(),
    "cores": os.cpu_count(),
    "jax": jax.__version__,
    "flax": flax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "device_kind": jax.devices()[0].device_kind,
    "python": platform.python_version(),
  }


def describe(machine):
  """One phrase for table captions: the accelerator if JAX ran on one, else the CPU."""
  if machine.get("backend", "cpu") != "cpu":
    return f"{machine.get('device_kind', machine['backend'])}, jax {machine['jax']}"
  return f"{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']}"
