"""`licm collect`: an experiment's record of its runs (or evaluations), its summary metrics and score
curves, what Snakemake's collect rules write and DVC's train@ and evaluate@ stages output.

A module of its own, apart from licm.pipeline (plans, code deps, the stage table): these records are
part of every train@ stage, so their code is kept to what writes them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from licm import config, paths
from licm.data import atomic_write_text

# Points per score curve in results/plots/<experiment>.csv.
CURVE_BINS = 100


def _run_metrics(runs: dict) -> dict[int, dict]:
    """Each run's metrics.json (licm.rundir.RunDir), or an error naming the unfinished run."""
    out = {}
    for seed, run in runs.items():
        metrics = run.metrics()
        if metrics is None:
            raise config.LicmError(f"{run.path / 'metrics.json'}: missing; run `licm train` for seed {seed} first")
        out[seed] = metrics
    return out


def curve_lines(runs: dict, bins: int = CURVE_BINS) -> list[str]:
    """CSV lines: per iteration bin and mechanism, the best expert's score, averaged over seeds."""
    lines = ["iteration,mechanism,best_score"]
    if not runs:
        return lines
    import pandas as pd

    frames = []
    for run in runs.values():
        h = run.history()
        frames.append(h.groupby(["iteration", "mechanism"], sort=False)["score_mean"].max().reset_index())
    h = pd.concat(frames)
    width = max(1, -(-int(h["iteration"].max()) // bins))
    h["iteration"] = ((h["iteration"] - 1) // width + 1) * width
    curve = h.groupby(["iteration", "mechanism"], sort=False)["score_mean"].mean().reset_index()
    return lines + [f"{int(r.iteration)},{r.mechanism},{r.score_mean:.6g}" for r in curve.itertuples()]


def collect_runs(params: dict, name: str, runs_dir: str | Path, metrics_path: str | Path,
                 plot_path: str | Path) -> dict:
    """Write an experiment's record, summary metrics and score curves; return the record.

    An experiment the profile does not select gets a record saying so (and empty metrics), so
    every DVC stage train@<name> has its outputs.
      <runs>/<name>/experiment.json  profile, seeds run, run folders (or "not selected")
      metrics_path                   DVC `metrics`: per seed and mean
      plot_path                      DVC `plots`: score of the best expert per mechanism over iterations
    """
    from licm import rundir

    seeds = config.seeds(params, name)
    profile = params["profile"]
    runs = {s: rundir.RunDir.of(runs_dir, name, s) for s in seeds}
    metrics = _run_metrics(runs)
    per_seed = {f"seed{s}": {"distinct_winners": m["distinct_winners"], "fully_specialized": m["fully_specialized"],
                             "iterations": m["iterations"]} for s, m in metrics.items()}
    summary: dict[str, Any] = {"experiment": name, "profile": profile, "selected": bool(seeds), "runs": len(seeds)}
    if seeds:
        summary["mean_distinct_winners"] = sum(m["distinct_winners"] for m in metrics.values()) / len(metrics)
        summary["fully_specialized_runs"] = sum(bool(m["fully_specialized"]) for m in metrics.values())
    summary["per_seed"] = per_seed
    record = {"experiment": name, "profile": profile, "selected": bool(seeds), "seeds": seeds,
              "runs": {f"seed{s}": str(r.path) for s, r in runs.items()}}
    rundir.write_experiment_record(runs_dir, name, record)
    atomic_write_text(Path(metrics_path), json.dumps(summary, indent=2) + "\n")
    atomic_write_text(Path(plot_path), "\n".join(curve_lines(runs)) + "\n")
    return record


def collect_evaluations(params: dict, name: str, eval_dir: str | Path) -> dict:
    """Write <eval_dir>/<name>/experiment.json: which seeds' evaluations exist (none if not selected).

    DVC's evaluate@<name> stage outputs the folder <eval_dir>/<name>; this record makes the folder
    exist for every experiment, evaluated or not selected at this profile.
    """
    seeds = config.seeds(params, name)
    files = {f"seed{s}": Path(paths.result("eval", folder=eval_dir, experiment=name, seed=s)) for s in seeds}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise config.LicmError(f"{', '.join(missing)}: missing; run `licm evaluate` for these runs first")
    record = {"experiment": name, "profile": params["profile"], "selected": bool(seeds), "seeds": seeds,
              "evaluations": {k: str(f) for k, f in files.items()}}
    path = Path(paths.result("eval_record", folder=eval_dir, experiment=name))
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def _cmd_collect(args) -> None:
    params = config.load(args.params, profile=args.profile)
    name = args.experiment
    config.experiment(params, name)  # unknown name: a ParamsError naming the choices
    if args.evaluations:
        record = collect_evaluations(params, name, args.eval_dir)
        print(f"licm collect: {name}: {len(record['seeds'])} evaluation(s) -> {Path(args.eval_dir) / name}")
        return
    metrics = args.metrics or paths.result("metrics", experiment=name)
    plot = args.plot or paths.result("plot", experiment=name)
    record = collect_runs(params, name, args.runs, metrics, plot)
    print(f"licm collect: {name}: {len(record['seeds'])} run(s) "
          f"({'selected' if record['selected'] else 'not selected'} at profile {params['profile']}) "
          f"-> {Path(args.runs) / name / 'experiment.json'}, {metrics}, {plot}")


def register(sub) -> None:
    c = sub.add_parser("collect", help="record an experiment's runs (or evaluations): record, metrics, score curves",
                       description="Runs: <runs>/<E>/experiment.json, results/metrics/<E>.json, results/plots/<E>.csv. "
                                   "With --evaluations: <eval-dir>/<E>/experiment.json.")
    c.add_argument("--experiment", required=True, help="a key of `experiments:` in params.yaml")
    c.add_argument("--runs", default=paths.result("runs"), help="run folders (default: %(default)s)")
    c.add_argument("--metrics", default=None, help="summary metrics file (default: results/metrics/<E>.json)")
    c.add_argument("--plot", default=None, help="score curves file (default: results/plots/<E>.csv)")
    c.add_argument("--evaluations", action="store_true", help="record the experiment's evaluations instead")
    c.add_argument("--eval-dir", default=paths.result("evals"), help="evaluation folders (default: %(default)s)")
    c.set_defaults(func=_cmd_collect)



__all__ = ["CURVE_BINS", "collect_runs", "collect_evaluations", "curve_lines"]
