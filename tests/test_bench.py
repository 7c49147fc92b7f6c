"""Smoke tests of the benchmark scripts at tiny size, and the PyTorch reference's equivalence.

No timing is asserted. The PyTorch parts need ``bench/requirements.txt``; without torch they
are skipped, and the scripts are still run for their JAX rows.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import common  # noqa: E402 (bench/ is put on sys.path first)
import flops  # noqa: E402 (bench/ is put on sys.path first)
import gpu_bench  # noqa: E402 (bench/ is put on sys.path first)
import inference  # noqa: E402 (bench/ is put on sys.path first)
import memory  # noqa: E402 (bench/ is put on sys.path first)
import memory3d  # noqa: E402 (bench/ is put on sys.path first)
import memory_breakdown  # noqa: E402 (bench/ is put on sys.path first)
import train_step  # noqa: E402 (bench/ is put on sys.path first)

from fcslstm_jax.model import networks  # noqa: E402 (bench/ is put on sys.path first)

TINY = ((4, 1), (4, 1), (6, 1), (6, 1), (8, 1))
HAVE_TORCH = train_step.have_torch()
needs_torch = pytest.mark.skipif(
  not HAVE_TORCH,
  reason="torch not installed: it is a bench-only "
  "dependency (pip install -r bench/requirements.txt)",
)


def test_train_step_script(tmp_path):
  out = tmp_path / "train_step.json"
  res = train_step.main(
    [
      "--tiny",
      "--size",
      "32",
      "--batch",
      "1",
      "--time-steps",
      "2",
      "--steps",
      "2",
      "--warmup",
      "0",
      "--no-compile",
      "--jax",
      "bi",
      "--out",
      str(out),
    ]
  )
  saved = json.loads(out.read_text())
  labels = [r["config"] for r in saved["rows"]]
  assert labels[0] == saved["reference"] == "JAX Bi-FCSLSTM"
  assert all(np.isfinite(r["median_s"]) for r in saved["rows"])
  if HAVE_TORCH:
    assert (
      "PyTorch eager Bi-FCSLSTM" in labels and "jax_bi / PyTorch eager Bi-FCSLSTM" in res["ratios"]
    )
  assert "| JAX Bi-FCSLSTM |" in train_step.table(res)


def test_memory_script(tmp_path):
  out = tmp_path / "memory.json"
  res = memory.main(
    [
      "--tiny",
      "--size",
      "32",
      "--time-steps",
      "2",
      "--batches",
      "1",
      "2",
      "--torch-batches",
      "1",
      "--remat",
      "full",
      "--lean-microbatches",
      "1",
      "--out",
      str(out),
    ]
  )
  saved = json.loads(out.read_text())
  assert len(saved["jax"]) == 2 and all(r["temp_bytes"] > 0 for r in saved["jax"])
  assert saved["jax"][1]["temp_bytes"] > saved["jax"][0]["temp_bytes"]  # batch 2 > batch 1
  assert saved["largest_batch_in_12GiB"]["JAX remat=full"] > 2
  assert len(saved["torch"]) == (1 if HAVE_TORCH else 0)
  assert "| JAX remat=full |" in memory.table(res)


def test_memory3d_script(tmp_path):
  out = tmp_path / "memory3d.json"
  res = memory3d.main(
    [
      "--tiny",
      "--patch",
      "8",
      "8",
      "8",
      "--time-steps",
      "2",
      "--large",
      "--remat",
      "none",
      "--unroll",
      "2",
      "--batching",
      "loop",
      "--time",
      "1",
      "--out",
      str(out),
    ]
  )
  saved = json.loads(out.read_text())
  assert [r["time_steps"] for r in saved["rows"]] == [2]
  assert all(r["temp_bytes"] > 0 and r["patch"] == [8, 8, 8] for r in saved["rows"])
  assert "| 8x8x8 | 2 | none (unroll=2) |" in memory3d.table(res)
  assert [len(r["step_s"]) for r in saved["rows"]] == [1] and saved["rows"][0]["step_s"][0] > 0
  assert "| 8x8x8 | 2 | none | loop |" in memory3d.table(res)


def test_largest_batch_fit():
  assert memory.largest_batch([(1, 3 * memory.GIB), (2, 5 * memory.GIB)]) == 5  # 1 + 2b <= 12


SCHEDULED_HLO = """HloModule m, is_scheduled=true

ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %a = f32[256]{0} broadcast(%p), dimensions={}
  %b = f32[256]{0} add(%a, %a)
  %c = f32[256]{0} bitcast(%b)
  %d = f32[4]{0} slice(%c), slice={[0:4]}
  ROOT %e = f32[4]{0} add(%d, %p)
}
"""


def test_live_at_peak_follows_the_schedule():
  """a and b (1 KiB each) overlap at b; a dies there; c is b's buffer; the parameter is free."""
  instrs = memory_breakdown.entry_instructions(SCHEDULED_HLO)
  assert [i[0] for i in instrs] == ["p", "a", "b", "c", "d", "e"]
  peak, index, alive = memory_breakdown.live_at_peak(instrs)
  assert (peak, index, alive) == (2048, 2, {"a": 1024, "b": 1024})
  assert memory_breakdown.shape_bytes("(f32[2,3]{1,0}, s32[4]{0})") == 40
  with pytest.raises(ValueError, match="c64"):
    memory_breakdown.shape_bytes("c64[2]{0}")  # an unknown type is an error, not 0 bytes
  with pytest.raises(ValueError, match="ENTRY"):
    memory_breakdown.entry_instructions("HloModule m\n")


