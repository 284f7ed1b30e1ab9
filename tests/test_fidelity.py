"""The fidelity study (issue 10): its analysis against independent computations, its experiment group
resolving at the paper profile, and the whole chain at the smoke scale in Snakemake and DVC.

The analysis (licm.fidelity, through licm summarize) is checked on made-up run records against scipy's
Fisher test, a Holm adjustment computed by hand, the beta quantiles of the Clopper-Pearson interval and a
simulation of the Fisher test's power. The end-to-end test trains a few fidelity arms for real at the smoke
scale in a copy of the repository (tests/smoke_repo.py) and reads the summary, the figure and the report.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import beta, fisher_exact

from licm import config, fidelity, figures, report, runs, stats, summary
from smoke_repo import REPO, SMK, build_smoke_repo, data_source, ran_jobs, set_params, sh, trained

ARMS = ("fidelity_baseline", "fidelity_scores_after_d", "fidelity_d_fakes_then_real", "fidelity_per_example",
        "fidelity_carry_aii_adam", "fidelity_bn_eval", "fidelity_dcgan", "fidelity_repeat")
# The arm trained at the smoke scale besides the baseline and the repeat (any arm works: a one-line change).
# fidelity_dcgan would exercise all three step variants, but its per-example updates make a smoke run ~4x
# dearer on the CPU (117 s against 28 s of CPU time, measured on the 2-core machine).
SMOKE_ARM = "fidelity_scores_after_d"
SMOKE_ARMS = ("fidelity_baseline", SMOKE_ARM, "fidelity_repeat")
M = 10


def paper_params() -> dict:
    return config.load(REPO / "params.yaml", profile="paper")


# ---------------------------------------------------------------- the experiment group in params.yaml

def test_group_in_params():
    """Every arm exists with a description, 30 seeds at the paper profile, and changes exactly its detail."""
    params = paper_params()
    assert fidelity.arms(params) == list(ARMS)
    expected = {
        "fidelity_baseline": {}, "fidelity_repeat": {},
        "fidelity_scores_after_d": {"train.expert_scores_from": "d_after_update"},
        "fidelity_d_fakes_then_real": {"train.d_update": "fakes_then_real"},
        "fidelity_per_example": {"train.expert_update": "per_example"},
        "fidelity_carry_aii_adam": {"train.carry_aii_optimizer": True},
        "fidelity_bn_eval": {"train.bn_mode_scoring": "eval"},
        "fidelity_dcgan": {"train.expert_scores_from": "d_after_update", "train.d_update": "fakes_then_real",
                           "train.expert_update": "per_example"},
    }
    for name in ARMS:
        assert config.seeds(params, name) == list(range(30)), name
        assert params["experiments"][name]["description"].startswith("Fidelity study"), name
        assert fidelity.differs(params, name) == expected[name], name
    base = config.experiment(params, "fidelity_baseline")["train"]   # the literal step
    assert (base["expert_scores_from"], base["d_update"], base["expert_update"], base["carry_aii_optimizer"],
            base["bn_mode_scoring"]) == ("d_before_update", "joint", "minibatch", False, "train")
    for profile in ("quick", "smoke"):                               # left out at the reduced scales
        assert not set(ARMS) & set(config.selected_experiments(config.load(REPO / "params.yaml", profile=profile)))


def test_integer_seeds_and_their_errors(tmp_path):
    """`seeds: N` means seeds 0..N-1 (capped by max_seeds); a bad value names the key and what is expected."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["profiles"]["smoke"].update(only_experiments=["main", "fidelity_repeat"], max_seeds=3)
    raw["experiments"]["main"]["seeds"] = 2
    assert config.seeds(raw, "main") == [0, 1] and config.seeds(raw, "fidelity_repeat") == [0, 1, 2]
    for bad, words in ((0, "expected a number >= 1, given 0"), ([1, 1], "expected items without repetition"),
                       ("x", "expected a list of distinct seeds >= 0, or an integer N >= 1 (seeds 0..N-1), given 'x'"),
                       ([], "expected at least 1 item(s), given []")):
        raw["experiments"]["fidelity_repeat"]["seeds"] = bad
        with pytest.raises(config.ParamsError, match=re.escape(f"key experiments.fidelity_repeat.seeds: {words}")):
            config.validate(raw)


