"""`licm figures runs`: the data behind each figure against independent recomputations, and every
figure file written (drawn or as a placeholder naming what is missing) from real tiny run folders.

The runs are trained for real by licm.train.run on a tiny synthetic prepared folder (random 'digits',
three mechanisms), so the artifacts have exactly the format the pipeline writes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from licm import config, figures, models, plot, runs
from licm.rundir import RunDir
from licm.train import run

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = {"paper": ["translate_up", "noise", "invert"], "expanded": ["rotate_90", "stretch_horizontal"]}
TINY_MODEL = {"expert_width": 4, "expert_hidden_layers": 1, "receptive_field": False,
              "disc_widths": [4, 4, 4], "disc_convs": [1, 1, 1], "disc_fc": 16}


def make_prepared(root: Path, n: int = 48, seed: int = 0) -> Path:
    """Prepared folders for both domains in the format of `licm data prepare` (random images)."""
    rng = np.random.default_rng(seed)
    for domain, names in DOMAINS.items():
        folder = root / domain
        folder.mkdir(parents=True)
        for split, mech in (("train_transformed", np.arange(n) % len(names)), ("train_canonical", -np.ones(n)),
                            ("test", np.arange(n) % len(names))):
            np.savez(folder / f"{split}.npz", images=rng.random((n, 32, 32), dtype=np.float32),
                     mechanism=mech.astype(np.int64), source_index=np.arange(n, dtype=np.int64),
                     label=rng.integers(0, 10, n).astype(np.int64))
        (folder / "mechanisms.json").write_text(json.dumps(names))
    return root


def base_params(prepared: Path) -> dict:
    """The repository's params.yaml at profile smoke (profiles kept: placeholders name them), tiny networks."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = config.deep_merge(raw, {
        "profile": "smoke", "device": "cpu", "data": {"prepared_dir": str(prepared)},
        "model": {**TINY_MODEL, "experts": 3}, "aii": {"max_iterations": 2, "batch_size": 8},
        "train": {"iterations": 4, "batch_size": 8, "checkpoint_every": 4, "log_every": 1, "eval_every": 2,
                  "eval_examples": None, "implementation": "loop"},
    })
    config.validate(raw, "test params")
    return raw


def train_experiment(params: dict, runs: Path, name: str, seeds: list[int]) -> None:
    """Real runs of experiment `name` (its overrides, then tiny networks) and its experiment.json."""
    p = config.deep_merge(config.experiment(params, name), {"model": TINY_MODEL})
    for s in seeds:
        run(p, s, runs / name / f"seed{s}", "cpu", progress=False)
    record = {"experiment": name, "profile": "smoke", "selected": True, "seeds": seeds,
              "runs": {f"seed{s}": str(runs / name / f"seed{s}") for s in seeds}}
    (runs / name / "experiment.json").write_text(json.dumps(record))


