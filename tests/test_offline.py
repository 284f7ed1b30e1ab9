"""Snakemake on a machine without internet (README "Running on a GPU machine"): the wheel folder of
workflow/scripts/wheels.py, installed with pip's index switched off into a fresh virtual environment,
builds the smoke report with Snakemake itself.

The fresh environment gets torch the way a GPU machine has it, already installed: a .pth file names a
folder that holds links to torch, torchvision and the distributions they require, from this test's
environment, and nothing else of it (Snakemake, pandas, matplotlib, ... must come from the wheel folder)."""
from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoke_repo import REPO, build_smoke_repo, data_source

pytestmark = pytest.mark.offline
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import wheels  # noqa: E402


def torch_only(folder: Path) -> Path:
    """Links to torch's, torchvision's and their requirements' top-level files (packages, modules, metadata)."""
    folder.mkdir()
    for name in wheels.closure(wheels.TARGET_HAS):
        dist = md.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            if top not in ("..", "__pycache__") and not (folder / top).exists():
                (folder / top).symlink_to(Path(dist.locate_file(top)).resolve())
    return folder


def offline_env(venv: Path) -> dict:
    """pip with no index and no configured sources; the fresh environment's tools first on PATH."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    e.pop("LICM_DATA_MIRROR", None)
    return {**e, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/",
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_folder_builds_the_smoke_report_offline(tmp_path, request):
    folder = tmp_path / "wheels"
    run([sys.executable, str(REPO / "workflow/scripts/wheels.py"), "download", "--out", str(folder)], tmp_path)
    names = {line.split("==")[0] for line in (folder / "requirements.txt").read_text().split()}
    assert "snakemake" in names and not names & {"torch", "pulp", "scipy", "torchvision", "dvc"}, names

    repo = build_smoke_repo(tmp_path / "repo", data_source(lambda: Path(request.getfixturevalue("prepared")["folder"])))
    venv = tmp_path / "venv"
    run([sys._base_executable, "-m", "venv", str(venv)], tmp_path)
    site = Path(run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    tmp_path).strip())
    (site / "torch-from-this-machine.pth").write_text(f"{torch_only(tmp_path / 'torch-only')}\n")
    env = offline_env(venv)
    run([str(venv / "bin/python"), "workflow/scripts/wheels.py", "install", "--wheels", str(folder)], repo, env)
    found = run([str(venv / "bin/python"), "-c", "import importlib.util as u, snakemake, licm; print(snakemake.__file__, "
                 "licm.__file__, [m for m in ('pulp', 'scipy', 'dvc') if u.find_spec(m)])"], repo, env)
    assert found.startswith(str(venv)) and f" {repo}/src/licm/__init__.py []" in found, found

    run(["snakemake", "--workflow-profile", "workflow/profiles/default", "--scheduler", "greedy", "--cores", "2",
         "report"], repo, env, timeout=1500)
    page = (repo / "results/report/index.html").read_text()
    assert "profile smoke" in page or "smoke" in page
    assert (repo / "results/summary.json").is_file() and (repo / "results/figures/licm-fig7.png").is_file()
