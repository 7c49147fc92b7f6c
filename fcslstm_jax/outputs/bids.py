"""The output folder as a BIDS derivative dataset (BIDS 1.10, "Derivatives").

What makes ``evaluate.py``'s ``--out`` (and the BIDS-App's OUTPUT_DIR) one that the BIDS
validator accepts and BIDS tools (pybids, fMRIPrep-style pipelines) index:

- ``dataset_description.json``: ``DatasetType: derivative``, ``GeneratedBy`` (this package,
  its version with the git commit as a local version label), ``SourceDatasets`` and a
  ``DatasetLinks`` entry ``raw`` for the BIDS URIs of the sidecars;
- a JSON sidecar per NIfTI output: what it holds, its ``Sources`` and ``SpatialReference``
  (the session's own first image: outputs lie on each input's grid), and the run(s);
- names the validator accepts: ``*_desc-<model>_dseg``, ``*_label-uncertainty_desc-<model>
  _probseg`` (BIDS has no suffix for an uncertainty map; a ``probseg`` with ``label-`` naming
  what it holds is the nearest, and its sidecar says what the values are) and
  ``*_desc-<model>_probseg`` (4D, one volume per ``dseg.tsv`` row);
- ``.bidsignore`` for the study-level files BIDS has no names for (tables, figures, report,
  ``metrics.json``, the manifest).

:func:`fcslstm_jax.data.layout.is_own` tells this tool's derivatives apart from a label
pipeline's, so that training never reads its own predictions as labels.
"""

import os
import pathlib
import subprocess

import fcslstm_jax
from fcslstm_jax import files
from fcslstm_jax.data import layout

GENERATOR = layout.GENERATOR
BIDS_VERSION = "1.10.0"
# Study-level files BIDS has no name for (written by fcslstm_jax.outputs.writer and manifest).
IGNORED = (
  "metrics.json",
  "outputs.json",
  "volumes.tsv",
  "volumes_truth.tsv",
  "qc.tsv",
  "flags.tsv",
  "flags.json",
  "report.html",
  "*.png",
)
UNCERTAINTY_LABEL = "uncertainty"


def version() -> str:
  """The package version, with the git commit as a local label when the package runs from its
  own checkout (``0.2.0+gabc1234``; not from another repository that happens to hold it, e.g.
  a virtual environment inside a project)."""
  package = os.path.dirname(os.path.abspath(fcslstm_jax.__file__))

  def git(*args):
    return subprocess.check_output(
      ["git", *args], cwd=package, text=True, stderr=subprocess.DEVNULL
    ).strip()

  try:
    top = git("rev-parse", "--show-toplevel")
    if os.path.realpath(os.path.join(top, "fcslstm_jax")) != os.path.realpath(package):
      return fcslstm_jax.__version__
    return f"{fcslstm_jax.__version__}+g{git('rev-parse', '--short', 'HEAD')}"
  except (OSError, subprocess.CalledProcessError):
    return fcslstm_jax.__version__


def description(source_root: str, name: str = "fcslstm-jax segmentations") -> dict:
  """The derivative's ``dataset_description.json``."""
  uri = pathlib.Path(os.path.abspath(source_root)).as_uri()
  return {
    "Name": name,
    "BIDSVersion": BIDS_VERSION,
    "DatasetType": "derivative",
    "GeneratedBy": [
      {
        "Name": GENERATOR,
        "Version": version(),
        "Description": "Fully Convolutional Structured LSTM segmentation (Gao et al., ISBI 2018)",
      }
    ],
    "SourceDatasets": [{"URL": uri}],
    "DatasetLinks": {"raw": uri},
  }


def write_dataset_files(out_dir: str, source_root: str, class_rows) -> None:
  """``dataset_description.json``, ``dseg.tsv`` (``index``: the value in the dseg files,
  ``name``), ``.bidsignore`` and a short ``README``."""
  files.write_json(os.path.join(out_dir, "dataset_description.json"), description(source_root))
  files.write_tsv(os.path.join(out_dir, "dseg.tsv"), ["index", "name"], list(class_rows))
  files.write_text(os.path.join(out_dir, ".bidsignore"), "\n".join(IGNORED) + "\n")
  files.write_text(
    os.path.join(out_dir, "README"),
    "Tissue segmentations of the source dataset by fcslstm-jax (one model for all of a "
    "subject's sessions).\nPer session: *_dseg (labels, values in dseg.tsv), "
    "*_label-uncertainty_probseg (0..1)\nand, if asked, *_probseg (class probabilities). "
    "report.html, volumes.tsv and qc.tsv describe the study.\n",
  )


def source_uri(path: str, source_root: str) -> str:
  """A BIDS URI (``bids:raw:sub-01/...``) for a file of the source dataset; the absolute
  path for a file outside it."""
  rel = os.path.relpath(os.path.abspath(path), os.path.abspath(source_root))
  if rel.startswith(".."):
    return os.path.abspath(path)
  return "bids:raw:" + pathlib.PurePath(rel).as_posix()


def sidecar_path(nifti_path) -> str:
  """``X.nii[.gz]`` -> ``X.json``."""
  return str(nifti_path).removesuffix(".gz").removesuffix(".nii") + ".json"


def write_sidecar(nifti_path: str, description_text: str, sources, reference, run: dict) -> None:
  """The JSON sidecar of one output NIfTI (``X.nii.gz`` -> ``X.json``)."""
  record = {
    "Description": description_text,
    "Sources": list(sources),
    "SpatialReference": reference,
    **run,
  }
  files.write_json(sidecar_path(nifti_path), record)