def eval_json(iterations: list[int], experts: list[float], transformed: float, original: float) -> dict:
    """A `licm evaluate` result with the fields figures read."""
    return {"mechanisms": DOMAINS["paper"], "experts": 3, "examples": 48, "accuracy_transformed": transformed,
            "accuracy_original": original,
            "steps": [{"iteration": i, "accuracy_experts": a,
                       "win_matrix": np.eye(3)[[min(k, m % 3) for m in range(10)]].tolist()}
                      for k, (i, a) in enumerate(zip(iterations, experts))]}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Finished runs (4 iterations) of main (2 seeds, 3 experts), expanded (11 experts), expand_wasserstein
    and experts_16; experts_6 not selected; evaluations of main written by hand."""
    root = tmp_path_factory.mktemp("figs")
    params = base_params(make_prepared(root / "prepared"))
    runs, evals = root / "runs", root / "eval"
    train_experiment(params, runs, "main", [0, 1])
    for name in ("expanded", "expand_wasserstein", "experts_16"):
        train_experiment(params, runs, name, [0])
    (runs / "experts_6").mkdir(parents=True)
    (runs / "experts_6" / "experiment.json").write_text(json.dumps(
        {"experiment": "experts_6", "profile": "smoke", "selected": False, "seeds": [], "runs": {}}))
    (evals / "main").mkdir(parents=True)
    (evals / "main" / "seed0.json").write_text(json.dumps(eval_json([0, 2, 4, 6], [0.4, 0.5, 0.6, 0.7], 0.4, 0.99)))
    (evals / "main" / "seed1.json").write_text(json.dumps(eval_json([0, 2, 4, 6], [0.4, 0.6, 0.8, 0.9], 0.42, 0.97)))
    return {"params": params, "runs": runs, "eval": evals, "root": root}


def _is_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# ---------------------------------------------------------------- data behind the figures

def test_moving_average_of_known_series():
    np.testing.assert_allclose(figures.moving_average([1, 2, 3, 4, 5], 2), [1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(figures.moving_average([1, 2, 3, 4, 5], 3), [2, 3, 4])
    np.testing.assert_allclose(figures.moving_average([1, 2, 3, 4, 5], 50), [3.0])      # clipped to the length
    nan = float("nan")
    np.testing.assert_allclose(figures.moving_average([1, nan, 3, nan, nan], 2), [1, 3, 3, nan])  # NaNs ignored
    rows = figures.moving_average([[0, 2, 4, 6], [1, 1, 1, 1]], 2)                   # each row on its own
    np.testing.assert_allclose(rows, [[1, 3, 5], [1, 1, 1]])
    assert figures.moving_average([], 50).shape == (0,)
    # Independent: a 50-point trailing mean of a long series equals the mean of each slice.
    x = np.random.default_rng(0).random(300)
    np.testing.assert_allclose(figures.moving_average(x, 50), [x[i:i + 50].mean() for i in range(251)])


def test_window_in_history_rows():
    assert figures.window_rows(np.arange(1, 2001), 50) == 50
    assert figures.window_rows(np.arange(10, 2001, 10), 50) == 5        # log_every 10: 50 iterations = 5 rows
    assert figures.window_rows(np.arange(1, 5), 50) == 2                 # 4 iterations: half of them
    assert figures.window_rows(np.arange(1, 101), 50) == 50


def test_score_curves_from_history():
    its = np.arange(1, 9)
    rows = []
    for it in its:
        for e in range(2):
            for m in ("a", "b"):
                score = np.nan if (m == "b" and it == 3) else it * 0.1 + e + (0.5 if m == "b" else 0)
                rows.append({"iteration": it, "expert": e, "mechanism": m, "score_mean": score, "wins": 0})
    curves = figures.score_curves(pd.DataFrame(rows), ["a", "b"], 2, window=4)
    at, sa = curves["a"]
    assert at.tolist() == [4, 5, 6, 7, 8]                                  # 8 rows, window 4 -> 5 points
    np.testing.assert_allclose(sa[1], [np.mean([(i + k) * 0.1 + 1 for k in range(4)]) for i in range(1, 6)])
    _, sb = curves["b"]
    # The window ending at iteration 4 holds iterations 1, 2, 4 (iteration 3 had no digit of b).
    assert sb[0, 0] == pytest.approx(np.mean([0.1, 0.2, 0.4]) + 0.5)


def test_nearest_evaluation_to_iteration_1000():
    assert figures.nearest_index(list(range(0, 2001, 100)), 1000) == 10
    assert figures.nearest_index([0, 2, 4], 1000) == 2                       # short run: its last evaluation
    assert figures.nearest_index([0, 900, 1100, 2000], 1000) == 1            # tie: the earlier one
    assert figures.nearest_index([0, 250, 980, 1050], 1000) == 2
    assert figures.nearest_index([0], 1000) == 0


def test_typical_seed_rule():
    def m(fully, distinct):
        return {"fully_specialized": fully, "distinct_winners": distinct, "mechanisms": ["x"] * 10}

    assert runs.typical_seed({4: m(True, 10), 2: m(False, 9), 3: m(True, 10)})[0] == 3
    seed, why = runs.typical_seed({0: m(False, 6), 5: m(False, 8), 2: m(False, 8)})
    assert seed == 2 and "8/10" in why and "no seed fully specialized" in why
    with pytest.raises(ValueError):
        runs.typical_seed({})


def test_accuracy_curves_on_common_iterations():
    a = eval_json([0, 100, 200], [0.4, 0.6, 0.8], 0.40, 0.99)
    b = eval_json([0, 200, 300], [0.5, 0.9, 0.95], 0.42, 0.97)
    acc = figures.accuracy_curves([a, b])
    assert acc["iterations"].tolist() == [0, 200]
    np.testing.assert_allclose(acc["experts"], [[0.4, 0.8], [0.5, 0.9]])
    np.testing.assert_allclose(acc["transformed"], [0.40, 0.42])
    np.testing.assert_allclose(acc["original"], [0.99, 0.97])


def _expert_formula(w: int, hidden: int) -> int:
    """Parameters of an expert counted by hand: bias-free convs followed by BN (2 per channel), last conv with bias."""
    return (9 * w + 2 * w) + hidden * (9 * w * w + 2 * w) + (9 * w + 1)


def test_experts_holding_counts_the_distinct_most_frequent_winners():
    ev = eval_json([0, 2, 4], [0.4, 0.5, 0.6], 0.4, 0.99)     # step k: experts 0..k hold the mechanisms
    assert figures.experts_holding(ev) == ([0, 2, 4], [1, 2, 3])
    ev["steps"][1]["win_matrix"][9] = [0.2, 0.3, 0.5]          # mechanism 9 now won mostly by expert 2
    assert figures.experts_holding(ev)[1] == [1, 3, 3]


@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_architecture_table_counts_equal_the_built_models(profile):
    params = config.load(ROOT / "params.yaml", profile=profile)
    arch = figures.architecture(params)
    committee, disc = models.build(config.experiment(params, "main"), [0])
    m = params["model"]
    expert = models.Expert(m["expert_width"], m["expert_hidden_layers"], m["receptive_field"])
    expert_sum = sum(p.numel() for p in expert.parameters())
    assert arch["expert_total"] == expert_sum == _expert_formula(m["expert_width"], m["expert_hidden_layers"])
    assert arch["committee_total"] == sum(p.numel() for p in committee.parameters()) == m["experts"] * expert_sum
    assert arch["discriminator_total"] == sum(p.numel() for p in disc.parameters())
    # The table's rows add up to the same totals, and every module is in exactly one row.
    assert sum(r["params"] for r in figures.table_rows(arch["expert"])) == expert_sum
    assert sum(r["params"] for r in figures.table_rows(arch["discriminator"])) == arch["discriminator_total"]
    assert len(arch["expert"]) == len(list(expert.net.children()))
    # Output shapes from the forward hooks, checked against the architecture's arithmetic.
    w = m["expert_width"]
    expected = [(w, 32, 32)] * (1 + m["expert_hidden_layers"]) + [(1, 32, 32)]
    assert [r["shape"] for r in figures.table_rows(arch["expert"])] == expected
    disc_rows = figures.table_rows(arch["discriminator"])
    assert [r["shape"] for r in disc_rows if "avg pool" in r["label"]] == [(16, 16, 16), (32, 8, 8), (64, 4, 4)]
    assert disc_rows[-1]["label"] == "FC 1, sigmoid" and disc_rows[-1]["shape"] == (1,)
    if profile == "paper":
        assert expert_sum == 28481 and math.isclose(expert_sum, 27_000, rel_tol=0.06)   # LICM: "~27K"


def test_architecture_of_a_wasserstein_critic_has_no_sigmoid():
    params = config.load(ROOT / "params.yaml", profile="smoke")
    params["train"]["loss"] = "wasserstein"
    rows = figures.table_rows(figures.architecture(params)["discriminator"])
    assert rows[-1]["label"] == "FC 1, no sigmoid (critic)"


# ---------------------------------------------------------------- from real run folders

def test_fig5_matrices_recomputed_from_the_recorded_winners(world):
    folder = world["runs"] / "main" / "seed0"
    ev = RunDir(folder).evaluation()
    n = world["params"]["model"]["experts"]
    assert n == 3 and ev["iterations"].tolist() == [0, 2, 4]
    (it0, m0), (it1, m1) = figures.win_matrices(ev, 3, n, 1000)
    assert (it0, it1) == (0, 4)
    for k, matrix in ((0, m0), (2, m1)):
        counts = np.zeros((3, n))
        for mech, win in zip(ev["mechanism"], ev["winner"][k]):
            counts[mech, win] += 1
        np.testing.assert_allclose(matrix, counts / counts.sum(axis=1, keepdims=True))
    metrics = json.loads((folder / "metrics.json").read_text())
    np.testing.assert_allclose(m1, metrics["win_matrix"])                    # train's own final matrix
    assert figures.win_matrices(ev, 3, n, 3)[1][0] == 2                        # nearest to 3: 2 (tie, earlier)


def test_every_run_figure_is_written(world, tmp_path):
    out = tmp_path / "figures"
    status = figures.draw_run_figures(world["params"], world["runs"], world["eval"], out)
    assert list(status) == list(figures.RUN_FIGURE_IDS)
    assert all(v == "drawn" for v in status.values()), status                 # licm-fig9: one panel, one note
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.png" for i in figures.RUN_FIGURE_IDS)  # no temp files
    for fig_id in figures.RUN_FIGURE_IDS:
        width, height = _is_png(out / f"{fig_id}.png")
        assert width > 400 and height > 150, fig_id
        assert plot.placeholder_reason(out / f"{fig_id}.png") is None, fig_id


def test_missing_experiments_give_labelled_placeholders(world, tmp_path):
    only = ["expand-fig7", "expand-fig8", "licm-fig9", "licm-fig6", "licm-fig3"]
    runs_dir = tmp_path / "runs"
    (runs_dir / "main" / "seed0").mkdir(parents=True)
    src = world["runs"] / "main" / "seed0"
    for f in ("metrics.json", "params.json", "history.csv", "checkpoint.pt"):     # a run without evaluations
        (runs_dir / "main" / "seed0" / f).write_bytes((src / f).read_bytes())
    (runs_dir / "main" / "experiment.json").write_text(json.dumps(
        {"experiment": "main", "profile": "smoke", "selected": True, "seeds": [0], "runs": {}}))
    (runs_dir / "expanded").mkdir()
    (runs_dir / "expanded" / "experiment.json").write_text(json.dumps(
        {"experiment": "expanded", "profile": "smoke", "selected": False, "seeds": [], "runs": {}}))
    status = figures.draw_run_figures(world["params"], runs_dir, tmp_path / "no-eval", tmp_path / "out", only)
    for fig_id in only:
        _is_png(tmp_path / "out" / f"{fig_id}.png")
    assert status["expand-fig8"].startswith("placeholder: expanded: not run at profile smoke")
    for fig_id in only:         # each PNG says itself that it is a stand-in, and why (the report reads it)
        assert status[fig_id].startswith("placeholder") and plot.placeholder_reason(tmp_path / "out" / f"{fig_id}.png")
    assert "expand_wasserstein" in status["expand-fig7"] and "does not exist" in status["expand-fig7"]
    assert "experts_16" in status["licm-fig9"] and "experts_6" in status["licm-fig9"]
    assert "holds no evaluation" in status["licm-fig3"] and "no evaluation" in status["licm-fig6"]
    # The placeholder's text: figure, description, missing experiment, profile and the command to make it.
    with pytest.raises(runs.MissingArtifact) as info:
        runs.load_runset(runs_dir, "expanded", world["params"])
    lines = "\n".join(figures.placeholder_lines("expand-fig8", [info.value], "smoke"))
    assert "expand-fig8" in lines and "experiment expanded" in lines and "profile smoke" in lines
    assert figures.DESCRIPTIONS["expand-fig8"] in lines
    assert "make report PROFILE=paper" in lines and "--experiment expanded" in lines
    assert runs.profiles_running(world["params"], "expanded") == ["paper"]   # quick trains main only
    assert runs.profiles_running(world["params"], "experts_6") == ["paper"]


def test_cli_runs_subcommand(world, tmp_path):
    from licm.cli import main

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(world["params"], sort_keys=False))
    out = tmp_path / "figs"
    rc = main(["--params", str(path), "figures", "runs", "--runs", str(world["runs"]), "--eval", str(world["eval"]),
               "--out", str(out), "--only", "licm-table1", "licm-fig9"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["licm-fig9.png", "licm-table1.png"]


def test_forward_scores_match_the_models(world):
    import licm

    experts, disc, _ = licm.load_run(world["runs"] / "main" / "seed0")
    x = np.random.default_rng(1).random((3, 32, 32), dtype=np.float32)
    out, scores = figures.forward_scores(experts, disc, x)
    with torch.no_grad():
        ref = experts(torch.from_numpy(x)[:, None])
        ref_scores = torch.stack([disc(ref[:, j]) for j in range(ref.shape[1])], dim=1)
    np.testing.assert_allclose(out, ref[:, :, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-6)
