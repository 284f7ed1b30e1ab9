"""The Snakemake + DVC pipeline, run for real in a temporary copy of the repository.

The copy holds the tracked and untracked-not-ignored files, raw data and a *subsampled* copy
of the prepared data (so training and evaluation take seconds), `profile: smoke`, and is its
own git repository. Snakemake and DVC run as subprocesses, as a user would run them.
Select with `-m pipeline`. Needs the prepared data (data/prepared of the checkout, or the mirror).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from smoke_repo import (BATCH_RULE, SMK, build_smoke_repo, data_source, env, ran_jobs, set_params, sh, source_files,
                        trained, tree_hashes)

from licm.stages import RULE_STAGE

pytestmark = pytest.mark.pipeline


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


def snakemake_view(repo: Path, tmp_path: Path) -> dict[str, dict]:
    """Snakemake's view of every job of `report`: output file -> its record (rule, inputs, params), from
    `snakemake --touch --forceall` in a clone (records written, nothing run; missing files stay missing)."""
    clone = tmp_path / "view"
    sh(f"git clone -q {repo} {clone}", tmp_path)
    sh("snakemake --cores 1 --touch --forceall report", clone)
    records = {}
    for f in (clone / ".snakemake/metadata").iterdir():
        records[base64.urlsafe_b64decode(f.name + "=" * (-len(f.name) % 4)).decode()] = json.loads(f.read_text())
    return records


def stage_pattern(rule: str) -> re.Pattern:
    """The names of the DVC stages that may run a job of `rule` (licm.stages.RULE_STAGE)."""
    template = RULE_STAGE["train" if BATCH_RULE.fullmatch(rule) else rule]
    return re.compile(re.sub(r"\\\{\w+\\\}", "[a-z0-9_]+", re.escape(template)))


def test_dag_consistency(repo, tmp_path):
    """Snakemake's and DVC's views of every stage agree: each job's outputs lie inside the outputs of
    the DVC stage that runs its rule and every DVC output has a job writing into it; the package code
    of a stage's jobs (their inputs) is the stage's code deps; the params each job records are the
    ones its DVC stage depends on (the plan file `licm plan` writes, or the raw keys of a data stage).
    dvc.yaml is what `licm dvc-yaml` generates, and `snakemake --lint` finds nothing."""
    from dvc.repo import Repo

    from licm import config, pipeline

    out = sh("snakemake --lint", repo, check=False)
    assert out.returncode == 0 and "Lints for" not in out.stdout + out.stderr, out.stdout + out.stderr
    out = sh("licm dvc-yaml --check", repo, check=False)
    assert out.returncode == 0, out.stderr

    records = snakemake_view(repo, tmp_path)
    with Repo(str(repo)) as dvc:
        rel = lambda item: str(Path(item.fs_path).relative_to(repo))  # noqa: E731
        stages = {s.name: s for s in dvc.index.stages}
        outs = {n: [rel(o) for o in s.outs] for n, s in stages.items()}
        deps = {n: {rel(d) for d in s.deps} for n, s in stages.items()}
        raw_params = {n: [p for dep in s.params for p in dep.params] for n, s in stages.items()}
    params = config.load(repo / "params.yaml")
    plans = pipeline.plans(params)  # what `licm plan` writes (contents checked at the end)

    def plan_of(stage: str, dep_set: set[str]) -> dict | None:
        files = [d for d in dep_set if d.startswith("results/plan/")]
        assert len(files) <= 1, (stage, files)
        return plans[files[0].removeprefix("results/plan/")] if files else None

    code = {}  # stage -> package files its jobs read, as Snakemake sees them
    for output, record in records.items():
        rule = record["rule"]
        owners = [n for n, os_ in outs.items() if any(output == o or output.startswith(o + "/") for o in os_)]
        assert len(owners) == 1, f"{output} (rule {rule}) is inside the outputs of DVC stages {owners}"
        stage = owners[0]
        assert stage_pattern(rule).fullmatch(stage), f"{output}: rule {rule}, but DVC stage {stage} outputs it"
        code.setdefault(stage, set()).update(i for i in record["input"] if i.startswith("src/licm/"))
        recorded = set(record["params"])
        plan = plan_of(stage, deps[stage])
        if raw_params[stage]:  # a data stage: raw keys of params.yaml
            expected = {repr(config.params_hash(pipeline.pick(params, raw_params[stage])))}
        elif rule == "plan":  # every plan (DVC: the whole params.yaml; the plans change where it matters)
            expected = {repr(config.params_hash(plans))}
        elif "train_params" in plan:  # train@<exp>: training jobs and the record of the experiment
            expected = {repr(pipeline.fingerprint(params, plan["experiment"]))} if rule != "collect" else \
                {repr(plan["seeds"]), repr(plan["profile"])}
        else:  # a stage's plan: results/plan/stages/<stage>.json
            expected = {repr(config.params_hash(plan["params"]))} if rule != "collect_evaluations" else \
                {repr(params["profile"])}
        assert expected <= recorded, f"{output} (rule {rule}): records params {recorded}; DVC's {stage}: {expected}"
    for stage, os_ in outs.items():
        for o in os_:
            assert any(f == o or f.startswith(o + "/") for f in records), f"DVC output {o} of {stage}: no job writes it"
    unselected = {f"{s}@{n}" for n in set(params["experiments"]) - set(config.selected_experiments(params))
                  for s in ("train", "evaluate")}
    for stage, files in code.items():
        dvc_code = {d for d in deps[stage] if d.startswith("src/licm/")}
        if stage in unselected:  # only the record job runs at this profile; DVC's code covers the runs too
            assert files <= dvc_code, (stage, sorted(files - dvc_code))
        elif stage != "plan":  # its rule has no code inputs on purpose (train.smk); its params cover the code
            assert files == dvc_code, (stage, sorted(files ^ dvc_code))
    assert set(code) == {s for s in stages if stages[s].cmd}, set(code) ^ set(stages)

    # every stage from plan on reads its params through a plan file, never raw keys (profiles override);
    # training never depends on the classifier, the evaluations or anything after them
    for name in params["experiments"]:
        assert f"results/plan/{name}.json" in deps[f"train@{name}"] and not raw_params[f"train@{name}"]
        after = [o for n in ("classifier", "omniglot", "figures_runs", "summarize", "report", f"evaluate@{name}")
                 for o in outs[n]]
        assert not [d for d in deps[f"train@{name}"] for o in after if d == o or d.startswith(o + "/")]
    sh(f"{SMK} plan_all", repo)
    plan = json.loads((repo / "results/plan/main.json").read_text())
    assert plan == json.loads(json.dumps(plans["main.json"])) and plan["seeds"] == [0]
    for stage, keys in pipeline.STAGE_KEYS.items():
        got = json.loads((repo / f"results/plan/stages/{stage}.json").read_text())["params"]
        assert set(got) == set(keys) if keys else (got["profile"] == "smoke" and "experiments" in got), stage


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
                                              "composition", "independence", "genericity", "figures_runs",
                                              "summarize", "html_report", "report"}, ran_jobs(text)
    for rule in ("collect", "collect_evaluations"):
        assert {w for r, w in ran_jobs(text) if r == rule} == {"experiment=main"}
    assert "resuming" in (repo / "logs/train/main/seed0.log").read_text()  # from the iteration-4 checkpoint
    assert json.loads((repo / "results/runs/main/seed0/metrics.json").read_text())["iterations"] == 6
    assert json.loads((repo / "results/eval/main/seed0.json").read_text())["iterations"] == 6
    # ... and DVC sees exactly those stages as changed; record them.
    stale = set(json.loads(sh("dvc status --json", repo).stdout))
    assert stale == {"plan", "train@main", "evaluate@main", "omniglot", "composition", "independence", "genericity",
                     "figures_runs", "summarize", "report"}, stale
    sh("dvc commit -f " + " ".join(sorted(stale)), repo)
    assert json.loads(sh("dvc status --json", repo).stdout) == {}

    # DVC side: change another experiment; `dvc repro` runs exactly its stages (and what follows),
    # which train its seed; afterwards Snakemake agrees that everything is up to date.
    set_params(repo, lambda p: p["profiles"]["smoke"]["experiments"].setdefault("no_aii", {})
               .setdefault("overrides", {"train": {"iterations": 6}}))
    repro = sh("dvc repro", repo, timeout=400)
    ran = re.findall(r"Running stage '([^']+)'", repro.stdout)
    assert sorted(ran) == sorted(["plan", "train@no_aii", "evaluate@no_aii", "independence", "figures_runs", "summarize",
                                  "report"]), ran
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


def test_campaign_snapshot_completes_thins_and_keeps_its_budget(repo, tmp_path):
    """The CPU campaign's last step, on the smoke tree: `licm publish-seed` puts seeds into a snapshot one
    by one, `licm publish --campaign` completes it (report, index.json with every seed's attempts and
    wall time, README), the seed the figures do not show keeps the outputs of its last evaluation only
    (its winners, weights and history unchanged), and a snapshot over publish.budget_mb is refused with
    the snapshot left as it was."""
    from licm.publish import kept_outputs
    from licm.rundir import RunDir

    if not (repo / "results/report/index.html").is_file():
        sh(f"{SMK} report", repo, timeout=600)
    root, snap = tmp_path / "root", tmp_path / "snap"
    root.mkdir()
    (root / "results").symlink_to(repo / "results")          # publish reads root/results and root/params.yaml
    shutil.copyfile(repo / "params.yaml", root / "params.yaml")
    attempt = {"commit": "c0ffee", "start": "2026-12-06T00:00:00+00:00"}
    campaign = {"created": "2026-12-06T00:00:00+00:00", "seeds": {
        "0": {"commit": "c0ffee", "attempts": [{**attempt, "end": "2026-12-06T00:10:00+00:00", "how": "finished"}]},
        "1": {"commit": "c0ffee", "attempts": [{**attempt, "end": None, "how": "interrupted"},    # length unknown
                                               {**attempt, "end": None, "how": "interrupted",
                                                "last_seen": "2026-12-06T00:05:00+00:00"},
                                               {**attempt, "start": "2026-12-06T01:00:00+00:00",
                                                "end": "2026-12-06T01:07:00+00:00", "how": "finished"}]}}}
    (tmp_path / "campaign.json").write_text(json.dumps(campaign))
    seed = f"--run results/runs/main/seed0 --eval results/eval/main/seed0.json --campaign {tmp_path / 'campaign.json'}"
    sh(f"licm publish-seed {seed} --classifier results/classifier --out {snap / 'runs/main/seed0'}", root)
    clf = (repo / "results/classifier/classifier.pt").read_bytes()
    assert (snap / "classifier/classifier.pt").read_bytes() == clf      # published with the first seed
    other = tmp_path / "other-classifier"                               # ...and no seed scored by another
    other.mkdir()
    (other / "classifier.pt").write_bytes(clf[:-1] + bytes([clf[-1] ^ 1]))
    shutil.copyfile(repo / "results/classifier/metrics.json", other / "metrics.json")
    refused = sh(f"licm publish-seed {seed} --classifier {other} --out {snap / 'runs/main/seed9'}", root, check=False)
    assert refused.returncode != 0 and "which scored the seeds published so far" in refused.stderr, refused.stderr
    assert not (snap / "runs/main/seed9").exists() and (snap / "classifier/classifier.pt").read_bytes() == clf
    shutil.copytree(snap / "runs/main/seed0", snap / "runs/main/seed1")      # a second published seed
    shutil.copyfile(snap / "eval/main/seed0.json", snap / "eval/main/seed1.json")
    kept = {f: (snap / "runs/main/seed1" / f).read_bytes() for f in ("checkpoint.pt", "history.csv.gz", "metrics.json")}

    sh(f"licm publish . --campaign {tmp_path / 'campaign.json'} --out {snap}", root)
    index = json.loads((snap / "index.json").read_text())
    seeds = index["campaign"]["seeds"]
    assert (seeds["0"]["wall_seconds"], seeds["0"]["interruptions"]) == (600, 0)
    assert (seeds["1"]["wall_seconds"], seeds["1"]["interruptions"]) == (300 + 420, 2)
    assert (seeds["0"]["unmeasured_attempts"], seeds["1"]["unmeasured_attempts"]) == (0, 1)
    assert index["campaign"]["training_wall_seconds"] == 1320 and index["model"]["seed"] == 0
    assert index["bytes"] <= index["budget_bytes"] == 80_000_000
    assert (snap / "classifier/classifier.pt").read_bytes() == clf and (snap / "classifier/metrics.json").is_file()
    readme = " ".join((snap / "README.md").read_text().split())
    assert (snap / "report/index.html").is_file() and "(seed 0)" in readme
    for name in ("composition/composition.json", "independence/independence.json", "genericity/genericity.json"):
        assert (snap / name).read_bytes() == (repo / "results" / name).read_bytes(), name
    assert "Seed 1: an attempt was killed before" in readme and "lower bound" in readme
    assert f'licm.load_run("{snap.parent.name}/snap/runs/main/seed<K>")' in readme    # a path, not a placeholder
    shown, other = RunDir(snap / "runs/main/seed0"), RunDir(snap / "runs/main/seed1")
    its = shown.evaluation_iterations()
    target = json.loads((snap / "runs/main/seed0/params.json").read_text())["figures"]["target_iteration"]
    assert other.evaluation_iterations() == its and len(its) >= 3
    for run, want in ((shown, kept_outputs(its, target)), (other, {its[-1]})):
        with_outputs = set()
        for it in its:
            with np.load(run.path / f"evaluation/it{it:06d}.npz") as z, \
                    np.load(shown.path / f"evaluation/it{it:06d}.npz") as ref:
                np.testing.assert_array_equal(z["winner"], ref["winner"])
                if "outputs" in z.files:
                    with_outputs.add(it)
                    np.testing.assert_array_equal(z["outputs"], ref["outputs"])
        assert with_outputs == want, (run.path.name, with_outputs, want)
    assert {f: (snap / "runs/main/seed1" / f).read_bytes() for f in kept} == kept

    before = tree_hashes(snap, ".")
    set_params(root, lambda p: p["publish"].update(budget_mb=1))
    out = sh(f"licm publish . --campaign {tmp_path / 'campaign.json'} --out {snap}", root, check=False)
    assert out.returncode != 0 and "over publish.budget_mb" in out.stderr, out.stderr
    assert tree_hashes(snap, ".") == before and not list(tmp_path.glob(".snap*"))


@pytest.mark.parametrize("module, old, new, stale", [
    ("figures.py", None, None, {"figures_data", "figures_runs"}),
    ("summary.py", "no seed specializes fully", "not one seed specializes fully", {"summarize"})])
def test_code_change_agrees(repo, module, old, new, stale):
    """Editing a package module makes both tools re-run the same stages: DVC finds stale the stages
    whose `licm` command imports it, Snakemake plans those and the report that follows them, no
    training (runs after test_build_record_change_push_pull: everything up to date and committed).
    A claim's sentence in summary.py re-runs only summarize and report: no figures, no Omniglot."""
    path = repo / "src/licm" / module
    text, stat = path.read_text(), path.stat()
    try:
        assert old is None or old in text
        path.write_text(text.replace(old, new) if old else text + "\n# an edit\n")
        planned = job_stages(sh(f"{SMK} -n report", repo).stdout)
        found = set(json.loads(sh("dvc status --json", repo).stdout))
        assert found == stale and planned == stale | {"report"}, (sorted(planned), sorted(found))
    finally:
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert json.loads(sh("dvc status --json", repo).stdout) == {}


