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
import sys
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


# What a snapshot's classifier/ holds: the weights that scored its evaluations and their training record.
CLASSIFIER_FILES = ("classifier.pt", "metrics.json")


def pin_classifier(classifier_dir: Path, snapshot: Path) -> None:
    """The classifier that scores a campaign's seeds goes into the snapshot with its first seed and is never
    replaced: every published seed is scored by the same weights (one retrained on another CPU model differs
    in its last bits, and the campaign may move to another machine). A different classifier is refused
    before anything is written; the campaign's driver restores the published one instead of training."""
    src, dest = Path(classifier_dir), Path(snapshot) / "classifier"
    if not (src / "classifier.pt").is_file():
        raise config.LicmError(f"{src / 'classifier.pt'}: missing; train the classifier (`licm classifier`) first")
    if (dest / "classifier.pt").is_file():
        if (dest / "classifier.pt").read_bytes() != (src / "classifier.pt").read_bytes():
            raise config.LicmError(f"{src / 'classifier.pt'} differs from {dest / 'classifier.pt'}, which scored the "
                                   "seeds published so far: evaluate with the published classifier (copy it into "
                                   f"{src}; the campaign's driver restores it) and publish again")
        return
    for name in CLASSIFIER_FILES:
        _copy(src / name, dest / name)


def _copy_results(root: Path, out: Path) -> None:
    """The report (with its figures), the summary, Omniglot's numbers, the analyses beyond the papers
    (composition, independence, genericity: the numbers behind the report's section, ~0.3 MB), the
    per-experiment metrics, the runner's record (wall time per job), the benchmark JSON and the params used."""
    res = root / "results"
    for kind in ("summary", "restoration", "composition_json", "independence_json", "genericity_json"):
        if (res / paths.TEMPLATES[kind]).is_file():
            _copy(res / paths.TEMPLATES[kind], out / paths.TEMPLATES[kind])
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


def publish(root: Path, out: Path, experiment: str = "main", campaign: dict | None = None,
            where: str | None = None) -> dict:
    """Copy the publishable files of the tree `root` (with results/) into `out` and export the weights of
    `experiment`'s typical seed; write and return out/index.json (what the snapshot holds). `where`: how
    a campaign snapshot's README names its folder (out is a temporary folder while it is built)."""
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
    if not (model / "checkpoint.pt").is_file():         # a campaign published every seed's weights already
        export_weights(folder, model)
    if campaign is not None:
        for other in sorted((out / "runs" / experiment).glob("seed*")):
            if other != model and (other / "evaluation").is_dir():
                final_outputs_only(other)
    clf = res / "classifier" / "classifier.pt"
    if campaign is not None:                # the classifier its seeds were published with, checked
        pin_classifier(clf.parent, out)
    else:                                   # 0.6 MB: lets anyone re-score the published outputs
        for name in CLASSIFIER_FILES:
            if (clf.parent / name).is_file():
                _copy(clf.parent / name, out / "classifier" / name)
    index = {"created": config.now(), "profile": params["profile"],
             **held, "not_run": [n for n in params["experiments"] if n not in held["experiments"]],
             "model": {"experiment": experiment, "seed": seed, "why": caption, "path": str(model.relative_to(out)),
                       "load": f"licm.load_run('{model.relative_to(out)}')"}}
    if campaign is not None:
        index["campaign"] = campaign_index(campaign, res / "runs" / experiment)
    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    index["bytes"] = sum(p.stat().st_size for p in files)
    index["budget_bytes"], index["history_every"] = budget_bytes(params), params["publish"]["history_every"]
    index["largest"] = {str(p.relative_to(out)): p.stat().st_size
                        for p in sorted(files, key=lambda p: -p.stat().st_size)[:3]}
    if index["bytes"] > index["budget_bytes"]:
        raise config.LicmError(f"the snapshot would hold {index['bytes'] / 1e6:.1f} MB, over publish.budget_mb "
                               f"({index['budget_bytes'] / 1e6:.0f} MB); largest: {index['largest']}. Nothing "
                               "was written; thin it (publish.history_every, licm.publish.kept_outputs) or raise "
                               "the budget in params.yaml, then publish again")
    if campaign is not None:
        atomic_write_text(out / "README.md", snapshot_readme(index, experiment, where or str(out)))
    atomic_write_text(out / "index.json", json.dumps(index, indent=1) + "\n")
    return index


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return (dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)).total_seconds()


