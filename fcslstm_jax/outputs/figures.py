"""Fig. 4-style montages: rows = time points, columns = images, ground truth, predictions."""

import pathlib

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

CLASS_COLORS = ("black", "#3b7dd8", "#9e9e9e", "#f5f5f5")  # background, CSF, GM, WM


def montage(path, columns, row_labels, num_classes: int, title: str = ""):
  """Writes a PNG grid.

  Args:
    path: output PNG.
    columns: list of ``(name, kind, slices)``; ``kind`` is ``"image"`` (values in [0, 1],
      grey), ``"map"`` (values in [0, 1], e.g. uncertainty, black to yellow) or ``"labels"``
      (integer classes); ``slices`` is a list with one 2D ``[H, W]`` array per
      row (canonical x, y), or None for an empty cell (a missing session).
    row_labels: one label per row (e.g. "6 mo (test)").
  """
  cmap = (
    mcolors.ListedColormap(CLASS_COLORS[:num_classes])
    if num_classes <= len(CLASS_COLORS)
    else matplotlib.colormaps["tab10"]
  )
  rows = len(row_labels)
  fig = Figure(figsize=(2.0 * len(columns), 2.0 * rows))
  axes = fig.subplots(rows, len(columns), squeeze=False)
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
        ax.imshow(
          np.asarray(a).T,
          origin="lower",
          cmap=cmap,
          vmin=-0.5,
          vmax=num_classes - 0.5,
          interpolation="nearest",
        )
      elif kind == "map":
        ax.imshow(
          np.asarray(a).T, origin="lower", cmap="magma", vmin=0, vmax=1, interpolation="nearest"
        )
      else:
        ax.imshow(np.asarray(a).T, origin="lower", cmap="gray", vmin=0, vmax=1)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)


def subject_preview(path, subject, protocol, z=None):
  """A subject's montage: rows = time points, columns = each modality and the counted labels,
  at axial slice ``z`` of its working grid (default: the most labeled one)."""
  if z is None:
    counts = sum(
      s.label_mask.sum(axis=(0, 1)) for s in subject.sessions if s.label_mask is not None
    )
    z = int(np.argmax(counts)) if np.any(counts) else subject.grid.shape[2] // 2
  slots = subject.timepoints
  columns = [
    (m, "image", [s.image[:, :, z, k] if s is not None else None for s in slots])
    for k, m in enumerate(protocol.modalities)
  ]
  columns.append(
    (
      "labels",
      "labels",
      [
        s.labels[:, :, z]
        if s is not None and s.label_mask is not None and s.label_mask[:, :, z].any()
        else None
        for s in slots
      ],
    )
  )
  rows = [
    (f"{protocol.ages[t]:g}" if protocol.ages else f"t{t + 1}") + f" ({protocol.role(t)})"
    for t in range(protocol.num_timepoints)
  ]
  montage(
    path, columns, rows, protocol.num_classes, title=f"sub-{subject.subject_id}, axial slice z={z}"
  )


def trajectories(path, rows, class_names, flagged=(), age_unit=None):
  """Volume against age, one panel per tissue class and one for their total (any number of
  classes: rows of up to 4 panels), one line per subject (the same colour in every panel);
  flagged sessions are circled in red. Returns the panels' titles, in order.

  Args:
    path: output PNG.
    rows: :class:`fcslstm_jax.outputs.volumes.SessionVolumes` of every session.
    class_names: the protocol's classes (background first; it is not plotted).
    flagged: ``(subject, session, class name)`` triples to circle (class ``""``: every
      panel of that session).
    age_unit: shown on the x axis when known (a protocol's ages carry no unit).
  """
  panels = list(class_names[1:]) + ["total"]
  subjects = sorted({r.subject for r in rows})
  colors = matplotlib.colormaps["tab10" if len(subjects) <= 10 else "tab20"]
  circled = set(flagged)
  cols = min(len(panels), 4)
  grid_rows = -(-len(panels) // cols)
  fig = Figure(figsize=(3.4 * cols, 3.2 * grid_rows))
  axes = fig.subplots(grid_rows, cols, squeeze=False)
  axes = axes.ravel()
  for ax in axes[len(panels) :]:
    ax.set_visible(False)  # the last row's empty places
  for k, name in enumerate(panels):
    ax = axes[k]
    for i, subject in enumerate(subjects):
      mine = sorted((r for r in rows if r.subject == subject), key=lambda r: r.age)
      ages = [r.age for r in mine]
      vol = [sum(r.volumes_ml.values()) if name == "total" else r.volumes_ml[name] for r in mine]
      ax.plot(
        ages,
        vol,
        "-o",
        color=colors(i % colors.N),
        markersize=3,
        linewidth=1,
        label=f"sub-{subject}",
      )
      for r, a, v in zip(mine, ages, vol):
        if (r.subject, r.session, name) in circled or (r.subject, r.session, "") in circled:
          ax.plot(
            [a],
            [v],
            "o",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor="red",
            markeredgewidth=1.5,
          )
    ax.set_title(name if name != "total" else "total (tissues)", fontsize=10)
    ax.set_xlabel(f"age ({age_unit})" if age_unit else "age", fontsize=9)
    if k % cols == 0:
      ax.set_ylabel("volume (mL)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  if circled:
    handles.append(
      Line2D(
        [],
        [],
        marker="o",
        linestyle="none",
        markerfacecolor="none",
        markeredgecolor="red",
        markersize=8,
      )
    )
    labels.append("flagged")
  fig.legend(
    handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False
  )
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80, bbox_inches="tight")
  titles = [ax.get_title() for ax in axes if ax.get_visible()]
  return titles
