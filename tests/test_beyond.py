"""The analyses beyond the papers (licm.composition, licm.independence, licm.genericity): the harness on
the true operators, closed-form answers of the conditional mutual information, and each stage end to
end on a real tiny run (byte-identical JSON on a second run, labelled figures written).

Expected values: the geometry of the paper domain (issue 18 / design note B.1: 24 lossy ordered
pairs, 48 deterministic lossless ones, 8 opposite), exact zeros of the true inverses in the central
window, H(C|J) for a winner that copies the class, 0 for a winner fixed by the mechanism.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from licm import composition, config, independence


@pytest.fixture(scope="module")
def paper(prepared) -> dict:
    params = prepared["params"]
    from licm.classifier import mnist_padded

    digits, labels = mnist_padded(params, train=False)
    return {"params": params, "names": params["domains"]["paper"], "mech": params["mechanisms"],
            "digits": digits, "labels": labels}


def test_pair_kinds_follow_the_geometry(paper):
    kinds = [composition.pair_kind(a, b, paper["mech"]) for a, b in itertools.permutations(paper["names"], 2)]
    counts = {k: kinds.count(k) for k in set(kinds)}
    assert counts == {"lossy": 24, "opposite": 8, "translation": 24, "translation_inversion": 16, "noise": 18}
    assert composition.pair_kind("translate_up", "translate_up_left", paper["mech"]) == "lossy"
    assert composition.composite("translate_up", "translate_down_left", paper["mech"]) == "translate_left"


def test_harness_on_true_operators(paper):
    """True inverses give zero error inside the central window on every lossless deterministic pair;
    exactly the geometrically lossy pairs lose ink; M_left(M_up(x)) == M_up_left(x) bitwise on all
    10,000 test digits."""
    rng = np.random.default_rng(0)
    sample = paper["digits"][rng.choice(len(paper["digits"]), 1000, replace=False)]
    h = composition.harness(paper["names"], sample, paper["digits"], paper["mech"])
    assert h["deterministic_lossless_pairs"] == 48 and h["lossy_pairs_flagged"] == 24
    assert h["lossless_zero_error"] and h["max_error_lossless"] == 0.0
    assert h["flags_equal_nonzero_error"]
    assert h["up_then_left_equals_up_left_bitwise"] is True
    assert h["window"] == [4, 28]


def test_conditional_mi_closed_forms():
    rng = np.random.default_rng(1)
    j = np.repeat(np.arange(4), 250)
    c = rng.integers(0, 10, len(j))
    # the winner is a function of the mechanism: I(W;C|J) = 0 exactly, p = 1
    fixed = independence.permutation_test(j % 3, c, j, 200, np.random.default_rng(0))
    assert fixed["cmi_bits"] == 0.0 and fixed["p_value"] == 1.0
    # the winner copies the class: I(W;C|J) = H(C|J), and no shuffle reaches it
    h = 0.0
    for k in range(4):
        p = np.bincount(c[j == k], minlength=10) / np.sum(j == k)
        h += np.mean(j == k) * -np.sum(p[p > 0] * np.log2(p[p > 0]))
    copy = independence.permutation_test(c, c, j, 200, np.random.default_rng(0))
    assert copy["cmi_bits"] == pytest.approx(h, abs=1e-12)
    assert copy["p_value"] == pytest.approx(1 / 201)
    # independent winner: the null's mean is the plug-in bias, and a seed repeats the p-value
    w = rng.integers(0, 5, len(j))
    a = independence.permutation_test(w, c, j, 300, np.random.default_rng(2))
    b = independence.permutation_test(w, c, j, 300, np.random.default_rng(2))
    assert a == b and a["p_value"] > 0.01 and a["null_mean_bits"] > 0


@pytest.fixture(scope="module")
def tiny(prepared, tmp_path_factory) -> dict:
    """A 4-iteration run with tiny networks on the real prepared data, recorded as experiment main,
    a small classifier and the smoke profile's params (Omniglot from the mirror)."""
    from licm import classifier as clf
    from licm import train
    from licm.rundir import write_experiment_record

    root = tmp_path_factory.mktemp("beyond")
    base = config.load(prepared["params_path"], profile="smoke")
    params = config.deep_merge(config.experiment(base, "main"), {
        "device": "cpu", "model": {"experts": 3, "expert_width": 4, "disc_fc": 16}, "aii": {"max_iterations": 2},
        "train": {"iterations": 4, "checkpoint_every": 2, "eval_every": 2, "eval_examples": 200,
                  "implementation": "loop"},
        "classifier": {"epochs": 1, "max_train_examples": 600}})
    train.run(params, 0, root / "runs" / "main" / "seed0", "cpu", progress=False)
    write_experiment_record(root / "runs", "main", {"experiment": "main", "profile": "smoke", "selected": True,
                                                    "seeds": [0]})
    clf.build(params, root / "classifier", log=lambda m: None)
    return {"root": root, "params_path": prepared["params_path"], "classifier": root / "classifier" / "classifier.pt"}


def _stage(tiny, command: str, out: Path, extra: list[str]) -> dict:
    from licm.cli import main

    argv = ["--params", str(tiny["params_path"]), "--profile", "smoke", command, "--out", str(out),
            "--figures", str(out / "figures"), *extra]
    assert main(argv) == 0
    return json.loads((out / f"{command}.json").read_text())