def snapshot_readme(index: dict, experiment: str, where: str) -> str:
    """The snapshot's README: what it holds, what was thinned and why, how to load a seed (`where`: the
    snapshot's folder from the repository's root, e.g. published/paper-cpu-<date>)."""
    c = index["campaign"]
    seeds = sorted(c["seeds"], key=int)
    cpus = sorted({str(v["cpu"]) for v in c["seeds"].values()})
    commits = sorted({str(v["commit"])[:10] for v in c["seeds"].values()})
    lower = [k for k in seeds if c["seeds"][k].get("unmeasured_attempts")]
    bounds = (f" Seed{'s' if len(lower) > 1 else ''} {', '.join(lower)}: an attempt was killed before the driver "
              "recorded any sign of life, so its length is unknown and the wall time given is a lower bound."
              if lower else "")
    return f"""# The main experiment at the papers' scale, on a CPU

Made by the CPU campaign (`make campaign`, workflow/scripts/campaign.py): Snakemake at the `paper_main`
profile (the `paper` profile restricted to the main experiment), one seed per training job, CPU, fp32,
2 threads ({', '.join(cpus)}); seeds {', '.join(seeds)}; commits {', '.join(commits)} (each seed trained from
one commit; index.json lists each seed's commit, attempts, interruptions and wall time: the attempts'
durations added up, the pauses between working sessions not counted).{bounds}

- `report/index.html`: the report (open it in a browser); `summary.json`: numbers and verdicts per claim.
- `runs/{experiment}/seed<K>/`: `metrics.json`, `meta.json` (commit, CPU model and flags, threads, torch,
  times, resumes), `params.json`, `campaign.json` (this seed's attempts), `checkpoint.pt` (committee and
  discriminator only: `licm.load_run("{where}/runs/{experiment}/seed<K>")`, from the repository's root,
  loads it on a CPU),
  `history.csv.gz` and `evaluation/`.
- `eval/{experiment}/seed<K>.json`: win matrices and classifier accuracies at every evaluation;
  `classifier/classifier.pt`: the classifier that scored them.
- `omniglot/restoration.json`, `composition/`, `independence/`, `genericity/`: the numbers behind the
  report's Omniglot and "Beyond the papers" sections.

Thinned to stay within its budget of {index["budget_bytes"] / 1e6:.0f} MB (a full run folder is ~70 MB): no
optimizer state in the checkpoints (training cannot resume from them; `licm.load_run` needs none);
history.csv gzip-compressed, in blocks of {index["history_every"]} iterations (each block's mean D score per
expert and mechanism, rounded to 5 decimals, and its wins; the figures' 50-iteration moving average
needs no more); every evaluation keeps each test digit's winner, but the experts' outputs (0.4 MB per
evaluation, deflated) only at the end (the final accuracy) and, for the seed the figures show (seed
{index["model"]["seed"]}), also after identity initialisation and at the evaluation nearest the figures' target
iteration (LICM Fig. 3, the genericity curves). `RunDir.evaluation()` asked for outputs returns those
evaluations only. Total: {index["bytes"] / 1e6:.1f} MB.
"""


