"""fcslstm_jax/files.py: atomic writes that others can read (the umask's mode)."""

import os
import stat

import numpy as np
import pytest

from fcslstm_jax import files
from fcslstm_jax.data import nifti_io


@pytest.fixture
def umask():
  """Sets the process umask for one test and restores it afterwards."""
  old = os.umask(0o022)
  try:
    yield lambda mask: os.umask(mask)
  finally:
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(umask, tmp_path, mask, mode):
  umask(mask)
  files.write_text(tmp_path / "report.html", "<p>x</p>")
  files.write_tsv(tmp_path / "volumes.tsv", ["a"], [[1]])
  files.write_json(tmp_path / "run.json", {"a": 1})
  nifti_io.write_volume(tmp_path / "dseg.nii.gz", np.zeros((2, 2, 2)), np.eye(4), np.uint8)
  for name in ("report.html", "volumes.tsv", "run.json", "dseg.nii.gz"):
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_writing_never_changes_the_umask(monkeypatch, tmp_path):
  """Setting the umask to 0 even briefly would give files that other threads create
  meanwhile mode 0o666 (issue 34): the writer must not touch it."""

  def no_umask(mask):
    raise AssertionError(f"os.umask({mask:#o}) called while writing a file")

  monkeypatch.setattr(os, "umask", no_umask)
  files.write_text(tmp_path / "a.txt", "x")
  files.write_json(tmp_path / "run.json", {"a": 1})
  assert (tmp_path / "a.txt").read_text() == "x"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "run.json"]  # no temp left
