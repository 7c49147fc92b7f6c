"""Whole-scan segmentation of a trained run: every axial slice of every subject's 4D scan.

Layout: a subject's scan is ``T`` sessions of ``[X, Y, Z, C]`` (canonical RAS); the model sees
the ``Z`` axial slices as a batch of sequences ``[Z, T, X, Y, C]`` and returns ``[Z, T, X, Y]``.
Predictions are written back on each session's own grid, orientation, affine and header.
"""

import contextlib
import json
import os

import jax
import numpy as np

from fcslstm_jax import data as data_lib
from fcslstm_jax import figures
from fcslstm_jax import metrics as metrics_lib
from fcslstm_jax import nifti_io
from fcslstm_jax import train_lib
from fcslstm_jax.checkpoint import Checkpointer
from fcslstm_jax.config import Config
from fcslstm_jax.errors import CheckpointError, ConfigError


def read_run(workdir: str) -> dict:
  path = os.path.join(workdir, "run.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path}: not found. Point --workdir at a folder written by train.py.")
  with open(path) as f:
    return json.load(f)


def restore_params(workdir: str, config: Config, num_classes: int, in_channels: int,
                   step: int | None = None):
  """The run's model and parameters (newest readable checkpoint unless ``step``)."""
  model = train_lib.build_model(config, num_classes)
  state = train_lib.create_train_state(jax.random.PRNGKey(0), model, config, in_channels, 1)
  ckpt = Checkpointer(workdir, config.keep_checkpoints)
  state, restored = ckpt.restore(state, step)
  ckpt.close()
  if restored is None:
    raise CheckpointError(f"{ckpt.directory}: no checkpoint. Train first with train.py.")
  return model, state.params, restored


def check_outside_dataset(out_dir: str, input_root: str, flag: str = "--out") -> None:
  """Outputs never go inside the input dataset (nothing can overwrite an input)."""
  out, root = os.path.realpath(out_dir), os.path.realpath(input_root)
  if os.path.commonpath([out, root]) == root:
    raise ConfigError(f"{out_dir}: is inside the input dataset {input_root}. Choose a {flag} "
                      "folder outside it; outputs never go next to the inputs.")


def check_output_dir(out_dir: str, input_root: str) -> None:
  """Creates ``out_dir`` after checking it is outside the input dataset and writable."""
  check_outside_dataset(out_dir, input_root)
  out = os.path.realpath(out_dir)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"{out_dir}: cannot be created ({e.strerror}). Choose another --out "
                      "folder.") from e
  if not os.access(out, os.W_OK):
    raise ConfigError(f"{out_dir}: is not writable. Choose another --out folder.")


def prediction_path(out_dir: str, subject_id: str, session_label: str, model_name: str) -> str:
  name = f"sub-{subject_id}_ses-{session_label}_desc-{model_name.replace('-', '')}_dseg.nii.gz"
  return os.path.join(out_dir, f"sub-{subject_id}", f"ses-{session_label}", "anat", name)


def segment_subject(predict_fn, params, subject, protocol, batch_size: int):
  """``(sequences, pred [Z, T, X, Y])`` for every axial slice of one subject."""
  seq = data_lib.make_sequences([subject], protocol, "all")
  return seq, train_lib.predict_all(predict_fn, params, seq, batch_size)


