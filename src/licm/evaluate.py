"""Evaluation of a trained committee: which expert wins which mechanism, and how well a
pretrained MNIST classifier reads the winners' outputs (LICM Fig. 5, 6; claims c1-c8).

`licm train` records, at every evaluation, each evaluated test digit's winning expert and that
expert's output (the run folder's evaluation/, licm.rundir.RunDir). `licm evaluate` turns one run's
record into numbers over iterations: win matrices, specialization, and classifier accuracy on the
transformed digits, on the winners' outputs and on the original digits (results/eval/<E>/seed<K>.json).
It needs no model, only the record and the classifier, so a new classifier re-runs no training.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from licm import config, data, paths
from licm.config import LicmError
from licm.specialization import matrix_from_winners, specialization


# ---------------------------------------------------------------- licm evaluate

def _per_mechanism(correct: np.ndarray, mechanisms: np.ndarray, n_mechanisms: int) -> list[float | None]:
    return [float(correct[mechanisms == m].mean()) if (mechanisms == m).any() else None for m in range(n_mechanisms)]


def load_record(run_dir: Path) -> dict:
    """A finished run's evaluations, metrics.json and params.json (licm.rundir.RunDir), or a clear error."""
    from licm.rundir import RunDir

    run = RunDir(run_dir)
    metrics = run.metrics()
    if metrics is None:
        raise LicmError(f"{run.path / 'metrics.json'}: missing; the run is not finished. "
                        f"Fix: run `licm train` for {run_dir}")
    return {**run.evaluation(), "metrics": metrics, "params": run.params(), "meta": run.meta() or {}}


def evaluate_run(run_dir: str | Path, classifier_path: str | Path, device: str = "cpu") -> dict:
    """Numbers over iterations for one finished run (see the module docstring)."""
    from licm import classifier as clf

    run_dir = Path(run_dir)
    rec = load_record(run_dir)
    params, metrics = rec["params"], rec["metrics"]
    names = metrics["mechanisms"]
    M, N = len(names), params["model"]["experts"]
    model = clf.load_classifier(classifier_path, device)
    test = data.load_split(params["data"]["prepared_dir"], params["train"]["domain"], "test")
    rows, labels, mech = rec["test_index"], rec["label"], rec["mechanism"]
    originals, original_labels = clf.mnist_padded(params, train=False)
    if not np.array_equal(original_labels[test["source_index"][rows]], labels):
        raise LicmError(f"{run_dir}: its evaluation digits do not match {params['data']['prepared_dir']}; "
                        "the prepared data changed since training. Fix: re-run the training")
    transformed_ok = clf.predict(model, test["images"][rows]) == labels
    original_ok = clf.predict(model, originals[test["source_index"][rows]]) == labels
    steps = []
    for k, it in enumerate(rec["iterations"].tolist()):
        outputs = rec["outputs"][k].astype(np.float32) / 255.0
        experts_ok = clf.predict(model, outputs) == labels
        matrix = matrix_from_winners(rec["winner"][k], mech, M, N)
        steps.append({"iteration": int(it), "accuracy_experts": float(experts_ok.mean()),
                      "accuracy_experts_per_mechanism": _per_mechanism(experts_ok, mech, M),
                      "win_matrix": matrix.round(6).tolist(), **specialization(matrix)})
    return {
        "run": str(run_dir), "seed": rec["meta"].get("seed"),
        "mechanisms": names, "experts": N, "examples": int(len(rows)), "iterations": metrics["iterations"],
        "classifier": str(classifier_path),
        "accuracy_transformed": float(transformed_ok.mean()),
        "accuracy_transformed_per_mechanism": _per_mechanism(transformed_ok, mech, M),
        "accuracy_original": float(original_ok.mean()),
        "final": steps[-1], "steps": steps,
    }


def _cmd_evaluate(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    params = config.load(args.params, profile=args.profile)
    result = evaluate_run(args.run, args.classifier, str(config.device(params["device"])))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data.atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    f = result["final"]
    print(f"licm evaluate: {out}: iteration {f['iteration']}: {f['distinct_winners']}/{len(result['mechanisms'])} "
          f"mechanisms won by distinct experts; classifier accuracy transformed {result['accuracy_transformed']:.3f}, "
          f"experts {f['accuracy_experts']:.3f}, originals {result['accuracy_original']:.3f} "
          f"({result['examples']} digits, {result['seconds']:.1f}s)")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="numbers over iterations of one finished run (win matrices, classifier accuracy)",
                       description="Read a run's evaluations and score the winners' outputs with the MNIST classifier.")
    p.add_argument("--run", required=True, help="run folder, e.g. results/runs/main/seed0")
    p.add_argument("--classifier", default=paths.result("classifier_model"), help="default: %(default)s")
    p.add_argument("--out", required=True, help="JSON to write, e.g. results/eval/main/seed0.json")
    p.set_defaults(func=_cmd_evaluate)
