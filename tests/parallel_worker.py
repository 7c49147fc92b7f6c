"""Subprocess side of tests/test_parallel.py (XLA_FLAGS and jax.distributed need a fresh
process: both must be set before JAX touches a device).

    python tests/parallel_worker.py mesh OUT.npz
        two train steps of a tiny FCN on a 1-device and on a 2-device mesh (run with
        XLA_FLAGS=--xla_force_host_platform_device_count=2), and one bfloat16 step of a tiny
        FCSLSTM; saves losses, parameters, and the bfloat16 step's HLO. The same for a tiny 3D
        FCN (volume patches), and a volume it segments by sliding windows on both meshes.
    python tests/parallel_worker.py train OUT.npz TRAIN_ARGS...
        train.py TRAIN_ARGS in one process of a multi-process run; saves its exit code (0, or
        130 when a signal stopped it), the final parameters and whether the newest
        checkpoint holds them; or only the exit code 2 when it refused the run.
"""

import os
import sys
import time

T0 = time.time()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from fcslstm_jax.config import get_config
from fcslstm_jax.model import networks
from fcslstm_jax.train import loop
from fcslstm_jax.train import parallel
from fcslstm_jax.train import scoring

BATCH, STEPS, T, SIZE, CHANNELS, CLASSES = 2, 2, 2, 32, 2, 4
WEIGHTS = np.array([0.5, 1.0, 1.5, 2.0], np.float32)


def log(what):
  print(f"[{time.time() - T0:6.1f} s] {what}", flush=True)


def flat(tree) -> dict:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


VOLUME_PATCH, VOLUME = (16, 16, 16), (16, 24, 24)  # 3D: D, H, W (4 windows of the patch)


def synthetic_batches(seed=0, spatial=(SIZE, SIZE)) -> list:
  rng = np.random.default_rng(seed)
  shape = (BATCH, T) + tuple(spatial)
  return [
    {
      "images": rng.random(shape + (CHANNELS,), np.float32),
      "labels": rng.integers(0, CLASSES, shape).astype(np.int32),
      "label_mask": (rng.random(shape) < 0.5).astype(np.float32),
      "valid": np.ones((BATCH, T), bool),
    }
    for _ in range(STEPS)
  ]


def initial_state(config, spatial=(SIZE, SIZE)):
  """A host copy of an initial TrainState with He-normal kernels drawn in numpy from the
  parameter shapes: ``jax.jit(model.init)`` would cost one more compilation, and these
  tests compare runs from the same start, whatever it is. Zero biases."""
  model = networks.build_model(config, CLASSES)
  x = jax.ShapeDtypeStruct((1, T) + tuple(spatial) + (CHANNELS,), np.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
  rng = np.random.default_rng(config.seed)

  def he(s):
    return (
      rng.standard_normal(s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))
      if len(s.shape) > 1
      else np.zeros(s.shape)
    ).astype(np.float32)

  params = jax.tree_util.tree_map(he, shapes)
  state = loop.TrainState.create(
    apply_fn=model.apply, params=params, tx=loop.make_optimizer(config, 1)
  )
  return jax.tree_util.tree_map(np.asarray, state)


def step_on(mesh, config):
  """The jitted train step as ``loop.train_and_evaluate`` builds it."""
  return jax.jit(
    lambda s, b, r: loop.train_step(s, b, r, class_weights=WEIGHTS, config=config),
    donate_argnums=0,
    out_shardings=parallel.replicated(mesh),
  )


def train_on(mesh, config, state, batches):
  """``STEPS`` steps on ``mesh``; returns the losses and the final parameters."""
  state = parallel.replicate(state, mesh)
  step_fn = step_on(mesh, config)
  step_rng = parallel.replicate(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1), mesh)
  losses = []
  for batch in batches:
    state, out = step_fn(state, parallel.shard_batch(batch, mesh), step_rng)
    losses.append(float(out["loss"]))
  leaves = jax.tree_util.tree_leaves((state.params, state.opt_state))
  assert all(
    x.sharding.is_fully_replicated and x.sharding.mesh.size == mesh.size for x in leaves
  )  # parameters and optimizer state stay replicated
  return np.array(losses), flat(state.params)


