"""Snakemake on a real SLURM cluster: the project's profile (workflow/profiles/slurm) and
snakemake-executor-plugin-slurm, against munged, slurmctld and slurmd started on localhost
(tests/slurm_cluster.py). Every job goes through `sbatch`; the plugin follows it with `squeue`.

Checks: the smoke report built on the cluster has the metrics and evaluations of a local run;
at the paper profile training jobs ask SLURM for a GPU and the other jobs do not; a training job
cancelled by the cluster is submitted again and resumes from its checkpoint; a controller that
is down gives the user SLURM's own message. Needs slurm-wlm and munge (CI installs them) and
root; with CI=true a cluster that cannot start fails the tests instead of skipping them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

import slurm_cluster
from smoke_repo import REPO, SMK, build_smoke_repo, data_source, set_params, sh, start_snakemake, wait_for

# (the timeout: a loaded 2-core machine needs more than the suite's 600 s for the first test)
pytestmark = [pytest.mark.pipeline, pytest.mark.slurm, pytest.mark.timeout(1500)]

# The test cluster has no accounting database (sacct: "Slurm accounting storage is disabled"),
# so the plugin follows jobs with squeue; it polls every second instead of every 40 s or more.
TEST_CLUSTER = ("--slurm-status-command squeue --slurm-init-seconds-before-status-checks 1 "
                "--seconds-between-status-checks 1")
SLURM = f"snakemake --profile workflow/profiles/slurm {TEST_CLUSTER}"
# The smoke scale on the test cluster's CPU partition: training asks for one CPU and no GPU.
# (--set-resources replaces the profile's whole set-resources: the rules' own resources apply.)
# (Both options take lists: targets go before them.)
SMOKE = "--config profile=smoke --set-resources train:gpu=0 train:cpus_per_task=1"


def profile_resources() -> dict[str, dict]:
    """Per rule of the SLURM profile's set-resources, and under "", its default-resources."""
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    default = profile.get("default-resources", {})
    return {"": default, **{rule: {**default, **res} for rule, res in profile.get("set-resources", {}).items()}}


def profile_requests() -> tuple[int, int]:
    """The most CPUs and memory (MB) a job of the SLURM profile asks for."""
    asks = profile_resources().values()
    return max(int(a.get("cpus_per_task", 1)) for a in asks), max(int(a.get("mem_mb", 1000)) for a in asks)


@pytest.fixture(scope="module")
def cluster():
    """A one-node cluster for this module; SLURM_CONF points the commands of every test at it."""
    reason = slurm_cluster.missing()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a cluster that cannot start fails instead of skipping)")
        pytest.skip(reason)
    cluster = slurm_cluster.start(*profile_requests())
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(cluster.conf))
            yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def base(tmp_path_factory, request) -> Path:
    source = data_source(lambda: Path(request.getfixturevalue("prepared")["folder"]))
    return build_smoke_repo(tmp_path_factory.mktemp("slurm") / "repo", source)


def copy_repo(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, symlinks=True)  # copy2: the mtimes (data newer than code) stay
    return dest


@pytest.fixture
def repo(base, tmp_path) -> Path:
    """A pristine copy of the smoke repository, for one test."""
    return copy_repo(base, tmp_path / "repo")


def run_id(text: str) -> str:
    """The plugin's ID of a Snakemake run: the name of each of its SLURM jobs."""
    m = re.search(r"SLURM run ID: (\S+)", text)
    assert m, text[-3000:]
    return m.group(1)


def run_jobs(cluster, rid: str) -> dict[str, list[dict]]:
    """The SLURM jobs of one Snakemake run (named after its run ID), by comment (rule, wildcards)."""
    out: dict[str, list[dict]] = {}
    for job in cluster.jobs():
        if job["name"] == rid:
            out.setdefault(job["comment"], []).append(job)
    return out


