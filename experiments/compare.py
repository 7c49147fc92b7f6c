"""FCN vs FCSLSTM vs Bi-FCSLSTM on one protocol, several seeds (paper Sec. 3, Fig. 4).

    python experiments/compare.py --dataset bric --seeds 3       # default budget
    python experiments/compare.py --dataset ibis --seeds 3
    python experiments/compare.py --quick                        # smoke test

Every model gets the same data, protocol, config (``--config``, default ``quick``: the default
command's recipe, fcslstm_jax/config.py) and seeds. Each run is an ordinary resumable train
run under ``--workdir/<protocol>/<model>-seed<k>``, so an interrupted comparison continues
where it stopped.
Writes ``<out>/compare-<protocol>.json`` and ``.md`` (train / test mPA mean ± sample std over seeds,
Dice per class, temporal consistency, parameters, wall time, beside the paper's numbers),
``compare-<protocol>.png`` (test mPA per model and seed) and ``compare-<protocol>-fig4.png``
(one subject, all three models side by side).

Paper, Table 2 (BRIC, mPA): FCN 92.0 / 85.0, FCSLSTM 93.5 / 85.3, Bi-FCSLSTM 94.8 / 86.3
(train / test %). The paper gives no numbers for IBIS (no ground truth).
"""

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fcslstm_jax import datasets
from fcslstm_jax import files
from fcslstm_jax import metrics
from fcslstm_jax.config import get_config
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.infer import predict
from fcslstm_jax.model import networks
from fcslstm_jax.model.networks import MODELS
from fcslstm_jax.model.networks import count_params
from fcslstm_jax.outputs import figures
from fcslstm_jax.run_record import RunRecord
from fcslstm_jax.synthetic import bric_like
from fcslstm_jax.train import loop

PAPER = {"bric": {"fcn": (0.920, 0.850), "fcslstm": (0.935, 0.853), "bi-fcslstm": (0.948, 0.863)}}
QUICK_DATA = bric_like.TINY


def labeled_sequences(subjects, protocol):
  """The training slices with the labels of every time point (for temporal consistency)."""
  train = sequences.make_sequences(subjects, protocol, "train")
  full = sequences.make_sequences(subjects, protocol, "all")
  chosen = set(zip(train.subject_ids, train.slice_index.tolist()))
  keep = np.array([(sid, int(z)) in chosen for sid, z in zip(full.subject_ids, full.slice_index)])

  def take(v):  # per-sequence fields; the others (None, the context) as they are
    if isinstance(v, np.ndarray):
      return v[keep]
    return tuple(np.asarray(v)[keep]) if isinstance(v, tuple) else v

  return sequences.SliceSet(**{f: take(v) for f, v in vars(full).items()})


def run_one(model, seed, config, subjects, protocol, runs_dir, log):
  config = config.replace(model=model, seed=seed)
  train_set = sequences.make_sequences(subjects, protocol, "train")
  test_set = sequences.make_sequences(subjects, protocol, "test")
  workdir = os.path.join(runs_dir, protocol.name, f"{model}-seed{seed}")
  record = RunRecord(config=config, dataset="compare", protocol=protocol)
  t0 = time.time()
  result = loop.train_and_evaluate(
    config, train_set, test_set, workdir, protocol.class_names, record, log=log
  )
  seconds = time.time() - t0
  seq = labeled_sequences(subjects, protocol)
  net = networks.build_model(config, protocol.num_classes)
  predict_fn = predict.make_predict_fn(net)
  pred = predict.predict_all(predict_fn, result.state.params, seq, config.batch_size)
  mask = seq.label_mask * seq.valid[:, :, None, None]
  consistency = metrics.temporal_consistency(pred, mask)
  return {
    "model": model,
    "seed": seed,
    "train": result.train,
    "test": result.test,
    "temporal_consistency": [float(v) for v in consistency],
    "parameters": count_params(result.state.params),
    "seconds": seconds,
    "steps": int(result.state.step),
  }, (seq, pred)