# ---------------------------------------------------------------- the analysis on made-up records

def write_arm(root: Path, name: str, fully: list[bool], profile: str = "paper", accuracy: float = 0.9) -> dict:
    """An arm's record, metrics.json and evaluation per seed, in the formats of licm collect/train/evaluate."""
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    seeds = list(range(len(fully)))
    (folder / "experiment.json").write_text(json.dumps({"experiment": name, "profile": profile, "selected": True,
                                                        "seeds": seeds}))
    (root / "eval" / name).mkdir(parents=True)
    # The run's resolved params at `profile`: what decides whether it is at the papers' scale.
    run_params = config.experiment(config.load(REPO / "params.yaml", profile=profile), name)
    distinct, acc = [], []
    for s, ok in zip(seeds, fully):
        top = list(range(M)) if ok else [0, 0] + list(range(2, M))
        distinct.append(M if ok else M - 1 - s % 3)
        acc.append(accuracy + 0.01 * (s % 4))
        (folder / f"seed{s}").mkdir()
        (folder / f"seed{s}" / "params.json").write_text(json.dumps(run_params))
        (folder / f"seed{s}" / "metrics.json").write_text(json.dumps({
            "iterations": 2000, "mechanisms": [f"m{i}" for i in range(M)], "win_matrix": np.eye(M)[top].tolist(),
            "top_expert": top, "top_share": [1.0] * M, "distinct_winners": distinct[-1], "fully_specialized": ok}))
        (root / "eval" / name / f"seed{s}.json").write_text(json.dumps({"final": {"accuracy_experts": acc[-1]}}))
    return {"n": len(fully), "k": sum(fully), "distinct": distinct, "accuracy": acc}


def counts(k: int, n: int) -> list[bool]:
    return [True] * k + [False] * (n - k)


def holm_by_hand(p: dict[str, float]) -> dict[str, float]:
    """Holm (1979): sort ascending; the i-th (1-based) is multiplied by m - i + 1; then a running maximum; cap 1."""
    names = sorted(p, key=p.get)
    m = len(names)
    scaled = [(m - i) * p[n] for i, n in enumerate(names)]
    return {n: min(1.0, max(scaled[:i + 1])) for i, n in enumerate(names)}


def analyse(root: Path) -> dict:
    return summary.summarize(paper_params(), root / "runs", root / "eval", root / "none.json",
                             root / "none.json")["fidelity"]


