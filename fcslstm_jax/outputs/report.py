"""One self-contained HTML page per evaluation: what was run, the scores, the flags, the
volume trajectories and the least trusted sessions.

Self-contained: the figures are PNGs embedded as base64 ``data:`` URIs and the style is
inline, so the page can be mailed or archived alone; the tables' files (``volumes.tsv``,
``qc.tsv``, ``flags.tsv``, ``metrics.json``) are linked relative to the page, next to it.
Every text that comes from the data (ids, paths, messages) is HTML-escaped.
"""

import base64
import html

FLAGS_SHOWN = 20  # the rest of a long list is folded

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1100px; color: #222; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px;
  border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.meta { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
tr.flagged td { background: #fff1f0; }
.note { color: #555; font-size: 13px; }
.ok { color: #1a7f37; } .warn { color: #b42318; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; }
details summary { cursor: pointer; color: #0b57d0; font-size: 14px; }
"""


def esc(value) -> str:
  return html.escape(str(value))


def png_tag(png: bytes, alt: str) -> str:
  """An ``<img>`` holding the PNG bytes inline."""
  data = base64.b64encode(png).decode("ascii")
  return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _is_number(text) -> bool:
  try:
    float(text)
  except (TypeError, ValueError):
    return False
  return True


def table(header, rows, highlight=()) -> str:
  """An HTML table; numeric cells right-aligned, text left; rows whose index is in
  ``highlight`` shaded."""
  head = "".join(
    f'<th class="text">{esc(h)}</th>'
    if not rows or not _is_number(rows[0][i])
    else f"<th>{esc(h)}</th>"
    for i, h in enumerate(header)
  )
  body = []
  for k, row in enumerate(rows):
    cells = "".join(
      f"<td>{esc(v)}</td>" if _is_number(v) else f'<td class="text">{esc(v)}</td>' for v in row
    )
    body.append(f'<tr class="flagged">{cells}</tr>' if k in highlight else f"<tr>{cells}</tr>")
  return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(v, digits=3):
  return "n/a" if v is None else f"{v:.{digits}f}"


def metrics_table(metrics: dict, class_names) -> str:
  """mPA, mPA of the tissues and Dice per class, for the train and test time points."""
  if not metrics.get("metrics_available"):
    return (
      '<p class="note">No labels in this dataset: no scores. Every other output is written.</p>'
    )
  tissues = list(class_names[1:])
  header = ["time points", "mPA", "mPA (tissues)", "mean Dice"] + [f"Dice {n}" for n in tissues]
  rows = []
  for split in ("train", "test"):
    m = metrics.get(split)
    if not m or m.get("mpa") is None:
      rows.append([split] + ["n/a"] * (len(header) - 1))
      continue
    rows.append(
      [split, _fmt(m["mpa"]), _fmt(m["mpa_fg"]), _fmt(m["mean_dice"])]
      + [_fmt(m["dice"].get(n)) for n in tissues]
    )
  return table(header, rows)


def page(title: str, meta: list, sections: list) -> str:
  """The whole HTML document: ``meta`` lines under the title, then ``(heading, html)``."""
  lines = "".join(f"<div>{esc(m)}</div>" for m in meta)
  body = "".join(f"<h2>{esc(h)}</h2>\n{content}\n" for h, content in sections)
  return (
    f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>"
    f'<h1>{esc(title)}</h1><div class="meta">{lines}</div>\n{body}</body></html>\n'
  )


def evaluation_page(
  *,
  title,
  meta,
  metrics,
  class_names,
  flags,
  volumes,
  qc_rows,
  trajectories_png,
  worst_png,
  worst_count,
  flagged_png=None,
  flagged_count=0,
) -> str:
  """The evaluation report.

  Args:
    title, meta: heading and lines under it (dataset, members, TTA, time).
    metrics: ``metrics.json``'s content.
    class_names: the protocol's classes.
    flags: ``(header, rows)`` of ``flags.tsv``.
    volumes: ``(header, rows)`` of ``volumes.tsv``.
    qc_rows: ``(header, rows)`` of ``qc.tsv`` (worst first).
    trajectories_png, worst_png: PNG bytes (``worst_png`` may be None: no session).
    worst_count: how many of the worst sessions the montage shows.
    flagged_png, flagged_count: the montage of the first flagged sessions, and how many.
  """
  flag_header, flag_rows = flags
  n_flags = len(flag_rows)
  flagged = {(r[0], r[1]) for r in flag_rows}
  summary = (
    f"<p>{len(volumes[1])} sessions of {len({r[0] for r in volumes[1]})} subjects "
    f"segmented. "
    + (
      f'<span class="warn">{n_flags} flag(s) on {len(flagged)} '
      f"session(s)</span>: check those segmentations by hand."
      if n_flags
      else '<span class="ok">No flags.</span>'
    )
    + "</p>"
  )
  if n_flags > FLAGS_SHOWN:
    flag_html = (
      table(flag_header, flag_rows[:FLAGS_SHOWN])
      + f"<details><summary>{n_flags - FLAGS_SHOWN} more</summary>"
      + table(flag_header, flag_rows[FLAGS_SHOWN:])
      + "</details>"
    )
  else:
    flag_html = table(flag_header, flag_rows) if n_flags else '<p class="note">No rule fired.</p>'
  flag_html += (
    '<p class="note">Rules and limits: <a href="flags.json">flags.json</a> '
    "(change them with evaluate.py --flags FILE.json). All flags in "
    '<a href="flags.tsv">flags.tsv</a>.</p>'
  )
  if flagged_png is not None:
    flag_html += (
      f"<p>The first {flagged_count} flagged session(s), at their most uncertain "
      "axial slice (working grid): images, prediction, uncertainty.</p>"
      + png_tag(flagged_png, "flagged sessions")
    )
  qc_header, qc_all = qc_rows
  shown = qc_all[: max(worst_count, 10)]
  hi = {k for k, r in enumerate(shown) if (r[1], r[2]) in flagged}
  qc_html = (
    table(qc_header, shown, hi)
    + f'<p class="note">QC score: mean voxel uncertainty (normalized entropy, 0 = '
    f"certain, 1 = all classes equally likely) inside the predicted brain; highest "
    f"first. {len(shown)} of {len(qc_all)} sessions shown, all in "
    f'<a href="qc.tsv">qc.tsv</a>. Shaded: flagged.</p>'
  )
  if worst_png is not None:
    qc_html += (
      f"<p>The {worst_count} least trusted sessions, at their most uncertain axial "
      f"slice (working grid): images, prediction, uncertainty.</p>"
      + png_tag(worst_png, "least trusted sessions")
    )
  vol_header, vol_rows = volumes
  hi = {k for k, r in enumerate(vol_rows) if (r[0], r[1]) in flagged}
  volume_html = (
    png_tag(trajectories_png, "tissue volumes against age")
    + '<p class="note">One line per subject; red circles: flagged sessions. '
    'Volumes on each session\'s own (input) grid, in <a href="volumes.tsv">'
    "volumes.tsv</a>.</p>"
    + f"<details><summary>All {len(vol_rows)} sessions</summary>"
    + table(vol_header, vol_rows, hi)
    + "</details>"
  )
  sections = [
    ("Summary", summary + metrics_table(metrics, class_names)),
    ("Flags", flag_html),
    ("Tissue volumes over age", volume_html),
    ("Quality control", qc_html),
    (
      "Files",
      '<p class="note">Next to this page: <a href="metrics.json">metrics.json</a>, '
      '<a href="volumes.tsv">volumes.tsv</a>, <a href="qc.tsv">qc.tsv</a>, '
      '<a href="flags.tsv">flags.tsv</a>, <a href="flags.json">flags.json</a> (the '
      "rules used); per session under sub-*/ses-*/anat/: *_dseg.nii.gz, "
      "*_uncertainty.nii.gz and, with --probabilities, *_probseg.nii.gz.</p>",
    ),
  ]
  return page(title, meta, sections)
