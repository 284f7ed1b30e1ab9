"""`licm publish`: a small snapshot of a result, to commit under published/<profile>-<date>/.

Why: most researchers read our results before they spend GPU hours of their own, and the results of
a GPU session exist nowhere else (the GPU machines start bare and are given back). The snapshot holds
the HTML report with its figures, summary.json, each run's metrics.json and meta.json (device,
versions, commit, time), each experiment's record and evaluation JSON, the benchmark JSON, and the
committee and discriminator of one experiment's typical seed (the seed its figures show,
`runs.RunSet.shown`) without optimizer state, loadable by `licm.load_run` on a CPU. Small files
only: no evaluation arrays, no optimizer state, no history.

The source is a folder with results/: a repository after `make report`, or the results of another
machine unpacked with workflow/scripts/pack_results.sh.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from licm import checkpoint, config, paths
from licm.data import atomic_write_text, read_json


def export_weights(run_dir: str | Path, dest: str | Path) -> Path:
    """Write dest/checkpoint.pt (committee and discriminator only) and dest/params.json, so that
    `licm.load_run(dest)` returns the same networks as `licm.load_run(run_dir)`, on a CPU
    (licm.checkpoint.weights: no optimizer state, no history)."""
    from licm.rundir import RunDir

    src, out = RunDir(run_dir), RunDir(dest)
    out.path.mkdir(parents=True, exist_ok=True)
    out.save_checkpoint(checkpoint.weights(src.load_checkpoint()))
    out.write_json("params.json", src.params())
    return out.checkpoint_file


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _copy_results(root: Path, out: Path) -> None:
    """The report (with its figures), the summary, the classifier's and Omniglot's numbers, the per-experiment
    metrics, the runner's record (wall time per job), the benchmark JSON and the params used."""
    res = root / "results"
    for name in ("summary.json", "classifier/metrics.json", "omniglot/restoration.json"):
        if (res / name).is_file():
            _copy(res / name, out / name)
    shutil.copytree(res / "report", out / "report")
    for p in sorted((res / "metrics").glob("*.json")):
        _copy(p, out / "metrics" / p.name)
    for p in sorted((root / "benchmarks" / "results").glob("*.json")):
        _copy(p, out / "benchmarks" / p.name)
    if (root / "params.yaml").is_file():
        _copy(root / "params.yaml", out / "params.yaml")


def _copy_runs(res: Path, out: Path) -> dict:
    """Each experiment's record and evaluation JSON, each finished run's metrics.json and meta.json;
    returns what the snapshot holds: per experiment its seeds, and the devices, commits and modes."""
    from licm import rundir

    held: dict = {"experiments": {}, "devices": set(), "commits": set(), "deterministic": set()}
    for record_path in sorted((res / "runs").glob("*/experiment.json")):
        name = record_path.parent.name
        record = rundir.experiment_record(res / "runs", name)
        _copy(record_path, out / "runs" / name / "experiment.json")
        for p in sorted((res / "eval" / name).glob("*.json")):
            _copy(p, out / "eval" / name / p.name)
        finished = {}
        for s, run in rundir.experiment_runs(res / "runs", name).items():
            metrics, meta = run.metrics(), run.meta() or {}
            if metrics is None:
                continue
            finished[s] = metrics["iterations"]
            for f in ("metrics.json", "meta.json"):
                if (run.path / f).is_file():
                    _copy(run.path / f, out / "runs" / name / f"seed{s}" / f)
            held["devices"].add(meta.get("device", "unknown"))
            held["commits"].add(meta.get("git_commit", "unknown"))
            held["deterministic"].add(meta.get("deterministic"))
        if record.get("selected") and finished:
            held["experiments"][name] = {"profile": record.get("profile"), "seeds": record.get("seeds"),
                                         "finished": sorted(finished), "iterations": sorted(set(finished.values()))}
    return {k: v if k == "experiments" else sorted(v, key=str) for k, v in held.items()}


def publish(root: Path, out: Path, experiment: str = "main") -> dict:
    """Copy the publishable files of the tree `root` (with results/) into `out` and export the weights of
    `experiment`'s typical seed; write and return out/index.json (what the snapshot holds)."""
    from licm import runs

    res = root / "results"
    needed = [Path(paths.result(k, res, experiment=experiment)) for k in ("summary", "report_page", "run_record")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise config.LicmError(f"{', '.join(missing)}: missing; publish a tree where the pipeline ran up to the "
                               f"report with experiment {experiment} (`make report`)")
    profile = json.loads((res / "summary.json").read_text()).get("_meta", {}).get("profile")
    params = config.load(root / "params.yaml" if (root / "params.yaml").is_file() else "params.yaml", profile=profile)
    seed, folder, caption = runs.load_runset(res / "runs", experiment, params).shown()  # the figures' seed
    _copy_results(root, out)
    held = _copy_runs(res, out)
    model = out / "runs" / experiment / f"seed{seed}"
    export_weights(folder, model)
    index = {"created": config.now(), "profile": params["profile"],
             **held, "not_run": [n for n in params["experiments"] if n not in held["experiments"]],
             "model": {"experiment": experiment, "seed": seed, "why": caption, "path": str(model.relative_to(out)),
                       "load": f"licm.load_run('{model.relative_to(out)}')"}}
    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    index["bytes"] = sum(p.stat().st_size for p in files)
    index["largest"] = {str(p.relative_to(out)): p.stat().st_size
                        for p in sorted(files, key=lambda p: -p.stat().st_size)[:3]}
    atomic_write_text(out / "index.json", json.dumps(index, indent=1) + "\n")
    return index


def _cmd_publish(args) -> None:
    root = Path(args.source)
    if not (root / "results").is_dir():
        raise config.LicmError(f"{root}: no results/ folder (a pack of results: unpack it first with "
                               "workflow/scripts/pack_results.sh unpack)")
    profile = (read_json(root / "results" / "summary.json") or {}).get("_meta", {}).get("profile", "result")
    out = Path(args.out or f"published/{profile}-{args.date}")
    if out.exists() and not args.force:
        raise config.LicmError(f"{out}: exists; choose another --out or pass --force to replace it")
    tmp = out.with_name(f".{out.name}.tmp")    # complete or absent: built aside, then renamed
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        index = publish(root, tmp, args.experiment)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    m = index["model"]
    print(f"licm publish: {out}: {len(index['experiments'])} experiment(s) ({', '.join(index['experiments'])}), "
          f"{index['bytes'] / 2**20:.2f} MiB; weights of {m['why']}: licm.load_run('{out / m['path']}')")


def register(sub) -> None:
    p = sub.add_parser("publish", help="write a small snapshot of a result to commit (published/<profile>-<date>/)",
                       description="Copy the report, summary, run records, metrics, meta, evaluation JSON and "
                                   "benchmark JSON of a result, and export one typical run's weights (no optimizer "
                                   "state) loadable by licm.load_run.")
    p.add_argument("source", help="a tree with results/ (e.g. .)")
    p.add_argument("--out", default=None, help="destination (default: published/<profile>-<date>)")
    p.add_argument("--date", default=dt.date.today().isoformat(), help="date in the default --out (default: today)")
    p.add_argument("--experiment", default="main", help="whose typical seed's weights to export (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace --out when it exists")
    p.set_defaults(func=_cmd_publish)


__all__ = ["export_weights", "publish"]
