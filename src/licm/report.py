"""`licm report`: one self-contained HTML page with a section per figure and claim ID.

Inputs (all optional; what is missing is said on the page, never silently left out):

* `report.figures_dir/<ID>.png`: our figure for an ID (copied to `<out>/assets/`);
* `report.summary` (results/summary.json), written by the evaluation stage, of the shape

      {"<claim or figure ID>": {"numbers": {<name>: <number, string or list>, ...},
                                "verdict": "reproduced" | "partly reproduced" | "not reproduced" | "reduced scale" | "not run",
                                "note": "<the reasoning that decides the verdict>"},
       "follow-up-question": {"numbers": {...}, "verdict": "<short answer>", "note": "<answer>"},
       "_meta": {"timings": {"<stage>": <seconds>, ...}}}

  every key optional; an ID without an entry is reported as "not run";
* `report.runs_dir/<experiment>/seed<k>/{meta,metrics}.json`: the runs table, the timings and
  the data behind the follow-up question (specialization per experiment);
* `results/classifier/metrics.json` (classifier accuracy and time).

The page has no external resources (inline CSS, images beside it in assets/), so it opens
offline. A small inline script records failed images and script errors in `#page-check`
(the browser test reads it back).
"""
from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path


from licm import beyond, config, data, paths
from licm.data import read_json

VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "reduced scale", "not run")