def test_analysis_against_scipy_and_holm_by_hand(tmp_path):
    made = {"fidelity_baseline": write_arm(tmp_path, "fidelity_baseline", counts(9, 30)),
            "fidelity_per_example": write_arm(tmp_path, "fidelity_per_example", counts(22, 30), accuracy=0.95),
            "fidelity_bn_eval": write_arm(tmp_path, "fidelity_bn_eval", counts(12, 30)),
            "fidelity_dcgan": write_arm(tmp_path, "fidelity_dcgan", counts(27, 30)),
            "fidelity_repeat": write_arm(tmp_path, "fidelity_repeat", counts(8, 30))}
    block = analyse(tmp_path)
    rows = {r["arm"]: r for r in block["arms"]}
    assert list(rows) == list(ARMS) and block["verdict"] == "answered"
    base = made["fidelity_baseline"]
    p_scipy = {name: fisher_exact([[m["k"], m["n"] - m["k"]], [base["k"], base["n"] - base["k"]]],
                                  alternative="two-sided").pvalue
               for name, m in made.items() if name != "fidelity_baseline"}
    adjusted = holm_by_hand(p_scipy)
    for name, m in made.items():
        r = rows[name]
        assert (r["ran"], r["n"], r["fully"]) == (True, m["n"], m["k"])
        # Clopper-Pearson from the beta quantiles
        lo = beta.ppf(0.025, m["k"], m["n"] - m["k"] + 1) if m["k"] else 0.0
        hi = beta.ppf(0.975, m["k"] + 1, m["n"] - m["k"]) if m["k"] < m["n"] else 1.0
        assert r["ci"] == pytest.approx([lo, hi], abs=1e-9)
        assert r["distinct_mean"] == pytest.approx(np.mean(m["distinct"]))
        assert r["distinct_sd"] == pytest.approx(np.std(m["distinct"], ddof=1))
        assert r["accuracy_mean"] == pytest.approx(np.mean(m["accuracy"]))
        assert r["accuracy_sd"] == pytest.approx(np.std(m["accuracy"], ddof=1))
        if name != "fidelity_baseline":
            assert r["p_value"] == pytest.approx(p_scipy[name], rel=1e-12)
            assert r["p_holm"] == pytest.approx(adjusted[name], rel=1e-12)
            assert r["significant"] == (adjusted[name] < 0.05)
            assert r["difference"] == pytest.approx(m["k"] / m["n"] - 9 / 30)
    assert "p_value" not in rows["fidelity_baseline"]
    assert [n for n, r in rows.items() if r.get("significant")] == ["fidelity_per_example", "fidelity_dcgan"]
    for name in ("fidelity_scores_after_d", "fidelity_d_fakes_then_real", "fidelity_carry_aii_adam"):
        assert not rows[name]["ran"] and "experiment.json does not exist" in rows[name]["why_not"]
    assert block["repeat"] == {"seeds": 30, "same_outcome": 29, "identical_win_matrix": 29}
    text = " ".join(block["sentences"])
    assert "specialized fully in 9 of 30 seeds" in text
    assert "fidelity_per_example (expert_update=per_example) differs from the literal step: 22/30 against 9/30" in text
    assert "No arm differs" not in text and "Reduced scale" not in text
    # the power block: configured seeds, both planning rates and the observed one
    power = block["power"]
    assert (power["seeds_baseline"], power["seeds_arm"], power["comparisons"]) == (30, 30, 7)
    assert [e["baseline_rate"] for e in power["rates"]] == [0.3, 0.7, pytest.approx(0.3)]


def test_nothing_significant_is_said_plainly(tmp_path):
    write_arm(tmp_path, "fidelity_baseline", counts(3, 10))
    write_arm(tmp_path, "fidelity_per_example", counts(7, 10))     # LICM's 7/10 against 3/10: p = 0.18
    write_arm(tmp_path, "fidelity_repeat", counts(3, 10))
    block = analyse(tmp_path)
    row = next(r for r in block["arms"] if r["arm"] == "fidelity_per_example")
    assert row["p_value"] == pytest.approx(fisher_exact([[7, 3], [3, 7]]).pvalue) and not row["significant"]
    text = " ".join(block["sentences"])
    assert "No arm differs significantly from the literal step after Holm's correction over 2 comparison(s)" in text
    assert "an arm that is not significant does not show that its detail is irrelevant" in text
    assert "this device repeats runs exactly" in text


def test_reduced_scale_and_nothing_run(tmp_path):
    params = paper_params()
    empty = {n: runs.Experiment(n, tmp_path / "runs", tmp_path / "eval", params) for n in ARMS}
    block = fidelity.analyze(params, empty)
    assert block["verdict"] == "not run" and not any(r["ran"] for r in block["arms"])
    assert "No arm of the fidelity study has run yet" in block["sentences"][0]
    write_arm(tmp_path, "fidelity_baseline", counts(1, 2), profile="smoke")
    block = analyse(tmp_path)
    assert block["verdict"] == stats.REDUCED
    assert "prove nothing" in block["sentences"][0] and "(the papers' scale; this profile ran 2)" in " ".join(
        block["sentences"])