def bf16_step(config, state, batch):
  """One bfloat16 step on one device: its loss, the HLO before and after XLA's passes, and
  the dtypes of the updated parameters and optimizer state."""
  config = config.replace(precision="bfloat16")
  model = networks.build_model(config, CLASSES)
  state = state.replace(apply_fn=model.apply)
  mesh = parallel.make_mesh(1)
  args = (
    parallel.replicate(state, mesh),
    parallel.shard_batch(batch, mesh),
    parallel.replicate(jax.random.PRNGKey(1), mesh),
  )
  lowered = step_on(mesh, config).lower(*args)
  compiled = lowered.compile()
  new_state, out = compiled(*args)
  dtypes = {
    str(x.dtype) for x in jax.tree_util.tree_leaves((new_state.params, new_state.opt_state))
  }
  return {
    "bf16_loss": float(out["loss"]),
    "bf16_lowered": lowered.as_text(dialect="hlo"),
    "bf16_compiled": compiled.as_text(),
    "bf16_state_dtypes": sorted(dtypes),
  }


def mesh_main(out):
  assert jax.device_count() == 2, jax.devices()
  batches = synthetic_batches()
  lstm = get_config("tiny", model="fcslstm")
  log("imported")
  state = initial_state(lstm)
  log("fcslstm initialized")
  result = bf16_step(lstm, state, batches[0])
  log("bfloat16 step")
  # 1 vs 2 devices on the FCN, the cheapest model to compile: data parallelism does not
  # depend on what the model computes per sequence.
  fcn = get_config("tiny", model="fcn")
  state = initial_state(fcn)
  for n in (1, 2):
    losses, params = train_on(parallel.make_mesh(n), fcn, state, batches)
    log(f"fcn on {n} device(s)")
    result[f"loss{n}"] = losses
    result.update({f"p{n}{k}": v for k, v in params.items()})
  # 3D + time: the same on volume patches, and a volume segmented by sliding windows (two
  # windows per call, one per device on the 2-device mesh).
  fcn3d = fcn.replace(spatial_dims=3, patch_size=VOLUME_PATCH)
  state = initial_state(fcn3d, VOLUME_PATCH)
  batches = synthetic_batches(1, VOLUME_PATCH)
  volume = np.random.default_rng(2).random((1, T) + VOLUME + (CHANNELS,), np.float32)
  for n in (1, 2):
    mesh = parallel.make_mesh(n)
    losses, params = train_on(mesh, fcn3d, state, batches)
    model = loop.build_model(fcn3d, CLASSES)
    predict = scoring.make_volume_predict_fn(model, fcn3d, mesh, window_batch=2)
    result[f"volume_proba{n}"] = predict(
      parallel.replicate(state.params, mesh), volume, np.ones((1, T), bool)
    )
    log(f"fcn 3D on {n} device(s)")
    result[f"loss3d{n}"] = losses
    result.update({f"q{n}{k}": v for k, v in params.items()})
  np.savez(out, **result)


def train_main(out, argv):
  import train
  from fcslstm_jax.checkpoint import Checkpointer

  results, run = [], loop.train_and_evaluate

  def keep_result(*args, **kwargs):  # train.main returns an exit code; keep the state too
    results.append(run(*args, **kwargs))
    return results[-1]

  loop.train_and_evaluate = keep_result
  rc = train.main(argv)
  if rc == 2 and not results:  # refused before training (an error line on stderr)
    log("train.py refused the run, exit 2")
    np.savez(out, rc_train=rc)
    return
  assert rc in (0, 130), rc  # 130: stopped by a signal (here or on the other process)
  log(f"train.py done, exit {rc}")
  state = results[-1].state
  workdir = argv[argv.index("--workdir") + 1]
  ckpt = Checkpointer(workdir)  # every process restores, as orbax expects
  restored, step = ckpt.restore(state)
  ckpt.close()
  same = all(
    np.array_equal(a, b)
    for a, b in zip(flat(state.params).values(), flat(restored.params).values())
  )
  np.savez(
    out,
    rc_train=rc,
    step=int(state.step),
    ckpt_step=step,
    ckpt_matches=same,
    process_count=jax.process_count(),
    **flat(state.params),
  )


if __name__ == "__main__":
  mode, out = sys.argv[1], sys.argv[2]
  if mode == "mesh":
    mesh_main(out)
  else:
    train_main(out, sys.argv[3:])