# Every figure and claim ID of the report: (id, paper, kind, text, related figure IDs for claims).
ITEMS: list[dict] = [
    # LICM figures
    {"id": "licm-fig1", "paper": "LICM", "kind": "figure", "text": "Problem set-up, drawn from real data: canonical digits (P), one example per mechanism (Q_i), and the expert that inverts it."},
    {"id": "licm-fig2", "paper": "LICM", "kind": "figure", "text": "One transformed digit fed to every expert: each output with its discriminator score, the winner marked."},
    {"id": "licm-fig3", "paper": "LICM", "kind": "figure", "text": "16 random transformed test inputs (top row) and the highest-scoring expert's outputs after 1000 iterations (bottom row)."},
    {"id": "licm-fig4", "paper": "LICM", "kind": "figure", "text": "Discriminator score of every expert over iterations, one panel per mechanism, moving average over 50 iterations, for a typical successful seed."},
    {"id": "licm-fig5", "paper": "LICM", "kind": "figure", "text": "Proportion of test digits won by each expert for each mechanism: (a) at the start (after approximate identity initialization), (b) after 1000 iterations."},
    {"id": "licm-fig6", "paper": "LICM", "kind": "figure", "text": "Accuracy of a pretrained MNIST classifier over iterations on: transformed test digits, the winning experts' outputs, the original digits (upper bound)."},
    {"id": "licm-fig7", "paper": "LICM", "kind": "figure", "text": "Omniglot letters (46x46, never seen in training) transformed by each mechanism (columns) and passed through each expert (rows); the diagonal holds each column's highest-scoring expert."},
    {"id": "licm-fig8", "paper": "LICM", "kind": "figure", "text": "Omniglot letters transformed by noise, up-left translation and contrast inversion at once, restored by applying the denoising, contrast-inverting and down-right-translating experts in turn; last row the ground truth."},
    {"id": "licm-fig9", "paper": "LICM", "kind": "figure", "text": "Proportion of data won by each expert per mechanism with too many experts (16, left) and too few (6, right)."},
    {"id": "licm-table1", "paper": "LICM", "kind": "figure", "text": "Architectures of expert and discriminator, generated from the model code, with parameter counts (paper: ~27K per 32-filter expert)."},
    # LICM claims
    {"id": "licm-c1", "paper": "LICM", "kind": "claim", "related": ["licm-fig4", "licm-fig5"], "text": "10 seeds, 2000 iterations each: in 7 of 10 every expert specializes on exactly one mechanism; in the other 3 one expert takes two mechanisms and one takes none."},
    {"id": "licm-c2", "paper": "LICM", "kind": "claim", "related": ["licm-fig6"], "text": "Classifier accuracy: ~40% on transformed test digits, ~99% on originals; the experts' outputs start at ~40% and come close to the upper bound after about 600 iterations."},
    {"id": "licm-c3", "paper": "LICM", "kind": "claim", "related": [], "text": "Without approximate identity initialization, 1 of 10 seeds is good (8 experts on one mechanism each); running 10,000 iterations does not help."},
    {"id": "licm-c4", "paper": "LICM", "kind": "claim", "related": [], "text": "A single network (32, 64 or 128 filters per layer) in place of the committee learns at most one mechanism (contrast inversion)."},
    {"id": "licm-c5", "paper": "LICM", "kind": "claim", "related": [], "text": "Wider experts (64 or 128 filters) or a larger receptive field (two pooling + two upsampling layers) still specialize, with at most two experts holding two mechanisms each."},
    {"id": "licm-c6", "paper": "LICM", "kind": "claim", "related": [], "text": "With only 64 canonical examples (instead of 30,000) all experts still specialize, and the classifier reaches 96% on their outputs."},
    {"id": "licm-c7", "paper": "LICM", "kind": "claim", "related": ["licm-fig9"], "text": "16 experts for 10 mechanisms: each mechanism is won by one expert, the extra experts win nothing, accuracy reaches the upper bound."},
    {"id": "licm-c8", "paper": "LICM", "kind": "claim", "related": ["licm-fig9"], "text": "6 experts: accuracy stays at or below 72%; the clusters are still meaningful (for example left, down-left and up-left together)."},
    {"id": "licm-c9", "paper": "LICM", "kind": "claim", "related": ["licm-fig7", "licm-fig8"], "text": "The experts generalize: each applies its mechanism to Omniglot letters, and experts compose to undo combined mechanisms (Fig. 7, 8)."},
    # EXPAND figures
    {"id": "expand-fig1", "paper": "EXPAND", "kind": "figure", "text": "Examples of the 10 original transformations (0-7 translations, 8 noise, 9 inversion)."},
    {"id": "expand-fig2", "paper": "EXPAND", "kind": "figure", "text": "Examples of the expanded domain: rotations by 45°..315° in steps of 45°, horizontal and vertical stretching and compression by a factor of 1.75 (11 mechanisms)."},
    {"id": "expand-fig3", "paper": "EXPAND", "kind": "figure", "text": "Discriminator architecture diagram, generated from the model code."},
    {"id": "expand-fig4", "paper": "EXPAND", "kind": "figure", "text": "Expert architecture diagram, generated from the model code."},
    {"id": "expand-fig5", "paper": "EXPAND", "kind": "figure", "text": "Score of each expert over iterations for each original transformation (running average over 50 iterations)."},
    {"id": "expand-fig6", "paper": "EXPAND", "kind": "figure", "text": "One input per original transformation (top row) and the highest-scoring expert's output after training (bottom row)."},
    {"id": "expand-fig7", "paper": "EXPAND", "kind": "figure", "text": "Expert scores over iterations when training with the Wasserstein loss (lower is closer to the canonical distribution)."},
    {"id": "expand-fig8", "paper": "EXPAND", "kind": "figure", "text": "Score of each expert over iterations for each expanded-domain transformation."},
    {"id": "expand-fig9", "paper": "EXPAND", "kind": "figure", "text": "One input per expanded-domain transformation and the highest-scoring expert's output after training."},
    # EXPAND claims
    {"id": "expand-c1", "paper": "EXPAND", "kind": "claim", "related": ["expand-fig5", "expand-fig6"], "text": "Their baseline (10 runs) did not reproduce LICM: few experts specialized, and those on groups of translations sharing a direction."},
    {"id": "expand-c2", "paper": "EXPAND", "kind": "claim", "related": ["expand-fig7"], "text": "Wasserstein loss, two time-scale update rule and one-sided label smoothing did not improve their results."},
    {"id": "expand-c3", "paper": "EXPAND", "kind": "claim", "related": ["expand-fig8", "expand-fig9"], "text": "On the expanded domain only one expert specialized and won every transformation."},
]
IDS = [item["id"] for item in ITEMS]
FOLLOW_UP_ID = "follow-up-question"
# The fidelity study (licm.fidelity): its entry in summary.json, figure ID and the report section's anchor.
FIDELITY_ID = "fidelity"
FOLLOW_UP_TEXT = ("EXPAND leaves open: with a faithful implementation, do the experts specialize on the expanded "
                  "domain, and what made EXPAND's baseline fail?")


# ---------------------------------------------------------------- gathering

def run_rows(runs_dir: Path) -> list[dict]:
    """One row per run the experiments' records list (licm.rundir): experiment, seed, finished?,
    specialization numbers, its share of the training wall time, device."""
    from licm import rundir

    rows = []
    for experiment, seed, run in rundir.all_runs(runs_dir):
        meta, metrics = run.meta() or {}, run.metrics() or {}
        mechs = metrics.get("mechanisms") or []
        rows.append({
            "experiment": experiment, "seed": str(seed),
            "finished": bool(metrics), "iterations": metrics.get("iterations"),
            "mechanisms": len(mechs), "distinct_winners": metrics.get("distinct_winners"),
            "fully_specialized": metrics.get("fully_specialized"),
            "experts_used": len(set(metrics.get("top_expert") or [])) if metrics else None,
            "seconds": run.seconds(), "device": run.hardware() if meta else "?",
        })
    return rows


