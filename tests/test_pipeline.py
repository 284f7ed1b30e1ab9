"""The Snakemake + DVC pipeline, run for real in a temporary copy of the repository.

The copy holds the tracked and untracked-not-ignored files, raw data and a *subsampled* copy
of the prepared data (so training and evaluation take seconds), `profile: smoke`, and is its
own git repository. Snakemake and DVC run as subprocesses, as a user would run them.
Select with `-m pipeline`. Needs the prepared data (data/prepared of the checkout, or the mirror).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.pipeline

BIN = Path(sys.executable).parent
SUBSAMPLE = {"train_transformed": 600, "train_canonical": 600, "test": 300}


def sh(cmd: str, cwd: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("LICM_DATA_MIRROR", None)  # the copy must not fetch anything: its data is there
    t0 = time.time()
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"[{time.time() - t0:5.1f}s] {cmd}")
    if check and proc.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


SMK = "snakemake --workflow-profile workflow/profiles/default --cores 2"


def ran_jobs(output: str) -> set[tuple]:
    """(rule, wildcards) of the jobs a snakemake run (or dry run) lists."""
    jobs, rule = set(), None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line.strip())
        if m:
            rule = m.group(1)
            jobs.add((rule, ""))
            continue
        m = re.match(r"^wildcards: (.*)$", line.strip())
        if m and rule:
            jobs.discard((rule, ""))
            jobs.add((rule, m.group(1)))
    return jobs


def trained(output: str) -> set[str]:
    return {w for r, w in ran_jobs(output) if r == "train"}


def set_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tree_hashes(root: Path, *folders: str) -> dict:
    out = {}
    for folder in folders:
        for f in sorted((root / folder).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def _source_prepared(mirror_fixture) -> Path:
    here = REPO / "data" / "prepared"
    if all((here / d / "test.npz").is_file() for d in ("paper", "expanded")) and (REPO / "data" / "raw").is_dir():
        return REPO / "data"
    return mirror_fixture()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, request) -> Path:
    """A smoke-scale copy of the repository, git-initialised, data in place and recorded in DVC."""
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    files = sh("git ls-files -co --exclude-standard", REPO).stdout.split()
    for rel in files:  # sources first, data later: the data must look newer than the code
        src = REPO / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)

    def from_fixture():
        prepared = request.getfixturevalue("prepared")
        return Path(prepared["folder"])

    source = _source_prepared(from_fixture)
    raw_src = source / "raw"
    prep_src = source / "prepared"
    shutil.copytree(raw_src, root / "data" / "raw")
    rng = np.random.default_rng(0)
    for domain in ("paper", "expanded"):
        out = root / "data" / "prepared" / domain
        out.mkdir(parents=True)
        shutil.copy(prep_src / domain / "mechanisms.json", out / "mechanisms.json")
        for split, n in SUBSAMPLE.items():
            with np.load(prep_src / domain / f"{split}.npz") as z:
                keep = np.sort(rng.choice(len(z["images"]), n, replace=False))
                np.savez(out / f"{split}.npz", **{k: z[k][keep] for k in z.files})
    # Copies keep the sources' mtimes: data (raw, then prepared) must look newer than the code.
    now = time.time()
    for i, folder in enumerate(("data/raw", "data/prepared")):
        for f in (root / folder).rglob("*"):
            os.utime(f, (now + i + 1, now + i + 1))
    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(re.sub(r"(?m)^profile: \w+", "profile: smoke", text, count=1))
    for f in ("dvc.lock",):
        (root / f).unlink(missing_ok=True)
    remote = root.parent / "remote"
    sh("git init -q && git config user.email t@t && git config user.name t", root)
    sh(f"dvc remote add -f -d local {remote}", root)
    # Record the data stages without recomputing them (the documented `dvc commit -f`).
    sh("dvc commit -f fetch prepare@paper prepare@expanded", root)
    sh("git add -A && git commit -qm base", root)
    return root


def test_dag_consistency(repo):
    """Every artifact of Snakemake's DAG is inside a DVC output; DVC train stages list every params
    key the Snakefile's training jobs read."""
    from dvc.repo import Repo

    summary = sh(f"{SMK} --summary report", repo).stdout
    files = [line.split("\t")[0] for line in summary.splitlines()[1:] if line.strip()]
    assert any("/seed0/metrics.json" in f for f in files), summary[:2000]
    with Repo(str(repo)) as dvc:
        outs = [str(Path(o.fs_path).relative_to(repo)) for s in dvc.index.stages for o in s.outs]
        params = {s.name: {p for dep in s.params for p in dep.params} for s in dvc.index.stages}
    missing = [f for f in files if not any(f == o or f.startswith(o + "/") for o in outs)]
    assert not missing, f"Snakemake outputs that no DVC stage outputs: {missing}"

    smk_keys = re.search(r"TRAIN_KEYS = \(([^)]*)\)", (repo / "workflow/rules/train.smk").read_text()).group(1)
    train_keys = set(re.findall(r'"([\w.]+)"', smk_keys))
    experiments = yaml.safe_load((repo / "params.yaml").read_text())["experiments"]
    with Repo(str(repo)) as dvc:
        deps = {s.name: {str(Path(d.fs_path).relative_to(repo)) for d in s.deps} for s in dvc.index.stages}
        plan_params = [(p.def_path, p.params) for s in dvc.index.stages if s.name == "plan" for p in s.params]
    assert plan_params == [("params.yaml", [])], plan_params  # the plan stage reads the whole file
    for name in experiments:
        # the resolved plan (profile + overrides applied) as a content-hashed dep, no raw keys
        assert f"results/plan/{name}.json" in deps[f"train@{name}"]
        assert not params[f"train@{name}"]
    sh(f"{SMK} plan_all", repo)
    plan = json.loads((repo / "results/plan/main.json").read_text())
    assert set(plan["train_params"]) == train_keys and plan["seeds"] == [0]


