"""Training and evaluation: ``TrainState``, a jit-compiled ``train_step``, the loop.

Layout: a batch is a dict of ``images [B, T, H, W, C]``, ``labels [B, T, H, W]``,
``label_mask [B, T, H, W]`` and ``valid [B, T]`` (see :class:`fcslstm_jax.data.sequences.SliceSet`;
2D training steps may see a window of H, W around the head: ``Config.crop_margin``);
for a 3D run (``spatial_dims=3``) the same with ``[B, T, d, h, w]`` patches drawn from whole
volumes (:class:`fcslstm_jax.data.patches.PatchSampler`), scored by sliding windows
(:mod:`fcslstm_jax.infer.sliding_window`).

Resume is exact: the data order of an epoch is a function of ``(seed, epoch)`` and the
step's randomness is ``fold_in(rng, step)``, so a run restarted from a checkpoint takes the
same batches and the same augmentations as one that never stopped.

Model selection never looks at the held-out time point: the paper's protocol has no
validation split, so the "best" checkpoint kept beside the last ones is the best by mPA on
the training time points, and the reported test result is the final model's.
"""

import dataclasses
import os
import time
from typing import Any
from typing import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from fcslstm_jax import run_record
from fcslstm_jax.checkpoint import Checkpointer
from fcslstm_jax.config import Config
from fcslstm_jax.data import head_window
from fcslstm_jax.data import patches
from fcslstm_jax.data.sequences import SliceSet
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.infer import prior
from fcslstm_jax.infer import sliding_window
from fcslstm_jax.infer.predict import make_predict_fn
from fcslstm_jax.infer.predict import predict_all
from fcslstm_jax.model.networks import MULTIPLE
from fcslstm_jax.model.networks import build_model
from fcslstm_jax.model.networks import init_params
from fcslstm_jax.run_record import RunRecord
from fcslstm_jax.train import augment
from fcslstm_jax.train import losses
from fcslstm_jax.train import nonfinite
from fcslstm_jax.train import parallel
from fcslstm_jax.train import pseudo_labels
from fcslstm_jax.train import scoring
from fcslstm_jax.train.metrics_log import MetricsLog
from fcslstm_jax.train.stop import BUDGET
from fcslstm_jax.train.stop import StopRequest

BATCH_KEYS = ("images", "labels", "label_mask", "valid")


def lr_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  """The paper's schedule as a function of the step (Sec. 3: "gradually decays after 20
  epochs with factor 0.97"): epochs 1..E keep the initial rate, epoch e > E uses
  ``lr * 0.97 ** (e - E)`` (E = ``lr_decay_begin_epoch``), constant within an epoch."""
  begin, rate = config.lr_decay_begin_epoch, config.lr_decay_rate
  # optax holds init_value for transition_begin steps, then multiplies by the rate at each
  # transition: starting the count one epoch early makes epoch E + 1 the first decayed one.
  return optax.exponential_decay(
    config.learning_rate * rate ** max(0, 1 - begin),
    transition_steps=steps_per_epoch,
    decay_rate=rate,
    transition_begin=max(0, begin - 1) * steps_per_epoch,
    staircase=True,
  )


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """RMSprop with smoothing constant α = 0.95 on :func:`lr_schedule` (Sec. 3)."""
  # eps outside the square root, as in torch's RMSprop the paper used.
  return optax.rmsprop(
    lr_schedule(config, steps_per_epoch),
    decay=config.rmsprop_decay,
    eps=config.rmsprop_eps,
    eps_in_sqrt=False,
  )


def create_train_state(
  rng, model: nn.Module, config: Config, in_channels: int, steps_per_epoch: int
) -> TrainState:
  params = init_params(model, in_channels, rng)
  return TrainState.create(
    apply_fn=model.apply, params=params, tx=make_optimizer(config, steps_per_epoch)
  )