def experiment_table(runs: list[dict]) -> list[dict]:
    """Per experiment: seeds finished, fully specialized seeds, mean distinct winners / mechanisms."""
    out: dict[str, dict] = {}
    for r in runs:
        e = out.setdefault(r["experiment"], {"experiment": r["experiment"], "runs": 0, "finished": 0,
                                             "fully_specialized": 0, "distinct": [], "mechanisms": r["mechanisms"],
                                             "seconds": 0.0})
        e["runs"] += 1
        if r["finished"]:
            e["finished"] += 1
            e["fully_specialized"] += int(bool(r["fully_specialized"]))
            if r["distinct_winners"] is not None:
                e["distinct"].append(r["distinct_winners"])
            e["mechanisms"] = r["mechanisms"] or e["mechanisms"]
        e["seconds"] += r["seconds"] or 0.0
    for e in out.values():
        d = e.pop("distinct")
        e["mean_distinct_winners"] = round(sum(d) / len(d), 2) if d else None
    return list(out.values())


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _why_missing(item: dict, runs: list[dict]) -> str:
    if item["id"] in ("expand-fig1", "expand-fig2"):
        return "run `licm figures data` (needs the prepared data)"
    if not runs:
        return "no training run has finished yet (results/runs is empty); the figure is drawn from trained runs"
    return "its figure stage has not run yet (or failed) for the finished runs"


def copy_figure(src: Path, assets: Path) -> str | None:
    """Copy a figure PNG next to the page (the report is one folder); its link, or None when missing."""
    if not src.is_file():
        return None
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, assets / src.name)
    return f"assets/{src.name}"


def beyond_context(results_dir: Path, figures_dir: Path, assets: Path) -> list[dict]:
    """The report's section "Beyond the papers": per analysis its sentence, its numbers (the `report`
    block its stage wrote) and its figures, or what is missing."""
    blocks = []
    titles = {"composition": "Composition of the inverse experts (LICM Fig. 8 made quantitative, §2 'can be combined')",
              "independence": "Independence of winning expert and digit class, given the mechanism",
              "genericity": "Spectral genericity of mechanisms and experts (Besserve et al.)"}
    for name, rel in beyond.RESULTS.items():
        result = read_json(results_dir / rel)
        figures = [f for f in (copy_figure(figures_dir / f"{fid}.png", assets) for fid in beyond.FIGURES[name]) if f]
        if result is None:
            blocks.append({"id": name, "title": titles[name], "sentence": "", "numbers": {}, "figures": figures,
                           "missing": f"{results_dir / rel} not found: run `licm {name}`"})
            continue
        report = result.get("report") or {}
        blocks.append({"id": name, "title": titles[name], "sentence": result.get("sentence", ""),
                       "numbers": {k: _fmt(v) for k, v in (report.get("numbers") or {}).items()},
                       "figures": figures, "missing": result.get("reason") if result.get("not_run") else None})
    return blocks


def fidelity_context(block: dict | None, figures_dir: Path, assets: Path) -> dict:
    """The section "What decides specialization": the fidelity study's figure, table, power and sentences
    (licm.fidelity; the block is summary.json's `fidelity`)."""
    from licm import fidelity   # imports licm.summary, which imports this module

    figure = copy_figure(figures_dir / f"{FIDELITY_ID}.png", assets)
    if not block:
        return {"figure": figure, "verdict": "not run", "rows": [], "power": [], "sentences": [],
                "missing": f"no `{FIDELITY_ID}` entry in the summary: run `licm summarize`"}
    power = block.get("power") or {}
    return {"figure": figure, "verdict": block.get("verdict", "not run"), "rows": fidelity.report_rows(block),
            "power": fidelity.power_rows(block), "sentences": block.get("sentences", []), "missing": None,
            "alpha": power.get("alpha"), "alpha_holm": power.get("alpha_holm_first"),
            "seeds": power.get("seeds_arm"), "test": power.get("test", "")}