def test_build_record_change_push_pull(repo, tmp_path):
    """snakemake builds everything; dvc commit records it without recomputation; a change of one
    experiment's iterations re-runs exactly its jobs (Snakemake) / its stage (DVC); push, clone,
    pull restores identical artifacts; --touch after pull leaves Snakemake nothing to do."""
    t0 = time.time()
    out = sh(f"{SMK} report", repo, timeout=400)
    assert trained(out.stdout + out.stderr) == {"experiment=main, seed=0", "experiment=no_aii, seed=0"}
    for name in ("main", "no_aii"):
        assert (repo / f"results/runs/{name}/seed0/metrics.json").is_file()
        assert (repo / f"logs/train/{name}/seed0.log").is_file()
        assert json.loads((repo / f"results/metrics/{name}.json").read_text())["runs"] == 1
    assert not json.loads((repo / "results/metrics/wide_64.json").read_text())["selected"]
    print(f"snakemake report: {time.time() - t0:.0f}s")
    assert "Nothing to be done" in sh(f"{SMK} -n report", repo).stdout

    # Record in DVC without recomputation.
    sh("dvc commit -f", repo)
    status = sh("dvc status --json", repo).stdout
    assert json.loads(status) == {}, status
    repro = sh("dvc repro", repo)
    assert "Running stage" not in repro.stdout, repro.stdout

    # Change one experiment's iterations: Snakemake re-runs exactly its training job.
    set_params(repo, lambda p: p["profiles"]["smoke"]["experiments"].setdefault("main", {})
               .setdefault("overrides", {"train": {"iterations": 6}}))
    out = sh(f"{SMK} report", repo, timeout=300)
    text = out.stdout + out.stderr
    assert trained(text) == {"experiment=main, seed=0"}, ran_jobs(text)
    assert {r for r, _ in ran_jobs(text)} == {"plan", "train", "collect", "report"}, ran_jobs(text)
    assert {w for r, w in ran_jobs(text) if r == "collect"} == {"experiment=main"}
    assert "resuming" in (repo / "logs/train/main/seed0.log").read_text()  # from the iteration-4 checkpoint
    assert json.loads((repo / "results/runs/main/seed0/metrics.json").read_text())["iterations"] == 6
    # ... and DVC sees exactly that stage as changed; record it.
    assert set(json.loads(sh("dvc status --json", repo).stdout)) == {"plan", "train@main"}
    sh("dvc commit -f train@main", repo)

    # DVC side: change another experiment; `dvc repro` runs exactly its stage, which trains its seed.
    set_params(repo, lambda p: p["profiles"]["smoke"]["experiments"].setdefault("no_aii", {})
               .setdefault("overrides", {"train": {"iterations": 6}}))
    repro = sh("dvc repro", repo, timeout=300)
    assert re.findall(r"Running stage '([^']+)'", repro.stdout) == ["plan", "train@no_aii"], repro.stdout
    assert trained(repro.stdout + repro.stderr) == {"experiment=no_aii, seed=0"}
    assert json.loads((repo / "results/runs/no_aii/seed0/metrics.json").read_text())["iterations"] == 6
    assert json.loads(sh("dvc status --json", repo).stdout) == {}

    # Share: push, clone, pull.
    sh("dvc push", repo)
    sh("git add -A && git commit -qm built", repo)
    clone = tmp_path / "clone"
    sh(f"git clone -q {repo} {clone}", tmp_path)
    sh("dvc pull", clone, timeout=300)
    folders = ("data", "results")
    assert tree_hashes(clone, *folders) == tree_hashes(repo, *folders)
    assert json.loads(sh("dvc status --json", clone).stdout) == {}
    # dvc pull writes files in no particular order and a clone has no Snakemake records: touch
    # every job once (aligns mtimes and records params), then Snakemake agrees with DVC...
    sh("snakemake --cores 1 --touch --forceall report", clone)
    assert "Nothing to be done" in sh(f"{SMK} -n report", clone).stdout
    assert json.loads(sh("dvc status --json", clone).stdout) == {}
    # ... and sees params changes again (the records hold the params).
    set_params(clone, lambda p: p["profiles"]["smoke"]["experiments"]["main"]["overrides"]["train"]
               .update(iterations=7))
    assert trained(sh(f"{SMK} -n report", clone).stdout) == {"experiment=main, seed=0"}
    print(f"whole test: {time.time() - t0:.0f}s")


