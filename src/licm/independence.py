"""Is the winning expert independent of the digit's class, given the mechanism? I(W; C | J) in bits.

LICM's experts should each invert a mechanism whatever the digit (§3.2(b) allows experts to split a
task by "a mode of the distribution", i.e. by class). The evaluation files every run already
writes (licm.rundir.RunDir.evaluation: winner, label and mechanism of each evaluated test digit, at
every evaluation) give the plug-in estimate of the conditional mutual information between winner
W and class C given mechanism J. The plug-in estimate is biased upwards (~0.3 bits at 200 digits
per mechanism), so it is compared with a permutation null: classes shuffled within each mechanism
(seeded numpy Generator, `independence.permutations` times), which keeps every marginal and
P(W | J) and breaks only the W-C link. p = (1 + #{null >= observed}) / (1 + permutations).

`licm independence` writes results/independence/independence.json (every finished run of every
experiment, over its evaluations) and the figure wc-independence. No training, no model.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from licm import config, data

FIGURE_ID = "wc-independence"


def conditional_mi(w: np.ndarray, c: np.ndarray, j: np.ndarray) -> float:
    """Plug-in I(W; C | J) in bits from integer arrays of equal length (non-negative codes)."""
    return float(conditional_mi_many(w, c[None], j)[0])


def conditional_mi_many(w: np.ndarray, cs: np.ndarray, j: np.ndarray) -> np.ndarray:
    """I(W; C | J) for each row of cs [P, n] (the same W and J): one bincount for all rows, so a
    thousand permutations cost one pass over a [P, n] array."""
    w, j, cs = np.asarray(w, np.int64), np.asarray(j, np.int64), np.asarray(cs, np.int64)
    nw, nc, nj = int(w.max()) + 1, int(cs.max()) + 1, int(j.max()) + 1
    n = len(w)
    rows = np.arange(len(cs))[:, None]
    cell = ((rows * nj + j) * nw + w) * nc + cs
    joint = np.bincount(cell.ravel(), minlength=len(cs) * nj * nw * nc).reshape(len(cs), nj, nw, nc) / n
    p_j = joint.sum(axis=(2, 3), keepdims=True)
    p_jw = joint.sum(axis=3, keepdims=True)
    p_jc = joint.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = joint * np.log2(joint * p_j / (p_jw * p_jc))
    # >= 0 mathematically; a winner fixed by the mechanism gives +-1e-17 of round-off: clip it to 0
    return np.maximum(np.nansum(np.where(joint > 0, term, 0.0), axis=(1, 2, 3)), 0.0)


def permutation_test(w: np.ndarray, c: np.ndarray, j: np.ndarray, permutations: int,
                     rng: np.random.Generator) -> dict:
    """Observed I(W;C|J), the null of classes shuffled within each mechanism, and its p-value."""
    observed = conditional_mi(w, c, j)
    shuffled = np.empty((permutations, len(c)), np.int64)
    for k in np.unique(j):
        idx = np.flatnonzero(j == k)
        shuffled[:, idx] = rng.permuted(np.broadcast_to(c[idx], (permutations, len(idx))), axis=1)
    null = conditional_mi_many(w, shuffled, j)
    exceed = int(np.sum(null >= observed - 1e-12))
    return {"cmi_bits": observed, "null_mean_bits": float(null.mean()),
            "null_q95_bits": float(np.quantile(null, 0.95)), "excess_bits": observed - float(null.mean()),
            "p_value": (1 + exceed) / (1 + permutations), "permutations": permutations, "digits": int(len(c))}


def run_curve(run, permutations: int, seed: int) -> dict:
    """I(W;C|J) of one run at each of its evaluations (licm.rundir.RunDir), with nulls and p-values;
    one seeded stream per run and evaluation, so the numbers do not depend on which runs are present."""
    ev = run.evaluation(keys=("iterations", "label", "mechanism", "winner"))
    steps = []
    for k, it in enumerate(ev["iterations"].tolist()):
        rng = np.random.default_rng([seed, int(it)])
        steps.append({"iteration": int(it), **permutation_test(ev["winner"][k], ev["label"], ev["mechanism"],
                                                               permutations, rng)})
    return {"run": str(run.path), "iterations": int(ev["iterations"][-1]) if len(ev["iterations"]) else 0,
            "final": steps[-1] if steps else None, "steps": steps}


def analyze(runs_dir: Path, params: dict) -> dict:
    """Every finished run with a record under runs_dir (licm.rundir.all_runs), over its evaluations."""
    from licm.rundir import all_runs

    p = params["independence"]
    runs = {}
    for experiment, seed, run in all_runs(runs_dir):
        if run.is_finished():
            runs[f"{experiment}/seed{seed}"] = {"experiment": experiment, "seed": seed,
                                                "profile": run.params().get("profile"),
                                                **run_curve(run, p["permutations"], p["seed"])}
    return {"alpha": p["alpha"], "permutations": p["permutations"], "runs": runs,
            "sentence": sentence(runs, p["alpha"]), "report": {"numbers": report_numbers(runs)}}


def report_numbers(runs: dict) -> dict:
    """Per run, at its last evaluation: CMI, the null's mean, p, digits; and the run's scale."""
    out = {}
    for name, r in runs.items():
        f = r["final"]
        if f:
            out[f"{name} ({r['profile']}, iteration {f['iteration']}, {f['digits']} digits)"] = (
                f"I = {f['cmi_bits']:.3f} bits, null mean {f['null_mean_bits']:.3f} (95% {f['null_q95_bits']:.3f}), "
                f"p = {f['p_value']:.3g} ({f['permutations']} permutations)")
    return out


def sentence(runs: dict, alpha: float) -> str:
    """What the numbers show, in one sentence (plainly when they show nothing)."""
    if not runs:
        return "No finished run: nothing to test."
    finals = [(name, r["final"]) for name, r in runs.items() if r["final"]]
    dependent = [name for name, f in finals if f["p_value"] < alpha]
    excess = np.mean([f["excess_bits"] for _, f in finals])
    if not dependent:
        return (f"In none of {len(finals)} finished run(s) does the final winner depend on the digit's class beyond "
                f"the permutation null (p >= {alpha}; mean excess over the null {excess:.3f} bits): the experts "
                "split the digits by mechanism, not by class, as far as these digits can tell.")
    return (f"In {len(dependent)} of {len(finals)} finished run(s) ({', '.join(dependent)}) the final winner depends "
            f"on the digit's class given the mechanism (p < {alpha}; mean excess over the null {excess:.3f} bits): "
            "some experts split a mechanism's digits by class.")


# ---------------------------------------------------------------- figure and CLI

def figure(result: dict, out: Path, dpi: int) -> Path:
    """CMI over iterations per run, with the null's mean and 95% quantile (dashed, dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from licm.plot import save

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (name, r) in enumerate(sorted(result["runs"].items())):
        its = [s["iteration"] for s in r["steps"]]
        color = f"C{i % 10}"
        ax.plot(its, [s["cmi_bits"] for s in r["steps"]], "o-", color=color, label=f"{name} observed")
        ax.plot(its, [s["null_mean_bits"] for s in r["steps"]], "--", color=color, alpha=0.7, label=f"{name} null mean")
        ax.plot(its, [s["null_q95_bits"] for s in r["steps"]], ":", color=color, alpha=0.7, label=f"{name} null 95%")
    if not result["runs"]:
        ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel("I(winner; class | mechanism) [bits]")
    ax.set_title(f"Winner vs digit class given mechanism ({result['permutations']} within-mechanism permutations)",
                 fontsize=9)
    if result["runs"]:
        ax.legend(fontsize=6, ncol=2)
    return save(fig, out, dpi)