def test_power_against_simulation():
    """Exact power (enumeration) against a simulation of the test itself; the search's answer is the first
    grid point that reaches 80%."""
    rng = np.random.default_rng(0)
    n, draws = 30, 4000
    cache: dict = {}

    def rejects(k0, k1):
        if (k0, k1) not in cache:
            cache[k0, k1] = fisher_exact([[k1, n - k1], [k0, n - k0]]).pvalue <= 0.05
        return cache[k0, k1]

    for p0, p1 in ((0.3, 0.7), (0.3, 0.3), (0.7, 0.95)):
        k0, k1 = rng.binomial(n, p0, draws), rng.binomial(n, p1, draws)
        simulated = np.mean([rejects(a, b) for a, b in zip(k0, k1)])
        exact = stats.fisher_power(n, n, p0, p1)
        assert abs(simulated - exact) < 4 * np.sqrt(exact * (1 - exact) / draws) + 1e-3, (p0, p1, simulated, exact)
    assert stats.fisher_power(n, n, 0.3, 0.3) <= 0.05                 # Fisher is conservative under the null
    assert stats.fisher_p(7, 10, 3, 10) == pytest.approx(0.1789, abs=1e-4)   # issue 10: "p ≈ 0.18"
    d = stats.detectable_difference(n, n, 0.3, +1)
    assert stats.fisher_power(n, n, 0.3, 0.3 + d) >= 0.8 > stats.fisher_power(n, n, 0.3, 0.3 + d - 0.001)
    assert stats.detectable_difference(n, n, 0.7, -1) == d           # the test is symmetric in the two rates
    assert stats.detectable_difference(3, 3, 0.5, +1) is None        # 3 seeds per arm detect nothing


def test_figure_and_report_section(tmp_path):
    """Figure `fidelity` is drawn even when no arm ran (arms say so); the report shows figure, table and sentences."""
    params = paper_params()
    status = figures.draw_run_figures(params, tmp_path / "none", tmp_path / "none", tmp_path / "empty", ["fidelity"])
    assert status == {"fidelity": "drawn"}
    write_arm(tmp_path, "fidelity_baseline", counts(3, 10))
    write_arm(tmp_path, "fidelity_dcgan", counts(10, 10))
    figs = tmp_path / "figures"
    assert figures.draw_run_figures(params, tmp_path / "runs", tmp_path / "eval", figs, ["fidelity"])["fidelity"] == "drawn"
    s = summary.summarize(params, tmp_path / "runs", tmp_path / "eval", tmp_path / "none.json", tmp_path / "none.json")
    (tmp_path / "summary.json").write_text(json.dumps(s))
    page = report.build(params, tmp_path / "report", figures_dir=figs, summary=tmp_path / "summary.json",
                        runs_dir=tmp_path / "runs", classifier_metrics=tmp_path / "none.json")
    check_report_section(page, s["fidelity"])


def check_report_section(page: Path, block: dict) -> None:
    """The section "What decides specialization": its figure (copied beside the page), one table row per arm, and
    the block's sentences."""
    import html

    text = page.read_text()
    assert text.count('id="fidelity"') == 1 and ">What decides specialization</h2>" in text
    section = text[text.index('id="fidelity"'):text.index('id="follow-up-question"')]
    assert '<img src="assets/fidelity.png"' in section and (page.parent / "assets" / "fidelity.png").is_file()
    table = section[section.index('id="fidelity-table"'):section.index("</table>")]
    assert table.count("<tr") == 1 + len(block["arms"])
    for row in block["arms"]:
        assert f">{row['arm']}</td>" in table
    for sentence in block["sentences"]:
        assert sentence in html.unescape(section), sentence


# ---------------------------------------------------------------- the pipeline

@pytest.fixture(scope="module")
def repo(tmp_path_factory, request) -> Path:
    source = data_source(lambda: Path(request.getfixturevalue("prepared")["folder"]))
    return build_smoke_repo(tmp_path_factory.mktemp("fidelity") / "repo", source)


@pytest.mark.pipeline
def test_paper_profile_schedules_every_arm(repo):
    """At the paper profile Snakemake schedules the 30 seeds of every arm (training and evaluation), and DVC
    has a train@ and an evaluate@ stage per arm."""
    text = sh(f"{SMK} -n report --config profile=paper", repo, timeout=400).stdout
    jobs = trained(text)
    evaluated = {w for r, w in ran_jobs(text) if r == "evaluate"}
    for arm in ARMS:
        want = {f"experiment={arm}, seed={s}" for s in range(30)}
        assert {j for j in jobs if j.startswith(f"experiment={arm},")} == want, arm
        assert {j for j in evaluated if j.startswith(f"experiment={arm},")} == want, arm
    stages = {line.split()[0] for line in sh("dvc stage list", repo).stdout.splitlines() if line.strip()}
    assert {f"{kind}@{arm}" for kind in ("train", "evaluate") for arm in ARMS} <= stages