def campaign_index(campaign: dict, runs: Path) -> dict:
    """The campaign's record for index.json: per seed its commit, CPU, threads, torch, every attempt
    (start, end or last sign of life, how it ended), the resumes `licm train` recorded, and its wall time
    (the attempts' durations added up: the pauses between working sessions do not count)."""
    seeds, total = {}, 0.0
    for k, entry in sorted(campaign.get("seeds", {}).items(), key=lambda kv: int(kv[0])):
        meta = read_json(runs / f"seed{k}" / "meta.json") or {}
        attempts = entry.get("attempts", [])
        # an attempt killed before the driver recorded a sign of life has no known length (None): it adds
        # nothing, and the seed's wall time is then a lower bound (said in the snapshot's README)
        lengths = [_seconds(a["start"], a.get("end") or a.get("last_seen")) for a in attempts]
        wall, unmeasured = sum(x for x in lengths if x is not None), lengths.count(None)
        total += wall
        seeds[k] = {"commit": entry.get("commit"), "cpu": (meta.get("cpu") or {}).get("model"),
                    "cpu_flags": (meta.get("cpu") or {}).get("flags"), "threads": meta.get("threads"),
                    "torch": meta.get("torch"), "precision": meta.get("precision"), "wall_seconds": round(wall),
                    "unmeasured_attempts": unmeasured,
                    "attempts": attempts, "interruptions": sum(1 for a in attempts if a.get("how") != "finished"),
                    "resumed": meta.get("resumed", []), "started": meta.get("started"),
                    "finished": meta.get("finished")}
    return {"created": campaign.get("created"), "completed": campaign.get("completed"),
            "driver_starts": len(campaign.get("restarts", [])), "equivalence": campaign.get("equivalence", {}),
            "seeds": seeds, "training_wall_seconds": round(total)}


# ---------------------------------------------------------------- one seed at a time (the CPU campaign)

def kept_outputs(iterations: list[int], target: int) -> set[int]:
    """The evaluations whose outputs a published seed keeps: after identity initialisation, the one
    nearest the figures' target iteration (LICM Fig. 3, 5b) and the last (the final accuracy)."""
    return {iterations[0], min(iterations, key=lambda it: (abs(it - target), it)), iterations[-1]}


def final_outputs_only(folder: Path) -> None:
    """A published seed that the figures do not show keeps the experts' outputs of its last evaluation
    only (the final accuracy that tests/test_published.py recomputes); LICM Fig. 3 and the genericity
    curves read the shown seed's. Rewritten aside by RunDir.compact_copy, then swapped in."""
    from licm.rundir import RunDir

    run, tmp = RunDir(folder), folder.with_name(f".{folder.name}.thin")
    shutil.rmtree(tmp, ignore_errors=True)
    run.compact_copy(tmp, {run.evaluation_iterations()[-1]})
    for p in folder.iterdir():                  # the checkpoint and campaign record: copied as they are
        if p.is_file() and not (tmp / p.name).exists():
            shutil.copyfile(p, tmp / p.name)
    shutil.rmtree(folder)
    tmp.rename(folder)


def publish_seed(run_dir: str | Path, eval_json: str | Path, out: str | Path, campaign: dict | None = None,
                 history_every: int = 1, classifier_dir: str | Path | None = None) -> Path:
    """A finished run's compact results into `out` (complete or absent: built aside, then renamed):
    RunDir.compact_copy (metrics, meta, params, history in blocks of `history_every` iterations,
    winners of every evaluation, outputs of kept_outputs), the weights-only checkpoint (licm.load_run loads it on a CPU), the run's
    evaluation JSON beside the runs as <snapshot>/eval/<experiment>/seed<K>.json, and `campaign.json`:
    the campaign's record of this seed (commit, every attempt and how it ended). With `classifier_dir`, the
    classifier that scored it (`pin_classifier`: the snapshot's, or the first)."""
    from licm.rundir import RunDir

    run, out = RunDir(run_dir), Path(out)
    if not run.is_finished():
        raise config.LicmError(f"{run.path}: not finished (no metrics.json); publish a seed once it has trained")
    if classifier_dir is not None:
        pin_classifier(Path(classifier_dir), out.parents[2])
    ev_out = out.parents[2] / "eval" / out.parent.name / f"{out.name}.json"
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    target = run.params()["figures"]["target_iteration"]
    export_weights(run.path, tmp)               # before metrics.json: a finished folder is not written to
    if campaign is not None:
        atomic_write_text(tmp / "campaign.json", json.dumps(campaign, indent=1, sort_keys=True) + "\n")
    run.compact_copy(tmp, kept_outputs(run.evaluation_iterations(), target), history_every=history_every)
    _copy(Path(eval_json), ev_out)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _cmd_publish_seed(args) -> None:
    params = config.load(args.params, profile=args.profile)
    campaign = None
    if args.campaign:
        seed = Path(args.run).name.removeprefix("seed")
        campaign = (read_json(Path(args.campaign)) or {}).get("seeds", {}).get(seed)
    out = publish_seed(args.run, args.eval, args.out, campaign, params["publish"]["history_every"], args.classifier)
    size = tree_bytes(out)
    print(f"licm publish-seed: {args.run} -> {out} ({size / 2**20:.2f} MiB); licm.load_run('{out}')")
    seeds = len(config.seeds(params, out.parent.name)) if out.parent.name in params["experiments"] else 1
    if size * seeds > budget_bytes(params):   # said now, not after the last seed, so the thinning can change
        print(f"licm publish-seed: warning: {seeds} seeds of this size ({size * seeds / 1e6:.0f} MB) exceed the "
              f"snapshot's budget (publish.budget_mb: {params['publish']['budget_mb']} MB)", file=sys.stderr)


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def budget_bytes(params: dict) -> int:
    return int(params["publish"]["budget_mb"] * 1e6)


