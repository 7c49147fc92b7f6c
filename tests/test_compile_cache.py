"""compile_cache and evaluation's shape buckets and shared batches: a second evaluate.py
compiles nothing, and bucketed slices, and subjects batched together, give the same
probabilities."""

import json
import os
import subprocess
import sys

import numpy as np

from fcslstm_jax import compile_cache
from fcslstm_jax.infer import ensemble
from fcslstm_jax.infer import pipeline
from fcslstm_jax.infer import predict
from fcslstm_jax.infer import tta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def evaluate_once(run, out, cache) -> dict:
  env = dict(os.environ, FCSLSTM_COMPILE_CACHE=str(cache))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the test session's own (conftest)
  subprocess.run(
    [sys.executable, "evaluate.py", "--workdir", str(run), "--out", str(out), "--no-report"],
    cwd=REPO,
    env=env,
    check=True,
    capture_output=True,
  )
  return json.loads((out / "metrics.json").read_text())["compilations"]


def test_a_second_evaluation_compiles_nothing_new(study_run, tmp_path):
  first = evaluate_once(study_run, tmp_path / "a", tmp_path / "cache")
  second = evaluate_once(study_run, tmp_path / "b", tmp_path / "cache")
  assert first["compiled"] > 0 and first["seconds"] > 0
  assert second["compiled"] == 0
  assert second["from_cache"] == first["compiled"] + first["from_cache"]


def test_cache_folder_precedence(monkeypatch, tmp_path):
  monkeypatch.setenv("FCSLSTM_COMPILE_CACHE", str(tmp_path / "env"))
  assert compile_cache.resolve(None) == str(tmp_path / "env")
  assert compile_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")
  assert compile_cache.resolve("off") is None
  monkeypatch.delenv("FCSLSTM_COMPILE_CACHE")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  before = compile_cache.jax.config.jax_compilation_cache_dir
  try:
    compile_cache.jax.config.update("jax_compilation_cache_dir", None)
    assert compile_cache.resolve(None) == str(tmp_path / "xdg" / "fcslstm-jax" / "xla")
    compile_cache.jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
    assert compile_cache.resolve(None) == str(tmp_path / "jax")  # JAX's own setting
  finally:
    compile_cache.jax.config.update("jax_compilation_cache_dir", before)


def test_bucketed_slices_give_the_same_probabilities(study_run, study_dir):
  runs = pipeline.read_runs([str(study_run)])
  study, proto = pipeline.load_for_evaluation(runs[0][1])
  members = pipeline.load_members(runs, proto)
  fns = ensemble.predict_fns(members, tta.flip_variants((), 2))
  shapes, buckets = set(), set()
  for subject in study.subjects:
    if subject.grid is None:
      continue
    seq, exact = pipeline.segment_subject(fns, [members[0].params], subject, proto, 4)
    _, padded = pipeline.segment_subject(fns, [members[0].params], subject, proto, 4, bucket=True)
    np.testing.assert_allclose(padded, exact, atol=1e-6)
    np.testing.assert_array_equal(padded.argmax(-1), exact.argmax(-1))
    shapes.add(seq.images.shape[2:4])
    buckets.add(pipeline.bucketed(seq).images.shape[2:4])
  assert all(h % 32 == 0 and w % 32 == 0 for h, w in buckets)
  assert len(buckets) <= len(shapes)


def test_parts_share_batches_and_get_what_each_gets_alone():
  rng = np.random.default_rng(0)
  sizes, shapes = (5, 3, 9, 1, 4, 2), ((2, 3), (2, 3), (2, 3), (4, 3), (4, 3), (2, 3))
  parts = [
    (i, rng.normal(size=(n,) + s), rng.random((n, 2)) > 0.5)
    for i, (n, s) in enumerate(zip(sizes, shapes))
  ]
  calls = []

  def run_batch(x, v):
    calls.append(x.shape)
    return x.sum(axis=(-1, -2))[:, None] * v  # each sequence's output is its own

  got = list(predict.predict_stream(run_batch, iter(parts), batch_size=4))
  assert [key for key, _ in got] == list(range(len(parts)))
  for (_, out), (_, x, v) in zip(got, parts):
    np.testing.assert_array_equal(out, x.sum(axis=(-1, -2))[:, None] * v)
  # Runs of one shape (17, then 5, then 2 sequences) fill their batches: 5 + 2 + 1 batches,
  # not one part-filled batch per part (3 + 1 + 3 + 1 + 1 + 1 = 10); every batch is full.
  assert len(calls) == 8 and all(shape[0] == 4 for shape in calls)


def test_a_study_streamed_in_shared_batches_equals_one_subject_at_a_time(study_run):
  runs = pipeline.read_runs([str(study_run)])
  study, proto = pipeline.load_for_evaluation(runs[0][1])
  members = pipeline.load_members(runs, proto)
  fns = ensemble.predict_fns(members, tta.flip_variants((), 2))
  params = [members[0].params]
  streamed = list(pipeline.segment_study(study, members, (), batch_size=3, log=lambda line: None))
  subjects = [s for s in study.subjects if s.grid is not None]
  assert [s.subject_id for s, *_ in streamed] == [s.subject_id for s in subjects]
  assert any(len(seq) % 3 for _, seq, _, _ in streamed)  # alone, a part-filled batch
  for (subject, seq, probs, _), alone in zip(streamed, subjects):
    _, expected = pipeline.segment_subject(fns, params, alone, proto, 3, bucket=True)
    assert probs.shape == expected.shape == seq.images.shape[:4] + (proto.num_classes,)
    np.testing.assert_array_equal(probs, expected)
