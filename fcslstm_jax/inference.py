"""Whole-scan segmentation of a trained run: every axial slice of every subject's 4D scan.

Layout: a subject's scan is ``T`` sessions of ``[X, Y, Z, C]`` on its working grid (canonical
RAS, :mod:`fcslstm_jax.data`); the model sees the ``Z`` axial slices as a batch of sequences
``[Z, T, X, Y, C]`` and returns class probabilities ``[Z, T, X, Y, c]``. Each session's
probabilities are resampled back onto that session's own grid (linear; nothing is
interpolated where the grids coincide), the argmax is written with the session's original
orientation, affine and header, and scored there against its labels.
"""

import contextlib
import dataclasses
import json
import os

import jax
import numpy as np

from fcslstm_jax import data as data_lib
from fcslstm_jax import figures
from fcslstm_jax import grids
from fcslstm_jax import metrics as metrics_lib
from fcslstm_jax import nifti_io
from fcslstm_jax import protocol as protocol_lib
from fcslstm_jax import sequences
from fcslstm_jax import train_lib
from fcslstm_jax.checkpoint import Checkpointer
from fcslstm_jax.config import Config
from fcslstm_jax.errors import CheckpointError, ConfigError, DataError


def read_run(workdir: str) -> dict:
  return train_lib.read_run_json(os.path.join(workdir, "run.json"))


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


def every_labeled_slice(protocol: protocol_lib.Protocol) -> protocol_lib.Protocol:
  """``protocol`` counting every labeled slice of every session (evaluation scores all the
  labels a study has, not the few that training was allowed to count)."""
  return dataclasses.replace(protocol, labeled_slices_per_volume=1 << 30,
                             slice_selection="center")


def segment_subject(predict_fn, params, subject, protocol, batch_size: int):
  """``(sequences, probabilities [Z, T, X, Y, c])`` for every axial slice of one subject on
  its working grid."""
  seq = sequences.make_sequences([subject], protocol, "all")
  return seq, train_lib.predict_all(predict_fn, params, seq, batch_size)


def to_session_grid(probs, subject, session) -> np.ndarray:
  """Class map ``int [X, Y, Z]`` on the session's own canonical grid from working-grid
  probabilities ``[X, Y, Z, c]``: resampled linearly (identity where the grids coincide),
  then argmax. Outside the working grid: background."""
  back = np.linalg.inv(session.to_session)  # session world -> working world
  on_session = grids.resample(probs, subject.grid, session.grid, order=1, world=back)
  return np.argmax(on_session, axis=-1).astype(np.int32)


def native_scores(pred, session, num_classes):
  """Confusion matrix of a native-grid prediction against the session's label file, over
  every labeled axial slice (None without labels)."""
  if "dseg" not in session.paths:
    return None
  truth = nifti_io.load_volume(session.paths["dseg"], kind="labels").data
  mask = np.zeros(truth.shape, np.float32)
  mask[:, :, data_lib.labeled_slices(truth)] = 1.0
  return metrics_lib.confusion_counts(pred, truth, mask, num_classes)


def load_for_evaluation(run: dict, data_dir=None, truth_dir=None):
  """The study to segment with a run: its own data or ``data_dir``, on the run's grids."""
  protocol = protocol_lib.from_run(run)
  options = data_lib.GridOptions.from_json(run.get("grid") or {})
  if data_dir:
    root = data_dir
  elif run.get("dataset") in data_lib.BUILTIN_DATASETS:
    from fcslstm_jax import bric
    root = bric.ensure_dataset(seed=run.get("data_seed", 0))
  else:
    root = run["dataset"]
  return data_lib.load_study(root, every_labeled_slice(protocol),
                             spacing=options.spacing or "native", reference=options.reference,
                             register=options.register, labels_root=truth_dir), protocol


