"""Ctrl-C and SIGTERM to `snakemake ... report` while training jobs run, for real (licm.interrupts).

Ctrl-C is SIGINT to Snakemake's process group (what a terminal sends), SIGTERM goes to Snakemake's
process only (what `kill`, a batch system or a CI timeout sends: by itself Snakemake would wait for
its running jobs to finish). Either way every job must be gone within 10 s, nothing may look
complete (metrics.json is a run's completion marker; no temporary file of an atomic write is left),
and the next run resumes the runs from their checkpoints. Smoke networks, many iterations, a
checkpoint at every iteration; one test has a job per seed (the CPU default), the other one job
training both seeds together (`seeds_per_job=2`, as on a GPU).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch

from smoke_repo import SMK, build_smoke_repo, data_source, set_params, sh, start_snakemake, trained, wait_for

pytestmark = pytest.mark.pipeline
RUNS = [Path("results/runs/main/seed0"), Path("results/runs/main/seed1")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, request) -> Path:
    """A smoke copy of the repository whose profile trains two seeds of main for 100000 iterations."""
    source = data_source(lambda: Path(request.getfixturevalue("prepared")["folder"]))
    root = build_smoke_repo(tmp_path_factory.mktemp("interrupts") / "repo", source)
    set_params(root, lambda p: p["profiles"]["smoke"].update(only_experiments=["main"], max_seeds=2) or
               p["profiles"]["smoke"]["train"].update(iterations=100000, checkpoint_every=1, eval_every=100000))
    return root


def training_jobs(snakemake: psutil.Process) -> list[psutil.Process]:
    return [p for p in snakemake.children(recursive=True) if "train" in p.cmdline() and "--experiment" in p.cmdline()]


@pytest.mark.parametrize("signum, seeds_per_job", [(signal.SIGINT, 1), (signal.SIGTERM, 2)],
                         ids=["ctrl-c-to-the-group", "sigterm-to-snakemake"])
def test_interrupt_stops_jobs_and_resumes(repo, signum, seeds_per_job):
    for folder in [*RUNS, Path("logs/train")]:
        shutil.rmtree(repo / folder, ignore_errors=True)
    # Both seeds' jobs must run at once on 2 cores (a training job asks for 2 threads: TRAIN_THREADS).
    config = f"--config seeds_per_job={seeds_per_job} --set-threads train=1"
    log = repo / "logs" / f"interrupt-{signum.name}.log"
    proc = start_snakemake(f"{SMK} report {config}", repo, log)
    try:
        wait_for(lambda: all((repo / r / "checkpoint.pt").is_file() for r in RUNS), 300, "checkpoints", proc, log)
        time.sleep(1)
        snakemake = psutil.Process(proc.pid)
        jobs = training_jobs(snakemake)
        assert len(jobs) == (2 if seeds_per_job == 1 else 1), (jobs, log.read_text()[-3000:])
        below = snakemake.children(recursive=True)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        t0 = time.monotonic()
        gone, alive = psutil.wait_procs(below, timeout=10)
        assert not alive, f"still running 10 s after {signum.name}: {[p.cmdline() for p in alive]}"
        print(f"{signum.name}: {len(below)} job process(es) gone after {time.monotonic() - t0:.1f} s")
        assert proc.wait(timeout=120) != 0
        print(f"{signum.name}: Snakemake exited after {time.monotonic() - t0:.1f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert "stopped by SIG" in text, text[-3000:]  # the jobs' own clean exit, not the hard one
    for run in RUNS:
        left = sorted(f.name for f in (repo / run).iterdir())
        assert "checkpoint.pt" in left and "metrics.json" not in left, left
        assert not [f for f in left if f.startswith(".")], f"temporary files left in {run}: {left}"

    # The next run resumes each run from its checkpoint (the params differ in iterations only).
    done = max(int(torch.load(repo / r / "checkpoint.pt", weights_only=True)["iteration"]) for r in RUNS)
    set_params(repo, lambda p: p["profiles"]["smoke"]["train"].update(iterations=done + 2))
    try:
        out = sh(f"{SMK} experiment_main {config}", repo)
    finally:
        set_params(repo, lambda p: p["profiles"]["smoke"]["train"].update(iterations=100000))
    assert trained(out.stdout + out.stderr) == {"experiment=main, seed=0", "experiment=main, seed=1"}
    for job_log in (repo / "logs/train/main").glob("*.log"):  # a log per job
        resumed = job_log.read_text().split("resuming")[-1]
        assert "at iteration " in resumed and "identity initialisation" not in resumed, job_log.read_text()[-2000:]
    for run in RUNS:
        assert json.loads((repo / run / "metrics.json").read_text())["iterations"] == done + 2
