"""Pipeline bookkeeping for one experiment (Snakemake rule `collect`; no science here).

Writes, from the runs' metrics.json and history.csv that `licm train` produced:
  results/runs/<exp>/experiment.json  the record: profile, seeds run, run folders (or "not selected")
  results/metrics/<exp>.json          summary metrics (DVC `metrics`, in git): per seed and mean
  results/plots/<exp>.csv             score curves (DVC `plots`): per iteration bin and mechanism, the
                                      discriminator score of the best expert, averaged over seeds
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from licm.data import atomic_write_text as write

BINS = 100  # points per curve


def main() -> None:
    ap = argparse.ArgumentParser()
    for a in ("experiment", "profile", "seeds", "runs", "record", "metrics", "plot"):
        ap.add_argument(f"--{a}", required=True)
    args = ap.parse_args()
    seeds = json.loads(args.seeds)
    folders = {s: Path(args.runs) / args.experiment / f"seed{s}" for s in seeds}
    runs = {s: json.loads((f / "metrics.json").read_text()) for s, f in folders.items()}
    per_seed = {f"seed{s}": {"distinct_winners": m["distinct_winners"], "fully_specialized": m["fully_specialized"],
                             "iterations": m["iterations"]} for s, m in runs.items()}
    summary = {"experiment": args.experiment, "profile": args.profile, "selected": bool(seeds), "runs": len(seeds)}
    if seeds:
        summary["mean_distinct_winners"] = sum(m["distinct_winners"] for m in runs.values()) / len(runs)
        summary["fully_specialized_runs"] = sum(bool(m["fully_specialized"]) for m in runs.values())
    summary["per_seed"] = per_seed
    record = {"experiment": args.experiment, "profile": args.profile, "selected": bool(seeds), "seeds": seeds,
              "runs": {f"seed{s}": str(f) for s, f in folders.items()}}
    write(args.record, json.dumps(record, indent=2) + "\n")
    write(args.metrics, json.dumps(summary, indent=2) + "\n")

    lines = ["iteration,mechanism,best_score"]
    if seeds:
        import pandas as pd

        frames = []
        for s, f in folders.items():
            h = pd.read_csv(f / "history.csv")
            best = h.groupby(["iteration", "mechanism"], sort=False)["score_mean"].max().reset_index()
            frames.append(best)
        h = pd.concat(frames)
        top = h["iteration"].max()
        width = max(1, -(-int(top) // BINS))
        h["iteration"] = ((h["iteration"] - 1) // width + 1) * width
        curve = h.groupby(["iteration", "mechanism"], sort=False)["score_mean"].mean().reset_index()
        lines += [f"{int(r.iteration)},{r.mechanism},{r.score_mean:.6g}" for r in curve.itertuples()]
    write(args.plot, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