def evaluate_run(workdir: str, out_dir: str | None = None, data_dir: str | None = None,
                 batch_size: int = 8, truth_dir: str | None = None, log=print) -> dict:
  """Segments every session of every subject, writes NIfTI predictions on each session's
  own grid, ``metrics.json`` and a figure. Labels (the dataset's, or ``truth_dir``'s) are
  scored on each session's own grid; without any, metrics are None."""
  run = read_run(workdir)
  config = Config.from_json(run["config"])
  study, protocol = load_for_evaluation(run, data_dir, truth_dir)
  for line in sequences.describe_unassigned(study):
    log(line)
  out_dir = out_dir or os.path.join(workdir, "predictions")
  check_output_dir(out_dir, study.root)
  if truth_dir:
    check_outside_dataset(out_dir, truth_dir, "--out")
  c = protocol.num_classes
  model, params, step = restore_params(workdir, config, c, len(protocol.modalities))
  predict_fn = jax.jit(lambda p, x, v: train_lib.predict_proba(p, model.apply, x, v))
  cms = np.zeros((protocol.num_timepoints, c, c))
  agreement = [np.zeros((2, protocol.num_timepoints - 1)) for _ in range(2)]
  figure, written = None, 0
  for subject in study.subjects:
    if subject.grid is None:
      log(f"sub-{subject.subject_id}: no session fits the protocol's time points; not segmented")
      continue
    seq, probs = segment_subject(predict_fn, params, subject, study.protocol, batch_size)
    pred = np.argmax(probs, axis=-1).astype(np.int32)  # [Z, T, X, Y] on the working grid
    for t, session in enumerate(subject.timepoints):
      if session is None:
        continue
      native = to_session_grid(np.moveaxis(probs[:, t], 0, 2), subject, session)
      path = prediction_path(out_dir, subject.subject_id, session.label, config.model)
      with naming(path):
        nifti_io.save_like(path, native, session.ref)
      written += 1
      cm = native_scores(native, session, c)
      if cm is not None:
        cms[t] += cm
    mask = seq.label_mask * seq.valid[:, :, None, None]
    for counts, seg in zip(agreement, (pred, seq.labels)):
      counts += metrics_lib.temporal_agreement(seg, mask)
    if figure is None or (figure[1].label_mask.sum() == 0 < seq.label_mask.sum()):
      figure = (subject, seq, pred)
    log(f"sub-{subject.subject_id}: {pred.shape[0]} slices x {pred.shape[1]} time points")
  if figure is None:
    raise DataError(f"{study.root}: no session of any subject fits the protocol "
                    f"{protocol.name}'s time points; nothing to segment.")
  result = summarize_run(cms, agreement, protocol)
  result.update(workdir=os.path.abspath(workdir), checkpoint_step=step, model=config.model,
                predictions=written, labels=str(truth_dir) if truth_dir else "dataset",
                out=os.path.abspath(out_dir))
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


def summarize_run(cms, agreement, protocol) -> dict:
  """metrics.json: per time point and per split, and temporal consistency (None where no
  voxel is labeled)."""
  names = protocol.class_names
  per_t = []
  for t in range(protocol.num_timepoints):
    per_t.append(dict(timepoint=t + 1, role=protocol.role(t),
                      age=protocol.ages[t] if protocol.ages else None,
                      **metrics_lib.summarize(cms[t], names)))
  pick = lambda ts: metrics_lib.summarize(cms[list(ts)].sum(0), names) if ts else None
  ratio = lambda counts: [None if b == 0 else float(a / b) for a, b in zip(*counts)]
  return {"metrics_available": bool(cms.sum() > 0),
          "test": pick(protocol.test_timepoints), "train": pick(protocol.train_timepoints),
          "per_timepoint": per_t,
          "temporal_consistency": {"prediction": ratio(agreement[0]),
                                   "ground_truth": ratio(agreement[1])}}


def save_figure(path, subject, seq, pred, protocol, model_name):
  """Fig. 4 layout at the subject's most labeled slice: T1w, T2w, ground truth, prediction."""
  per_slice = seq.label_mask.sum(axis=(1, 2, 3))
  i = int(np.argmax(per_slice)) if per_slice.any() else len(seq) // 2
  rows = range(protocol.num_timepoints)
  columns = [(m, "image", [seq.images[i, t, ..., k] if seq.valid[i, t] else None for t in rows])
             for k, m in enumerate(protocol.modalities)]
  columns.append(("ground truth", "labels",
                  [seq.labels[i, t] if seq.label_mask[i, t].any() else None for t in rows]))
  columns.append((model_name, "labels", [pred[i, t] if seq.valid[i, t] else None for t in rows]))
  labels = [f"{protocol.ages[t]:g}" if protocol.ages else f"t{t + 1}" for t in rows]
  labels = [l + (" (test)" if t in protocol.test_timepoints else "") for t, l in enumerate(labels)]
  figures.montage(path, columns, labels, protocol.num_classes,
                  title=f"sub-{subject.subject_id}, axial slice z={int(seq.slice_index[i])}")