def evaluate_run(workdir: str, out_dir: str | None = None, data_dir: str | None = None,
                 batch_size: int = 8, log=print) -> dict:
  """Segments every subject, writes NIfTI predictions, ``metrics.json`` and a figure."""
  run = read_run(workdir)
  config = Config.from_json(run["config"])
  if data_dir:
    protocol = data_lib.protocol_lib.get_protocol(run["protocol"])
    subjects = data_lib.load_dataset(data_dir, protocol.modalities, protocol.num_classes)
  elif os.path.isdir(str(run["dataset"])):
    protocol = data_lib.protocol_lib.get_protocol(run["protocol"])
    subjects = data_lib.load_dataset(run["dataset"], protocol.modalities, protocol.num_classes)
  else:
    subjects, protocol = data_lib.load_builtin(run["dataset"], seed=run.get("data_seed", 0))
  input_root = os.path.dirname(os.path.abspath(subjects[0].path))
  out_dir = out_dir or os.path.join(workdir, "predictions")
  check_output_dir(out_dir, input_root)
  c = protocol.num_classes
  model, params, step = restore_params(workdir, config, c, len(protocol.modalities))
  predict_fn = jax.jit(lambda p, x, v: train_lib.predict(p, model.apply, x, v))
  cms = np.zeros((protocol.num_timepoints, c, c))
  preds, truths, masks, figure = [], [], [], None
  for subject in subjects:
    seq, pred = segment_subject(predict_fn, params, subject, protocol, batch_size)
    for t, session in enumerate(data_lib.align_sessions(subject, protocol)):
      if session is None:
        continue
      path = prediction_path(out_dir, subject.subject_id, session.label, config.model)
      with naming(path):
        nifti_io.save_like(path, np.moveaxis(pred[:, t], 0, -1), session.ref)
      cms[t] += np.asarray(metrics_lib.confusion_matrix(pred[:, t], seq.labels[:, t],
                                                        seq.label_mask[:, t], c))
    preds.append(pred)
    truths.append(seq.labels)
    masks.append(seq.label_mask * seq.valid[:, :, None, None])
    if figure is None:
      figure = (subject, seq, pred)
    log(f"sub-{subject.subject_id}: {pred.shape[0]} slices x {pred.shape[1]} time points")
  result = summarize_run(cms, preds, truths, masks, protocol)
  result.update(workdir=os.path.abspath(workdir), checkpoint_step=step, model=config.model)
  with naming(os.path.join(out_dir, "segmentation.png")) as path:
    save_figure(path, *figure, protocol, config.model)
  with naming(os.path.join(out_dir, "metrics.json")) as path:
    write_json(path, result)  # last: marks a complete output
  return result


@contextlib.contextmanager
def naming(path: str):
  """Adds the file name to an OSError that lacks it (a full disk fails in write())."""
  try:
    yield path
  except OSError as e:
    if e.filename:
      raise
    raise type(e)(e.errno, e.strerror, str(path)) from e


def write_json(path: str, obj) -> None:
  """Atomic: a temporary file renamed into place, removed if the write fails (disk full)."""
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def summarize_run(cms, preds, truths, masks, protocol) -> dict:
  names = protocol.class_names
  per_t = []
  for t in range(protocol.num_timepoints):
    role = "test" if t in protocol.test_timepoints else (
        "train" if t in protocol.train_timepoints else "unused")
    per_t.append(dict(timepoint=t + 1, role=role,
                      age=protocol.ages[t] if protocol.ages else None,
                      **metrics_lib.summarize(cms[t], names)))
  pick = lambda ts: metrics_lib.summarize(cms[list(ts)].sum(0), names) if ts else None
  consistency = lambda segs: [
      None if np.isnan(v) else float(v) for v in metrics_lib.temporal_consistency(
          np.concatenate(segs), np.concatenate(masks))]
  return {"test": pick(protocol.test_timepoints), "train": pick(protocol.train_timepoints),
          "per_timepoint": per_t,
          "temporal_consistency": {"prediction": consistency(preds),
                                   "ground_truth": consistency(truths)}}


def save_figure(path, subject, seq, pred, protocol, model_name):
  """Fig. 4 layout at the protocol's labeled slice: T1w, T2w, ground truth, prediction."""
  z = data_lib.select_slices(subject, protocol)[0]
  i = int(np.flatnonzero(seq.slice_index == z)[0])
  rows = range(protocol.num_timepoints)
  columns = [(m, "image", [seq.images[i, t, ..., k] if seq.valid[i, t] else None for t in rows])
             for k, m in enumerate(protocol.modalities)]
  columns.append(("ground truth", "labels",
                  [seq.labels[i, t] if seq.label_mask[i, t].any() else None for t in rows]))
  columns.append((model_name, "labels", [pred[i, t] if seq.valid[i, t] else None for t in rows]))
  labels = [f"{protocol.ages[t]:g} mo" if protocol.ages else f"t{t + 1}" for t in rows]
  labels = [l + (" (test)" if t in protocol.test_timepoints else "") for t, l in enumerate(labels)]
  figures.montage(path, columns, labels, protocol.num_classes,
                  title=f"sub-{subject.subject_id}, axial slice z={z}")
