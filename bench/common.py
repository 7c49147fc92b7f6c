"""Shared pieces of the benchmarks: the loss, the optimizer, the JAX train step, timing.

The loss is the paper's weighted softmax cross-entropy over pixels (Sec. 2.3); the
optimizer is RMSprop with smoothing constant 0.95 and learning rate 1e-3 (Sec. 3), written
so that JAX and PyTorch do exactly the same update (see :func:`rmsprop`).
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
import optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from fcslstm_jax import losses  # noqa: E402
from fcslstm_jax import model as M  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
IN_CHANNELS = 2
NUM_CLASSES = 4
LEARNING_RATE = 1e-3
RMSPROP_DECAY = 0.95  # the paper's smoothing constant alpha
RMSPROP_EPS = 1e-8


def weighted_cross_entropy(logits, labels, mask, class_weights):
  """The project's loss (``fcslstm_jax.losses``), the same one training uses."""
  return losses.weighted_cross_entropy(logits, labels, mask, class_weights)


def write_result(result, path, table):
  """Writes ``result`` as JSON to ``path``, prints its markdown ``table``; returns ``result``."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(table(result))
  return result


def rmsprop():
  """torch.optim.RMSprop(lr=1e-3, alpha=0.95, eps=1e-8): eps outside the square root.

  optax puts eps inside the square root by default (``eps_in_sqrt=True``); torch does not.
  """
  return optax.rmsprop(LEARNING_RATE, decay=RMSPROP_DECAY, eps=RMSPROP_EPS, eps_in_sqrt=False)


def make_batch(batch, steps, size, seed=0):
  """Random images ``[B, T, H, W, 2]``, labels and mask ``[B, T, H, W]``, class weights."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(k1, (batch, steps, size, size, IN_CHANNELS), jnp.float32)
  labels = jax.random.randint(k2, (batch, steps, size, size), 0, NUM_CLASSES)
  mask = (jax.random.uniform(k3, (batch, steps, size, size)) < 0.9).astype(jnp.float32)
  class_weights = jnp.array([0.5, 1.0, 1.5, 2.0], jnp.float32)[:NUM_CLASSES]
  return x, labels, mask, class_weights


def torch_device():
  """``"cuda"`` where PyTorch sees a GPU, else ``"cpu"`` (the same device JAX would pick)."""
  import torch
  return "cuda" if torch.cuda.is_available() else "cpu"


def jax_model(name, remat="none", unroll=None, stages=None, dtype=jnp.float32,
              chunk_pixels=None):
  model = M.create_model(name, NUM_CLASSES, remat=remat, unroll=unroll, dtype=dtype,
                         chunk_pixels=chunk_pixels)
  return model.clone(stages=stages) if stages is not None else model


def jax_train_step(model):
  """``step(params, opt_state, x, labels, mask, class_weights) -> (params, opt_state, loss)``.

  Jitted with the parameters and optimizer state donated, as a training loop does.
  """
  tx = rmsprop()

  def step(params, opt_state, x, labels, mask, class_weights):
    def loss_fn(p):
      return weighted_cross_entropy(model.apply({"params": p}, x), labels, mask, class_weights)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1)), tx


def lower_train_step(model, batch, steps, size):
  """The train step of ``model`` lowered for ``[batch, steps, size, size, 2]``, shapes only.

  Nothing is initialized or allocated: for compiled-program analyses (memory, FLOPs).
  """
  step, tx = jax_train_step(model)
  params = jax.eval_shape(lambda: M.init_params(model, IN_CHANNELS))
  opt_state = jax.eval_shape(tx.init, params)
  data = jax.eval_shape(lambda: make_batch(batch, steps, size))
  return step.lower(params, opt_state, *data)


def jax_state(model):
  params = M.init_params(model, IN_CHANNELS)
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


def machine():
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import flax
  return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
          "flax": flax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()],
          "device_kind": jax.devices()[0].device_kind, "python": platform.python_version()}


def describe(machine):
  """One phrase for table captions: the accelerator if JAX ran on one, else the CPU."""
  if machine.get("backend", "cpu") != "cpu":
    return f"{machine.get('device_kind', machine['backend'])}, jax {machine['jax']}"
  return f"{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']}"
