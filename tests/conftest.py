"""Shared fixtures. Real data comes from the mirror folder (LICM_DATA_MIRROR or ../shared/data).

Outside CI a missing mirror skips the tests that need it; with CI=true it fails the run,
because a green CI that skipped the data tests would prove nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The longest modules first (seconds on 2 CPU cores, serial): `make test` runs two pytest-xdist
# workers with one module per worker at a time (--dist loadfile: a module's fixtures, a SLURM
# cluster, an SSH server, a smoke repository, are built once), so the long ones must not be last.
LONGEST_FIRST = ("test_slurm.py",        # ~600 s
                 "test_pipeline.py",     # ~530 s
                 "test_offline.py",      # ~200 s (a pip download, a fresh venv, the smoke report)
                 "test_fidelity.py",     # ~190 s
                 "test_campaign.py",     # ~170 s: four smoke campaigns
                 "test_remote.py",       # ~140 s
                 "test_train.py",        # ~100 s
                 "test_interrupts.py")   # ~90 s


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: file order otherwise


def mirror_path() -> Path | None:
    candidates = [os.environ.get("LICM_DATA_MIRROR"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = mirror_path()
    if path is None:
        msg = "no data mirror: set LICM_DATA_MIRROR to a folder laid out like shared/data"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI=true: a missing mirror fails instead of skipping)")
        pytest.skip(msg)
    return path


def write_params(folder: Path, **blocks) -> Path:
    """A copy of the repository's params.yaml with data paths inside `folder` and blocks merged in."""
    from licm.config import deep_merge

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["raw_dir"] = str(folder / "raw")
    params["data"]["prepared_dir"] = str(folder / "prepared")
    params = deep_merge(params, blocks)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, mirror) -> dict:
    """Raw and prepared data for both domains, built once per test session from the mirror."""
    from licm import config, data

    folder = tmp_path_factory.mktemp("data")
    path = write_params(folder, data={"mirror": str(mirror)}, profile="quick")
    params = config.load(path)
    data.fetch(params)
    for domain in params["data"]["prepare"]:
        data.prepare_domain(params, domain)
    return {"params": params, "params_path": path, "folder": folder}
