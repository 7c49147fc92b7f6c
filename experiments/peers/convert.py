"""A study in our layout -> an nnU-Net v2 raw dataset, and nnU-Net's predictions back.

What nnU-Net sees is what FCSLSTM trains on, nothing more:

* the same sessions, after our loading and resampling (:func:`fcslstm_jax.data.study.load_study`):
  each session's normalized image on its subject's *working grid* (canonical RAS,
  ``[X, Y, Z]`` per channel, the working grid's affine), one case per session, the
  protocol's modalities as channels (``_0000`` T1w, ``_0001`` T2w);
* the same labeled voxels: a case's ``labelsTr`` volume holds the session's class where
  :attr:`fcslstm_jax.data.study.Session.label_mask` is 1 (the protocol's counted labeled slice)
  and the *ignore* label (``num_classes``, nnU-Net v2's "ignore" for partial annotations)
  on every other voxel;
* the same split: only sessions at the protocol's training time points that have labels go
  to ``imagesTr`` / ``labelsTr``; held-out time points and unlabeled subjects go to
  ``imagesTs`` without labels, so their labels never reach nnU-Net.

``manifest.json`` (written last: it marks a complete conversion) lists every case with its
subject, session, time point and folder. nnU-Net's predictions (its ``.nii.gz`` and, with
``--save_probabilities``, ``.npz``) lie on the working grid; :func:`to_session_labels` maps
them to each session's own grid through the same inverse map as our own predictions
(:func:`fcslstm_jax.infer.pipeline.to_session_probs`), where both tools are scored.

    python experiments/peers/convert.py --data-dir data/cohort --out \
        runs/peers/raw/Dataset523_cohort
"""

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

# Run as a script from the repository root or anywhere: the package is one folder up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from fcslstm_jax import datasets
from fcslstm_jax import files
from fcslstm_jax.data import nifti_io
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study
from fcslstm_jax.infer import pipeline

FILE_ENDING = ".nii.gz"
IGNORE = "ignore"


def case_id(subject_id: str, session_label: str) -> str:
  """nnU-Net case identifier of a session (no ``_0000`` channel suffix)."""
  return f"sub-{subject_id}_ses-{session_label}"


def dataset_json(proto, num_training: int, name: str) -> dict:
  """nnU-Net v2's ``dataset.json``: one channel per modality, the protocol's classes and
  ``ignore`` = ``num_classes`` (nnU-Net requires the ignore label to be the highest)."""
  labels = {n: i for i, n in enumerate(proto.class_names)}
  labels[IGNORE] = proto.num_classes
  return {
    "name": name,
    "description": "converted by experiments/peers/convert.py from a study in the "
    "fcslstm-jax layout (working grids, one labeled slice per volume)",
    "channel_names": {str(k): m for k, m in enumerate(proto.modalities)},
    "labels": labels,
    "numTraining": num_training,
    "file_ending": FILE_ENDING,
  }


def sparse_labels(session, num_classes: int) -> np.ndarray:
  """``uint8 [X, Y, Z]``: the session's class on its counted labeled voxels, ``num_classes``
  (ignore) everywhere else."""
  mask = session.label_mask > 0
  return np.where(mask, session.labels, num_classes).astype(np.uint8)


def is_training_case(session, t: int, proto) -> bool:
  """A session whose labels training may see: a training time point with counted labels."""
  return (
    t in proto.train_timepoints
    and session.label_mask is not None
    and bool(session.label_mask.any())
  )


def role_of(session, t: int, proto) -> str:
  if is_training_case(session, t, proto):
    return "train"
  if t in proto.test_timepoints:
    return "held-out"
  return "unlabeled"


def _write_case(out, folder, case, subject, session, proto):
  for k in range(len(proto.modalities)):
    nifti_io.write_volume(
      os.path.join(out, folder, f"{case}_{k:04d}{FILE_ENDING}"),
      session.image[..., k],
      subject.grid.affine,
      np.float32,
    )


def write_dataset(loaded, out_dir: str, name: str) -> dict:
  """Writes the study ``loaded`` (read with every slice, ``keep="all"``) as an nnU-Net v2 raw
  dataset into ``out_dir`` (created; must not exist; written in a temporary sibling, then
  renamed). Returns the manifest."""
  files.check_outside_dataset(out_dir, loaded.root)
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir}: exists. Remove it or choose another output folder.")
  proto = loaded.protocol
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  try:
    cases = []
    for subject in loaded.subjects:
      if subject.grid is None:
        continue
      if subject.z_index is not None:
        raise ValueError(
          f"sub-{subject.subject_id}: loaded with keep='labeled'; convert whole "
          "volumes (load_study(..., keep='all'))."
        )
      for t, session in enumerate(subject.timepoints):
        if session is None:
          continue
        case, role = case_id(subject.subject_id, session.label), role_of(session, t, proto)
        folder = "imagesTr" if role == "train" else "imagesTs"
        _write_case(tmp, folder, case, subject, session, proto)
        if role == "train":
          nifti_io.write_volume(
            os.path.join(tmp, "labelsTr", case + FILE_ENDING),
            sparse_labels(session, proto.num_classes),
            subject.grid.affine,
            np.uint8,
          )
        cases.append(
          {
            "case": case,
            "subject": subject.subject_id,
            "session": session.label,
            "timepoint": t,
            "role": role,
            "folder": folder,
            "labeled_voxels": int((session.label_mask > 0).sum()) if role == "train" else 0,
          }
        )
    num_training = sum(c["role"] == "train" for c in cases)
    files.write_json(os.path.join(tmp, "dataset.json"), dataset_json(proto, num_training, name))
    manifest = {
      "study": os.path.abspath(loaded.root),
      "protocol": proto.to_json(),
      "grid": loaded.options.to_json(),
      "ignore_label": proto.num_classes,
      "cases": cases,
    }
    files.write_json(os.path.join(tmp, "manifest.json"), manifest)  # last: marks it complete
    os.replace(tmp, out_dir)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return manifest


