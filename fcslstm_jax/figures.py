"""Fig. 4-style montages: rows = time points, columns = images, ground truth, predictions."""

import pathlib

import numpy as np

CLASS_COLORS = ("black", "#3b7dd8", "#9e9e9e", "#f5f5f5")  # background, CSF, GM, WM


def montage(path, columns, row_labels, num_classes: int, title: str = ""):
  """Writes a PNG grid.

  Args:
    path: output PNG.
    columns: list of ``(name, kind, slices)``; ``kind`` is ``"image"`` (values in [0, 1]) or
      ``"labels"`` (integer classes); ``slices`` is a list with one 2D ``[H, W]`` array per
      row (canonical x, y), or None for an empty cell (a missing session).
    row_labels: one label per row (e.g. "6 mo (test)").
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import colors

  cmap = (colors.ListedColormap(CLASS_COLORS[:num_classes]) if num_classes <= len(CLASS_COLORS)
          else plt.get_cmap("tab10"))
  rows = len(row_labels)
  fig, axes = plt.subplots(rows, len(columns), figsize=(2.0 * len(columns), 2.0 * rows),
                           squeeze=False)
  for j, (name, kind, slices) in enumerate(columns):
    for t in range(rows):
      ax = axes[t, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if t == 0:
        ax.set_title(name, fontsize=9)
      if j == 0:
        ax.set_ylabel(row_labels[t], fontsize=9)
      a = slices[t]
      if a is None:
        continue
      if kind == "labels":
        ax.imshow(np.asarray(a).T, origin="lower", cmap=cmap, vmin=-0.5,
                  vmax=num_classes - 0.5, interpolation="nearest")
      else:
        ax.imshow(np.asarray(a).T, origin="lower", cmap="gray", vmin=0, vmax=1)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def subject_preview(path, subject, protocol, z=None):
  """A subject's montage: rows = time points, columns = each modality and the counted labels,
  at axial slice ``z`` of its working grid (default: the most labeled one)."""
  if z is None:
    counts = sum(s.label_mask.sum(axis=(0, 1)) for s in subject.sessions
                 if s.label_mask is not None)
    z = int(np.argmax(counts)) if np.any(counts) else subject.grid.shape[2] // 2
  slots = subject.timepoints
  columns = [(m, "image", [s.image[:, :, z, k] if s is not None else None for s in slots])
             for k, m in enumerate(protocol.modalities)]
  columns.append(("labels", "labels", [
      s.labels[:, :, z] if s is not None and s.label_mask is not None
      and s.label_mask[:, :, z].any() else None for s in slots]))
  rows = [(f"{protocol.ages[t]:g}" if protocol.ages else f"t{t + 1}") + f" ({protocol.role(t)})"
          for t in range(protocol.num_timepoints)]
  montage(path, columns, rows, protocol.num_classes,
          title=f"sub-{subject.subject_id}, axial slice z={z}")
