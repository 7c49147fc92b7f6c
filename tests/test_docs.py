"""The documentation holds together: a short front page, links and anchors that resolve, a code
map that names every module there is and none that is gone. Reads files only (no network)."""

import collections
import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CODE_MAP = DOCS / "code-map.md"
MAX_README_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
BACKTICKED = re.compile(r"`([^`]+)`")


def markdown_files():
  return [README] + sorted(DOCS.glob("*.md"))


def rel(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT))


def prose_lines(path: pathlib.Path):
  """(line number, text) outside fenced code blocks."""
  fenced = False
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced:
      yield number, line


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lowercase, punctuation dropped (hyphens and spaces kept),
  spaces to hyphens."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
  text = re.sub(r"[^\w\- ]", "", text.strip().lower())
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
  seen = collections.Counter()
  found = set()
  for _, line in prose_lines(path):
    match = HEADING.match(line)
    if match:
      base = slug(match.group(2))
      found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
      seen[base] += 1
  return found


def links(path: pathlib.Path):
  """(line number, target) of every markdown link and image outside code."""
  for number, line in prose_lines(path):
    for match in LINK.finditer(INLINE_CODE.sub("", line)):
      yield number, match.group(1)


def test_front_page_is_short():
  lines = len(README.read_text(encoding="utf-8").splitlines())
  assert lines < MAX_README_LINES, (
    f"README.md has {lines} lines, the front page must stay under {MAX_README_LINES}: "
    "move a section into a docs/ page and link it"
  )


def test_every_relative_link_and_anchor_resolves():
  broken = []
  for source in markdown_files():
    for number, target in links(source):
      if re.match(r"(https?|mailto|ftp):", target, re.IGNORECASE):
        continue
      where = f"{rel(source)}:{number}: ({target})"
      path, _, anchor = target.partition("#")
      dest = (source.parent / path).resolve() if path else source
      if not dest.exists():
        broken.append(f"{where}: no file {rel(dest) if dest.is_relative_to(ROOT) else dest}")
      elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
        broken.append(f"{where}: no heading with anchor #{anchor} in {rel(dest)}")
  assert broken == [], "broken links:\n" + "\n".join(broken)


def test_slug_follows_github():
  assert (
    slug("3D + time (volumes over time; ours, issue 14)")
    == "3d--time-volumes-over-time-ours-issue-14"
  )
  assert slug("What `train.py` does") == "what-trainpy-does"
  assert slug("Side by side with nnU-Net v2") == "side-by-side-with-nnu-net-v2"


def table_paths(path: pathlib.Path, section: str | None = None):
  """Backticked names ending in .py or / in the first cell of every table row (of one
  ``## section`` if given): the code map's paths, relative to the repository root."""
  inside = section is None
  for number, line in prose_lines(path):
    if section is not None and line.startswith("## "):
      inside = line[3:].strip() == section
    if not inside or not line.startswith("|") or re.match(r"^\|[\s:|-]+$", line):
      continue
    first_cell = line.split("|")[1]
    for name in BACKTICKED.findall(first_cell):
      if name.endswith((".py", "/")):
        yield number, name


def modules(folder: str):
  return {
    rel(p)
    for p in (ROOT / folder).rglob("*.py")
    if p.name != "__init__.py" and "__pycache__" not in p.parts
  }


def test_code_map_names_every_module_and_no_missing_file():
  named = {name for _, name in table_paths(CODE_MAP)}
  missing = sorted((modules("fcslstm_jax") | modules("experiments")) - named)
  gone = [
    f"{rel(CODE_MAP)}:{number}: {name}"
    for number, name in table_paths(CODE_MAP)
    if not (ROOT / name).exists()
  ]
  assert (missing, gone) == ([], []), (
    f"modules that {rel(CODE_MAP)} does not name: {missing}\n"
    "code map entries with no such file or folder:\n" + "\n".join(gone)
  )


def test_front_page_code_map_names_existing_paths_and_links_the_full_one():
  section = "Where things are"
  gone = [
    f"README.md:{number}: {name}"
    for number, name in table_paths(README, section)
    if not (ROOT / name).exists()
  ]
  assert gone == [], f"README '{section}' names paths that do not exist:\n" + "\n".join(gone)
  assert "docs/code-map.md" in {target for _, target in links(README)}, (
    "README.md does not link docs/code-map.md"
  )


def test_modules_and_scripts_named_in_the_docs_exist():
  """Paths of Python files (``experiments/compare.py``, ``fcslstm_jax/outputs/flags.py``, or
  relative to the package: ``train/loop.py``), ``python -m fcslstm_jax....`` modules and
  ``python X.py`` scripts, so that a renamed or moved module leaves no stale command behind."""
  stale = []
  for source in markdown_files():
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
      where = f"{rel(source)}:{number}:"
      for name in re.findall(r"(?<![\w/.-])((?:[\w.-]+/)+[\w.-]+\.py)\b", line):
        if not ((ROOT / name).is_file() or (ROOT / "fcslstm_jax" / name).is_file()):
          stale.append(f"{where} {name} (neither in the repository nor in fcslstm_jax/)")
      for name in re.findall(r"python3? ([\w.-]+\.py)\b", line):
        if not (ROOT / name).is_file():
          stale.append(f"{where} python {name}")
      for name in re.findall(r"python3? -m (fcslstm_jax(?:\.\w+)+)", line):
        path = ROOT / name.replace(".", "/")
        if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
          stale.append(f"{where} python -m {name}")
  assert stale == [], "modules or scripts named in the docs that do not exist:\n" + "\n".join(stale)


def test_the_performance_table_is_the_one_the_json_files_make():
  """README.md's performance table is what ``bench/readme_table.py`` makes from
  ``bench/results/*.json`` (rerun it with ``--write`` after a benchmark)."""
  spec = importlib.util.spec_from_file_location("readme_table", ROOT / "bench" / "readme_table.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  text = (ROOT / "README.md").read_text()
  assert module.with_table(text, module.table()) == text