def without_timings(value):
    """A JSON value less the wall-clock fields (`seconds`, `*_seconds`): the only fields two
    runs of the same params on CPUs may differ in."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds" and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def smoke_runs(repo: Path) -> list[tuple[str, int]]:
    from licm import config

    params = config.load(repo / "params.yaml", profile="smoke")
    return [(name, seed) for name in config.selected_experiments(params) for seed in config.seeds(params, name)]


def started_run_id(proc: subprocess.Popen, log: Path) -> str:
    return wait_for(lambda: re.search(r"SLURM run ID: (\S+)", log.read_text()), 120, "run ID", proc, log)[1]


def test_smoke_report_on_the_cluster_equals_a_local_run(cluster, base, tmp_path):
    """The smoke report built through SLURM (every job but the bookkeeping rules submitted with
    sbatch and seen COMPLETED by the plugin's status query) holds the same training metrics,
    classifier metrics and evaluations as a local run of the same repository (CPU runs are
    deterministic; only wall-clock fields differ)."""
    local, remote = copy_repo(base, tmp_path / "local"), copy_repo(base, tmp_path / "cluster")
    runs = smoke_runs(local)
    evals = " ".join(f"results/eval/{name}/seed{seed}.json" for name, seed in runs)
    # The local run meanwhile (the cluster run mostly waits for its status queries).
    local_run = start_snakemake(f"{SMK} {evals}", local, tmp_path / "local.log")
    try:
        out = sh(f"{SLURM} report {SMOKE}", remote, timeout=900)
        assert local_run.wait(timeout=600) == 0, (tmp_path / "local.log").read_text()[-4000:]
    finally:
        if local_run.poll() is None:
            os.killpg(local_run.pid, signal.SIGKILL)
            local_run.wait()
    text = out.stdout + out.stderr
    jobs = run_jobs(cluster, run_id(text))
    submitted = set(re.findall(r"has been submitted with SLURM jobid (\d+)", text))
    assert submitted == {j["id"] for js in jobs.values() for j in js}, (submitted, jobs)
    assert all(j["state"] == "COMPLETED" for js in jobs.values() for j in js), jobs
    for comment in ("rule_classifier", "rule_html_report",
                    *(f"rule_{rule}_wildcards_{name}_{seed}" for name, seed in runs for rule in ("train", "evaluate"))):
        assert comment in jobs, (comment, sorted(jobs))
    assert not [c for c in jobs if c.startswith(("rule_plan", "rule_collect", "rule_report"))], sorted(jobs)
    assert (remote / "results/report/index.html").is_file()

    compared = sorted(str(f.relative_to(local)) for pattern in
                      ("results/runs/*/seed*/metrics.json", "results/eval/*/*.json", "results/classifier/metrics.json")
                      for f in local.glob(pattern))
    assert len(compared) == 1 + 2 * len(runs), compared
    for rel in compared:
        got, expected = (json.loads((root / rel).read_text()) for root in (remote, local))
        assert without_timings(got) == without_timings(expected), rel


def test_paper_profile_asks_a_gpu_for_training_only(cluster, repo):
    """At the paper profile (the SLURM profile unchanged), the training job is submitted asking
    for one GPU and the profile's CPUs and memory; the classifier and figure jobs ask for no GPU.
    The partition is down meanwhile, so the jobs wait in the queue; Ctrl-C on Snakemake cancels them."""
    targets = ["results/runs/main/seed0/metrics.json", "results/classifier/metrics.json",
               "results/figures/expand-fig1.png"]
    # SLURM job comments: rule_<rule>[_wildcards_<values>] (training: `train` or a batch rule train_*)
    expected = lambda comments: len(comments) == 3 and {"rule_classifier", "rule_figures_data"} < comments  # noqa: E731
    log = repo / "logs/slurm-paper.log"
    cluster.set_partition("DOWN")
    try:
        proc = start_snakemake(f"{SLURM} {' '.join(targets)}", repo, log)
        try:
            rid = started_run_id(proc, log)
            wait_for(lambda: expected(set(run_jobs(cluster, rid))), 180, "submission of the jobs", proc, log)
            shown = {comment: cluster.job(js[0]["id"]) for comment, js in run_jobs(cluster, rid).items()}
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:  # never leave it polling the cluster for the next tests
                os.killpg(proc.pid, signal.SIGKILL)
                raise
    finally:
        cluster.set_partition("UP")
    train = profile_resources()["train"]
    for comment, job in shown.items():
        assert job["JobState"] == "PENDING" and job["Reason"] == "PartitionDown", job
        asked = " ".join(job.get(k, "") for k in ("TresPerJob", "TresPerNode", "TresPerTask", "TRES"))
        if comment.startswith("rule_train"):
            assert job["TresPerJob"] == f"gres:gpu:{train['gpu']}", job
            assert f"cpu={train['cpus_per_task']},mem={train['mem_mb']}M" in job["TRES"], job
        else:
            assert "gpu" not in asked, job
    # Snakemake cancelled its queued jobs on Ctrl-C
    assert {j["state"] for js in run_jobs(cluster, rid).values() for j in js} == {"CANCELLED"}, log.read_text()[-3000:]


ITERATIONS, CHECKPOINT_EVERY = 60, 3


def checkpoint_iteration(run: Path) -> int:
    """The iteration of the run's checkpoint, -1 while there is none."""
    import torch

    try:
        return int(torch.load(run / "checkpoint.pt", weights_only=True)["iteration"])
    except (FileNotFoundError, EOFError, RuntimeError):  # none yet (or caught mid-write)
        return -1


def test_cancelled_training_job_is_resubmitted_and_resumes(cluster, repo):
    """A running training job cancelled by the cluster (scancel: SIGTERM, then SIGKILL) fails in
    Snakemake's eyes; the profile's `retries` submits it again, and the new job resumes from the
    run's checkpoint and finishes the run. The run is long enough to be mid-way when cancelled."""
    set_params(repo, lambda p: p["profiles"]["smoke"].update(only_experiments=["single_net_32"]) or
               p["profiles"]["smoke"]["experiments"].update(single_net_32={"overrides": {"train": {
                   "iterations": ITERATIONS, "checkpoint_every": CHECKPOINT_EVERY, "eval_every": 100000}}}))
    run = repo / "results/runs/single_net_32/seed0"
    comment = "rule_train_wildcards_single_net_32_0"
    log = repo / "logs/slurm-cancel.log"
    proc = start_snakemake(f"{SLURM} {run.relative_to(repo)}/metrics.json {SMOKE}", repo, log)
    try:
        rid = started_run_id(proc, log)
        wait_for(lambda: checkpoint_iteration(run) >= CHECKPOINT_EVERY, 300, "checkpoint", proc, log)
        job = [j for j in run_jobs(cluster, rid)[comment] if j["state"] == "RUNNING"]
        assert len(job) == 1, (job, log.read_text()[-3000:])
        assert not (run / "metrics.json").exists(), "the run ended before it was cancelled: raise ITERATIONS"
        cluster.sh("scancel", job[0]["id"])
        assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert f"SLURM-job '{job[0]['id']}' failed, SLURM status is: 'CANCELLED'" in text, text[-4000:]
    states = {j["id"]: j["state"] for j in run_jobs(cluster, rid)[comment]}
    assert states.pop(job[0]["id"]) == "CANCELLED" and list(states.values()) == ["COMPLETED"], states
    train_log = (repo / "logs/train/single_net_32/seed0.log").read_text()
    m = re.search(r"resuming \S*single_net_32/seed0 at iteration (\d+)", train_log)
    assert m and CHECKPOINT_EVERY <= int(m[1]) < ITERATIONS, train_log[-3000:]
    assert json.loads((run / "metrics.json").read_text())["iterations"] == ITERATIONS


def test_controller_down_at_submission(cluster, repo):
    """With slurmctld down, Snakemake stops with SLURM's message naming the controller, and no
    output appears; nothing stays queued once the controller is back."""
    cluster.stop_controller()
    try:
        # (--retries 0: the profile's retry would only repeat the message, after 10 s more)
        out = sh(f"{SLURM} --retries 0 results/classifier/metrics.json {SMOKE}", repo, check=False, timeout=600)
    finally:
        cluster.start_controller()
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Unable to contact slurm controller (connect failure)" in text, text[-4000:]
    assert not (repo / "results/classifier/metrics.json").exists()
    assert not run_jobs(cluster, run_id(text))