def test_params_mutations_agree(repo):
    """After a build, a params change that re-plans Snakemake training jobs makes exactly the matching
    DVC train stages stale (runs after test_build_record_change_push_pull, which leaves all up to date)."""
    base = (repo / "params.yaml").read_text()
    main_only = {"experiment=main, seed=0"}
    mutations = {  # key: (edit, jobs Snakemake must re-plan, or None = at least main's)
        "model.experts": (lambda p: p["model"].update(experts=9), None),
        "model.expert_width (overridden by the smoke profile)": (lambda p: p["model"].update(expert_width=12), set()),
        "experiments.main": (lambda p: p["experiments"]["main"]["overrides"].update(aii={"lr": 0.003}), main_only),
        "profiles.smoke.experiments.main": (lambda p: p["profiles"]["smoke"]["experiments"].update(
            main={"overrides": {"train": {"batch_size": 16}}}), main_only),
    }
    try:
        for key, (edit, expected) in mutations.items():
            set_params(repo, edit)
            jobs = trained(sh(f"{SMK} -n report", repo).stdout)
            assert jobs == expected if expected is not None else "experiment=main, seed=0" in jobs, (key, jobs)
            sh("dvc repro plan", repo)
            stale = {s for s in json.loads(sh("dvc status --json", repo).stdout) if s.startswith("train@")}
            want = {"train@" + re.search(r"experiment=(\w+)", j).group(1) for j in jobs}
            assert stale == want, f"{key}: Snakemake re-plans {sorted(want)}, DVC finds stale {sorted(stale)}"
            (repo / "params.yaml").write_text(base)
    finally:
        (repo / "params.yaml").write_text(base)
        sh("dvc repro plan", repo)
    assert json.loads(sh("dvc status --json", repo).stdout) == {}


def test_killed_job_resumes(repo):
    """A killed training job leaves no metrics.json (nothing that looks complete) but its checkpoint;
    the next run resumes from it."""
    run = repo / "results/runs/single_net_32/seed0"
    shutil.rmtree(run, ignore_errors=True)
    set_params(repo, lambda p: p["profiles"]["smoke"].update(only_experiments=["single_net_32"]) or
               p["profiles"]["smoke"]["experiments"].update(
                   single_net_32={"overrides": {"train": {"iterations": 100000, "checkpoint_every": 1}}}))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(f"exec {SMK} experiment_single_net_32", shell=True, cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (run / "checkpoint.pt").is_file():
            time.sleep(1)
        time.sleep(3)
        assert (run / "checkpoint.pt").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: Snakemake stops the job and cleans its outputs
        proc.wait(timeout=60)
    assert not (run / "metrics.json").exists()
    assert (run / "checkpoint.pt").is_file()
    import torch

    done = int(torch.load(run / "checkpoint.pt", weights_only=True)["iteration"])
    set_params(repo, lambda p: p["profiles"]["smoke"]["experiments"].update(
        single_net_32={"overrides": {"train": {"iterations": done + 2, "checkpoint_every": 1}}}))
    out = sh(f"{SMK} experiment_single_net_32", repo)
    assert trained(out.stdout + out.stderr) == {"experiment=single_net_32, seed=0"}
    assert "resuming" in (repo / "logs/train/single_net_32/seed0.log").read_text()
    assert f"resuming {run.relative_to(repo)} at iteration {done}" in (repo / "logs/train/single_net_32/seed0.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["iterations"] == done + 2


def test_slurm_profile_dry_run(repo):
    """With the SLURM profile, training jobs ask for one GPU, other jobs for none."""
    out = sh("snakemake --profile workflow/profiles/slurm -n --forceall report", repo)
    text = out.stdout + out.stderr
    blocks = re.split(r"\n(?=\[.*\]\n(?:local)?rule )|\n(?=(?:local)?rule \w+:)", text)
    seen = set()
    for block in blocks:
        m = re.search(r"(?:local)?rule (\w+):", block)
        res = re.search(r"resources: (.*)", block)
        if not m or not res:
            continue
        rule = m.group(1)
        gpu = re.search(r"\bgpu=(\d+)", res.group(1))
        seen.add(rule)
        if rule == "train":
            assert gpu and gpu.group(1) == "1", block
        else:
            assert not gpu or gpu.group(1) == "0", block
    assert {"train", "prepare", "collect"} <= seen, seen
    # the profile forces the paper's scale: 10 seeds of main
    assert "experiment=main, seed=9" in text
