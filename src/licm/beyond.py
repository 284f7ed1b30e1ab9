"""What the three analyses beyond the papers share: rounding for byte-stable JSON, picking the run
they look at, saving a figure, and the report section "Beyond the papers" read from their JSON.

The analyses themselves live in licm.composition (LICM Fig. 8 made quantitative), licm.independence
(winner vs class given mechanism) and licm.genericity (BSV's spectral density ratio). This module
imports none of them, torch nor matplotlib at module level, so the report stage stays light and an
edit to one analysis re-runs only that analysis and the report.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from licm.config import LicmError

# The analyses' JSON files, relative to the results folder (written by their `licm` commands).
RESULTS = {"composition": "composition/composition.json", "independence": "independence/independence.json",
           "genericity": "genericity/genericity.json"}
FIGURES = {"composition": ["cmp-pairs", "cmp-matrix"], "independence": ["wc-independence"],
           "genericity": ["bsv-io", "bsv-fig5", "bsv-fig2", "bsv-fig3"]}


def rounded(value, digits: int = 6):
    """Floats to `digits` significant digits, recursively (NaN -> None): the JSON then does not carry
    the last bits, which differ with the number of threads torch uses (README: 1 and 2 threads differ)."""
    if isinstance(value, dict):
        return {str(k): rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        if not math.isfinite(v):
            return None
        return float(f"{v:.{digits}g}")
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def save_figure(fig, path: Path, dpi: int) -> Path:
    """licm.plot.save, imported only when an analysis draws (its JSON path stays free of matplotlib)."""
    from licm.plot import save

    return save(fig, Path(path), dpi)


def shown_run(runs_dir: Path, experiment: str) -> tuple[Path, str]:
    """The run an analysis of one run looks at: the first finished seed of the experiment's record that
    is fully specialized, else the one with most mechanisms won by distinct experts (the typical
    seed licm.figures shows), and why. A LicmError when the experiment has no finished run."""
    from licm.rundir import experiment_runs

    finished = {s: r for s, r in sorted(experiment_runs(runs_dir, experiment).items()) if r.is_finished()}
    if not finished:
        raise LicmError(f"{experiment}: no finished run under {runs_dir}. Fix: train it (`licm train`) and record it "
                        f"(`licm collect --experiment {experiment}`)")
    metrics = {s: r.metrics() for s, r in finished.items()}
    full = [s for s, m in metrics.items() if m.get("fully_specialized")]
    if full:
        return finished[full[0]].path, f"seed {full[0]}: first fully specialized seed"
    best = max(metrics, key=lambda s: (metrics[s].get("distinct_winners", 0), -s))
    return finished[best].path, (f"seed {best}: most mechanisms won by distinct experts "
                                 f"({metrics[best].get('distinct_winners')}); no seed fully specialized")


def plain_experts(committee) -> list:
    """The committee of one seed as plain licm.models.Expert modules (the inverse of Committee.copy_from),
    so that each conv's input maps can be read with a hook."""
    import torch

    from licm.models import Expert, _bns, _convs

    cfg, w = committee.config, committee.width
    experts = []
    with torch.no_grad():
        for j in range(committee.n_experts):
            e = Expert(w, cfg["hidden_layers"], cfg["receptive_field"])
            for i, (conv, bn) in enumerate(zip(_convs(e)[:-1], _bns(e))):
                conv.weight.copy_(committee.convs[i].weight[j * w:(j + 1) * w])
                src = committee.bns[i]
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, key).copy_(getattr(src, key)[j * w:(j + 1) * w])
            _convs(e)[-1].weight.copy_(committee.out.weight[j:j + 1])
            _convs(e)[-1].bias.copy_(committee.out.bias[j:j + 1])
            experts.append(e.eval())
    return experts


def placeholder(path: Path, figure_id: str, reason: str, dpi: int) -> Path:
    """A labelled placeholder figure (the pipeline declares every figure as an output)."""
    from licm import plot

    return plot.placeholder(path, [f"{figure_id}: not drawn (placeholder)", "", f"missing: {reason}"], reason, dpi)


def chosen_run(args) -> tuple[Path, str]:
    """The run an analysis command reads: --run, or the shown run of --experiment (shown_run)."""
    return (Path(args.run), "given with --run") if args.run else shown_run(Path(args.runs), args.experiment)


def write_not_run(name: str, figures: tuple[str, ...], params: dict, reason: str, out: Path, figs: Path) -> None:
    """An analysis whose run is missing: labelled placeholder figures and {"not_run": true, "reason"}
    as its JSON, so the pipeline's outputs always exist."""
    from licm.data import atomic_write_text

    for fid in figures:
        placeholder(figs / f"{fid}.png", fid, reason, params["figures"]["dpi"])
    atomic_write_text(out / f"{name}.json", json.dumps({"not_run": True, "reason": reason}, indent=1) + "\n")
    print(f"licm {name}: not run ({reason}): placeholders written")
