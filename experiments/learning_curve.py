"""Learning curve: FCSLSTM and nnU-Net v2 side by side at several training budgets.

    python experiments/learning_curve.py --study cohort --budgets 10,30,60 [--tools fcslstm nnunet]

runs ``experiments/peers/run.py`` once per budget and tool, as a subprocess, each budget into
its own ``--out results/learning-curve/<study>-<budget>min`` (its ``peers-<study>.json`` and
``.md``: the full record) and each tool its own ``--work
runs/learning-curve/<study>-<budget>min/<tool>``, then writes
``results/learning-curve-<study>.json`` and ``.md``: one row per tool and budget with the
held-out labeled-slice mPA, the held-out whole-volume Dice per tissue class, the volume error
and growth error per class (labeled and unlabeled subjects apart; run.py's ``scores.volumes``),
the training wall minutes, and the commit it ran on. Arguments it does not know (``--model
fcn``, ``--epochs 60``, ...) go to every run.py call.

Resumable: a budget whose record already holds a row for each tool, measured on the current
code (the same commit, or one that differs from it only in the learning curve's own output
files: a record committed as it finishes does not make it stale; uncommitted changes must be
the same ones) and with the same configuration (:func:`run.configuration`), is not run
again, so a long series can be stopped and restarted. Where only some tools' rows are
current and on this very commit, the others run alone (run.py ``--keep-others``); otherwise
every tool of that budget runs again. A tool that cannot run here (nnU-Net without
``nnunetv2`` installed) or a run that fails gets a row saying so; the other budgets and
tools go on. One tool per call: a killed series resumes after the last tool that finished.

The summary is written once every budget has had its turn. It also holds the budgets that
earlier commands recorded in ``--out-dir`` with this configuration, as they stand (a row on
other code than this says so in its note), so that a curve can be extended a budget at a
time.

The budgets are wall-clock minutes of training for each tool on this machine's CPU (the
project's runs: 2 cores, one tool after the other, nothing else running), the same budget
for both; they say what each tool reaches in that time here, not what it reaches at its
own length. nnU-Net at its own default length (1000 epochs) on a GPU is a separate run, not
a point of this curve.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(HERE, "peers"))

from experiments.peers import run
from fcslstm_jax import files

RUN_PY = os.path.join(HERE, "peers", "run.py")
TOOLS = ("fcslstm", "nnunet")
# run.py's arguments this script sets itself.
MANAGED = ("--study", "--budget-min", "--tools", "--out", "--work", "--keep-others")


def budget_list(text: str) -> list:
  try:
    budgets = [float(b) for b in text.split(",") if b.strip()]
  except ValueError:
    budgets = []
  if not budgets or any(b <= 0 for b in budgets):
    raise argparse.ArgumentTypeError(f"{text!r}: give positive minutes, e.g. 10,30,60")
  return budgets


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
  p.add_argument("--study", choices=sorted(run.DATASET_IDS), default="cohort")
  p.add_argument(
    "--budgets",
    type=budget_list,
    required=True,
    help="training wall-clock minutes for each tool, comma-separated: 10,30,60",
  )
  p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
  p.add_argument(
    "--out-dir",
    default=os.path.join(REPO, "results"),
    help="the summary goes here, each budget's record under its learning-curve/",
  )
  p.add_argument(
    "--work-dir",
    default=os.path.join(REPO, "runs", "learning-curve"),
    help="each budget's run.py --work is a folder in it",
  )
  args, extra = p.parse_known_args(argv)
  managed = [a for a in extra if a.split("=")[0] in MANAGED]
  if managed:
    p.error(
      f"{', '.join(managed)}: set by this script for each budget; not an extra run.py argument"
    )
  return args, extra


# ------------------------------------------------------------------------------- one budget


def label(budget: float) -> str:
  return f"{budget:g}min"


def budget_out(args, budget: float) -> str:
  return os.path.join(args.out_dir, "learning-curve", f"{args.study}-{label(budget)}")


def summary_paths(args) -> tuple:
  stem = os.path.join(args.out_dir, f"learning-curve-{args.study}")
  return stem + ".json", stem + ".md"


def run_argv(args, budget: float, tools, extra) -> list:
  return [
    "--study",
    args.study,
    "--budget-min",
    f"{budget:g}",
    "--tools",
    *tools,
    "--out",
    budget_out(args, budget),
    "--work",
    # One folder per tool: a call empties its --work folder first, and must not take the
    # trained model of the tool before it.
    os.path.join(args.work_dir, f"{args.study}-{label(budget)}", "-".join(tools)),
    *extra,
  ]


def missing_reason(tool: str):
  """Why ``tool`` cannot run here (None: it can)."""
  if tool == "nnunet" and importlib.util.find_spec("nnunetv2") is None:
    return "not run: nnunetv2 is not installed (pip install -r experiments/peers/requirements.txt)"
  return None


def own_outputs(args) -> list:
  """This script's output paths relative to the repository's top (those inside it): the
  budgets' records and the summary. Commits that change only them change no code."""
  try:
    top = subprocess.run(
      ["git", "rev-parse", "--show-toplevel"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return []
  paths = [os.path.join(args.out_dir, "learning-curve") + os.sep, *summary_paths(args)]
  rels = [
    os.path.relpath(os.path.realpath(p), os.path.realpath(top))
    + (os.sep if p.endswith(os.sep) else "")
    for p in paths
  ]
  return [r for r in rels if not r.startswith(os.pardir)]


def changed_paths(a: str, b: str, repo: str = REPO):
  """Files that differ between commits ``a`` and ``b`` (None: git cannot tell)."""
  try:
    out = subprocess.run(
      ["git", "--no-optional-locks", "diff", "--name-only", a, b, "--"],
      cwd=repo,
      check=True,
      capture_output=True,
      text=True,
    ).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  return [line for line in out.splitlines() if line]


def same_code(record: dict, code: dict, ignored, repo: str = REPO) -> bool:
  """Whether ``record`` ran on the code of ``code`` (:func:`run.code_version`): the same
  commit and uncommitted changes, or, both clean, commits that differ only in ``ignored``
  (paths, or folders ending in a separator, relative to the repository's top)."""
  theirs = {k: record.get(k) for k in ("commit", "dirty", "diff_sha256")}
  if not theirs["commit"] or not code.get("commit"):
    return False
  if theirs == {k: code.get(k) for k in theirs}:
    return True
  if theirs["dirty"] or code.get("dirty") or theirs["dirty"] is None:
    return False
  changed = changed_paths(theirs["commit"], code["commit"], repo)
  return changed is not None and all(
    any(path == i or (i.endswith(os.sep) and path.startswith(i)) for i in ignored)
    for path in changed
  )


def read_record(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def tool_rows(args, budget: float, extra, ignored) -> tuple:
  """``(record, {tool: state})``: the budget's record and the state of each of ``args.tools``
  whose row in it has this configuration (:func:`run.configuration`): ``"exact"`` (this very
  commit and uncommitted changes: run.py ``--keep-others`` keeps only those), ``"current"``
  (this code: a commit since changed only this script's outputs) or ``"earlier"`` (other
  code)."""
  out = budget_out(args, budget)
  code = run.code_version(exclude=run.outputs(out, args.study))
  record = read_record(run.outputs(out, args.study)[0])
  states = {}
  for tool in args.tools:
    run_args = run.parse_args(run_argv(args, budget, [tool], extra))
    row = record.get("tools", {}).get(run.tool_names(run_args)[tool])
    if row is None or row.get("configuration") != run.configuration(run_args):
      continue
    if all(row.get(k) == code.get(k) for k in ("commit", "dirty", "diff_sha256")):
      states[tool] = "exact"
    else:
      states[tool] = "current" if same_code(row, code, ignored) else "earlier"
  return record, states


def current_tools(args, budget: float, extra, ignored) -> tuple:
  """``(record, {tool: exact})``: the budget's record and those of ``args.tools`` whose row
  in it is current (this code, this configuration); ``exact``: on this very commit and
  uncommitted changes."""
  record, states = tool_rows(args, budget, extra, ignored)
  return record, {t: s == "exact" for t, s in states.items() if s != "earlier"}


def call(command) -> int:
  """Runs ``command`` (run.py) with this process's output; its exit code."""
  return subprocess.run(command, cwd=REPO).returncode


def run_budget(args, budget: float, extra, ignored, missing: dict) -> dict:
  """Runs run.py for ``budget``, one tool per call, unless its record is current;
  ``{tool: why not measured}`` for the tools that did not run or whose run failed.

  One tool per call so that a budget is resumable tool by tool: run.py writes the record when
  its call ends, and each later call keeps the rows before it (``--keep-others``, which takes
  only rows of this very commit). A current row that is not on this very commit (one committed
  since) cannot be kept, so then every tool of the budget runs again."""
  _, current = current_tools(args, budget, extra, ignored)
  to_run = [t for t in args.tools if t not in current and not missing[t]]
  notes = {t: missing[t] for t in args.tools if t not in current and missing[t]}
  for tool, why in notes.items():
    print(f"{label(budget)}: {tool}: {why}", flush=True)
  if not to_run:
    if current:
      print(f"{label(budget)}: the record of {', '.join(current)} is current; skipped", flush=True)
    return notes
  keep = bool(current) and all(current.values())
  if current and not keep:
    to_run = [t for t in args.tools if not missing[t]]
  for tool in to_run:
    argv = run_argv(args, budget, [tool], extra) + (["--keep-others"] if keep else [])
    print(f"{label(budget)}: python experiments/peers/run.py {' '.join(argv)}", flush=True)
    code = call([sys.executable, RUN_PY, *argv])
    if code != 0:
      notes[tool] = f"failed: run.py exited with {code}"
    else:
      keep = True  # its record now holds this tool's row, on this very commit
  return notes


# ---------------------------------------------------------------------------------- summary


def row_of(tool_name: str, budget: float, record: dict, tool: dict, path: str) -> dict:
  scores = tool["scores"]
  test = scores["labeled_slices"].get("test") or {}
  whole = scores["whole_volumes"].get("test") or {}
  volumes = scores.get("volumes") or {}
  tissues = [n for n in (whole.get("dice") or {}) if n != "background"]

  def by_kind(key):
    return {kind: (volumes.get(kind) or {}).get(key) for kind in run.SUBJECT_KINDS}

  return {
    "tool": tool_name,
    "budget_min": budget,
    "status": "measured",
    "record": os.path.relpath(path, REPO),
    "train_minutes": round(tool["train_seconds"] / 60, 2),
    "infer_seconds": tool.get("infer_seconds"),
    "heldout_mpa": test.get("mpa"),
    "heldout_mpa_tissue": test.get("mpa_fg"),
    "heldout_whole_volume_dice": {n: whole["dice"][n] for n in tissues} or None,
    "volume_error": by_kind("volume_error"),
    "volume_bias": by_kind("volume_bias"),
    "growth_error": by_kind("growth_error"),
    "commit": tool.get("commit"),
    "dirty": tool.get("dirty"),
    "diff_sha256": tool.get("diff_sha256"),
    "measured_at": tool.get("measured_at"),
    "cpus": (record.get("machine") or {}).get("cpus"),
  }


def recorded_budgets(args) -> list:
  """The budgets of this study with a record under ``args.out_dir`` (earlier commands')."""
  folder = os.path.join(args.out_dir, "learning-curve")
  prefix, found = f"{args.study}-", []
  for name in os.listdir(folder) if os.path.isdir(folder) else ():
    if name.startswith(prefix) and name.endswith("min"):
      try:
        budget = float(name[len(prefix) : -len("min")])
      except ValueError:
        continue
      if budget > 0 and os.path.exists(run.outputs(os.path.join(folder, name), args.study)[0]):
        found.append(budget)
  return found


def summary_rows(args, extra, ignored, notes: dict) -> list:
  """One row per budget and tool, by budget: the budgets of this command, each from its
  record where that holds a current row, else why there is none (``notes[(budget, tool)]``,
  or that the record holds none); and the budgets recorded by earlier commands with this
  configuration, as they stand, each row saying when it ran on other code than this."""
  rows = []
  for budget in sorted(set(args.budgets) | set(recorded_budgets(args))):
    record, states = tool_rows(args, budget, extra, ignored)
    path = run.outputs(budget_out(args, budget), args.study)[0]
    asked = budget in args.budgets
    for tool in args.tools:
      name = run.tool_names(run.parse_args(run_argv(args, budget, [tool], extra)))[tool]
      state = states.get(tool)
      if state in ("exact", "current") or (state == "earlier" and not asked):
        row = row_of(name, budget, record, record["tools"][name], path)
        if state == "earlier":
          row["note"] = "earlier code, not rerun by this command"
        rows.append(row)
      elif asked:
        why = notes.get((budget, tool)) or f"no current row in {os.path.relpath(path, REPO)}"
        rows.append({"tool": name, "budget_min": budget, "status": why})
  return rows


def cells(values, kind=None) -> str:
  if kind is not None:
    values = (values or {}).get(kind)
  return run.per_class(values)


HEAD = [
  "tool",
  "budget (min)",
  "training wall (min)",
  "held-out mPA, labeled slices (tissue)",
  "held-out Dice CSF / GM / WM, whole volumes",
  "volume error CSF / GM / WM, labeled subjects",
  "volume error CSF / GM / WM, unlabeled subjects",
  "growth error CSF / GM / WM, labeled subjects",
  "growth error CSF / GM / WM, unlabeled subjects",
  "commit",
  "note",
]


def markdown(rows) -> str:
  lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
  for r in rows:
    if r["status"] != "measured":
      cols = [r["tool"], f"{r['budget_min']:g}"] + ["–"] * (len(HEAD) - 3) + [r["status"]]
    else:
      commit = (r["commit"] or "unknown")[:7] + (" (uncommitted changes)" if r["dirty"] else "")
      cols = [
        r["tool"],
        f"{r['budget_min']:g}",
        f"{r['train_minutes']:.1f}",
        f"{run.fmt(r['heldout_mpa'])} ({run.fmt(r['heldout_mpa_tissue'])})",
        cells(r["heldout_whole_volume_dice"]),
        cells(r["volume_error"], "labeled_subjects"),
        cells(r["volume_error"], "unlabeled_subjects"),
        cells(r["growth_error"], "labeled_subjects"),
        cells(r["growth_error"], "unlabeled_subjects"),
        commit,
        r.get("note", ""),
      ]
    lines.append("| " + " | ".join(cols) + " |")
  return "\n".join(lines) + "\n" + run.VOLUME_NOTE


def main(argv=None) -> int:
  args, extra = parse_args(argv)
  run.parse_args(run_argv(args, args.budgets[0], args.tools, extra))  # extra: run.py's own
  ignored = own_outputs(args)
  missing = {t: missing_reason(t) for t in args.tools}
  notes = {}
  for budget in args.budgets:
    for tool, why in run_budget(args, budget, extra, ignored, missing).items():
      notes[(budget, tool)] = why
  rows = summary_rows(args, extra, ignored, notes)
  command = "python experiments/learning_curve.py " + " ".join(
    sys.argv[1:] if argv is None else argv
  )
  json_path, md_path = summary_paths(args)
  os.makedirs(args.out_dir, exist_ok=True)
  files.write_json(
    json_path,
    {
      "command": command,
      "study": args.study,
      "budgets_min": args.budgets,
      "tools": args.tools,
      "extra_run_args": extra,
      "rows": rows,
    },
  )
  cpus = sorted({r["cpus"] for r in rows if r.get("cpus")})
  header = (
    f"### {args.study}: learning curve, training wall-clock budgets of "
    f"{' / '.join(f'{b:g}' for b in sorted({r['budget_min'] for r in rows}))} min for each tool"
    + (f", {' / '.join(map(str, cpus))} CPU cores" if cpus else "")
    + "\n\n"
  )
  table = markdown(rows)
  files.write_text(
    md_path,
    header + table + f"\nMade by `{command}`; each row's record: "
    f"{os.path.relpath(os.path.join(args.out_dir, 'learning-curve'), REPO)}"
    f"/{args.study}-<budget>min/peers-{args.study}.json.\n",
  )
  print(header + table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