def train_step(state: TrainState, batch: dict, rng, *, class_weights, config: Config):
  """One RMSprop step on the weighted cross-entropy (plus ``dice_weight`` x soft Dice).
  Pure; jit it with the state donated."""
  if config.augment:
    batch = augment.augment(jax.random.fold_in(rng, state.step), batch, config)
  loss, grads = loss_and_grads(state.params, state.apply_fn, batch, class_weights, config)
  return state.apply_gradients(grads=grads), {"loss": loss}


def loss_and_grads(params, apply_fn, batch: dict, class_weights, config: Config):
  """The batch's loss and its gradient with respect to ``params``.

  With ``config.microbatches`` = m > 1 the batch's m equal parts run one after another
  (``lax.scan``) and their gradients are summed; each part's cross-entropy is divided by the
  whole batch's weight, so the sum is the batch's loss and gradient (up to rounding), with
  the memory of one part. The Dice term, a ratio over the batch, becomes the mean of the
  parts' Dice."""
  parts = config.microbatches
  total = None
  if parts > 1:
    total = losses.label_weight(batch["labels"], batch["label_mask"], class_weights)

  def loss_fn(params, part):
    logits = apply_fn({"params": params}, part["images"], part["valid"])
    loss = losses.weighted_cross_entropy(
      logits, part["labels"], part["label_mask"], class_weights, total
    )
    if config.dice_weight:
      loss += (config.dice_weight / parts) * losses.soft_dice_loss(
        logits, part["labels"], part["label_mask"]
      )
    return loss

  if parts == 1:
    return jax.value_and_grad(loss_fn)(params, batch)

  def accumulate(sums, part):
    return jax.tree.map(jnp.add, sums, jax.value_and_grad(loss_fn)(params, part)), None

  split = jax.tree.map(lambda a: a.reshape((parts, -1) + a.shape[1:]), batch)
  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  return jax.lax.scan(accumulate, zeros, split)[0]


def batch_at(data, indices, key=(0, 0)) -> dict:
  """The batch (dict of ``BATCH_KEYS`` arrays) of sequences ``indices`` of ``data``: whole
  slice sequences of a :class:`SliceSet`, or one patch of each volume of a
  :class:`fcslstm_jax.data.patches.PatchSampler`, drawn at ``key`` (``(epoch, step)``)."""
  if isinstance(data, patches.PatchSampler):
    return data.batch(indices, key)
  return {k: getattr(data, k)[indices] for k in BATCH_KEYS}


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


# ----------------------------------------------------------------------------- run folder


def check_run_dir(workdir: str, record: RunRecord) -> None:
  """Writes ``record`` into a new work directory; refuses one that holds a different run."""
  path = run_record.path_of(workdir)
  if not os.path.exists(path):
    run_record.write(workdir, record)
    return
  recorded = run_record.read(workdir)
  details = recorded.differences(record)
  if details:
    raise ConfigError(
      f"{path}: this work directory holds a different run "
      f"({', '.join(details)}). Use another --workdir, or delete this one to "
      "start over."
    )
  if recorded.class_weights is None and record.class_weights is not None:
    run_record.write(workdir, dataclasses.replace(recorded, class_weights=record.class_weights))


@dataclasses.dataclass
class RunResult:
  state: Any
  train: dict
  test: dict
  seconds: float
  stopped_by: str | None = None


@dataclasses.dataclass(kw_only=True)
class Run:
  """What one training run needs besides its state (set up by :func:`prepare_run`).

  ``train_eval_set``: what scores the training time points (``train_set`` itself, or the
  labeled slabs of a 3D run's volumes); ``eval_batch``: sequences per prediction call;
  ``score_every``: epochs between scorings (:func:`fcslstm_jax.train.scoring.scoring_interval`).
  """

  config: Config
  train_set: SliceSet
  test_set: SliceSet
  class_names: tuple
  mesh: Any
  steps_per_epoch: int
  local_batch: int
  step_fn: Callable
  predict_fn: Callable
  step_rng: Any
  ckpt: Checkpointer
  logger: Any
  train_eval_set: Any = None
  eval_batch: int = 1
  score_every: int = 1
  class_weights: Any = None  # the loss's, also what the prior correction divides out
  pool: SliceSet | None = None  # self-training's unlabeled pool (train/pseudo_labels.py)
  pseudo: SliceSet | None = None  # the pool with its pseudo-labels, once made
  model: Any = None
  window: head_window.Window | None = None  # 2D training windows (config.crop_margin)


