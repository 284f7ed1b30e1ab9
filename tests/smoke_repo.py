"""A smoke-scale copy of the repository for end-to-end tests (Snakemake, DVC, SLURM, remotes).

The copy holds the repository's sources (tracked files and untracked files git does not ignore,
so uncommitted work is tested too) but nothing the user has built: whatever lies under data/,
results/ or logs/ of the checkout stays out, so `make report` before `make test` cannot change a
test's outcome. Data comes from the prepared data of the checkout or the test session's own
(subsampled, so training and evaluation take seconds); params.yaml says `profile: smoke`; the
copy is its own git repository with a DVC remote beside it and the data stages recorded.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUBSAMPLE = {"train_transformed": 600, "train_canonical": 600, "test": 300}
# Built by the pipeline, never part of a test repository's sources.
BUILT = ("data/", "results/", "logs/", ".snakemake/", ".dvc/cache/", ".dvc/tmp/")
SMK = "snakemake --workflow-profile workflow/profiles/default --cores 2"


def env() -> dict:
    """The environment a user of the copy has: the venv's tools first, no data mirror."""
    e = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    e.pop("LICM_DATA_MIRROR", None)  # the copy must not fetch anything: its data is there
    return e


def as_foreground_job() -> None:
    """preexec_fn for a Snakemake started to receive Ctrl-C: SIGINT as in a terminal's foreground job,
    however the tests were started. A shell without job control starts a background command with
    SIGINT ignored, and every process below keeps that (licm.interrupts: why an earlier Ctrl-C test
    hung in one full-suite run)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_snakemake(cmd: str, repo: Path, log: Path) -> subprocess.Popen:
    """`cmd` (a snakemake command line) in the background, its own process group, output to `log`;
    SIGINT as in a terminal (as_foreground_job)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        return subprocess.Popen(f"exec {cmd}", shell=True, cwd=repo, env=env(), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=as_foreground_job)


def wait_for(ready, seconds: float, what: str, proc: subprocess.Popen, log: Path):
    """ready()'s first true value, polling every 0.5 s while `proc` runs; fails with the log's tail."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = ready()
        if value:
            return value
        assert proc.poll() is None, f"snakemake ended before {what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {seconds} s:\n{log.read_text()[-4000:]}")


def sh(cmd: str, cwd: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    t0 = time.time()
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    print(f"[{time.time() - t0:5.1f}s] {cmd}")
    if check and proc.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


# A training job of several seeds: rule train_<experiment>_seeds<a>-<b>[_<c>...] (workflow/rules/train.smk).
BATCH_RULE = re.compile(r"train_(?P<experiment>[a-z][a-z0-9_]*)_seeds(?P<seeds>[0-9][0-9_-]*)")


def ran_jobs(output: str) -> set[tuple]:
    """(rule, wildcards) of the jobs a snakemake run (or dry run) lists. A batched training job counts as
    one `train` job per seed ("experiment=E, seed=K"), as if each seed had had a job of its own."""
    jobs, rule = set(), None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\S+):", line.strip())
        if m:
            rule = m.group(1)
            batch = BATCH_RULE.fullmatch(rule)
            if batch:
                jobs.update(("train", f"experiment={batch['experiment']}, seed={s}")
                            for s in parse_seeds(batch["seeds"].replace("_", ",")))
                rule = None
            else:
                jobs.add((rule, ""))
            continue
        m = re.match(r"^wildcards: (.*)$", line.strip())
        if m and rule:
            jobs.discard((rule, ""))
            jobs.add((rule, m.group(1)))
    return jobs


def parse_seeds(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]."""
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def trained(output: str) -> set[str]:
    return {w for r, w in ran_jobs(output) if r == "train"}


def set_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tree_hashes(root: Path, *folders: str) -> dict:
    import hashlib

    out = {}
    for folder in folders:
        for f in sorted((root / folder).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def source_files(repo: Path = REPO) -> list[str]:
    """The repository's sources: tracked and untracked-not-ignored files, less anything built."""
    files = sh("git ls-files -co --exclude-standard", repo).stdout.split()
    return [f for f in files if not f.startswith(BUILT)]


def data_source(make_prepared) -> Path:
    """A folder with raw/ and prepared/{paper,expanded}: the checkout's data/ when complete, else
    `make_prepared()` (the test session's own, from the mirror)."""
    here = REPO / "data" / "prepared"
    if all((here / d / "test.npz").is_file() for d in ("paper", "expanded")) and (REPO / "data" / "raw").is_dir():
        return REPO / "data"
    return make_prepared()


def build_smoke_repo(root: Path, source: Path, profile: str = "smoke") -> Path:
    """Copy the sources to `root`, add subsampled data, git-init, record the data stages in DVC.

    `source` is a folder with raw/ and prepared/ (see `data_source`). The DVC remote is the folder
    `root.parent / "remote"`.
    """
    for rel in source_files():  # sources first, data later: the data must look newer than the code
        src = REPO / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    shutil.copytree(source / "raw", root / "data" / "raw")
    rng = np.random.default_rng(0)
    for domain in ("paper", "expanded"):
        out = root / "data" / "prepared" / domain
        out.mkdir(parents=True)
        shutil.copy(source / "prepared" / domain / "mechanisms.json", out / "mechanisms.json")
        for split, n in SUBSAMPLE.items():
            with np.load(source / "prepared" / domain / f"{split}.npz") as z:
                keep = np.sort(rng.choice(len(z["images"]), n, replace=False))
                np.savez(out / f"{split}.npz", **{k: z[k][keep] for k in z.files})
    # Copies keep the sources' mtimes: data (raw, then prepared) must look newer than the code.
    now = time.time()
    for i, folder in enumerate(("data/raw", "data/prepared")):
        for f in (root / folder).rglob("*"):
            os.utime(f, (now + i + 1, now + i + 1))
    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(re.sub(r"(?m)^profile: \w+", f"profile: {profile}", text, count=1))
    (root / "dvc.lock").unlink(missing_ok=True)
    remote = root.parent / "remote"
    sh("git init -q && git config user.email t@t && git config user.name t", root)
    sh(f"dvc remote add -f -d local {remote}", root)
    # Record the data stages without recomputing them (the documented `dvc commit -f`).
    sh("dvc commit -f fetch prepare@paper prepare@expanded", root)
    sh("git add -A && git commit -qm base", root)
    return root