@pytest.mark.parametrize("command", ["composition", "independence", "genericity"])
def test_stage_end_to_end_is_deterministic(tiny, tmp_path, command):
    runs = ["--runs", str(tiny["root"] / "runs")]
    extra = {"composition": ["--experiment", "main", *runs, "--classifier", str(tiny["classifier"])],
             "independence": runs, "genericity": ["--experiment", "main", *runs]}[command]
    first = _stage(tiny, command, tmp_path / "a", extra)
    _stage(tiny, command, tmp_path / "b", extra)
    assert (tmp_path / "a" / f"{command}.json").read_bytes() == (tmp_path / "b" / f"{command}.json").read_bytes()
    assert first["sentence"] and first["report"]["numbers"]
    figures = sorted(p.name for p in (tmp_path / "a" / "figures").glob("*.png"))
    assert figures, command
    if command == "composition":
        h = first["harness"]
        assert h["lossless_zero_error"] and h["flags_equal_nonzero_error"] and h["up_then_left_equals_up_left_bitwise"]
        assert len(first["pairs"]["rows"]) == 90 and sum(r["kind"] == "lossy" for r in first["pairs"]["rows"]) == 24
        assert sum(r["licm_order"] for r in first["triple"]["orders"]) == 1 and len(first["triple"]["orders"]) == 6
        assert figures == ["cmp-matrix.png", "cmp-pairs.png"]
    if command == "genericity":
        assert first["io"]["harness"] == {"inputs_give_one": True, "truth_reproduces_reference": True}
        pairs = [layer["trained"]["pairs"] for layer in first["layers"]["experts"][0]["layers"]]
        assert pairs == [4, 16, 16, 16, 4]                                  # width 4: 1x4, 4x4 (x3), 4x1
        assert figures == ["bsv-fig2.png", "bsv-fig3.png", "bsv-fig5.png", "bsv-io.png"]
        noise = next(r for r in first["mechanisms"] if r["mechanism"] == "noise")
        assert noise["rho_inverse"] > 2.5 and noise["rho_forward"] < 1.0
    if command == "independence":
        final = first["runs"]["main/seed0"]["final"]
        assert 0 < final["p_value"] <= 1 and final["digits"] == 200


def test_stages_without_a_run_write_placeholders(tiny, tmp_path):
    from licm.cli import main

    empty = tmp_path / "runs"
    empty.mkdir()
    for command in ("composition", "genericity"):
        argv = ["--params", str(tiny["params_path"]), "--profile", "smoke", command, "--experiment", "main",
                "--runs", str(empty), "--out", str(tmp_path / command), "--figures", str(tmp_path / "fig")]
        assert main(argv) == 0
        assert json.loads((tmp_path / command / f"{command}.json").read_text())["not_run"] is True
    assert len(list((tmp_path / "fig").glob("*.png"))) == 6


def test_c9_uses_the_composition_numbers(tmp_path):
    """licm-c9: all but one mechanism restored on Omniglot and the experts compose -> reproduced (at
    paper scale); the same restoration with a composition below the threshold -> partly."""
    from licm import summary

    params = config.load(Path(__file__).resolve().parents[1] / "params.yaml", profile="paper")
    seeds = config.seeds(params, "main")          # the papers' scale: every declared seed, at paper params
    (tmp_path / "runs" / "main").mkdir(parents=True)
    (tmp_path / "runs" / "main" / "experiment.json").write_text(json.dumps(
        {"experiment": "main", "profile": "paper", "selected": True, "seeds": seeds}))
    for s in seeds:
        run = tmp_path / "runs" / "main" / f"seed{s}"
        run.mkdir()
        (run / "params.json").write_text(json.dumps(config.experiment(params, "main")))
        (run / "metrics.json").write_text(json.dumps({
            "iterations": 2000, "mechanisms": [f"m{i}" for i in range(10)], "win_matrix": np.eye(10).tolist(),
            "top_expert": list(range(10)), "top_share": [1.0] * 10, "distinct_winners": 10,
            "fully_specialized": True}))
    main = summary.Experiment("main", tmp_path / "runs", tmp_path / "eval", params)
    restoration = {"run": str(run), "restored": 9, "mechanisms": 10}

    def comp(eff: float) -> dict:
        result = {"efficiency": {"efficiency": eff, "ci95": [eff - 0.05, eff + 0.05], "pairs": 66, "digits": 256},
                  "efficiency_threshold": 0.9, "blind": {"blind_over_oracle": 0.5},
                  "triple": {"digits": 1000, "letters": 256, "orders": [
                      {"licm_order": True, "accuracy": [0.1, 0.5, 0.8, 0.95], "mse_ratio_letters": 0.3}]}}
        result["report"] = composition.composes(result)
        return result

    good = summary.claim_c9(restoration, comp(0.97), main)
    assert good["verdict"] == "reproduced" and "0.970 [0.920, 1.020]" in str(good["numbers"])
    assert summary.claim_c9(restoration, comp(0.6), main)["verdict"] == "partly reproduced"
    assert "not measured" in summary.claim_c9(restoration, None, main)["note"]