def training_window(config: Config, sets, log) -> head_window.Window | None:
  """The window 2D training cuts from every batch (``config.crop_margin``,
  :mod:`fcslstm_jax.data.head_window`): around the head of every slice of ``sets`` (the
  training sequences, and self-training's pool), over every process's slices; None for
  whole slices."""
  if config.crop_margin is None or config.spatial_dims == 3:
    return None
  shape = sets[0].images.shape[2:4]
  box = head_window.union([head_window.head_box(s.images, s.labels, s.label_mask) for s in sets])
  # Every process's box: the largest (-first, last) row and column is their union.
  agreed = parallel.agree_max(
    (-shape[0], -shape[1], -1, -1) if box is None else (-box[0][0], -box[0][1], *box[1])
  )
  if agreed[2] < 0:
    return None
  window = head_window.plan(
    ((-agreed[0], -agreed[1]), agreed[2:]), shape, config.crop_margin, MULTIPLE
  )
  if window is not None:
    log(window.describe(MULTIPLE))
  return window


def loss_class_weights(config: Config, train_set, num_classes: int):
  """The loss's class weights (``config.class_weighting``), from every process's labels."""
  counts = losses.class_counts(train_set.labels, train_set.label_mask, num_classes)
  return losses.class_weights_from_counts(
    parallel.sum_over_processes(counts), config.class_weighting
  )


class Scoring(NamedTuple):
  """How training scores its splits: ``predict_fn`` on ``eval_batch`` sequences (2D) or one
  volume (3D) per call; ``windows``: the forward passes one scoring takes."""

  predict_fn: Callable
  eval_batch: int
  windows: int


def scoring_setup(model, config: Config, mesh, local_batch: int, splits, progress: bool):
  """The :class:`Scoring` of ``splits``: 2D runs predict ``local_batch`` sequences per call;
  3D runs one volume per call, by non-overlapping windows (``scoring.SCORING_OVERLAP``)."""
  if config.spatial_dims == 3:
    predict_fn = scoring.make_volume_predict_fn(
      model,
      config,
      mesh,
      local_batch,
      scoring.SCORING_OVERLAP,
      desc="scoring" if progress else None,
    )
    return Scoring(
      predict_fn, 1, scoring.scoring_windows(splits, sliding_window.window_shape(config))
    )
  predict_fn = parallel.on_local_devices(make_predict_fn(model), mesh)
  return Scoring(predict_fn, local_batch, sum(len(split) for split in splits))


