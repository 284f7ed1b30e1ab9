"""`licm standalone` and `licm publish` at the smoke scale, as on a GPU machine without Snakemake or DVC.

A smoke copy of the repository (tests/smoke_repo.py) runs the pipeline's jobs through
workflow/scripts/device_run.sh with a PATH that holds no venv (no snakemake, dvc or licm there) and
the venv's Python named by PYTHON, as the device tool runs it; main's run is left at 2 of its 4
iterations first, so the runner must resume it. Then: a second call skips everything, a budget stops
cleanly and the next call continues, the pack fits the device's limits, a fresh tree restored from it
has nothing left to run, Snakemake trains the same numbers, the job list equals Snakemake's own
dry run (commands and order), and the published checkpoint loads with `licm.load_run`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest

from smoke_repo import REPO, SMK, build_smoke_repo, data_source, parse_seeds, sh

pytestmark = pytest.mark.pipeline
LIMITS = {"files": 8, "file_bytes": 16 * 2**20, "total_bytes": 64 * 2**20}


def bare_env() -> dict:
    """What the GPU machine has: a Python with the dependencies (here the venv's, named by PYTHON as
    device_run.sh reads it) and a PATH without the venv, so neither snakemake, dvc nor licm."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "PYTHON": sys.executable,
           # what Snakemake gives a training job here (TRAIN_THREADS in common.smk, --cores 2): float sums
           # depend on the thread count, and test_metrics_equal_a_snakemake_run compares bit for bit
           "OMP_NUM_THREADS": "2"}
    for tool in ("snakemake", "dvc", "licm"):
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} is on the bare PATH"
    return env


