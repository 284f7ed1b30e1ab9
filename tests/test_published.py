"""Every published result (published/*/) is checked against its own files, not trusted: each
checkpoint loads on a CPU with `licm.load_run`, each seed's metrics.json equals what its evaluation
files give (win matrix, top experts, specialization, recomputed here with numpy), and its evaluation
JSON's win matrices and final classifier accuracy equal a recomputation from the published winners,
outputs and classifier."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RUNS = sorted(p.parent for p in (REPO / "published").glob("*/runs/*/seed*/checkpoint.pt"))
EVALUATED = [r for r in RUNS if (r / "evaluation" / "digits.npz").is_file()]


def _id(run: Path) -> str:
    return str(run.relative_to(REPO / "published"))


def win_matrix(winners: np.ndarray, mechanisms: np.ndarray, n_mechanisms: int, n_experts: int) -> np.ndarray:
    counts = np.zeros((n_mechanisms, n_experts))
    for m, w in zip(mechanisms.tolist(), winners.tolist()):
        counts[m, w] += 1
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def evaluations(run: Path) -> tuple[dict, list[tuple[int, dict]]]:
    with np.load(run / "evaluation" / "digits.npz") as z:
        digits = {k: z[k] for k in z.files}
    files = []
    for p in sorted((run / "evaluation").glob("it*.npz")):
        with np.load(p) as z:
            files.append((int(p.stem[2:]), {k: z[k] for k in z.files}))
    return digits, files


@pytest.mark.skipif(not RUNS, reason="nothing published yet (published/*/runs/*/seed*/checkpoint.pt)")
@pytest.mark.parametrize("run", RUNS, ids=_id)
def test_published_checkpoint_loads_on_cpu(run):
    import licm

    experts, disc, params = licm.load_run(run)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        out, score = experts(x), disc(x)
    assert out.shape == (4, params["model"]["experts"], 1, 32, 32) and torch.isfinite(out).all()
    assert score.shape == (4,) and torch.isfinite(score).all()


@pytest.mark.skipif(not EVALUATED, reason="no published seed with evaluation files")
@pytest.mark.parametrize("run", EVALUATED, ids=_id)
def test_published_metrics_agree_with_their_evaluation_files(run):
    metrics = json.loads((run / "metrics.json").read_text())
    digits, files = evaluations(run)
    M, N = len(metrics["mechanisms"]), json.loads((run / "params.json").read_text())["model"]["experts"]
    last_it, last = files[-1]
    assert last_it == metrics["iterations"] and [it for it, _ in files] == metrics["eval_iterations"]
    matrix = win_matrix(last["winner"], digits["mechanism"], M, N)
    np.testing.assert_allclose(metrics["win_matrix"], matrix, rtol=0, atol=1e-12)
    top = matrix.argmax(1)
    assert metrics["top_expert"] == top.tolist()
    assert metrics["fully_specialized"] == (len(set(top.tolist())) == M)
    distinct = sum(1 for m in range(M) if matrix[m, top[m]] > 0.5 and (top == top[m]).sum() == 1)
    assert metrics["distinct_winners"] == distinct

    ev = json.loads((run.parents[2] / "eval" / run.parent.name / f"{run.name}.json").read_text())
    by_it = {s["iteration"]: s for s in ev["steps"]}
    for it, f in files:
        if it in by_it:
            np.testing.assert_allclose(by_it[it]["win_matrix"], win_matrix(f["winner"], digits["mechanism"], M, N),
                                       rtol=0, atol=1e-6)
    clf_path = run.parents[2] / "classifier" / "classifier.pt"
    if clf_path.is_file() and "outputs" in last:
        from licm import classifier

        model = classifier.load_classifier(clf_path, "cpu")
        ok = classifier.predict(model, last["outputs"].astype(np.float32) / 255.0) == digits["label"]
        assert abs(float(ok.mean()) - ev["final"]["accuracy_experts"]) < 1e-12


@pytest.mark.skipif(not RUNS, reason="nothing published yet (published/*/runs/*/seed*/checkpoint.pt)")
@pytest.mark.parametrize("run", RUNS, ids=_id)
def test_published_seed_holds_what_the_figures_read(run):
    """The campaign's report draws its figures from published seeds restored into results/ (thinned:
    history.csv.gz, not history.csv); each must count as holding every artifact the figures ask for."""
    from licm import figures, runs

    for needs in ("params", "history", "checkpoint", "evaluation"):
        folder = runs.run_dir(run, run.parent.name, needs)
    metrics = json.loads((run / "metrics.json").read_text())
    curves = figures.score_curves(folder.history(), metrics["mechanisms"], len(metrics["top_expert"]), window=50)
    its, smooth = curves[metrics["mechanisms"][0]]
    assert its[-1] == metrics["iterations"] and np.isfinite(smooth).all()


SNAPSHOTS = sorted(p for p in (REPO / "published").glob("*") if p.is_dir())


@pytest.mark.skipif(not SNAPSHOTS, reason="nothing published yet (published/*/)")
@pytest.mark.parametrize("snapshot", SNAPSHOTS, ids=lambda p: p.name)
def test_published_snapshot_is_within_its_budget(snapshot):
    """Everything under published/ is in git: each snapshot stays within params.yaml's publish.budget_mb.
    A campaign still publishing its seeds is held to its share: the seeds so far, scaled to all of them."""
    from licm import config

    params = config.load(REPO / "params.yaml", profile="paper")
    budget = params["publish"]["budget_mb"] * 1e6
    size = sum(p.stat().st_size for p in snapshot.rglob("*") if p.is_file())
    seeds = [p for p in snapshot.glob("runs/main/seed*") if p.is_dir()]
    if not (snapshot / "index.json").is_file() and seeds:   # seeds published one by one, no report yet
        size = size / len(seeds) * len(config.seeds(params, "main"))
    assert size <= budget, f"{snapshot.name}: {size / 1e6:.1f} MB (projected), budget {budget / 1e6:.0f} MB"


CAMPAIGNS = sorted(p for p in SNAPSHOTS if p.name.startswith("paper-cpu-") and (p / "runs" / "main").is_dir())
ROW = re.compile(r"^\| (\d+) \| (.+?) \| (\d+)/10 \| ([\d.]+) % / ([\d.]+) % \| ([0-9a-f]{7,40}) \|$", re.M)
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


@pytest.mark.skipif(not CAMPAIGNS, reason="no CPU campaign published yet (published/paper-cpu-*/runs/main)")
@pytest.mark.parametrize("snapshot", CAMPAIGNS, ids=lambda p: p.name)
def test_readme_published_numbers_equal_the_snapshot(snapshot):
    """README's "Published results" is written by hand; every number in its per-seed table, the count
    of seeds and the classifier's accuracies must equal the snapshot's own files; once the campaign is
    complete, its headline (licm-c1, c2, c9: verdicts and numbers) must equal the snapshot's summary.json."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Published results"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    assert f"published/{snapshot.name}/" in section
    rows = {int(m[1]): m for m in ROW.finditer(section)}
    seeds = sorted(int(p.name[4:]) for p in (snapshot / "runs" / "main").glob("seed*") if p.is_dir())
    assert sorted(rows) == seeds, f"README rows {sorted(rows)}, published seeds {seeds}"
    assert f"{NUMBER_WORDS[len(seeds)]} seeds of ten" in section or len(seeds) == 10
    for seed, row in rows.items():
        metrics = json.loads((snapshot / "runs" / "main" / f"seed{seed}" / "metrics.json").read_text())
        meta = json.loads((snapshot / "runs" / "main" / f"seed{seed}" / "meta.json").read_text())
        ev = json.loads((snapshot / "eval" / "main" / f"seed{seed}.json").read_text())
        assert row[2].startswith("**yes**") == metrics["fully_specialized"], row[0]
        assert int(row[3]) == metrics["distinct_winners"], row[0]
        assert row[4] == f"{100 * ev['steps'][0]['accuracy_experts']:.2f}", row[0]
        assert row[5] == f"{100 * ev['final']['accuracy_experts']:.2f}", row[0]
        assert meta["git_commit"].startswith(row[6]), row[0]
        transformed, original = f"{100 * ev['accuracy_transformed']:.2f} %", f"{100 * ev['accuracy_original']:.2f} %"
        assert f"{transformed} of the transformed test digits and {original} of the originals" in section
    summary_file = snapshot / "summary.json"
    if summary_file.is_file():      # the campaign is complete: the headline must equal the report's summary
        summary = json.loads(summary_file.read_text())
        for claim in ("licm-c1", "licm-c2", "licm-c9"):
            assert summary[claim]["verdict"] not in ("reduced scale", "not run"), claim
            assert f"**{claim}**: {summary[claim]['verdict']}" in section, claim
        c1, c2, c9 = (summary[c]["numbers"] for c in ("licm-c1", "licm-c2", "licm-c9"))
        assert c1["fully specialized seeds"] in section
        assert c2["experts at the end"] in section and c2["experts after AII (paper ~40%)"] in section
        assert f"{c9['mechanisms restored on Omniglot']} mechanisms" in section