def _cmd_publish(args) -> None:
    root = Path(args.source)
    if not (root / "results").is_dir():
        raise config.LicmError(f"{root}: no results/ folder (a pack of results: unpack it first with "
                               "workflow/scripts/pack_results.sh unpack)")
    profile = (read_json(root / "results" / "summary.json") or {}).get("_meta", {}).get("profile", "result")
    out = Path(args.out or f"published/{profile}-{args.date}")
    if out.exists() and not args.force and not args.campaign:
        raise config.LicmError(f"{out}: exists; choose another --out or pass --force to replace it")
    tmp = out.with_name(f".{out.name}.tmp")    # complete or absent: built aside, then renamed
    shutil.rmtree(tmp, ignore_errors=True)
    campaign = read_json(Path(args.campaign)) if args.campaign else None
    if campaign is not None and out.exists():   # a campaign's snapshot: keep the seeds published one by one
        shutil.copytree(out, tmp)
        shutil.rmtree(tmp / "report", ignore_errors=True)
    try:
        index = publish(root, tmp, args.experiment, campaign, where=f"{out.parent.name}/{out.name}")
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
    p.add_argument("--campaign", default=None,
                   help="campaign.json of workflow/scripts/campaign.py: complete the snapshot its seeds were "
                        "published into (kept), with the campaign's record in index.json")
    p.set_defaults(func=_cmd_publish)
    q = sub.add_parser("publish-seed", help="one finished seed's compact results into a snapshot (the CPU campaign)",
                       description="Copy a finished run's metrics, meta, params, compressed history, every "
                                   "evaluation's winners (outputs at a few), its evaluation JSON and its weights "
                                   "(no optimizer state) into published/<snapshot>/runs/<experiment>/seed<K>/.")
    q.add_argument("--run", required=True, help="the run folder (results/runs/<experiment>/seed<K>)")
    q.add_argument("--eval", required=True, help="its evaluation JSON (results/eval/<experiment>/seed<K>.json)")
    q.add_argument("--out", required=True, help="<snapshot>/runs/<experiment>/seed<K>")
    q.add_argument("--campaign", default=None, help="campaign.json of workflow/scripts/campaign.py: this seed's "
                                                    "record (commit, attempts) goes into the published folder")
    q.add_argument("--classifier", default=None, help="the folder of the classifier that scored the seed "
                                                      "(results/classifier): published with the first seed, and "
                                                      "every later seed's must be the same")
    q.set_defaults(func=_cmd_publish_seed)


__all__ = ["export_weights", "final_outputs_only", "kept_outputs", "pin_classifier", "publish", "publish_seed"]