@pytest.mark.pipeline
def test_smoke_chain(repo):
    """Three arms, 2 seeds each, trained for real by `snakemake report` (the other experiments not selected):
    the summary's fidelity block matches the run folders, the repeat repeats the baseline exactly (CPU), the
    report has the section and its figure; DVC records it all, and both tools agree on what a change of one
    arm re-runs."""
    set_params(repo, lambda p: p["profiles"]["smoke"].update(only_experiments=list(SMOKE_ARMS), max_seeds=2))
    out = sh(f"{SMK} report", repo, timeout=580)
    assert trained(out.stdout + out.stderr) == {f"experiment={a}, seed={s}" for a in SMOKE_ARMS for s in (0, 1)}

    block = json.loads((repo / "results/summary.json").read_text())["fidelity"]
    assert block["verdict"] == stats.REDUCED and block["profile"] == "smoke"
    rows = {r["arm"]: r for r in block["arms"]}
    for arm in ARMS:
        if arm not in SMOKE_ARMS:
            assert not rows[arm]["ran"] and "not run at profile smoke" in rows[arm]["why_not"], rows[arm]
            continue
        metrics = [json.loads((repo / f"results/runs/{arm}/seed{s}/metrics.json").read_text()) for s in (0, 1)]
        evals = [json.loads((repo / f"results/eval/{arm}/seed{s}.json").read_text()) for s in (0, 1)]
        r = rows[arm]
        assert (r["n"], r["fully"]) == (2, sum(m["fully_specialized"] for m in metrics)), r
        assert r["distinct_mean"] == pytest.approx(np.mean([m["distinct_winners"] for m in metrics]))
        assert r["accuracy_mean"] == pytest.approx(np.mean([e["final"]["accuracy_experts"] for e in evals]))
    k0 = rows["fidelity_baseline"]["fully"]
    p = {a: fisher_exact([[rows[a]["fully"], 2 - rows[a]["fully"]], [k0, 2 - k0]]).pvalue
         for a in SMOKE_ARMS[1:]}
    for arm, adj in holm_by_hand(p).items():
        assert rows[arm]["p_value"] == pytest.approx(p[arm]) and rows[arm]["p_holm"] == pytest.approx(adj)
    # CPU runs repeat exactly: the repeat's runs are the baseline's
    for s in (0, 1):
        a, b = (json.loads((repo / f"results/runs/{n}/seed{s}/metrics.json").read_text())
                for n in ("fidelity_baseline", "fidelity_repeat"))
        assert a["win_matrix"] == b["win_matrix"] and a["top_share"] == b["top_share"]
    assert block["repeat"] == {"seeds": 2, "same_outcome": 2, "identical_win_matrix": 2}
    assert "prove nothing" in block["sentences"][0]
    assert (repo / "results/figures/fidelity.png").stat().st_size > 10_000
    check_report_section(repo / "results/report/index.html", block)
    assert "Nothing to be done" in sh(f"{SMK} -n report", repo).stdout

    # DVC records what Snakemake built, the arms' stages included, without recomputation.
    sh("dvc commit -f", repo)
    assert json.loads(sh("dvc status --json", repo).stdout) == {}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for arm in SMOKE_ARMS:
        runs = {o["path"]: o for o in lock[f"train@{arm}"]["outs"]}[f"results/runs/{arm}"]
        assert runs["nfiles"] >= 2 * 5, runs                    # both seeds' folders and the record

    # One arm changed: Snakemake re-plans exactly its seeds, DVC finds exactly its training stage stale.
    set_params(repo, lambda p: p["profiles"]["smoke"]["experiments"].update(
        fidelity_repeat={"overrides": {"train": {"iterations": 6}}}))
    planned = trained(sh(f"{SMK} -n report", repo).stdout)
    assert planned == {"experiment=fidelity_repeat, seed=0", "experiment=fidelity_repeat, seed=1"}, planned
    sh("dvc repro plan", repo)
    stale = set(json.loads(sh("dvc status --json", repo).stdout))
    assert {s for s in stale if s.startswith("train@")} == {"train@fidelity_repeat"}, stale
