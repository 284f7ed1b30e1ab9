"""Pipeline bookkeeping: what Snakemake and DVC need besides the science (`licm plan`, `licm collect`).

Why a module of its own: the rules (workflow/rules/*.smk) and the DVC stages (dvc.yaml) only call
the CLI, so that both tools run the same code. The Snakefile imports the helpers below to compute
job parameters (a job's params fingerprint, the seeds a training job trains, the package files a
stage runs); every file that lands in results/ is written by a `licm` command, atomically.

Params granularity, the reason for the plan files: a stage reads params.yaml *after* the profile
block and the experiment's overrides are merged over it. DVC can only track raw keys of the file,
so a raw key that a profile overrides would re-run stages whose effective params did not change
(and a profile's override would go unseen). `licm plan` therefore writes, per experiment and per
stage, the resolved params a job reads; the DVC stages depend on these files (content-hashed) and
the Snakemake rules carry the same values as their `params:` fingerprint (tests/test_pipeline.py
checks that both tools agree).
"""
from __future__ import annotations

import ast
import functools
import json
import re
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
    # beyond the papers (issue 18): analyses of finished runs
    "composition": ("data.raw_dir", "data.omniglot_archive", "omniglot", "figures", "composition"),
    "independence": ("figures", "independence"),
    "genericity": ("figures", "genericity"),
    "figures_runs": None,
    "summarize": None,
    "report": None,
}