def build_context(params: dict, out: Path, figures_dir: Path, summary_path: Path, runs_dir: Path,
                  classifier_metrics: Path, timings: dict | None = None) -> dict:
    from licm import plot      # matplotlib only where a page is built (summarize imports this module)

    summary = read_json(summary_path) if summary_path.is_file() else None
    summary_note = (f"{summary_path} read" if summary is not None else
                    f"{summary_path} not found: every claim reads 'not run'")
    summary = summary or {}
    assets = out / "assets"
    runs = run_rows(runs_dir)
    sections = []
    for item in ITEMS:
        entry = summary.get(item["id"]) or {}
        figure = copy_figure(figures_dir / f"{item['id']}.png", assets)
        stand_in = plot.placeholder_reason(figures_dir / f"{item['id']}.png") if figure else None
        verdict = entry.get("verdict")
        if verdict not in VERDICTS:
            verdict = ("not run" if item["kind"] == "claim" else "placeholder" if stand_in else
                       "figure produced" if figure else "not yet produced")
        sections.append({
            **item, "figure": figure, "missing": stand_in or (None if figure else _why_missing(item, runs)),
            "numbers": {k: _fmt(v) for k, v in (entry.get("numbers") or {}).items()},
            "verdict": verdict, "note": entry.get("note", ""), "in_summary": bool(entry),
            "related": item.get("related", []),
        })
    follow = summary.get(FOLLOW_UP_ID) or {}
    fidelity = fidelity_context(summary.get(FIDELITY_ID), figures_dir, assets)
    clf = read_json(classifier_metrics) if classifier_metrics.is_file() else None
    all_timings = dict((summary.get("_meta") or {}).get("timings") or {})
    all_timings.update(timings or {})
    if clf:
        all_timings.setdefault("classifier training", clf.get("train_seconds"))
    if runs:
        all_timings.setdefault(f"training ({len(runs)} runs, summed)", round(sum(r["seconds"] or 0.0 for r in runs), 1))
    try:
        device = str(config.device(params["device"]))
    except config.ParamsError as exc:
        device = f"unavailable ({exc})"
    run_devices = sorted({r["device"] for r in runs if r["device"] != "?"})
    counts = {v: sum(1 for s in sections if s["kind"] == "claim" and s["verdict"] == v) for v in VERDICTS}
    return {
        "title": params["report"]["title"],
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": params["profile"], "device": device, "run_devices": ", ".join(run_devices) or "no runs yet",
        "commit": config.git_commit(), "params_hash": config.params_hash(params),
        "timings": {k: (f"{v:.1f} s" if isinstance(v, (int, float)) else str(v)) for k, v in all_timings.items()
                    if v is not None},
        "sections": sections, "claims": [s for s in sections if s["kind"] == "claim"],
        "figures": [s for s in sections if s["kind"] == "figure"],
        "counts": counts, "summary_note": summary_note,
        "classifier": clf, "runs": runs, "experiments": experiment_table(runs),
        "follow": {"question": FOLLOW_UP_TEXT, "verdict": follow.get("verdict"), "note": follow.get("note", ""),
                   "numbers": {k: _fmt(v) for k, v in (follow.get("numbers") or {}).items()}},
        "follow_up_id": FOLLOW_UP_ID, "fidelity": fidelity,
        # "Beyond the papers": the analyses' JSON beside the summary (results/<analysis>/), licm.beyond
        "beyond": beyond_context(summary_path.parent, figures_dir, assets),
    }


# ---------------------------------------------------------------- rendering

def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("licm", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["slug"] = lambda v: str(v).replace(" ", "-")
    return env.get_template("report.html.j2")


def render(context: dict) -> str:
    return _template().render(**context)


def build(params: dict, out: str | Path = paths.result("report"), figures_dir: str | Path | None = None,
          summary: str | Path | None = None, runs_dir: str | Path | None = None,
          classifier_metrics: str | Path = paths.result("classifier_metrics"), timings: dict | None = None) -> Path:
    """Write `<out>/index.html` and `<out>/assets/`; return the page's path."""
    r = params["report"]
    out = Path(out)
    assets = out / "assets"
    if assets.is_dir():
        shutil.rmtree(assets)   # stale figures must not survive a rebuild
    ctx = build_context(params, out, Path(figures_dir or r["figures_dir"]), Path(summary or r["summary"]),
                        Path(runs_dir or r["runs_dir"]), Path(classifier_metrics), timings)
    page = out / "index.html"
    data.atomic_write_text(page, render(ctx))
    return page


def _cmd_report(args) -> None:
    t0 = time.perf_counter()
    params = config.load(args.params, profile=args.profile)
    page = build(params, args.out)
    print(f"licm report: {page} ({len(IDS)} sections) in {time.perf_counter() - t0:.1f}s; "
          f"open file://{os.path.abspath(page)}")


def register(sub) -> None:
    p = sub.add_parser("report", help="write the HTML report (one section per figure and claim ID)")
    p.add_argument("--out", default=paths.result("report"), help="output folder (default: %(default)s)")
    p.set_defaults(func=_cmd_report)


__all__ = ["ITEMS", "IDS", "VERDICTS", "build", "build_context", "render"]