def mean_std(values):
  """``(mean, sample standard deviation)`` (ddof=1: the seeds are a sample of all seeds);
  the deviation is None for a single value (one seed measures no spread), both None for
  none."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not v.size:
    return None, None
  return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def aggregate(runs, class_names, truth_consistency):
  table = {}
  for model in MODELS:
    rs = [r for r in runs if r["model"] == model]
    if not rs:
      continue
    table[model] = {
      "train_mpa": mean_std([r["train"]["mpa"] for r in rs]),
      "test_mpa": mean_std([r["test"]["mpa"] for r in rs]),
      "test_dice": {c: mean_std([r["test"]["dice"][c] for r in rs]) for c in class_names},
      "temporal_consistency": mean_std([np.mean(r["temporal_consistency"]) for r in rs]),
      "parameters": rs[0]["parameters"],
      "seconds": mean_std([r["seconds"] for r in rs]),
      "seeds": [r["seed"] for r in rs],
    }
  return {"models": table, "ground_truth_temporal_consistency": truth_consistency}


def markdown(summary, protocol_name, class_names, header):
  def pct(ms):
    return (
      "n/a"
      if ms[0] is None
      else f"{100 * ms[0]:.1f}" + ("" if ms[1] is None else f" ± {100 * ms[1]:.1f}")
    )

  paper = PAPER.get(protocol_name, {})
  columns = (
    ["model", "train mPA %", "test mPA %", "paper train / test %"]
    + [f"test Dice {c} %" for c in class_names[1:]]
    + ["temporal consistency %", "parameters", "minutes per run"]
  )
  lines = [header, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
  for model, row in summary["models"].items():
    p = paper.get(model)
    lines.append(
      f"| {model} | {pct(row['train_mpa'])} | {pct(row['test_mpa'])} | "
      + (f"{100 * p[0]:.1f} / {100 * p[1]:.1f}" if p else "n/a")
      + " | "
      + " | ".join(pct(row["test_dice"][c]) for c in class_names[1:])
      + f" | {pct(row['temporal_consistency'])} | {row['parameters']:,} | "
      + f"{row['seconds'][0] / 60:.1f} |"
    )
  gt = summary["ground_truth_temporal_consistency"]
  lines += [
    "",
    f"Temporal consistency of the ground truth on the same voxels: {100 * gt:.1f} %"
    " (scans are not registered over time, so it is below 100 %).",
  ]
  return "\n".join(lines)


def plot(path, runs, protocol_name):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  models = [m for m in MODELS if any(r["model"] == m for r in runs)]
  for i, m in enumerate(models):
    v = [100 * r["test"]["mpa"] for r in runs if r["model"] == m]
    ax.scatter([i] * len(v), v, color="k", s=14, zorder=3)
    ax.bar(i, np.mean(v), color="#7aa6d6", width=0.6)
    if protocol_name in PAPER:
      ax.plot([i - 0.3, i + 0.3], [100 * PAPER[protocol_name][m][1]] * 2, "r--", lw=1)
  ax.set_xticks(range(len(models)), models)
  ax.set_ylabel("test mPA (%)")
  lo = min(100 * r["test"]["mpa"] for r in runs)
  ax.set_ylim(max(0, lo - 10), 100)
  ax.set_title(
    f"{protocol_name}: held-out time point" + (" (red: paper)" if protocol_name in PAPER else ""),
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def fig4(path, predictions, protocol):
  """Rows = time points; T1w, T2w, ground truth, then each model's prediction (subject 1)."""
  (seq, _), rows = next(iter(predictions.values())), range(protocol.num_timepoints)
  cols = [
    (m, "image", [seq.images[0, t, ..., k] if seq.valid[0, t] else None for t in rows])
    for k, m in enumerate(protocol.modalities)
  ]
  cols.append(
    (
      "ground truth",
      "labels",
      [seq.labels[0, t] if seq.label_mask[0, t].any() else None for t in rows],
    )
  )
  for model, (_, pred) in predictions.items():
    cols.append((model, "labels", [pred[0, t] if seq.valid[0, t] else None for t in rows]))
  labels = [
    (f"{protocol.ages[t]:g} mo" if protocol.ages else f"t{t + 1}")
    + (" (test)" if t in protocol.test_timepoints else "")
    for t in rows
  ]
  figures.montage(
    path,
    cols,
    labels,
    protocol.num_classes,
    title=f"sub-{seq.subject_ids[0]}, axial slice z={int(seq.slice_index[0])}",
  )


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--dataset",
    default="bric",
    choices=datasets.BUILTIN,
    help="built-in protocol: bric (test 6 mo of 0-12) or ibis (3 sessions)",
  )
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--config", default="quick")
  p.add_argument("--epochs", type=int)
  p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
  p.add_argument("--out", default="results")
  p.add_argument(
    "--workdir",
    default=os.path.join("runs", "compare"),
    help="folder of the runs (one train.py work directory per model and seed)",
  )
  p.add_argument(
    "--quick",
    action="store_true",
    help="smoke test: tiny data (2 subjects, 32x32), tiny model, 1 epoch, 1 seed",
  )
  args = p.parse_args(argv)
  config = get_config(
    "tiny" if args.quick else args.config,
    epochs=1 if args.quick and args.epochs is None else args.epochs,
  )
  seeds = 1 if args.quick else args.seeds
  root, protocol = datasets.resolve(args.dataset, generation=QUICK_DATA if args.quick else None)
  subjects = study.load_dataset(root, protocol)
  os.makedirs(args.out, exist_ok=True)
  runs, predictions = [], {}
  for seed in range(seeds):
    for model in args.models:
      print(f"== {protocol.name}: {model}, seed {seed}")
      record, pred = run_one(model, seed, config, subjects, protocol, args.workdir, print)
      runs.append(record)
      predictions.setdefault(model, pred)
      print(
        f"   test mPA {record['test']['mpa']:.4f}, train mPA {record['train']['mpa']:.4f}, "
        f"{record['seconds'] / 60:.1f} min"
      )
  seq = next(iter(predictions.values()))[0]
  truth_tc = float(
    np.nanmean(
      metrics.temporal_consistency(seq.labels, seq.label_mask * seq.valid[:, :, None, None])
    )
  )
  summary = aggregate(runs, protocol.class_names, truth_tc)
  cpu = platform.processor() or platform.machine()
  header = (
    f"### {protocol.name}: {len(subjects)} subjects, {seeds} seed(s), config "
    f"`{'tiny' if args.quick else args.config}` ({config.epochs} epochs), "
    f"{os.cpu_count()} CPU cores ({cpu}), jax {jax.__version__} on {jax.default_backend()}"
  )
  command = "python experiments/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
  table = markdown(summary, protocol.name, protocol.class_names, header)
  stem = os.path.join(args.out, f"compare-{protocol.name}")
  files.write_json(
    stem + ".json",
    {
      "command": command,
      "protocol": protocol.name,
      "config": config.to_json(),
      "seeds": seeds,
      "runs": runs,
      "summary": summary,
    },
  )
  files.write_text(stem + ".md", table + f"\n\nMade by `{command.strip()}`.\n")
  plot(stem + ".png", runs, protocol.name)
  fig4(stem + "-fig4.png", predictions, protocol)
  print(table)
  return summary


if __name__ == "__main__":
  main()
