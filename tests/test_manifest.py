"""An --out folder describes one evaluation (fcslstm_jax/outputs/manifest.py, issue 34): a
reused folder never mixes the predictions of two models or datasets."""

import json
import shutil

import pytest

import evaluate
from fcslstm_jax.errors import ConfigError
from fcslstm_jax.outputs import manifest


def dseg_files(out):
  return sorted(p.relative_to(out) for p in out.glob("sub-*/ses-*/anat/*_dseg.nii.gz"))


def test_a_folder_with_files_of_unknown_origin_is_refused(tmp_path):
  (tmp_path / "sub-01_desc-other_dseg.nii.gz").write_bytes(b"x")
  with pytest.raises(ConfigError, match="did not write"):
    manifest.claim(tmp_path, manifest.identity(["runs/a"], "data/x"))
  assert not (tmp_path / manifest.NAME).exists()


def test_an_unreadable_manifest_names_the_file(tmp_path):
  (tmp_path / manifest.NAME).write_text("[1, 2")
  with pytest.raises(ConfigError, match="outputs.json: not valid JSON"):
    manifest.claim(tmp_path, manifest.identity(["runs/a"], "data/x"))


def test_reused_out_folder(study_dir, study_run, tmp_path, capsys):
  out = tmp_path / "pred"
  args = ["--workdir", str(study_run), "--data-dir", str(study_dir), "--out", str(out)]
  assert evaluate.main(args) == 0
  first = json.loads((out / manifest.NAME).read_text())
  assert first["complete"] and "report.html" in first["files"]
  assert sorted(f for f in first["files"] if f.endswith("_dseg.nii.gz")) == [
    str(p) for p in dseg_files(out)
  ]
  assert len(dseg_files(out)) == 3 * 5 - 1

  # The same run again, without the report: allowed, and the old report goes.
  assert evaluate.main(args + ["--no-report"]) == 0
  assert not (out / "report.html").exists()
  assert "report.html" not in json.loads((out / manifest.NAME).read_text())["files"]

  # Another model's run into the same folder: refused, nothing touched.
  other = tmp_path / "other-run"
  shutil.copytree(study_run, other)
  before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
  capsys.readouterr()
  assert (
    evaluate.main(["--workdir", str(other), "--data-dir", str(study_dir), "--out", str(out)]) != 0
  )
  err = capsys.readouterr().err
  assert "holds the outputs of another evaluation" in err and str(study_run) in err
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_an_older_evaluation_of_the_same_run_is_reused_and_of_another_refused(tmp_path):
  """Folders written before manifests existed: metrics.json names the run folders."""
  ident = manifest.identity(["runs/a"], "data/x")
  (tmp_path / "metrics.json").write_text(
    json.dumps({"members": [{"workdir": ident["workdirs"][0]}]})
  )
  assert manifest.claim(tmp_path, ident) == []
  assert json.loads((tmp_path / manifest.NAME).read_text())["identity"] == ident
  other = tmp_path / "other"
  other.mkdir()
  (other / "metrics.json").write_text(json.dumps({"members": [{"workdir": "/elsewhere"}]}))
  with pytest.raises(ConfigError, match="did not write"):
    manifest.claim(other, ident)