def load_for_conversion(
  root, proto, spacing="median", reference="first", register="none", warn=None
):
  """The study as ``train.py`` reads it (same protocol, spacing, reference, registration),
  with every slice of every session (nnU-Net samples whole volumes). Its warnings (sessions
  that fit no time point, labels that did not all come through:
  :func:`fcslstm_jax.data.sequences.describe_warnings`) are printed as ``train.py`` prints
  them, one ``warning: ...`` line each, on stderr; ``warn``: a function of a line instead."""
  loaded = study.load_study(
    root, proto, spacing=spacing, reference=reference, register=register, keep="all"
  )
  for line in sequences.describe_warnings(loaded):
    (warn or (lambda text: print(text, file=sys.stderr, flush=True)))(line)
  return loaded


# ------------------------------------------------------------------------- predictions back


def read_probabilities(npz_path: str) -> np.ndarray:
  """nnU-Net's saved class probabilities as ``float32 [X, Y, Z, c]`` of the case's input
  grid. nnU-Net stores them as SimpleITK arrays, ``[c, k, j, i]`` (voxel axes reversed, no
  reorientation), for the NIfTI we wrote as ``[i, j, k] = [X, Y, Z]``."""
  with np.load(npz_path) as f:
    return from_nnunet_order(f["probabilities"])


def from_nnunet_order(array) -> np.ndarray:
  """An nnU-Net array of a case, ``[c, k, j, i]`` (or ``[k, j, i]``), as ``[i, j, k(, c)]``
  = ``[X, Y, Z(, c)]`` of the NIfTI it came from (float32 for probabilities)."""
  array = np.asarray(array)
  if array.ndim == 3:
    return np.transpose(array, (2, 1, 0))
  return np.transpose(array, (3, 2, 1, 0)).astype(np.float32)


def read_segmentation(path: str) -> np.ndarray:
  """nnU-Net's predicted class map of a case, ``int32 [X, Y, Z]`` on the working grid."""
  return nifti_io.load_volume(path, kind="labels").data


def one_hot(labels, num_classes: int) -> np.ndarray:
  """``float32 [..., c]`` of an integer class map."""
  return np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]


def to_session_labels(probs, subject, session) -> np.ndarray:
  """``int32 [X, Y, Z]`` on the session's own canonical grid from working-grid probabilities
  ``[X, Y, Z, c]``: exactly the map our own predictions go through."""
  return np.argmax(pipeline.to_session_probs(probs, subject, session), axis=-1).astype(np.int32)


def write_session_labels(path: str, labels, session) -> None:
  """``labels`` (the session's canonical grid) with its original affine, axes and header."""
  nifti_io.save_like(path, labels, session.ref)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  src = p.add_mutually_exclusive_group()
  src.add_argument("--dataset", choices=datasets.BUILTIN, help="a built-in dataset")
  src.add_argument("--data-dir", help="a study in our layout (docs/data.md)")
  p.add_argument(
    "--protocol",
    help="with --data-dir: protocol file or name (default: DATA_DIR/protocol.json, else bric)",
  )
  p.add_argument("--spacing", default="median")
  p.add_argument(
    "--out",
    required=True,
    help="the nnU-Net raw dataset folder to create, e.g. nnUNet_raw/Dataset523_cohort",
  )
  args = p.parse_args(argv)
  if args.data_dir:
    proto = protocol.get_protocol(args.protocol, args.data_dir)
    root = args.data_dir
  else:
    from fcslstm_jax.synthetic import bric_like

    proto = protocol.builtin(args.dataset or "bric")
    root = bric_like.ensure_dataset(seed=0)
  loaded = load_for_conversion(root, proto, args.spacing)
  manifest = write_dataset(loaded, args.out, os.path.basename(os.path.normpath(args.out)))
  roles = [c["role"] for c in manifest["cases"]]
  print(
    f"wrote {args.out}: {roles.count('train')} training cases, {roles.count('held-out')} "
    f"held-out and {roles.count('unlabeled')} unlabeled sessions in imagesTs"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