def test_stage_added_to_the_table_appears_in_both_tools(repo):
    """One entry in the stage table (src/licm/stages.py) is a Snakemake rule, a job of the target
    `report` and a DVC stage, with no other edit (PYTHONPATH: the copy's package, not the checkout's)."""
    path = repo / "src/licm/stages.py"
    text, stat = path.read_text(), path.stat()
    entry = ('\nSTAGES = (*STAGES, Stage("echo_summary", {"echo_summary": "summarize --out results/echo.json"}, '
             'deps=("runs", "evals", "classifier_metrics", "restoration"), outs=("results/echo.json",)))\n')
    head, sep, tail = text.partition("\n\ndef dvc_name(")
    try:
        path.write_text(head + entry + sep + tail)
        assert "echo_summary" in {rule for rule, _ in ran_jobs(sh(f"PYTHONPATH=src {SMK} -n report", repo).stdout)}
        sh("PYTHONPATH=src licm dvc-yaml --out dvc-echo.yaml", repo)
        echo = yaml.safe_load((repo / "dvc-echo.yaml").read_text())["stages"]["echo_summary"]
        assert echo["cmd"].endswith("-- echo_summary") and "results/plan/stages/echo_summary.json" in echo["deps"]
        assert echo["outs"] == ["results/echo.json"] and "src/licm/summary.py" in echo["deps"]
    finally:
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        (repo / "dvc-echo.yaml").unlink(missing_ok=True)


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
                                                          "composition", "figures_runs", "summarize", "html_report",
                                                          "report"}
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
            {"composition", "figures_runs", "summarize", "report"}
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
                job = subprocess.run(["pgrep", "-f", "train --experiment single_net_32 --seeds 0"],
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
       f"mkdir -p data && cp -r {repo / 'data' / 'raw'} {repo / 'data' / 'prepared'} data/ && "
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
    """With the SLURM profile at the paper's scale and `seeds_per_job=all` (GPU jobs: all seeds of an
    experiment in one job), each experiment's seeds train in one job that asks for one GPU (the
    profile's `set-resources: train:` reaches the batched rules), a seed alone in its job too, and no
    other job (evaluation, classifier, ...: cheap CPU jobs) asks for one."""
    out = sh("snakemake --profile workflow/profiles/slurm -n --forceall report --config profile=paper seeds_per_job=all",
             repo)
    text = out.stdout + out.stderr
    blocks = re.split(r"\n(?=\[.*\]\n(?:local)?rule )|\n(?=(?:local)?rule \S+:)", text)
    seen = {}
    for block in blocks:
        m = re.search(r"(?:local)?rule (\S+):", block)
        res = re.search(r"resources: (.*)", block)
        if not m or not res:
            continue
        rule = m.group(1)
        gpu = re.search(r"\bgpu=(\d+)", res.group(1))
        seen[rule] = block
        if rule == "train" or BATCH_RULE.fullmatch(rule):
            assert gpu and gpu.group(1) == "1", block
        else:
            assert not gpu or gpu.group(1) == "0", block
    assert {"prepare", "collect", "classifier", "evaluate", "omniglot", "figures_runs", "summarize",
            "html_report"} <= set(seen), seen.keys()
    # the profile's scale: main's 10 seeds in one job, which writes each seed's metrics.json
    assert "output: " + ", ".join(f"results/runs/main/seed{s}/metrics.json" for s in range(10)) in \
        seen["train_main_seeds0-9"]
    assert trained(text) >= {f"experiment=main, seed={s}" for s in range(10)}
    assert not [b for b in seen.values() if "wildcards: experiment=main, seed=" in b and "rule train:" in b]


def test_seeds_per_job(repo):
    """`seeds_per_job` groups an experiment's seeds into training jobs, also in the command of DVC's
    train@ stage (which takes data/ as given: no data rules); the profile given with --config reaches
    the jobs; a bad value stops with one line."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        cmd = {s.name: s.cmd for s in dvc.index.stages}["train@main"]
    assert "--config data_rules=false" in cmd
    cmd = cmd.replace("--config data_rules=false", "--config data_rules=false profile=paper seeds_per_job=4")
    text = sh(cmd.replace(" -- ", " -n -- "), repo).stdout
    rules = re.findall(r"^(?:local)?rule (\S+):", text, re.M)
    assert sorted(rules) == ["collect", "experiment_main", "train_main_seeds0-3", "train_main_seeds4-7",
                             "train_main_seeds8-9"], rules
    assert "--seeds 0-3 --restart-if-changed --log logs/train/main/seeds0-3.log" in text
    # a pipeline setting reaches the jobs: the profile given with --config (LICM_PROFILE, not a shell variable)
    try:
        sh(f"{SMK} plan_all --config profile=quick", repo)
        assert json.loads((repo / "results/plan/main.json").read_text())["profile"] == "quick"
    finally:
        sh(f"{SMK} plan_all", repo)  # the plans of the file's profile again
    out = sh(f"{SMK} -n report --config seeds_per_job=0", repo, check=False)
    assert out.returncode != 0
    assert "--config seeds_per_job: expected a whole number >= 1 or 'all', given 0" in out.stdout + out.stderr


def test_smoke_copy_leaves_out_the_users_build(tmp_path):
    """The test repositories hold the checkout's sources but nothing `make report` built there (records
    in results/ that git keeps, logs, data, Snakemake's state), so `make report` before `make test`
    cannot change a test's outcome; uncommitted sources are copied."""
    from smoke_repo import REPO

    checkout = tmp_path / "checkout"
    sh(f"git clone -q {REPO} {checkout}", tmp_path)
    built = ["results/metrics/main.json", "results/plan/main.json", "results/plan/stages/report.json",
             "results/plots/main.csv", "results/summary.json", "results/runs/main/seed0/metrics.json",
             "logs/train/main/seed0.log", "data/prepared/paper/test.npz", ".snakemake/log/x.snakemake.log"]
    for rel in [*built, "src/licm/new_module.py"]:
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text("{}\n")
    files = source_files(checkout)
    assert "src/licm/new_module.py" in files and "Snakefile" in files
    assert not [f for f in files if f in built or f.startswith(("results/", "data/", "logs/", ".snakemake/"))]