def test_memory_breakdown_script(tmp_path):
  out = tmp_path / "memory_breakdown.json"
  res = memory_breakdown.main(
    ["--tiny", "--size", "32", "--batch", "1", "--time-steps", "2", "--out", str(out)]
  )
  saved = json.loads(out.read_text())
  assert sum(saved["alive_at_peak_bytes"].values()) == saved["simulated_peak_bytes"] > 0
  assert 0.5 < saved["simulated_peak_bytes"] / saved["xla_temp_bytes"] < 2
  assert "LSTM time steps (gates, cell, Ψh)" in saved["alive_at_peak_bytes"]
  assert "| alive at the peak |" in memory_breakdown.table(res)


def test_profile_script(tmp_path):
  """In its own process: the script must set XLA's trace flag before JAX starts."""
  out = tmp_path / "op_profile.json"
  subprocess.run(
    [
      sys.executable,
      os.path.join(BENCH, "op_profile.py"),
      "--tiny",
      "--size",
      "32",
      "--batch",
      "1",
      "--time-steps",
      "2",
      "--steps",
      "1",
      "--out",
      str(out),
    ],
    check=True,
    capture_output=True,
    text=True,
  )
  saved = json.loads(out.read_text())
  shares = saved["kind_share_of_busy"]
  assert abs(sum(shares.values()) - 1) < 1e-6
  assert shares["convolution, weight gradient"] > 0 and shares["convolution, other"] > 0
  assert saved["thread_busy_fraction"] and saved["traced_step_s"] > 0


def test_flops_script(tmp_path):
  out = tmp_path / "flops.json"
  res = flops.main(
    [
      "--tiny",
      "--size",
      "32",
      "--batch",
      "1",
      "--time-steps",
      "2",
      "--steps",
      "1",
      "--out",
      str(out),
    ]
  )
  saved = json.loads(out.read_text())
  assert saved["step_flops"] > 0 and saved["matmul_peak_gflops"]["jnp.dot"] > 0
  assert 0 < saved["rows"][0]["fraction_of_jnp_dot_peak"]
  assert "fraction of jnp.dot peak" in flops.table(res)


def test_rmsprop_matches_torch_semantics():
  """eps outside the square root, v starting at 0, as torch.optim.RMSprop."""
  import jax.numpy as jnp

  tx = common.rmsprop()
  p, g = jnp.ones(3), jnp.array([1e-3, 0.5, -2.0])
  upd, _ = tx.update(g, tx.init(p), p)
  v = (1 - common.RMSPROP_DECAY) * g**2
  np.testing.assert_allclose(
    upd, -common.LEARNING_RATE * g / (jnp.sqrt(v) + common.RMSPROP_EPS), rtol=1e-6
  )


@needs_torch
@pytest.mark.parametrize("bidirectional", [True])
def test_torch_reference_is_the_same_model(bidirectional):
  """Same parameter count, same logits, same loss and same first update as the JAX model.
  (Bi-FCSLSTM only: its forward direction is the unidirectional layer.)"""
  import torch
  import torch_reference

  model = networks.FCSLSTM(common.NUM_CLASSES, bidirectional=bidirectional, stages=TINY)
  params = networks.init_params(model, common.IN_CHANNELS)
  tmodel = torch_reference.load_flax_params(
    torch_reference.FCSLSTM(common.NUM_CLASSES, common.IN_CHANNELS, bidirectional, TINY), params
  )
  assert torch_reference.count_params(tmodel) == networks.count_params(params)
  x, labels, mask, cw = common.make_batch(1, 3, 32)
  step, tx = common.jax_train_step(model)
  want_logits = model.apply({"params": params}, x)
  new_params, _, loss = step(params, tx.init(params), x, labels, mask, cw)

  def tx_(a):
    return torch.from_numpy(np.array(a))

  logits = tmodel(tx_(x))
  np.testing.assert_allclose(logits.detach().numpy(), want_logits, rtol=1e-4, atol=1e-5)
  tloss = torch_reference.weighted_cross_entropy(logits, tx_(labels).long(), tx_(mask), tx_(cw))
  np.testing.assert_allclose(tloss.item(), float(loss), rtol=1e-5)
  opt = torch_reference.rmsprop(tmodel.parameters())
  tloss.backward()
  opt.step()
  want = np.asarray(new_params["backend"]["fuse1"]["kernel"])[0, 0].T
  np.testing.assert_allclose(
    tmodel.backend.fuses[0].weight.detach().numpy()[:, :, 0, 0], want, rtol=1e-4, atol=1e-6
  )


