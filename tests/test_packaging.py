"""``pip install .`` gives a working install: the package with its protocol files (and not the
repository's ``experiments/``, which stay outside it), and the console commands
``fcslstm-train`` / ``fcslstm-evaluate`` / ``fcslstm`` (the BIDS-App).

The fresh virtual environment borrows this one's dependencies (pip and setuptools too)
through a ``.pth`` file, so the test downloads nothing and installs only this project
(``--no-deps``); the commands run outside the repository, so they import the installed copy."""

import os
import pathlib
import site
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(args, cwd, env=None, timeout=600):
  proc = subprocess.run(
    [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert proc.returncode == 0, (
    f"{args[0]} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  )
  return proc.stdout


def test_pip_install_gives_the_package_and_its_commands(dataset, tmp_path):
  venv = tmp_path / "venv"
  run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)  # pip: borrowed
  python, scripts = venv / "bin" / "python", venv / "bin"
  lib = run(
    [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
  ).strip()
  pathlib.Path(lib, "parent-site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", REPO], tmp_path)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  where = run(
    [
      python,
      "-c",
      "import fcslstm_jax; from fcslstm_jax.data import protocol; "
      "print(fcslstm_jax.__file__); print(protocol.get_protocol('ibis').ages); "
      "import importlib.metadata as m; "
      "print(m.version('fcslstm-jax'), fcslstm_jax.__version__)",
    ],
    tmp_path,
    env,
  ).split()
  assert where[0].startswith(lib), where  # the installed copy, not the repository's
  shipped = sorted(p.relative_to(lib).as_posix() for p in pathlib.Path(lib).rglob("*.py"))
  assert "fcslstm_jax/infer/pipeline.py" in shipped, shipped
  assert not [p for p in shipped if p.startswith(("fcslstm_jax/experiments", "experiments"))]
  assert "(6," in where[1]  # protocols/ibis.json was installed with the package
  assert where[-2] == where[-1], where  # one version: the package's __version__
  workdir, out = tmp_path / "run", tmp_path / "pred"
  run(
    [
      scripts / "fcslstm-train",
      "--data-dir",
      dataset,
      "--config",
      "tiny",
      "--model",
      "fcn",
      "--epochs",
      "1",
      "--batch-size",
      "2",
      "--workdir",
      workdir,
    ],
    tmp_path,
    env,
  )
  run(
    [scripts / "fcslstm-evaluate", "--workdir", workdir, "--out", out, "--no-report"], tmp_path, env
  )
  assert len(list(out.glob("sub-*/ses-*/anat/*_dseg.nii.gz"))) == 10
  assert (out / "metrics.json").is_file()
  assert "{participant,group}" in run([scripts / "fcslstm", "--help"], tmp_path, env)  # BIDS-App
