"""The prior correction (fcslstm_jax/infer/prior.py): the weighted loss's optimum is the
weighted posterior, the correction undoes it, and training records the weights that
evaluation divides out."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fcslstm_jax import run_record
from fcslstm_jax.infer import ensemble
from fcslstm_jax.infer import pipeline
from fcslstm_jax.infer import prior
from fcslstm_jax.infer import tta
from fcslstm_jax.train import losses


def test_weighted_loss_optimum_is_the_weighted_posterior_and_the_correction_undoes_it():
  # Many voxels that look the same (one logit vector) with labels in the proportions p: the
  # paper's inverse-frequency weighted cross-entropy, minimized, gives q ∝ w p, not p.
  p = np.array([0.70, 0.05, 0.15, 0.10])
  labels = np.repeat(np.arange(4), (p * 1000).astype(int))
  mask = np.ones(labels.shape, np.float32)
  w = losses.class_weights(labels, mask, 4, "inverse")
  assert w[1] > w[3] > w[2] > w[0]  # the rarest class weighs most

  def loss(logit):
    logits = jnp.broadcast_to(logit, (labels.size, 4))
    return losses.weighted_cross_entropy(logits, jnp.asarray(labels), jnp.asarray(mask), w)

  logit, opt = jnp.zeros(4), optax.adam(0.1)
  state = opt.init(logit)
  for _ in range(400):
    updates, state = opt.update(jax.grad(loss)(logit), state)
    logit = optax.apply_updates(logit, updates)
  q = np.asarray(jax.nn.softmax(logit))
  np.testing.assert_allclose(q, w * p / (w * p).sum(), atol=2e-3)
  assert q.argmax() != p.argmax()  # inverse weights: every class equally likely, here
  np.testing.assert_allclose(prior.corrected(q, prior.scale(w)), p, atol=2e-3)
  shifted = jax.nn.softmax(logit - prior.log_shift(w))
  np.testing.assert_allclose(np.asarray(shifted), p, atol=2e-3)


def test_a_class_of_weight_zero_is_left_alone():
  w = np.array([0.5, 0.0, 2.0], np.float32)
  assert prior.log_shift(w)[1] == 0.0
  probs = np.array([[0.2, 0.3, 0.5]], np.float32)
  out = prior.corrected(probs, prior.scale(w))
  np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
  assert prior.corrected(probs, None) is probs


def test_the_fit_chooses_the_correction_only_where_it_segments_better():
  rng = np.random.default_rng(0)
  w = np.array([0.2, 4.0, 1.0, 1.5], np.float32)
  labels = rng.choice(4, size=4000, p=[0.6, 0.1, 0.15, 0.15])
  mask = np.ones(labels.shape)
  truth = np.eye(4)[labels] * 0.6 + 0.1  # a calibrated-looking posterior, argmax right
  tilted = truth * w / (truth * w).sum(-1, keepdims=True)  # what the weighted loss learns
  # the weights pull doubtful voxels to the rare class: make some doubtful
  doubtful = rng.random(4000) < 0.3
  tilted[doubtful] = prior.corrected(
    np.full((doubtful.sum(), 4), 0.25) + 0.05 * np.eye(4)[labels[doubtful]], 1 / w
  )
  strength, dice = prior.best_strength(prior.confusions(tilted, labels, mask, w))
  assert strength > 0 and dice[prior.STRENGTHS.index(strength)] > dice[0]
  strength, dice = prior.best_strength(prior.confusions(truth, labels, mask, w))
  assert strength == 0.0  # a network that learned the posterior needs no correction
  half = prior.scale(w, 0.5)
  np.testing.assert_allclose(half, prior.scale(w) ** 0.5 / (prior.scale(w) ** 0.5).sum(), rtol=1e-5)


def test_training_records_the_weights_and_the_fit_and_evaluation_divides_them_out(study_run):
  runs = pipeline.read_runs([str(study_run)])
  record = runs[0][1]
  assert record.config.prior_correction == "fitted"  # the tiny preset, as quick
  w = np.asarray(record.class_weights)
  assert w.shape == (4,) and w.min() > 0 and w.max() > 2 * w.min()
  assert record.prior_strength in prior.STRENGTHS
  full = dataclasses.replace(record, config=record.config.replace(prior_correction="full"))
  study, proto = pipeline.load_for_evaluation(full)
  corrected = pipeline.load_members([(runs[0][0], full)], proto)
  plain = pipeline.load_members([(runs[0][0], full)], proto, prior_correction=False)
  np.testing.assert_allclose(corrected[0].prior_scale, prior.scale(w))
  assert plain[0].prior_scale is None
  fns = ensemble.predict_fns(corrected, tta.flip_variants((), 2))
  subject = next(s for s in study.subjects if s.grid is not None)
  params = [corrected[0].params]
  _, raw = pipeline.segment_subject(fns, params, subject, proto, 4)
  _, fixed = pipeline.segment_subject(fns, params, subject, proto, 4, scales=[prior.scale(w)])
  np.testing.assert_allclose(fixed, prior.corrected(raw, prior.scale(w)), atol=1e-6)
  assert np.abs(fixed - raw).max() > 1e-3


def test_an_older_record_without_weights_loads_and_is_segmented_as_predicted(study_run):
  ((workdir, record),) = pipeline.read_runs([str(study_run)])
  old = record.to_json()
  del old["class_weights"]
  old["config"]["prior_correction"] = True  # as recorded for a day, before "fitted"
  old_record = run_record.RunRecord.from_json(old)
  assert old_record.class_weights is None and old_record.config.prior_correction == "full"
  lines = []
  study, proto = pipeline.load_for_evaluation(old_record)
  (member,) = pipeline.load_members([(workdir, old_record)], proto, log=lines.append)
  assert member.prior_scale is None
  assert len(lines) == 1 and "run.json" in lines[0] and "class weights" in lines[0]
  paper = dataclasses.replace(old_record, config=old_record.config.replace(prior_correction="none"))
  lines.clear()
  pipeline.load_members([(workdir, paper)], proto, log=lines.append)
  assert not lines  # the paper's recipe asks for no correction: nothing to say
