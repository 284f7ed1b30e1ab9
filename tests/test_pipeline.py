"""The Snakemake + DVC pipeline, run for real in a temporary copy of the repository.

The copy holds the tracked and untracked-not-ignored files, raw data and a *subsampled* copy
of the prepared data (so training and evaluation take seconds), `profile: smoke`, and is its
own git repository. Snakemake and DVC run as subprocesses, as a user would run them.
Select with `-m pipeline`. Needs the prepared data (data/prepared of the checkout, or the mirror).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from smoke_repo import SMK, build_smoke_repo, data_source, env, ran_jobs, set_params, sh, trained, tree_hashes

pytestmark = pytest.mark.pipeline

# The DVC stage that runs (records) the jobs of each Snakemake rule.
RULE_STAGE = {"plan": "plan", "train": "train@{experiment}", "collect": "train@{experiment}",
              "classifier": "classifier", "evaluate": "evaluate@{experiment}",
              "collect_evaluations": "evaluate@{experiment}", "omniglot": "omniglot",
              "figures_runs": "figures_runs", "summarize": "summarize", "html_report": "report"}


def job_stages(output: str) -> set[str]:
    """DVC stages of the jobs a snakemake run (or dry run) lists (targets and the like left out)."""
    stages = set()
    for rule, wildcards in ran_jobs(output):
        if rule in RULE_STAGE:
            stages.add(RULE_STAGE[rule].format(**dict(re.findall(r"(\w+)=([\w.]+)", wildcards))))
    return stages


def dvc_downstream(repo: Path) -> dict[str, set[str]]:
    """Stage -> every stage downstream of it, from `dvc dag --dot`."""
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', sh("dvc dag --dot", repo).stdout)
    down: dict[str, set[str]] = {}
    for a, b in edges:
        down.setdefault(a, set()).add(b)
    closure = {}
    for stage in {x for e in edges for x in e}:
        seen, todo = set(), [stage]
        while todo:
            for nxt in down.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        closure[stage] = seen
    return closure


@pytest.fixture(scope="module")
def repo(tmp_path_factory, request) -> Path:
    """A smoke-scale copy of the repository, git-initialised, data in place and recorded in DVC."""
    source = data_source(lambda: Path(request.getfixturevalue("prepared")["folder"]))
    return build_smoke_repo(tmp_path_factory.mktemp("pipeline") / "repo", source)


def test_dag_consistency(repo):
    """Every artifact of Snakemake's DAG is inside a DVC output; every DVC stage reads its params
    through the plan files that `licm plan` writes from licm.pipeline's key lists (the same lists
    the Snakemake rules fingerprint), never through raw keys of params.yaml (profiles override)."""
    from dvc.repo import Repo

    from licm import figures, pipeline

    summary = sh(f"{SMK} --summary report", repo).stdout
    files = [line.split("\t")[0] for line in summary.splitlines()[1:] if line.strip()]
    for f in ("/seed0/metrics.json", "results/classifier/classifier.pt", "results/eval/main/seed0.json",
              "results/summary.json", "results/report/index.html", "results/omniglot/restoration.json"):
        assert any(f in g for g in files), (f, summary[:2000])
    with Repo(str(repo)) as dvc:
        stages = {s.name: s for s in dvc.index.stages}
        rel = lambda item: str(Path(item.fs_path).relative_to(repo))  # noqa: E731
        outs = {n: [rel(o) for o in s.outs] for n, s in stages.items()}
        deps = {n: {rel(d) for d in s.deps} for n, s in stages.items()}
        params = {n: {p for dep in s.params for p in dep.params} for n, s in stages.items()}
        plan_params = [(p.def_path, p.params) for p in stages["plan"].params]
    all_outs = [o for os_ in outs.values() for o in os_]
    missing = [f for f in files if not any(f == o or f.startswith(o + "/") for o in all_outs)]
    assert not missing, f"Snakemake outputs that no DVC stage outputs: {missing}"
    assert set(outs["figures_runs"]) == {f"results/figures/{i}.png" for i in figures.RUN_FIGURE_IDS}

    assert plan_params == [("params.yaml", [])], plan_params  # the plan stage reads the whole file
    experiments = yaml.safe_load((repo / "params.yaml").read_text())["experiments"]
    plan_deps = {f"train@{n}": f"results/plan/{n}.json" for n in experiments}
    plan_deps.update({f"evaluate@{n}": "results/plan/stages/evaluate.json" for n in experiments})
    plan_deps.update({s: f"results/plan/stages/{s}.json" for s in pipeline.STAGE_KEYS if s != "evaluate"})
    for stage, plan_file in plan_deps.items():
        # the resolved plan (profile + overrides applied) as a content-hashed dep, no raw keys
        assert plan_file in deps[stage] and not params[stage], (stage, deps[stage], params[stage])
    for name in experiments:
        assert f"results/runs/{name}" in deps[f"evaluate@{name}"]
    # training never depends on the classifier, the evaluations or anything after them
    after = [o for n in ("classifier", "omniglot", "figures_runs", "summarize", "report",
                         *(f"evaluate@{e}" for e in experiments)) for o in outs[n]]
    for name in experiments:
        assert not [d for d in deps[f"train@{name}"] for o in after if d == o or d.startswith(o + "/")]

    sh(f"{SMK} plan_all", repo)
    plan = json.loads((repo / "results/plan/main.json").read_text())
    assert set(plan["train_params"]) == set(pipeline.TRAIN_KEYS) and plan["seeds"] == [0]
    for stage, keys in pipeline.STAGE_KEYS.items():
        got = json.loads((repo / f"results/plan/stages/{stage}.json").read_text())["params"]
        if keys is None:  # the whole resolved params
            assert got["profile"] == "smoke" and "experiments" in got, stage
        else:
            assert set(got) == set(keys), stage


def test_build_record_change_push_pull(repo, tmp_path):
    """snakemake builds everything up to the HTML report; dvc commit records it without
    recomputation; a change of one experiment's iterations re-runs exactly its jobs and what
    follows them (Snakemake) / its stages (DVC, after which Snakemake has nothing to do); push,
    clone, pull restores identical artifacts; --touch after pull leaves Snakemake nothing to do."""
    t0 = time.time()
    out = sh(f"{SMK} report", repo, timeout=600)
    text = out.stdout + out.stderr
    assert trained(text) == {"experiment=main, seed=0", "experiment=no_aii, seed=0"}
    assert {w for r, w in ran_jobs(text) if r == "evaluate"} == {"experiment=main, seed=0", "experiment=no_aii, seed=0"}
    for name in ("main", "no_aii"):
        assert (repo / f"results/runs/{name}/seed0/metrics.json").is_file()
        assert (repo / f"logs/train/{name}/seed0.log").is_file()
        assert (repo / f"logs/evaluate/{name}/seed0.log").is_file()
        assert json.loads((repo / f"results/metrics/{name}.json").read_text())["runs"] == 1
        assert json.loads((repo / f"results/eval/{name}/experiment.json").read_text())["seeds"] == [0]
    assert not json.loads((repo / "results/metrics/wide_64.json").read_text())["selected"]
    assert not json.loads((repo / "results/eval/wide_64/experiment.json").read_text())["selected"]
    for f in ("results/classifier/classifier.pt", "results/classifier/metrics.json", "results/summary.json",
              "results/omniglot/restoration.json", "results/report/index.html", "logs/report.log"):
        assert (repo / f).is_file(), f
    print(f"snakemake report: {time.time() - t0:.0f}s")
    assert "Nothing to be done" in sh(f"{SMK} -n report", repo).stdout

    # Record in DVC without recomputation.
    sh("dvc commit -f", repo)
    status = sh("dvc status --json", repo).stdout
    assert json.loads(status) == {}, status
    repro = sh("dvc repro", repo)
    assert "Running stage" not in repro.stdout, repro.stdout
    metrics = json.loads(sh("dvc metrics show --json", repo).stdout)
    assert "results/summary.json" in json.dumps(metrics) and "results/classifier/metrics.json" in json.dumps(metrics)

    # Change one experiment's iterations: Snakemake re-runs exactly its training job, and the
    # evaluation, figures, summary and report that follow; not the classifier, not other runs.
    set_params(repo, lambda p: p["profiles"]["smoke"]["experiments"].setdefault("main", {})
               .setdefault("overrides", {"train": {"iterations": 6}}))
    out = sh(f"{SMK} report", repo, timeout=300)
    text = out.stdout + out.stderr
    assert trained(text) == {"experiment=main, seed=0"}, ran_jobs(text)
    assert {r for r, _ in ran_jobs(text)} == {"plan", "train", "collect", "evaluate", "collect_evaluations", "omniglot",
                                              "figures_runs", "summarize", "html_report", "report"}, ran_jobs(text)
    for rule in ("collect", "collect_evaluations"):
        assert {w for r, w in ran_jobs(text) if r == rule} == {"experiment=main"}
    assert "resuming" in (repo / "logs/train/main/seed0.log").read_text()  # from the iteration-4 checkpoint
    assert json.loads((repo / "results/runs/main/seed0/metrics.json").read_text())["iterations"] == 6
    assert json.loads((repo / "results/eval/main/seed0.json").read_text())["iterations"] == 6
    # ... and DVC sees exactly those stages as changed; record them.
    stale = set(json.loads(sh("dvc status --json", repo).stdout))
    assert stale == {"plan", "train@main", "evaluate@main", "omniglot", "figures_runs", "summarize", "report"}, stale
    sh("dvc commit -f " + " ".join(sorted(stale)), repo)
    assert json.loads(sh("dvc status --json", repo).stdout) == {}

    # DVC side: change another experiment; `dvc repro` runs exactly its stages (and what follows),
    # which train its seed; afterwards Snakemake agrees that everything is up to date.
    set_params(repo, lambda p: p["profiles"]["smoke"]["experiments"].setdefault("no_aii", {})
               .setdefault("overrides", {"train": {"iterations": 6}}))
    repro = sh("dvc repro", repo, timeout=400)
    ran = re.findall(r"Running stage '([^']+)'", repro.stdout)
    assert sorted(ran) == sorted(["plan", "train@no_aii", "evaluate@no_aii", "figures_runs", "summarize", "report"]), ran
    assert ran.index("train@no_aii") < ran.index("evaluate@no_aii") < ran.index("summarize") < ran.index("report")
    assert trained(repro.stdout + repro.stderr) == {"experiment=no_aii, seed=0"}
    assert json.loads((repo / "results/runs/no_aii/seed0/metrics.json").read_text())["iterations"] == 6
    assert json.loads(sh("dvc status --json", repo).stdout) == {}
    assert "Nothing to be done" in sh(f"{SMK} -n report", repo).stdout

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
    """After a build, a params change makes DVC find stale exactly the stages whose jobs it changes:
    the training jobs and the classifier job Snakemake re-plans are exactly the stale train@ stages
    and classifier stage; every stale stage has jobs Snakemake re-plans, and Snakemake re-plans
    nothing outside the stale stages and what DVC runs after them. A classifier change re-runs the
    classifier, the evaluations and what follows them, never a training job (runs after
    test_build_record_change_push_pull, which leaves all up to date and committed)."""
    base = (repo / "params.yaml").read_text()
    downstream = dvc_downstream(repo)
    main_only = {"experiment=main, seed=0"}
    mutations = {  # key: (edit, training jobs Snakemake must re-plan, or None = at least main's)
        "model.experts": (lambda p: p["model"].update(experts=9), None),
        "model.expert_width (overridden by the smoke profile)": (lambda p: p["model"].update(expert_width=12), set()),
        "experiments.main": (lambda p: p["experiments"]["main"]["overrides"].update(aii={"lr": 0.003}), main_only),
        "profiles.smoke.experiments.main": (lambda p: p["profiles"]["smoke"]["experiments"].update(
            main={"overrides": {"train": {"batch_size": 16}}}), main_only),
        "classifier.epochs (overridden by the smoke profile)": (lambda p: p["classifier"].update(epochs=5), set()),
        "classifier.lr": (lambda p: p["classifier"].update(lr=0.002), set()),
    }
    try:
        for key, (edit, expected) in mutations.items():
            set_params(repo, edit)
            text = sh(f"{SMK} -n report", repo).stdout
            jobs = trained(text)
            assert jobs == expected if expected is not None else "experiment=main, seed=0" in jobs, (key, jobs)
            planned = job_stages(text) - {"plan"}
            sh("dvc repro plan", repo)
            stale = set(json.loads(sh("dvc status --json", repo).stdout)) - {"plan"}
            after = stale.union(*(downstream[s] for s in stale))
            msg = f"{key}: Snakemake re-plans {sorted(planned)}, DVC finds stale {sorted(stale)}"
            assert {s for s in planned if s.startswith("train@") or s == "classifier"} == \
                {s for s in stale if s.startswith("train@") or s == "classifier"}, msg
            assert stale <= planned <= after, msg
            if key == "classifier.lr":
                # (figures, summary and report read all params: cheap, re-run on any change)
                assert stale == {"classifier", "figures_runs", "summarize", "report"}, stale
                assert {r for r, _ in ran_jobs(text)} == {"plan", "classifier", "evaluate", "collect_evaluations",
                                                          "figures_runs", "summarize", "html_report", "report"}
            (repo / "params.yaml").write_text(base)

        # The classifier change for real, under DVC (two evaluation stages: an experiment the profile
        # runs and one it does not): no training, the classifier and the evaluations re-run.
        set_params(repo, mutations["classifier.lr"][0])
        repro = sh("dvc repro evaluate@main evaluate@wide_64", repo, timeout=300)
        ran = re.findall(r"Running stage '([^']+)'", repro.stdout)
        # (plan is already recorded at this state by the loop's last `dvc repro plan`)
        assert sorted(set(ran) - {"plan"}) == ["classifier", "evaluate@main", "evaluate@wide_64"], ran
        assert not trained(repro.stdout + repro.stderr)
        assert {w for r, w in ran_jobs(repro.stdout + repro.stderr) if r == "evaluate"} == {"experiment=main, seed=0"}
        assert json.loads((repo / "results/classifier/metrics.json").read_text())["params"]["lr"] == 0.002
        assert set(json.loads(sh("dvc status --json", repo).stdout)) == \
            {f"evaluate@{n}" for n in yaml.safe_load(base)["experiments"]} - {"evaluate@main", "evaluate@wide_64"} | \
            {"figures_runs", "summarize", "report"}
    finally:
        # Back to the committed state: lock and plans from git (DVC autostages dvc.lock, hence
        # HEAD), outputs from the DVC cache.
        (repo / "params.yaml").write_text(base)
        sh("git checkout HEAD -- dvc.lock results/plan results/summary.json", repo)
        sh("dvc checkout -f", repo)
    assert json.loads(sh("dvc status --json", repo).stdout) == {}


def test_killed_job_resumes(repo):
    """A training job killed hard (SIGKILL, as the OOM killer or a lost node does) leaves no metrics.json
    (nothing that looks complete) but its checkpoint; Snakemake reports the job failed, and the next run
    resumes from the checkpoint."""
    run = repo / "results/runs/single_net_32/seed0"
    base = (repo / "params.yaml").read_text()
    try:
        shutil.rmtree(run, ignore_errors=True)
        set_params(repo, lambda p: p["profiles"]["smoke"].update(only_experiments=["single_net_32"]) or
                   p["profiles"]["smoke"]["experiments"].update(single_net_32={"overrides": {"train": {
                       "iterations": 100000, "checkpoint_every": 1, "eval_every": 100000}}}))
        log = repo / "logs" / "killed-test-snakemake.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "w") as fh:
            proc = subprocess.Popen(f"exec {SMK} experiment_single_net_32", shell=True, cwd=repo, env=env(),
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.time() + 180
                while time.time() < deadline and not (run / "checkpoint.pt").is_file() and proc.poll() is None:
                    time.sleep(1)
                time.sleep(3)
                assert (run / "checkpoint.pt").is_file(), f"no checkpoint within 180 s:\n{log.read_text()[-4000:]}"
                job = subprocess.run(["pgrep", "-f", "train --experiment single_net_32 --seed 0"],
                                     capture_output=True, text=True).stdout.split()
                assert job, "the training job is not running"
                for pid in job:
                    os.kill(int(pid), signal.SIGKILL)
                assert proc.wait(timeout=120) != 0, "Snakemake should report the killed job as failed"
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        assert not (run / "metrics.json").exists()
        assert (run / "checkpoint.pt").is_file()
        import torch

        done = int(torch.load(run / "checkpoint.pt", weights_only=True)["iteration"])
        set_params(repo, lambda p: p["profiles"]["smoke"]["experiments"].update(
            single_net_32={"overrides": {"train": {"iterations": done + 2, "checkpoint_every": 1, "eval_every": 100000}}}))
        out = sh(f"{SMK} experiment_single_net_32", repo)
        assert trained(out.stdout + out.stderr) == {"experiment=single_net_32, seed=0"}
        assert "resuming" in (repo / "logs/train/single_net_32/seed0.log").read_text()
        assert f"resuming {run.relative_to(repo)} at iteration {done}" in (repo / "logs/train/single_net_32/seed0.log").read_text()
        assert json.loads((run / "metrics.json").read_text())["iterations"] == done + 2
    finally:
        (repo / "params.yaml").write_text(base)  # main selected again, for the tests after this one


def test_dvc_exp_run_sets_the_profile(repo, tmp_path):
    """`dvc exp run -S profile=smoke` on a commit whose params.yaml says `profile: paper` runs at the
    smoke scale (one seed, smoke iterations) and the experiment records the changed param. Cheap:
    a clone at the first commit (data recorded, nothing trained), one target stage."""
    root = sh("git rev-list --max-parents=0 HEAD", repo).stdout.strip()
    clone = tmp_path / "exp"
    sh(f"git clone -q {repo} {clone}", tmp_path)
    # its own DVC cache (no run-cache entries from the other tests), the data copied in and recorded
    sh(f"git config user.email t@t && git config user.name t && git reset -q --hard {root} && "
       f"cp -r {repo / 'data' / 'raw'} {repo / 'data' / 'prepared'} data/ && "
       "dvc commit -f fetch prepare@paper prepare@expanded", clone)
    assert not sh("git status --porcelain", clone).stdout.strip()  # the lock agrees with the copied data
    text = (clone / "params.yaml").read_text()
    (clone / "params.yaml").write_text(re.sub(r"(?m)^profile: \w+", "profile: paper", text, count=1))
    sh("git commit -qam 'paper scale'", clone)

    out = sh("dvc exp run -S profile=smoke train@main", clone, timeout=400)
    ran = re.findall(r"Running stage '([^']+)'", out.stdout)
    assert ran == ["plan", "train@main"], out.stdout
    assert trained(out.stdout + out.stderr) == {"experiment=main, seed=0"}  # paper: seeds 0-9
    assert [p.name for p in (clone / "results/runs/main").glob("seed*")] == ["seed0"]
    assert json.loads((clone / "results/runs/main/seed0/metrics.json").read_text())["iterations"] == 4
    plan = json.loads((clone / "results/plan/main.json").read_text())
    assert (plan["profile"], plan["seeds"]) == ("smoke", [0])

    import dvc.api

    rows = {r.get("Experiment") or r["rev"]: r for r in dvc.api.exp_show(repo=str(clone))}
    exps = [r for r in rows.values() if r.get("Experiment")]
    assert len(exps) == 1, rows.keys()
    # the experiment records the param it set (and its metrics the profile they were made at);
    # the commit it branched from keeps `paper`
    assert exps[0]["params.yaml:profile"] == "smoke" and exps[0]["results/metrics/main.json:profile"] == "smoke"
    assert [r["params.yaml:profile"] for k, r in rows.items() if k != "workspace" and not r.get("Experiment")] == ["paper"]


def test_slurm_profile_dry_run(repo):
    """With the SLURM profile, training jobs ask for one GPU, other jobs (evaluation, classifier and
    the rest: cheap CPU jobs) for none."""
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
    assert {"train", "prepare", "collect", "classifier", "evaluate", "omniglot", "figures_runs", "summarize",
            "html_report"} <= seen, seen
    # the profile forces the paper's scale: 10 seeds of main
    assert "experiment=main, seed=9" in text