def device_run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    t0 = time.time()
    proc = subprocess.run(["bash", "workflow/scripts/device_run.sh", *args], cwd=repo, env=bare_env(),
                          capture_output=True, text=True, timeout=900)
    print(f"[{time.time() - t0:5.1f}s] device_run.sh {' '.join(args)}\n{proc.stdout[-3000:]}")
    if check and proc.returncode != 0:
        raise AssertionError(f"device_run.sh {args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def sessions(repo: Path) -> list[dict]:
    return json.loads((repo / "results" / "standalone.json").read_text())["sessions"]


@pytest.fixture(scope="module")
def source(request) -> Path:
    return data_source(lambda: Path(request.getfixturevalue("prepared")["folder"]))


@pytest.fixture(scope="module")
def ran(tmp_path_factory, source) -> dict:
    """A smoke copy where main was interrupted at iteration 2 of 4, then `licm standalone --experiments main
    --pack OUT` through device_run.sh without Snakemake or DVC."""
    root = tmp_path_factory.mktemp("standalone")
    repo = build_smoke_repo(root / "repo", source)
    device_run(repo, "licm", "train", "--experiment", "main", "--seed", "0", "--iterations", "2", "--no-progress")
    assert json.loads((repo / "results/runs/main/seed0/metrics.json").read_text())["iterations"] == 2
    proc = device_run(repo, "licm", "standalone", "--experiments", "main", "--pack", str(root / "out"))
    return {"repo": repo, "out": root / "out", "proc": proc, "root": root}


def test_runs_every_job_without_snakemake_and_resumes_training(ran):
    repo = ran["repo"]
    first = sessions(repo)[0]
    assert first["stopped"] is None and not first["failed"], first
    assert {j["status"] for j in first["jobs"]} == {"done"}, first["jobs"]
    ran_jobs = [j["job"] for j in first["jobs"]]
    assert ran_jobs.index("train/main") < ran_jobs.index("evaluate/main/seed0") < ran_jobs.index("summarize") \
        < ran_jobs.index("report")
    meta = json.loads((repo / "results/runs/main/seed0/meta.json").read_text())
    assert [r["iteration"] for r in meta["resumed"]] == [2], meta        # continued from the checkpoint
    assert json.loads((repo / "results/runs/main/seed0/metrics.json").read_text())["iterations"] == 4
    for f in ("results/report/index.html", "results/summary.json", "results/eval/main/seed0.json",
              "results/runs/main/experiment.json", "results/omniglot/restoration.json",
              "results/runs/single_net_32/experiment.json"):   # the record of an experiment smoke leaves out
        assert (repo / f).is_file(), f
    assert not (repo / "results/runs/no_aii").exists()            # selected but not asked for: not run


def test_second_call_skips_everything(ran):
    repo = ran["repo"]
    device_run(repo, "licm", "standalone", "--experiments", "main")
    assert sessions(repo)[-1]["jobs"] == []


def test_budget_stops_cleanly_and_the_next_call_continues(ran):
    repo = ran["repo"]
    (repo / "results/summary.json").unlink()
    proc = device_run(repo, "licm", "standalone", "--experiments", "main", "--budget", "0", check=False)
    assert proc.returncode == 3, proc.stdout[-2000:]
    assert "summarize: not started" in proc.stdout and not (repo / "results/summary.json").exists()
    assert sessions(repo)[-1]["stopped"] == "budget"
    device_run(repo, "licm", "standalone", "--experiments", "main")
    assert "summarize" in [j["job"] for j in sessions(repo)[-1]["jobs"]]
    assert (repo / "results/summary.json").is_file()


def test_deadline_stops_a_job_with_sigterm(tmp_path):
    """The budget's deadline reaches a running job as SIGTERM (a licm command stops cleanly on it), and
    as SIGKILL only if it has not stopped after the grace period."""
    from licm.standalone import run_command

    mark = tmp_path / "signal"
    script = f"trap 'echo TERM > {mark}; exit 0' TERM; while :; do sleep 0.1; done"
    status, _ = run_command(["bash", "-c", script], tmp_path, tmp_path / "log", time.monotonic() + 3, grace=60)
    assert status == "interrupted" and mark.read_text().strip() == "TERM"
    status, rc = run_command(["bash", "-c", "exit 7"], tmp_path, tmp_path / "log", None)
    assert (status, rc) == ("failed", 7)


def test_pack_fits_the_device_limits(ran):
    out = ran["out"]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    sizes = {p.name: p.stat().st_size for p in files}
    print("pack sizes:", sizes)
    assert all(p.parent == out and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files), files
    assert len(files) <= LIMITS["files"] and sum(sizes.values()) <= LIMITS["total_bytes"]
    assert max(sizes.values()) <= LIMITS["file_bytes"]
    manifest = json.loads((out / "pack.json").read_text())
    with tarfile.open(out / "results.tar.gz") as tar:
        results = set(tar.getnames())
    with tarfile.open(out / "state.tar.gz") as tar:
        state = set(tar.getnames())
    run = "results/runs/main/seed0"
    assert {f"{run}/metrics.json", f"{run}/meta.json", f"{run}/params.json", "results/eval/main/seed0.json",
            "results/summary.json", "results/report/index.html", "results/classifier/metrics.json",
            "results/standalone.json", "benchmarks/results/committee-cpu.json"} <= results
    assert not [n for n in results if n.endswith((".pt", ".npz", "history.csv"))], results
    assert {f"{run}/checkpoint.pt", f"{run}/history.csv", "results/classifier/classifier.pt"} <= state, state
    assert [n for n in state if n.startswith(f"{run}/evaluation")], state      # what figures read of main
    assert manifest["archives"]["state.tar.gz"]["parts"] == ["state.tar.gz"]


def test_pack_keeps_what_fits_in_priority_order(ran, tmp_path):
    """The classifier first, then finished experiments' typical seeds, then unfinished runs whole (with
    their optimizer state, to resume); what does not fit is listed with its consequence."""
    from licm import config
    from licm.standalone import pack_results, packed_size

    repo = ran["repo"]
    params = config.load(repo / "params.yaml")
    unfinished = repo / "results/runs/no_aii/seed0"       # as if no_aii's training had been cut short
    shutil.copytree(repo / "results/runs/main/seed0", unfinished)
    (unfinished / "metrics.json").unlink()
    try:
        tight = pack_results(repo, params, ["main", "no_aii"], tmp_path / "tight",
                             state_budget=packed_size(repo / "results/classifier/classifier.pt"))
        assert [x["what"] for x in tight["left_out"][:-1]] == ["main: typical seed 0", "no_aii: unfinished runs"]
        with tarfile.open(tmp_path / "tight" / "state.tar.gz") as tar:
            assert tar.getnames() == ["results/classifier/classifier.pt"]
        roomy = pack_results(repo, params, ["main", "no_aii"], tmp_path / "roomy")
        assert len(roomy["left_out"]) == 1, roomy["left_out"]
        with tarfile.open(tmp_path / "roomy" / "state.tar.gz") as tar:
            member = tar.getmember("results/runs/no_aii/seed0/checkpoint.pt")
        assert member.size == (unfinished / "checkpoint.pt").stat().st_size     # whole, optimizer state too
    finally:
        shutil.rmtree(repo / "results/runs/no_aii")


@pytest.fixture(scope="module")
def fresh(ran) -> Path:
    """A fresh machine: the same sources and data (which `licm data prepare` rebuilds byte for byte
    there), no results."""
    dest = ran["root"] / "fresh"
    shutil.copytree(ran["repo"], dest, ignore=lambda d, names: [n for n in names if Path(d) == ran["repo"] and
                                                               n in ("results", "logs", ".snakemake")])
    return dest


def test_fresh_tree_restored_from_the_pack_has_nothing_to_run(ran, fresh):
    proc = device_run(fresh, "licm", "standalone", "--experiments", "main", "--restore", str(ran["out"]), "--dry-run")
    lines = [line for line in proc.stdout.splitlines() if re.match(r"^(setup|training|tail) ", line)]
    assert lines and not [line for line in lines if line.split()[1] not in ("done", "adopt")], proc.stdout
    assert "restored" in proc.stdout


def test_metrics_equal_a_snakemake_run(ran, fresh):
    """CPU runs are deterministic: Snakemake's main seed 0 (trained in one go) equals the standalone's
    (resumed at iteration 2)."""
    for folder in ("results", "logs"):
        shutil.rmtree(fresh / folder, ignore_errors=True)
    sh(f"{SMK} results/runs/main/seed0/metrics.json", fresh)
    for f in ("metrics.json", "history.csv"):
        a, b = (r / "results/runs/main/seed0" / f for r in (ran["repo"], fresh))
        assert a.read_text() == b.read_text(), f


def test_publish_from_the_pack_and_load_the_checkpoint(ran, tmp_path):
    import torch

    import licm

    dest = tmp_path / "published" / "smoke-test"
    proc = subprocess.run([sys.executable, "-m", "licm.cli", "publish", str(ran["out"]), "--out", str(dest)],
                          cwd=ran["repo"], env={**bare_env(), "PYTHONPATH": str(ran["repo"] / "src")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    index = json.loads((dest / "index.json").read_text())
    assert list(index["experiments"]) == ["main"] and index["model"]["seed"] == 0
    for f in ("report/index.html", "summary.json", "runs/main/experiment.json", "runs/main/seed0/metrics.json",
              "runs/main/seed0/meta.json", "eval/main/seed0.json", "eval/main/experiment.json",
              "benchmarks/committee-cpu.json", "runs/single_net_32/experiment.json"):
        assert (dest / f).is_file(), f
    files = [p for p in dest.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".npz" or p.name == "history.csv" or "evaluation" in p.parts]
    assert sum(p.stat().st_size for p in files) < 8 * 2**20
    ckpt = torch.load(dest / "runs/main/seed0/checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"format", "committee", "discriminator"}   # no optimizer, RNG or history

    published = licm.load_run(dest / "runs/main/seed0")
    original = licm.load_run(ran["repo"] / "results/runs/main/seed0")
    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(published[0](x), original[0](x))
        assert torch.equal(published[1](x), original[1](x))
    assert published[2] == original[2]


PUBLISHED = sorted((REPO / "published").glob("*/runs/*/seed*/checkpoint.pt"))


@pytest.mark.skipif(not PUBLISHED, reason="nothing published yet (published/*/runs/*/seed*/checkpoint.pt)")
@pytest.mark.parametrize("checkpoint", PUBLISHED, ids=lambda p: str(p.relative_to(REPO)))
def test_published_checkpoint_loads_on_cpu(checkpoint):
    import torch

    import licm

    experts, disc, params = licm.load_run(checkpoint.parent)
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = experts(x)
        scores = disc(out.flatten(0, 1))
    assert out.shape == (3, params["model"]["experts"], 1, 32, 32) and torch.isfinite(out).all()
    assert scores.shape == (3 * params["model"]["experts"],) and torch.isfinite(scores).all()


# ---------------------------------------------------------------- the job list against Snakemake's

def snakemake_jobs(repo: Path) -> list[dict]:
    """Every job of `snakemake -n -p --forceall report`: rule, input and output files, the licm command."""
    text = sh(f"{SMK} -n -p --forceall report", repo).stdout
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m:
            continue
        field = lambda name: re.search(rf"^\s*{name}: (.*)$", block, re.M)  # noqa: E731
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append({"rule": m.group(1),
                     "input": set(field("input").group(1).split(", ")) if field("input") else set(),
                     "output": set(field("output").group(1).split(", ")) if field("output") else set(),
                     "licm": re.findall(r"(?:^|\s)licm\s+([^;&|>]*)", shell.group(1)) if shell else []})
    return jobs


def normal(args: list[str]) -> dict:
    """A licm command as parsed by licm's own parser, less what only changes where output goes."""
    from licm import cli

    ns = vars(cli.build_parser(args).parse_args(args))
    ignored = ("func", "log", "no_progress", "restart_if_changed", "params", "profile")  # profile: by --profile
    d = {k: v for k, v in ns.items() if k not in ignored}                     # here, by LICM_PROFILE there
    if d["command"] == "train":
        seeds = parse_seeds(d.pop("seeds")) if d.get("seeds") else [d["seed"]]
        d.pop("seed")
        out = d.pop("out")
        assert out in (None, f"{d['runs']}/{d['experiment']}/seed{seeds[0]}"), out
        d["seeds"] = seeds
    return d


def test_jobs_and_order_equal_snakemakes(ran):
    """The standalone runs exactly Snakemake's jobs (licm commands compared as parsed arguments; one train
    job per experiment instead of one per seed), each after every job whose outputs it reads, and it
    declares those jobs as its `needs`/`reads` (so that their changes re-run it)."""
    from licm import config, standalone

    repo = ran["repo"]
    params = config.load(repo / "params.yaml")
    ours = standalone.jobs(params, config.selected_experiments(params))
    key = lambda d: json.dumps({k: v for k, v in d.items() if k != "seeds"}, sort_keys=True)  # noqa: E731
    by_key = {key(normal(list(j.argv))): j for j in ours}
    smk = [j for j in snakemake_jobs(repo) if j["licm"]]
    assert all(len(j["licm"]) == 1 for j in smk), [j for j in smk if len(j["licm"]) != 1]
    mapped, seeds = [], Counter()
    for job in smk:
        d = normal(job["licm"][0].split())
        assert key(d) in by_key, f"Snakemake job {job['rule']} ({job['licm'][0]}) has no standalone job"
        mapped.append(by_key[key(d)])
        seeds.update((d.get("experiment"), s) for s in d.get("seeds", []))
    assert Counter(j.name for j in mapped if not j.name.startswith("train/")) == \
        Counter(j.name for j in ours if not j.name.startswith("train/")), "jobs differ"
    trains = lambda js: {j.name for j in js if j.name.startswith("train/")}  # noqa: E731
    assert trains(mapped) == trains(ours)
    assert seeds == Counter((n, s) for n in config.selected_experiments(params) for s in config.seeds(params, n))

    index = {j.name: i for i, j in enumerate(ours)}
    declared = {j.name: set(j.needs) | set(j.reads) for j in ours}

    def upstream(name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            for d in declared[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    for a, ja in zip(smk, mapped):
        for b, jb in zip(smk, mapped):
            if ja.name != jb.name and a["output"] & b["input"]:
                assert index[ja.name] < index[jb.name], f"{jb.name} runs before {ja.name}, whose outputs it reads"
                assert ja.name in upstream(jb.name), f"{jb.name} does not declare {ja.name}, whose outputs it reads"
