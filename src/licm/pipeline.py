"""Pipeline bookkeeping: what Snakemake and DVC need besides the science (`licm plan`, `licm collect`).

Why a module of its own: the rules (workflow/rules/*.smk) and the DVC stages (dvc.yaml) only call
the CLI, so that both tools run the same code. The Snakefile imports the helpers below to compute
job parameters (a job's params fingerprint, a run folder's resume key); every file that lands in
results/ is written by a `licm` command, atomically.

Params granularity, the reason for the plan files: a stage reads params.yaml *after* the profile
block and the experiment's overrides are merged over it. DVC can only track raw keys of the file,
so a raw key that a profile overrides would re-run stages whose effective params did not change
(and a profile's override would go unseen). `licm plan` therefore writes, per experiment and per
stage, the resolved params a job reads; the DVC stages depend on these files (content-hashed) and
the Snakemake rules carry the same values as their `params:` fingerprint (tests/test_pipeline.py
checks that both tools agree).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from licm import config
from licm.data import atomic_write_text

# Blocks of an experiment's resolved params (profile + overrides) a training job reads: the
# `params:` fingerprint of rule `train` and `train_params` of results/plan/<experiment>.json.
TRAIN_KEYS = ("device", "data.prepared_dir", "model", "aii", "train")

# Per stage other than training: the resolved params its command reads (None = all of them: the
# stage is cheap and reads params.yaml broadly, e.g. the report prints a hash of the whole file).
# Written to results/plan/stages/<stage>.json; the rule of the same name fingerprints them.
STAGE_KEYS: dict[str, tuple[str, ...] | None] = {
    "classifier": ("profile", "device", "data.raw_dir", "data.image_size", "classifier"),
    # the rest comes from the run's own params.json (a dependency through the run folder)
    "evaluate": ("device",),
    "omniglot": ("data.raw_dir", "data.omniglot_archive", "mechanisms", "omniglot", "figures"),
    "figures_runs": None,
    "summarize": None,
    "report": None,
}

# Points per score curve in results/plots/<experiment>.csv.
CURVE_BINS = 100


# ---------------------------------------------------------------- what a job reads

def pick(params: dict, keys: Iterable[str]) -> dict:
    """{dotted key: value} of the given keys; a missing key is a programming error (KeyError)."""
    out = {}
    for key in keys:
        node = params
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def train_params(params: dict, name: str) -> dict:
    """The resolved params a training job of experiment `name` reads (TRAIN_KEYS)."""
    return pick(config.experiment(params, name), TRAIN_KEYS)


def stage_params(params: dict, stage: str) -> dict:
    """The resolved params the command of `stage` reads (STAGE_KEYS)."""
    keys = STAGE_KEYS[stage]
    return json.loads(json.dumps(params if keys is None else pick(params, keys)))


def fingerprint(params: dict, name: str) -> str:
    """A training job's params as canonical JSON: Snakemake re-runs the job when it changes."""
    return json.dumps(train_params(params, name), sort_keys=True)


def stage_fingerprint(params: dict, stage: str) -> str:
    """Hash of a stage's params (the `params:` of its rule; the full JSON is in its plan file)."""
    return config.params_hash(stage_params(params, stage))


def resume_key(params: dict, name: str) -> str:
    """Hash of what a run folder's checkpoint depends on, less what a resume may change.

    The training rule writes it to <run>/.resume-key and discards a checkpoint whose key differs
    (params changed: start afresh) instead of letting `licm train` refuse the folder. It is
    `licm train`'s own comparison (the run's params less iterations, checkpoint_every and
    eval_examples), plus the prepared-data folder, so the two never disagree.
    """
    from licm import train  # torch: imported only when a rule asks

    resolved = config.experiment(params, name)
    return config.params_hash({"prepared_dir": resolved["data"]["prepared_dir"], **train._comparable(resolved)})


def plan(params: dict, name: str) -> dict:
    """Everything the workflow decides for one experiment: profile, seeds, the params its jobs read.

    dvc.yaml's train@<name> depends on this file, so DVC re-runs exactly the experiments whose
    plan changed, whatever else changed in params.yaml (other entries, other profile blocks).
    """
    selected = name in config.selected_experiments(params)
    return {"experiment": name, "profile": params["profile"], "seeds": config.seeds(params, name),
            "selected": selected, "train_params": train_params(params, name) if selected else None}


def stage_plan(params: dict, stage: str) -> dict:
    """What results/plan/stages/<stage>.json holds (the dependency of DVC stage `stage`)."""
    return {"stage": stage, "params": stage_params(params, stage)}


def plans(params: dict) -> dict[str, dict]:
    """Every plan file, by path relative to the plan folder."""
    out = {f"{name}.json": plan(params, name) for name in params["experiments"]}
    out.update({f"stages/{stage}.json": stage_plan(params, stage) for stage in STAGE_KEYS})
    return out


def write_plans(params: dict, out: str | Path) -> list[Path]:
    """Write the plan files; return those whose content changed.

    A file is rewritten only when its content changes, so DVC (content hashes) and Snakemake
    (mtimes) see exactly the experiments and stages whose plan changed. Plans of experiments
    no longer in params.yaml are removed.
    """
    out = Path(out)
    wanted = plans(params)
    changed = []
    for rel, content in wanted.items():
        path = out / rel
        text = json.dumps(content, indent=2, sort_keys=True) + "\n"
        if path.is_file() and path.read_text() == text:
            continue
        atomic_write_text(path, text)
        changed.append(path)
    for stale in [*out.glob("*.json"), *out.glob("stages/*.json")]:
        if str(stale.relative_to(out)) not in wanted:
            stale.unlink()
            changed.append(stale)
    return changed


# ---------------------------------------------------------------- per-experiment records

