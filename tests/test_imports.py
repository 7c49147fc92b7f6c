"""The package's folders import one way, as README "Where things are" lists them, and that
list names every folder and top-level module."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fcslstm_jax"
README = PACKAGE.parent / "README.md"

# Each layer imports only from itself and the layers before it.
LAYERS = (
  {
    "__init__",
    "config",
    "errors",
    "files",
    "jsonfile",
    "metrics",
    "checkpoint",
    "compile_cache",
  },  # base
  {"model"},
  {"data"},
  {"synthetic"},
  {"run_record", "datasets"},
  {"outputs"},
  {"infer"},
  {"train"},
  {"cli"},
)


def layer(top: str) -> int:
  return next(i for i, names in enumerate(LAYERS) if top in names)


def top_of(path: pathlib.Path) -> str:
  return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(path: pathlib.Path):
  """The package's top-level names (``data``, ``config``, ...) that ``path`` imports,
  inside functions too."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fcslstm_jax"):
      parts = node.module.split(".")
      yield from ([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
    elif isinstance(node, ast.Import):
      yield from (a.name.split(".")[1] for a in node.names if a.name.startswith("fcslstm_jax."))


def test_no_module_imports_upward():
  upward = [
    f"{p.relative_to(PACKAGE)} imports {name}"
    for p in sorted(PACKAGE.rglob("*.py"))
    for name in imported(p)
    if layer(name) > layer(top_of(p))
  ]
  assert upward == []


def test_the_package_never_imports_the_experiments_or_benchmarks():
  """``experiments/`` and ``bench/`` sit outside the package and use it, never the reverse."""
  outside = [
    f"{p.relative_to(PACKAGE)} imports {name}"
    for p in sorted(PACKAGE.rglob("*.py"))
    for node in ast.walk(ast.parse(p.read_text()))
    for name in (
      [a.name for a in node.names]
      if isinstance(node, ast.Import)
      else [node.module or ""]
      if isinstance(node, ast.ImportFrom)
      else []
    )
    if name.split(".")[0] in ("experiments", "bench")
  ]
  assert outside == []


def test_every_folder_and_module_is_in_a_layer_and_the_readme():
  tops = {top_of(p) for p in PACKAGE.rglob("*.py")}
  assert tops == set().union(*LAYERS)
  section = README.read_text().split("## Where things are")[1].split("\n## ")[0]
  missing = [
    t
    for t in sorted(tops - {"__init__"})
    if f"`{t}.py`" not in section
    and f"`{t}/`" not in section
    and f"fcslstm_jax/{t}.py`" not in section
    and f"fcslstm_jax/{t}/`" not in section
  ]
  assert missing == []


def test_only_the_command_line_tools_have_a_main():
  """A ``__main__`` block only in entry points (``fcslstm_jax/cli/``): a library module run as
  a script would be a second, unlisted command."""
  scripts = [
    str(path.relative_to(PACKAGE.parent))
    for path in sorted(PACKAGE.rglob("*.py"))
    if "cli" not in path.relative_to(PACKAGE).parts[:1]
    and '__name__ == "__main__"' in path.read_text(encoding="utf-8")
  ]
  assert not scripts, f"move their main() into fcslstm_jax/cli/: {scripts}"
