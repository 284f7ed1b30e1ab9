"""licm evaluate (numbers over iterations of one run) and licm summarize (verdicts per claim)."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from licm import classifier as clf
from licm import config, evaluate, stats, summary, train
from licm.config import LicmError

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


# ---------------------------------------------------------------- licm evaluate on a real (tiny) run

@pytest.fixture(scope="module")
def tiny_run(prepared, tmp_path_factory) -> dict:
    """A 4-iteration run with tiny networks on the real prepared data, and a small classifier."""
    root = tmp_path_factory.mktemp("eval")
    params = config.experiment(config.load(prepared["params_path"]), "main")
    params = config.deep_merge(params, {
        "device": "cpu", "model": {"experts": 3, "expert_width": 4, "disc_fc": 16},
        "aii": {"max_iterations": 2},
        "train": {"iterations": 4, "checkpoint_every": 2, "eval_every": 3, "eval_examples": 120, "implementation": "loop"},
        "classifier": {"epochs": 1, "max_train_examples": 600}})
    train.run(params, 0, root / "run", "cpu", progress=False)
    clf.build(params, root / "classifier", log=lambda m: None)
    return {"params": params, "run": root / "run", "classifier": root / "classifier" / "classifier.pt"}


def _raw_test_digits(raw_dir: Path) -> np.ndarray:
    """MNIST test images straight from the IDX bytes (16-byte header), zero-padded to 32x32 in [0,1]."""
    path = Path(raw_dir) / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    blob = path.read_bytes() if path.is_file() else gzip.decompress(path.with_suffix(".gz").read_bytes())
    x = np.frombuffer(blob, np.uint8, offset=16).reshape(-1, 28, 28)
    return np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0


def _raw_evaluations(run: Path) -> dict:
    """A run's evaluation/ folder read file by file: digits.npz, then it<iteration>.npz in order."""
    ev = dict(np.load(run / "evaluation" / "digits.npz"))
    parts = sorted((run / "evaluation").glob("it*.npz"))
    ev["iterations"] = [int(p.stem[2:]) for p in parts]
    ev["winner"] = np.stack([np.load(p)["winner"] for p in parts])
    ev["outputs"] = np.stack([np.load(p)["outputs"] for p in parts])
    return ev


def test_evaluate_run_against_direct_computation(tiny_run):
    result = evaluate.evaluate_run(tiny_run["run"], tiny_run["classifier"])
    ev = _raw_evaluations(tiny_run["run"])
    model = clf.load_classifier(tiny_run["classifier"])
    p = tiny_run["params"]
    test = np.load(Path(p["data"]["prepared_dir"]) / "paper" / "test.npz")
    rows, labels = ev["test_index"], ev["label"]
    assert [s["iteration"] for s in result["steps"]] == [0, 3, 4] and result["examples"] == 120
    originals = _raw_test_digits(p["data"]["raw_dir"])[test["source_index"][rows]]
    with torch.no_grad():
        def acc(images):
            return float((model(torch.from_numpy(images).unsqueeze(1)).argmax(1).numpy() == labels).mean())
        assert result["accuracy_original"] == pytest.approx(acc(originals))
        assert result["accuracy_transformed"] == pytest.approx(acc(test["images"][rows]))
        for k, step in enumerate(result["steps"]):
            assert step["accuracy_experts"] == pytest.approx(acc(ev["outputs"][k].astype(np.float32) / 255))
    mech = ev["mechanism"]
    for k, step in enumerate(result["steps"]):
        m = np.asarray(step["win_matrix"])
        for i in range(10):
            counts = np.bincount(ev["winner"][k][mech == i], minlength=3)
            np.testing.assert_allclose(m[i], counts / counts.sum(), atol=1e-6)
    metrics = json.loads((tiny_run["run"] / "metrics.json").read_text())
    np.testing.assert_allclose(result["final"]["win_matrix"], metrics["win_matrix"], atol=1e-6)
    assert result["final"]["distinct_winners"] == metrics["distinct_winners"]


def test_evaluate_refuses_unfinished_run_and_changed_data(tiny_run, tmp_path):
    (tmp_path / "params.json").write_text("{}")
    with pytest.raises(LicmError, match="metrics.json: missing; the run is not finished"):
        evaluate.evaluate_run(tmp_path, tiny_run["classifier"])
    bad = tmp_path / "bad"
    shutil.copytree(tiny_run["run"], bad)
    z = dict(np.load(bad / "evaluation" / "digits.npz"))
    z["label"] = (z["label"] + 1) % 10
    np.savez(bad / "evaluation" / "digits.npz", **z)
    with pytest.raises(LicmError, match="do not match"):
        evaluate.evaluate_run(bad, tiny_run["classifier"])


# ---------------------------------------------------------------- licm summarize rules

def test_clopper_pearson_interval():
    lo, hi = stats.binomial_interval(7, 10)        # textbook exact interval for 7/10
    assert (round(lo, 4), round(hi, 4)) == (0.3475, 0.9333)
    assert stats.binomial_interval(0, 10)[0] == 0.0 and stats.binomial_interval(10, 10)[1] == 1.0