def prepare_run(
  config,
  train_set,
  test_set,
  workdir,
  class_names,
  record,
  mesh,
  log,
  train_eval_set=None,
  progress: bool = False,
):
  """``(run, state)``: the model, the restored or new state, the compiled step, the logs.

  A 3D run (``config.spatial_dims == 3``) passes a :class:`fcslstm_jax.data.patches.PatchSampler`
  as ``train_set`` and volume slabs as ``train_eval_set`` and ``test_set``; they are scored
  by non-overlapping windows (``scoring.SCORING_OVERLAP``), one volume per call (with ``progress``,
  behind a progress bar).
  """
  main = parallel.is_main_process()
  n, b = len(train_set), config.batch_size
  local_b = parallel.process_batch_size(b, mesh)  # rows this process feeds per step
  steps_per_epoch = parallel.agree_min(n // local_b)
  if not steps_per_epoch:
    raise ConfigError(
      f"--batch-size {b} is larger than the training sequences ({n} in this process's share)."
    )
  weights = loss_class_weights(config, train_set, len(class_names))
  record = dataclasses.replace(record, class_weights=tuple(float(w) for w in weights))
  # Only process 0 reads and writes run.json; whether that failed (another run's folder, a
  # read-only or full disk) is agreed on before the next collective, so that no process
  # waits in it for one that stopped.
  parallel.agree_on_error(lambda: check_run_dir(workdir, record) if main else None)
  model = build_model(config, len(class_names))
  rng = jax.random.PRNGKey(config.seed)
  state = create_train_state(rng, model, config, train_set.images.shape[-1], steps_per_epoch)
  state = parallel.replicate(state, mesh)
  ckpt = Checkpointer(workdir, config.keep_checkpoints)
  state, restored = ckpt.restore(state)
  if restored is not None:
    log(f"Resuming from {ckpt.directory} at step {restored}.")
  step_fn = jax.jit(
    lambda s, batch, r: train_step(s, batch, r, class_weights=weights, config=config),
    donate_argnums=0,
    out_shardings=parallel.replicated(mesh),
  )
  train_eval_set = train_set if train_eval_set is None else train_eval_set
  predict_fn, eval_batch, windows = scoring_setup(
    model, config, mesh, local_b, [train_eval_set, test_set], progress and main
  )
  score_every = scoring.scoring_interval(config, windows, steps_per_epoch * local_b)
  if config.spatial_dims == 3:
    log(
      f"scoring every {score_every} epoch(s) and after the last: {windows} windows "
      f"{list(sliding_window.window_shape(config))} per scoring"
    )
  run = Run(
    config=config,
    train_set=train_set,
    test_set=test_set,
    class_names=tuple(class_names),
    mesh=mesh,
    steps_per_epoch=steps_per_epoch,
    local_batch=local_b,
    step_fn=step_fn,
    predict_fn=predict_fn,
    step_rng=parallel.replicate(jax.random.fold_in(rng, 1), mesh),
    ckpt=ckpt,
    logger=MetricsLog(workdir, int(state.step)) if main else None,
    train_eval_set=train_eval_set,
    eval_batch=eval_batch,
    score_every=score_every,
    model=model,
    class_weights=weights,
  )
  return run, state


def train_epoch(run: Run, state, epoch: int, stop: StopRequest, progress=None):
  """The steps of one epoch from wherever ``state`` stands: ``(state, losses, stopped_by)``.

  The loss stays on the device: reading it every step would stop the host from queueing the
  next step while this one runs. It is read back (progress bar, NaN guard) every
  ``log_every_steps`` steps and at the epoch's end; a stop is agreed there too.
  """
  config, spe, b = run.config, run.steps_per_epoch, run.local_batch
  order = epoch_order(config.seed, epoch, len(run.train_set))
  if run.pseudo is not None:
    pseudo_order = np.resize(epoch_order(config.seed + 1, epoch, len(run.pseudo)), spe * b)
  bar = range(int(state.step) % spe, spe)
  bar = progress(bar, epoch) if progress else bar
  t0, seen, pending = time.time(), [], []
  for i in bar:
    idx = order[i * b : (i + 1) * b]
    batch = batch_at(run.train_set, idx, (epoch, i))
    if run.pseudo is not None:  # as many pseudo-labeled sequences as labeled ones
      extra = batch_at(run.pseudo, pseudo_order[i * b : (i + 1) * b])
      batch = {k: np.concatenate([batch[k], extra[k]]) for k in BATCH_KEYS}
    if run.window is not None:  # the same window for every row, at random around the head
      corner = head_window.start(run.window, np.random.default_rng([config.seed, epoch, i]))
      batch = head_window.crop(batch, corner, run.window.size)
    state, out = run.step_fn(state, parallel.shard_batch(batch, run.mesh), run.step_rng)
    pending.append((epoch * spe + i + 1, idx, out["loss"]))
    due = len(pending) >= config.log_every_steps or i + 1 == spe
    if not due and not (jax.process_count() == 1 and stop.pending()):
      continue
    read = [float(loss) for loss in jax.device_get([loss for _, _, loss in pending])]
    bad = nonfinite.first_nonfinite(read)
    if bad is not None:
      raise nonfinite.nonfinite_error(run, epoch, pending[bad][0], read[bad], pending[bad][1])
    seen, pending = seen + read, []
    if hasattr(bar, "set_postfix"):
      bar.set_postfix(
        loss=f"{read[-1]:.4f}",
        seq_per_s=f"{config.batch_size * len(seen) / (time.time() - t0):.2f}",
      )
    stopped_by = stop.agreed(due)
    if stopped_by:
      return state, seen, stopped_by
  return state, seen, None


def end_epoch(run: Run, state, epoch: int, losses_seen, seconds: float):
  """Scores the epoch's model if the epoch is scored (:func:`~fcslstm_jax.train.scoring.is_scored`),
  logs its line, then
  checkpoints it (in that order: a resume drops log lines past its step, see
  :class:`fcslstm_jax.train.metrics_log.MetricsLog`). Returns the scores (train, test), or None for
  an unscored epoch
  (its line has no mPA; its checkpoint no metric, so it cannot become the best)."""
  t0 = time.time()
  scores = score(run, state) if scoring.is_scored(run, epoch) else None
  step = int(state.step)
  record = {
    "epoch": epoch + 1,
    "step": step,
    "loss": float(np.mean(losses_seen)) if losses_seen else None,
    "lr": float(lr_schedule(run.config, run.steps_per_epoch)(step - 1)),
    "train_mpa": scores[0]["mpa"] if scores else None,
    "test_mpa": scores[1]["mpa"] if scores else None,
    "epoch_seconds": seconds,
  }
  if scores:
    record["scoring_seconds"] = round(time.time() - t0, 2)
  if run.logger:
    run.logger.write(record)
  run.ckpt.save(state, {"train_mpa": scores[0]["mpa"] or 0.0} if scores else None)
  return scores


def train_and_evaluate(
  config: Config,
  train_set: SliceSet,
  test_set: SliceSet,
  workdir: str,
  class_names,
  record: RunRecord,
  progress: Callable = None,
  log: Callable = print,
  mesh=None,
  train_eval_set=None,
  pool: SliceSet | None = None,
  deadline: float | None = None,
) -> RunResult:
  """The whole run: resume if possible, train, checkpoint each epoch, evaluate.

  ``mesh``: the devices to train on (default: all, see :mod:`fcslstm_jax.train.parallel`). With
  several processes, ``train_set`` / ``test_set`` hold this process's subjects only.
  ``train_eval_set``: see :func:`prepare_run` (3D runs). ``pool``: every slice sequence,
  for self-training's last ``config.pseudo_label_epochs`` epochs
  (:mod:`fcslstm_jax.train.pseudo_labels`).
  A stop (SIGINT, SIGTERM, or ``time.monotonic()`` past ``deadline``) saves a checkpoint of
  the step reached and returns; a finished epoch is scored and logged even when the stop
  came in its last step. A budget stop also fits the prior correction at that checkpoint
  (``prior_correction fitted``), so that a run trained on a budget segments as the default
  does; training on clears it again.
  """
  t0 = time.time()
  mesh = mesh or parallel.make_mesh()
  log = log if parallel.is_main_process() else (lambda *a, **k: None)
  run, state = prepare_run(
    config,
    train_set,
    test_set,
    workdir,
    class_names,
    record,
    mesh,
    log,
    train_eval_set,
    progress=progress is not None,
  )
  run.window = training_window(config, [train_set] + ([pool] if pool is not None else []), log)
  stopped_by, scored = None, None
  if int(state.step) < config.epochs * run.steps_per_epoch:
    forget_prior_strength(workdir)  # fitted at an earlier checkpoint than the one to come
  with StopRequest(deadline) as stop:
    for epoch in range(int(state.step) // run.steps_per_epoch, config.epochs):
      if pool is not None and run.pseudo is None and self_training_from(config) <= epoch:
        run.pseudo = make_pseudo_labels(run, state, pool, workdir, log)
      t_epoch = time.time()
      state, seen, stopped_by = train_epoch(run, state, epoch, stop, progress)
      if stopped_by and int(state.step) % run.steps_per_epoch:  # mid-epoch
        run.ckpt.save(state)
      else:
        scored = end_epoch(run, state, epoch, seen, time.time() - t_epoch)
      if stopped_by:
        log(
          f"{stopped_by}: saved a checkpoint at step {int(state.step)}. Rerun the same "
          "command to resume."
        )
        break
  close(run)
  if stopped_by == BUDGET:  # asked for: evaluate.py segments it as it would a finished run
    finish_prior_correction(run, state, workdir, log)
  if stopped_by:
    return RunResult(state, None, None, time.time() - t0, stopped_by)
  # The last epoch's scores are the final state's (the same parameters, scored once); a
  # finished run rerun has nothing left to train and scores its final state here.
  scored = scored or score(run, state)
  finish_prior_correction(run, state, workdir, log)
  return RunResult(state, *scored, time.time() - t0, stopped_by)


def self_training_from(config: Config) -> int:
  """The first epoch of self-training (its last ``pseudo_label_epochs``)."""
  return config.epochs - config.pseudo_label_epochs


def make_pseudo_labels(run: Run, state, pool: SliceSet, workdir: str, log) -> SliceSet:
  """The pool's pseudo-labels from the current model, or those saved by the run this one
  resumes (:func:`fcslstm_jax.train.pseudo_labels.make_or_load`)."""
  return pseudo_labels.make_or_load(
    workdir,
    pool,
    make_predict_fn(run.model, proba=True),
    parallel.local_replica(state.params, run.mesh),
    run.config,
    run.eval_batch,
    log,
  )


def score(run: Run, state) -> tuple:
  """``(train, test)`` scores of ``state`` on the run's two scoring sets."""
  return scoring.evaluate_splits(
    run.predict_fn,
    parallel.local_replica(state.params, run.mesh),
    [run.train_eval_set, run.test_set],
    run.class_names,
    run.eval_batch,
  )


def close(run: Run) -> None:
  run.ckpt.close()
  if run.logger:
    run.logger.close()


def finish_prior_correction(run: Run, state, workdir: str, log) -> None:
  """``prior_correction fitted``: fits and records the strength (2D runs; 3D runs segment
  uncorrected and say so)."""
  if run.config.prior_correction != "fitted":
    return
  if run.config.spatial_dims == 2:
    fit_prior_correction(run, state, workdir, log)
  else:
    log("prior_correction fitted: the fit is for 2D runs; this 3D run segments uncorrected.")


def forget_prior_strength(workdir: str) -> None:
  """Clears run.json's ``prior_strength`` before training goes on: it was fitted at the
  checkpoint a time budget stopped at, and a run killed before it fits again must not pass
  that strength off as its newer checkpoint's (evaluate.py then segments uncorrected and says
  why)."""
  if not parallel.is_main_process():
    return
  recorded = run_record.read(workdir)
  if recorded.prior_strength is not None:
    run_record.write(workdir, dataclasses.replace(recorded, prior_strength=None))


def fit_prior_correction(run: Run, state, workdir: str, log) -> float:
  """Chooses how strongly evaluation divides the class weights out (``fitted``,
  :mod:`fcslstm_jax.infer.prior`): the strength whose segmentation of the labeled training
  voxels has the best mean tissue Dice, over every process's voxels; recorded in run.json
  (``prior_strength``). The train.py table scores the network's own argmax (the paper's
  way); evaluate.py segments with this strength."""
  data = run.train_eval_set
  probs = predict_all(
    make_predict_fn(run.model, proba=True),
    parallel.local_replica(state.params, run.mesh),
    data,
    run.eval_batch,
  )
  cms = parallel.sum_over_processes(
    prior.confusions(probs, data.labels, data.label_mask, run.class_weights)
  )
  strength, dice = prior.best_strength(cms)
  log(
    f"prior correction fitted on the labeled training voxels: strength {strength:g} (mean "
    f"tissue Dice {', '.join(f'{d:.3f}' for d in dice)} at strengths "
    f"{', '.join(f'{s:g}' for s in prior.STRENGTHS)})"
  )
  if parallel.is_main_process():
    recorded = run_record.read(workdir)
    run_record.write(workdir, dataclasses.replace(recorded, prior_strength=strength))
  return strength