def _cmd_independence(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    params = config.load(args.params, profile=args.profile)
    result = analyze(Path(args.runs), params)
    out = Path(args.out)
    data.atomic_write_text(out / "independence.json", json.dumps(result, indent=1, sort_keys=True) + "\n")
    fig = figure(result, Path(args.figures) / f"{FIGURE_ID}.png", params["figures"]["dpi"])
    print(f"licm independence: {out / 'independence.json'}, {fig}: {len(result['runs'])} run(s) in "
          f"{time.perf_counter() - t0:.1f}s. {result['sentence']}")


def register(sub) -> None:
    p = sub.add_parser("independence", help="I(winner; class | mechanism) of every finished run, permutation null",
                       description="Conditional mutual information between winning expert and digit class given the "
                                   "mechanism, from the runs' evaluation files, with a seeded permutation null.")
    p.add_argument("--runs", default="results/runs", help="runs folder (default: %(default)s)")
    p.add_argument("--out", default="results/independence", help="folder for independence.json (default: %(default)s)")
    p.add_argument("--figures", default="results/figures", help="figure folder (default: %(default)s)")
    p.set_defaults(func=_cmd_independence)


__all__ = ["conditional_mi", "conditional_mi_many", "permutation_test", "run_curve", "analyze", "sentence", "figure"]