# The data stages read raw keys of params.yaml (they run before `licm plan`; profiles do not touch
# them): dvc.yaml lists these as the stages' `params:`, the Snakemake rules fingerprint the same keys.
# `{domain}` is the domain a prepare job builds.
DATA_KEYS: dict[str, tuple[str, ...]] = {
    "fetch": ("data.omniglot_archive", "data.raw_dir"),
    "prepare": ("data.image_size", "data.split", "data.split_seed", "data.transform_seed", "mechanisms",
                "domains.{domain}"),
    "figures_data": ("figures",),
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


def data_fingerprint(params: dict, stage: str, **fields: str) -> str:
    """Hash of the raw keys a data stage reads (DATA_KEYS; `fields` fills in `{domain}`)."""
    return config.params_hash(pick(params, [key.format(**fields) for key in DATA_KEYS[stage]]))


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


# ---------------------------------------------------------------- training jobs

def seeds_text(seeds: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (what `licm train --seeds` parses)."""
    parts: list[str] = []
    for s in seeds:
        if parts and s == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{s}"
        else:
            parts.append(str(s))
    return ",".join(parts)


def seeds_per_job(setting: Any, gpu: bool) -> int | None:
    """The pipeline setting `seeds_per_job` as a number, None = all seeds of an experiment in one job.

    Unset: all seeds together where the jobs use CUDA (one process trains them in one batched
    network), one seed per job on the CPU (the seeds of an experiment then train in parallel).
    """
    if setting is None:
        return None if gpu else 1
    if setting == "all":
        return None
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise config.LicmError(f"--config seeds_per_job: expected a whole number >= 1 or 'all', given {setting!r}")
    return setting


def setting_flag(name: str, value: Any, default: bool) -> bool:
    """A yes/no pipeline setting given with --config (which passes `false` as a string)."""
    if value is None:
        return default
    text = str(value).lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise config.LicmError(f"--config {name}: expected true or false, given {value!r}")
    return text in ("true", "1", "yes")


def seed_chunks(seeds: list[int], per_job: int | None) -> list[list[int]]:
    """The seeds of one experiment split into training jobs of at most `per_job` seeds (None: one job)."""
    size = per_job or max(len(seeds), 1)
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


# ---------------------------------------------------------------- the code a stage runs

# Package sources, relative to the workflow's folder (where the Snakefile and dvc.yaml are): a stage
# depends on the copy of the package in its own tree (editable install).
SOURCES = Path("src/licm")
PATH_LIKE = re.compile(r"[\w.-]+(/[\w.-]+)*")


@functools.lru_cache(maxsize=8)
def import_graph(src: Path) -> dict[str, frozenset[str]]:
    """Module -> the package modules it imports anywhere (top level or inside functions); `src` absolute."""
    modules = {p.stem for p in src.glob("*.py")}

    def imported(tree: ast.AST) -> set[str]:
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):  # import licm.x
                found.update(a.name.split(".")[1] if "." in a.name else "__init__"
                             for a in node.names if a.name.split(".")[0] == "licm")
            elif isinstance(node, ast.ImportFrom):  # from licm.x import y, from licm import x, from . import x
                path = (node.module or "").split(".")
                if not node.level:
                    if path[0] != "licm":
                        continue
                    path = path[1:]
                if path and path[0]:
                    found.add(path[0])
                else:  # names of modules, or of things licm/__init__.py defines
                    found.update(a.name if a.name in modules else "__init__" for a in node.names)
        return found & modules

    return {m: frozenset(imported(ast.parse((src / f"{m}.py").read_text())) - {m}) for m in sorted(modules)}


@functools.lru_cache(maxsize=None)
def package_files(src: Path, module: str) -> frozenset[Path]:
    """Non-Python package files a module names in a string constant (the params schema, templates)."""
    files = set()
    for node in ast.walk(ast.parse((src / f"{module}.py").read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and PATH_LIKE.fullmatch(node.value) and \
                node.value.strip("./") and ".." not in node.value and not node.value.endswith(".py"):
            path = src / node.value
            if path.is_file():
                files.add(path)
            elif path.is_dir():
                files.update(f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    return frozenset(files)


def code_deps(*commands: str, src: Path = SOURCES) -> list[str]:
    """The package files `licm <command>` runs: the module that owns the command, every package module
    it imports (transitively, also imports inside functions: conservative), the data files those
    modules name. Both tools derive a stage's code from here: the Snakemake rules as inputs, dvc.yaml
    (`licm dvc-yaml`) as deps. cli.py is left out: it only dispatches, and a new subcommand must not
    re-run the pipeline."""
    from licm.cli import COMMANDS

    root = Path(src)
    files = _module_files(tuple(sorted(COMMANDS[c] for c in commands)), root.resolve())
    return sorted((root / f).as_posix() for f in files)


@functools.lru_cache(maxsize=64)
def _module_files(modules: tuple[str, ...], src: Path) -> frozenset[str]:
    """Paths relative to `src` (absolute) of `modules`, what they import, and the files they name."""
    graph = import_graph(src)
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module not in seen and module != "cli":
            seen.add(module)
            todo.extend(graph[module])
    files = {src / f"{m}.py" for m in seen}.union(*(package_files(src, m) for m in seen))
    return frozenset(f.relative_to(src).as_posix() for f in files)


# ---------------------------------------------------------------- per-experiment records

def _run_metrics(runs: dict) -> dict[int, dict]:
    """Each run's metrics.json (licm.rundir.RunDir), or an error naming the unfinished run."""
    out = {}
    for seed, run in runs.items():
        metrics = run.metrics()
        if metrics is None:
            raise config.LicmError(f"{run.path / 'metrics.json'}: missing; run `licm train` for seed {seed} first")
        out[seed] = metrics
    return out


def score_curves(runs: dict, bins: int = CURVE_BINS) -> list[str]:
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
    atomic_write_text(Path(plot_path), "\n".join(score_curves(runs)) + "\n")
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


__all__ = ["TRAIN_KEYS", "STAGE_KEYS", "DATA_KEYS", "pick", "train_params", "stage_params", "fingerprint",
           "stage_fingerprint", "data_fingerprint", "seeds_text", "seeds_per_job", "setting_flag", "seed_chunks", "import_graph",
           "package_files", "code_deps", "plan", "stage_plan", "plans", "write_plans", "collect_runs", "collect_evaluations",
           "score_curves"]