def _write_experiment(root: Path, name: str, profile: str, fully: list[bool], M: int = 10,
                      selected: bool = True) -> None:
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    seeds = list(range(len(fully)))
    (folder / "experiment.json").write_text(json.dumps({"experiment": name, "profile": profile,
                                                        "selected": selected, "seeds": seeds}))
    resolved = config.experiment(config.load(PARAMS, profile=profile), name)
    for s, ok in zip(seeds, fully):
        run = folder / f"seed{s}"
        run.mkdir()
        # what `licm train` writes before metrics.json: the resolved params and the hardware
        (run / "params.json").write_text(json.dumps(resolved))
        (run / "meta.json").write_text(json.dumps({"device": "cpu", "threads": 2, "cpu": {"model": "Test CPU"}}))
        top = list(range(M)) if ok else [0, 0] + list(range(2, M))
        matrix = np.eye(M)[:, :M] if ok else np.eye(M)[top]
        (run / "metrics.json").write_text(json.dumps({
            "iterations": 2000, "mechanisms": [f"m{i}" for i in range(M)], "win_matrix": matrix.tolist(),
            "top_expert": top, "top_share": [1.0] * M, "distinct_winners": M if ok else M - 2,
            "fully_specialized": ok}))


def _summarize(root: Path) -> dict:
    params = config.load(PARAMS, profile="paper")
    return summary.summarize(params, root / "runs", root / "eval", root / "none.json", root / "none.json")


@pytest.mark.parametrize("k,verdict", [(7, "reproduced"), (4, "reproduced"), (3, "partly reproduced"),
                                       (0, "not reproduced")])
def test_c1_verdict_follows_the_interval(tmp_path, k, verdict):
    _write_experiment(tmp_path, "main", "paper", [True] * k + [False] * (10 - k))
    entry = _summarize(tmp_path)["licm-c1"]
    assert entry["verdict"] == verdict
    assert entry["numbers"]["scale"].endswith("(the papers’ scale); CPU, fp32, 2 threads (Test CPU)")
    lo, hi = stats.binomial_interval(k, 10)
    assert entry["numbers"]["fully specialized seeds"] == f"{k}/10 (95% CI {100 * lo:.0f}-{100 * hi:.0f}%)"
    assert entry["numbers"]["other seeds with one expert on two mechanisms (and one on none)"] == f"{10 - k}/{10 - k}"
    shared = "; ".join(f"seed {s}: m0 + m1" for s in range(k, 10)) or "none"   # _write_experiment's merge
    assert entry["numbers"]["mechanisms sharing an expert"] == shared


def _steps(tops: list[list[int]], experts: int) -> dict:
    """An evaluation file's steps, every 100 iterations, whose win matrices give these winners."""
    return {"seed": 7, "steps": [{"iteration": 100 * i, "win_matrix": np.eye(experts)[t].tolist()}
                                 for i, t in enumerate(tops)]}


def test_assignment_path_settling_recruits_and_idle_experts():
    # expert 2 holds nothing at iteration 100 and takes mechanism 2 at 200; expert 1 only lacks one after AII
    path = summary.assignment_path(_steps([[0, 0, 0], [0, 1, 1], [0, 1, 2], [0, 1, 2]], 3))
    assert path == {"seed": 7, "settled": 200, "idle_at_end": {}, "recruited": {2: 100}}
    # expert 2 loses its mechanism at 200 for good; expert 3 never holds one
    path = summary.assignment_path(_steps([[0, 1, 2], [0, 1, 2], [0, 1, 1], [0, 1, 1]], 4))
    assert path == {"seed": 7, "settled": 200, "idle_at_end": {2: 200, 3: 0}, "recruited": {}}
    assert summary._idle_text([path]) == "seed 7: expert 2 (none since iteration 200), expert 3 (none since iteration 0)"


def test_claim_missing_an_experiment_is_not_run_even_at_paper_scale(tmp_path):
    """expand-c1 reads main and detach_scores: main alone at the papers' scale is not 'reduced scale' (the
    scale is right) but an incomplete claim: 'not run', naming what it needs and what main alone gives."""
    _write_experiment(tmp_path, "main", "paper", [True] * 3 + [False] * 7)
    entry = _summarize(tmp_path)["expand-c1"]
    assert entry["verdict"] == "not run"
    assert entry["note"].startswith("Needs detach_scores: ")
    assert "(main, at the papers' scale) the rule would say" in entry["note"]
    assert entry["numbers"]["scale"].startswith("main: profile paper: 10 seed(s) x 2000 iterations")


def test_reduced_scale_and_not_run(tmp_path):
    _write_experiment(tmp_path, "main", "quick", [True])
    _write_experiment(tmp_path, "expanded", "quick", [False], M=11, selected=False)
    s = _summarize(tmp_path)
    assert s["licm-c1"]["verdict"] == "reduced scale"
    assert "papers’ scale" not in s["licm-c1"]["numbers"]["scale"]
    assert "would say 'reproduced'" in s["licm-c1"]["note"]      # 1/1: interval 2.5-100% holds 0.7
    assert s["expand-c3"]["verdict"] == "not run" and "expanded" in s["expand-c3"]["note"]
    assert s["licm-c7"]["verdict"] == "not run"
    assert s["_meta"]["experiments_run"] == ["main"]


def test_learned_mechanisms_rule():
    ev = {"mechanisms": ["a", "b", "c"], "accuracy_original": 0.99,
          "accuracy_transformed_per_mechanism": [0.2, 0.97, 0.3],
          "final": {"accuracy_experts_per_mechanism": [0.96, 0.98, 0.5]}}
    # a: restored (0.96 >= 0.94 and > 0.22); b: near the bound but not better than untouched; c: not restored
    assert summary._learned(ev) == ["a"]
