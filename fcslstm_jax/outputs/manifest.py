"""The output folder's manifest, ``outputs.json``: which run wrote the folder, and every file
it wrote.

``evaluate.py`` claims its ``--out`` folder before it writes anything (:func:`claim`): a new
or empty folder, or one whose manifest names the same run (the same run folders and dataset:
a rerun of the same command, after more training or after a kill). A folder that holds
another run's outputs, or files ``evaluate.py`` did not write, is refused: a tool that reads
every ``*_dseg`` file of the folder would mix models or subjects. At the end (:func:`seal`)
the manifest lists the files this run wrote, and those the same run's earlier evaluation
wrote and this one did not (a report not asked for again, a subject gone from the dataset)
are removed, so the folder describes one evaluation.
"""

import os

from fcslstm_jax import files
from fcslstm_jax import jsonfile
from fcslstm_jax.errors import ConfigError

NAME = "outputs.json"


def identity(workdirs, dataset_root, participants=None) -> dict:
  """What makes two evaluations the same run's: its run folders and the dataset segmented
  (and the participants, when only some were: the folder's tables describe those)."""
  ident = {
    "workdirs": [os.path.abspath(w) for w in workdirs],
    "dataset": os.path.abspath(dataset_root),
  }
  if participants is not None:
    ident["participants"] = sorted(str(p).removeprefix("sub-") for p in participants)
  return ident


def read(out_dir) -> dict | None:
  """The folder's manifest, or None without one (an unreadable one is a ConfigError)."""
  path = os.path.join(out_dir, NAME)
  if not os.path.exists(path):
    return None
  fix = "Remove it, or choose another --out folder."
  record = jsonfile.read(path, "", fix)
  if not isinstance(record, dict) or "identity" not in record:
    raise ConfigError(f"{path}: not an evaluate.py output manifest. {fix}")
  return record


def foreign_entries(out_dir) -> list:
  """Top-level entries other than the manifest, hidden files (temporary siblings) and
  ``sourcedata/`` (where the BIDS-App keeps its trained model; BIDS tools skip it)."""
  if not os.path.isdir(out_dir):
    return []
  return sorted(
    e for e in os.listdir(out_dir) if e not in (NAME, "sourcedata") and not e.startswith(".")
  )


def written_before_manifests(out_dir, ident: dict) -> bool:
  """Whether the folder is this run's evaluation from before manifests existed: its
  ``metrics.json`` names the same run folders (the default ``--out``, WORKDIR/predictions,
  of a run evaluated by an older version must stay usable)."""
  try:
    record = jsonfile.read(os.path.join(out_dir, "metrics.json"), "", "")
  except ConfigError:
    return False
  members = record.get("members") if isinstance(record, dict) else None
  if not isinstance(members, list):
    return False
  workdirs = [m.get("workdir") for m in members if isinstance(m, dict)]
  return workdirs == ident["workdirs"]


def claim(out_dir, ident: dict) -> list:
  """Checks that ``out_dir`` may take this run's outputs and marks it as this run's; returns
  the files the same run's earlier evaluation wrote there (absolute paths; [] if none)."""
  record = read(out_dir)
  if record is None:
    entries = foreign_entries(out_dir)
    if entries and not written_before_manifests(out_dir, ident):
      raise ConfigError(
        f"{out_dir}: holds files that evaluate.py did not write ({', '.join(entries[:3])}"
        f"{', ...' if len(entries) > 3 else ''}). A tool reading its *_dseg files would mix "
        "them with this run's. Choose a new or empty --out folder."
      )
    earlier = []
  elif record["identity"] != ident:
    other = record["identity"]
    chosen = other.get("participants")
    raise ConfigError(
      f"{out_dir}: holds the outputs of another evaluation (run folders "
      f"{', '.join(other.get('workdirs', []))}; dataset {other.get('dataset')}"
      + (f"; participants {', '.join(chosen)}" if chosen else "")
      + "). A tool reading its *_dseg files would mix the two. Choose a new or empty "
      "--out folder (or segment all the participants in one command)."
    )
  else:
    earlier = [os.path.join(out_dir, f) for f in record.get("files", [])]
  files.write_json(
    os.path.join(out_dir, NAME),
    {"identity": ident, "complete": False, "files": [os.path.relpath(f, out_dir) for f in earlier]},
  )
  return earlier


def seal(out_dir, ident: dict, written, earlier) -> list:
  """Lists ``written`` in the manifest and removes the ``earlier`` files this evaluation did
  not write again; returns those removed."""
  out = os.path.abspath(out_dir)
  mine = sorted(
    {os.path.relpath(f, out) for f in written if os.path.abspath(f).startswith(out + os.sep)}
    - {NAME}
  )
  stale = [f for f in earlier if os.path.relpath(f, out) not in mine and os.path.isfile(f)]
  for f in stale:
    os.unlink(f)
  files.write_json(
    os.path.join(out_dir, NAME), {"identity": ident, "complete": True, "files": mine}
  )
  return stale