def _run_metrics(folders: dict[int, Path]) -> dict[int, dict]:
    runs = {}
    for seed, folder in folders.items():
        path = folder / "metrics.json"
        if not path.is_file():
            raise config.LicmError(f"{path}: missing; run `licm train` for seed {seed} first")
        runs[seed] = json.loads(path.read_text())
    return runs


def score_curves(folders: dict[int, Path], bins: int = CURVE_BINS) -> list[str]:
    """CSV lines: per iteration bin and mechanism, the best expert's score, averaged over seeds."""
    lines = ["iteration,mechanism,best_score"]
    if not folders:
        return lines
    import pandas as pd

    frames = []
    for folder in folders.values():
        h = pd.read_csv(folder / "history.csv")
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
    seeds = config.seeds(params, name)
    profile = params["profile"]
    root = Path(runs_dir)
    folders = {s: root / name / f"seed{s}" for s in seeds}
    runs = _run_metrics(folders)
    per_seed = {f"seed{s}": {"distinct_winners": m["distinct_winners"], "fully_specialized": m["fully_specialized"],
                             "iterations": m["iterations"]} for s, m in runs.items()}
    summary: dict[str, Any] = {"experiment": name, "profile": profile, "selected": bool(seeds), "runs": len(seeds)}
    if seeds:
        summary["mean_distinct_winners"] = sum(m["distinct_winners"] for m in runs.values()) / len(runs)
        summary["fully_specialized_runs"] = sum(bool(m["fully_specialized"]) for m in runs.values())
    summary["per_seed"] = per_seed
    record = {"experiment": name, "profile": profile, "selected": bool(seeds), "seeds": seeds,
              "runs": {f"seed{s}": str(f) for s, f in folders.items()}}
    atomic_write_text(root / name / "experiment.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(Path(metrics_path), json.dumps(summary, indent=2) + "\n")
    atomic_write_text(Path(plot_path), "\n".join(score_curves(folders)) + "\n")
    return record


def collect_evaluations(params: dict, name: str, eval_dir: str | Path) -> dict:
    """Write <eval_dir>/<name>/experiment.json: which seeds' evaluations exist (none if not selected).

    DVC's evaluate@<name> stage outputs the folder <eval_dir>/<name>; this record makes the folder
    exist for every experiment, evaluated or not selected at this profile.
    """
    seeds = config.seeds(params, name)
    folder = Path(eval_dir) / name
    files = {f"seed{s}": folder / f"seed{s}.json" for s in seeds}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise config.LicmError(f"{', '.join(missing)}: missing; run `licm evaluate` for these runs first")
    record = {"experiment": name, "profile": params["profile"], "selected": bool(seeds), "seeds": seeds,
              "evaluations": {k: str(f) for k, f in files.items()}}
    atomic_write_text(folder / "experiment.json", json.dumps(record, indent=2) + "\n")
    return record


# ---------------------------------------------------------------- CLI

def _cmd_plan(args) -> None:
    params = config.load(args.params, profile=args.profile)
    changed = write_plans(params, args.out)
    print(f"licm plan: profile {params['profile']}, {len(plans(params))} plans in {args.out} "
          f"({len(changed)} changed{': ' + ', '.join(map(str, changed)) if changed else ''})")


def _cmd_collect(args) -> None:
    params = config.load(args.params, profile=args.profile)
    name = args.experiment
    config.experiment(params, name)  # unknown name: a ParamsError naming the choices
    if args.evaluations:
        record = collect_evaluations(params, name, args.eval_dir)
        print(f"licm collect: {name}: {len(record['seeds'])} evaluation(s) -> {Path(args.eval_dir) / name}")
        return
    metrics = args.metrics or f"results/metrics/{name}.json"
    plot = args.plot or f"results/plots/{name}.csv"
    record = collect_runs(params, name, args.runs, metrics, plot)
    print(f"licm collect: {name}: {len(record['seeds'])} run(s) "
          f"({'selected' if record['selected'] else 'not selected'} at profile {params['profile']}) "
          f"-> {Path(args.runs) / name / 'experiment.json'}, {metrics}, {plot}")


def register(sub) -> None:
    p = sub.add_parser("plan", help="write the per-experiment and per-stage plans (resolved params) DVC depends on",
                       description="Write results/plan/<experiment>.json and results/plan/stages/<stage>.json "
                                   "(rewritten only when their content changes).")
    p.add_argument("--out", default="results/plan", help="plan folder (default: %(default)s)")
    p.set_defaults(func=_cmd_plan)

    c = sub.add_parser("collect", help="record an experiment's runs (or evaluations): record, metrics, score curves",
                       description="Runs: <runs>/<E>/experiment.json, results/metrics/<E>.json, results/plots/<E>.csv. "
                                   "With --evaluations: <eval-dir>/<E>/experiment.json.")
    c.add_argument("--experiment", required=True, help="a key of `experiments:` in params.yaml")
    c.add_argument("--runs", default="results/runs", help="run folders (default: %(default)s)")
    c.add_argument("--metrics", default=None, help="summary metrics file (default: results/metrics/<E>.json)")
    c.add_argument("--plot", default=None, help="score curves file (default: results/plots/<E>.csv)")
    c.add_argument("--evaluations", action="store_true", help="record the experiment's evaluations instead")
    c.add_argument("--eval-dir", default="results/eval", help="evaluation folders (default: %(default)s)")
    c.set_defaults(func=_cmd_collect)


__all__ = ["TRAIN_KEYS", "STAGE_KEYS", "pick", "train_params", "stage_params", "fingerprint", "stage_fingerprint",
           "resume_key", "plan", "stage_plan", "plans", "write_plans", "collect_runs", "collect_evaluations",
           "score_curves"]