def test_jaxpr_flops_counts_convolutions_and_products():
  """2 x multiply-adds: a 3x3 conv (padding taps included), a grouped conv, a matmul in a scan."""
  import jax
  import jax.numpy as jnp

  x = jnp.ones((2, 8, 8, 3))

  def conv(k, groups=1):
    return jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
    )

  assert gpu_bench.jaxpr_flops(jax.make_jaxpr(conv)(jnp.ones((3, 3, 3, 5)))) == (
    2 * 2 * 8 * 8 * 5 * 3 * 3 * 3
  )
  assert gpu_bench.jaxpr_flops(jax.make_jaxpr(lambda k: conv(k, 3))(jnp.ones((3, 3, 1, 6)))) == (
    2 * 2 * 8 * 8 * 6 * 3 * 3 * 1
  )

  def scan(a):
    return jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=4)[0]

  assert gpu_bench.jaxpr_flops(jax.make_jaxpr(jax.jit(scan))(jnp.ones((5, 5)))) == 4 * 2 * 5**3


def test_gpu_bench_rows_are_time_boxed(tmp_path):
  import argparse
  import time

  args = argparse.Namespace(
    batch=1,
    time_steps=2,
    size=32,
    steps=1,
    warmup=0,
    tiny=True,
    torch_compile_backend="eager",
    cache_dir=str(tmp_path),
  )
  slow = gpu_bench.Row("versions", "versions", 0.05)
  res = gpu_bench.run_row(slow, args, time.monotonic() + 60)
  assert res["status"].startswith("timeout") and res["records"] == []
  res = gpu_bench.run_row(slow, args, time.monotonic())  # no budget left: not started
  assert res["status"] == "skipped" and res["reason"] == "budget spent"


def test_gpu_bench_script_tiny(tmp_path, capsys):
  """The whole plan at a tiny size on CPU: both phases, JAX and PyTorch eager, one remat
  policy (torch.compile's row is the same code path with --compile; tracing it here would
  double this test's time)."""
  res = gpu_bench.main(
    [
      "--tiny",
      "--size",
      "32",
      "--batch",
      "1",
      "--time-steps",
      "2",
      "--steps",
      "1",
      "--warmup",
      "0",
      "--models",
      "bi",
      "--dtypes",
      "float32",
      "--remats",
      "lean",
      "--frameworks",
      "jax",
      "torch-eager",
      "--lanes",
      "3",
      "--budget-s",
      "400",
      "--out",
      str(tmp_path),
    ]
  )
  printed = capsys.readouterr().out
  saved = json.loads((tmp_path / "gpu_bench.json").read_text())
  summary = saved["summary"]
  assert summary["versions"]["jax"] and saved["shape_BTHWC"] == [1, 2, 32, 32, 2]
  assert [m["remat"] for m in summary["memory"]] == ["lean"]
  assert all(m["temp_bytes"] > 0 for m in summary["memory"])
  (cost,) = summary["cost"]
  assert cost["jaxpr_flops"] > 0 and cost["bytes_accessed"] > 0
  steps = {r["framework"]: r for r in summary["steps"]}
  assert set(steps) == {"JAX", "PyTorch eager"}
  assert steps["JAX"]["status"] == "ok" and steps["JAX"]["median_s"] > 0
  for name in ("PyTorch eager",):
    if HAVE_TORCH:
      assert steps[name]["status"] == "ok" and steps[name]["median_s"] > 0
    else:  # skipped, and the reason is printed
      assert steps[name]["status"] == "skipped"
      assert "torch not importable" in printed
  assert all(r["status"] == "ok" for r in saved["phase1"]), saved["phase1"]
  assert "| JAX Bi-FCSLSTM float32 | ok |" in printed
  assert res["summary"] == summary


def test_inference_work_counts_the_batches_evaluate_runs(study_run, monkeypatch):
  """bench/inference.py's FLOP floor counts the batches that evaluation's forward passes
  really run (subjects of one bucketed shape share batches)."""
  from fcslstm_jax.infer import ensemble
  from fcslstm_jax.infer import pipeline

  work = inference.forward_work(str(study_run), None, batch_size=3)
  runs = pipeline.read_runs([str(study_run)])
  study, proto = pipeline.load_for_evaluation(runs[0][1])
  members = pipeline.load_members(runs, proto)
  calls, members_mean = [], ensemble.members_mean

  def counted(*args, **kwargs):
    mean = members_mean(*args, **kwargs)
    return lambda x, v: calls.append(len(x)) or mean(x, v)

  monkeypatch.setattr(ensemble, "members_mean", counted)
  list(pipeline.segment_study(study, members, (), 3, log=lambda line: None))
  assert work["batches"] == len(calls) and set(calls) == {3}
  assert work["gflop"] > 0 and work["seconds_at_peak"] >= 0 and work["matmul_peak_gflops"] > 0
