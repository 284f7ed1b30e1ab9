"""Every path under results/: one table of templates and one function, `result`, that fills them in.

A field left out stays a `{field}` placeholder, so the same call gives a concrete file to a `licm`
command and a wildcard pattern to a Snakemake rule (`result("eval")` ->
`results/eval/{experiment}/seed{seed}.json`). `root` moves the tree (tests, a published copy);
`folder` moves the collection a path lies in (a command's --runs or --eval folder):
`result("run", folder="/tmp/runs", experiment="a", seed=0)` -> `/tmp/runs/a/seed0`.
"""
from __future__ import annotations

import re
from pathlib import Path

RESULTS = "results"
TEMPLATES = {
    "runs": "runs",
    "run": "runs/{experiment}/seed{seed}",
    "run_metrics": "runs/{experiment}/seed{seed}/metrics.json",
    "run_record": "runs/{experiment}/experiment.json",
    "evals": "eval",
    "eval": "eval/{experiment}/seed{seed}.json",
    "eval_record": "eval/{experiment}/experiment.json",
    "metrics": "metrics/{experiment}.json",
    "plot": "plots/{experiment}.csv",
    "plans": "plan",
    "plan": "plan/{experiment}.json",
    "stage_plan": "plan/stages/{stage}.json",
    "classifier": "classifier",
    "classifier_model": "classifier/classifier.pt",
    "classifier_metrics": "classifier/metrics.json",
    "figures": "figures",
    "figure": "figures/{figure}.png",
    "omniglot": "omniglot",
    "restoration": "omniglot/restoration.json",
    "composition": "composition",
    "composition_json": "composition/composition.json",
    "independence": "independence",
    "independence_json": "independence/independence.json",
    "genericity": "genericity",
    "genericity_json": "genericity/genericity.json",
    "summary": "summary.json",
    "report": "report",
    "report_page": "report/index.html",
}
# The figures (results/figures/<ID>.png), by the stage that draws them: from the prepared data alone
# (`licm figures data`), from runs (`licm figures runs`), from Omniglot (`licm omniglot`).
DATA_FIGURES = ("expand-fig1", "expand-fig2")
RUN_FIGURES = ("licm-fig1", "licm-fig2", "licm-fig3", "licm-fig4", "licm-fig5", "licm-fig6", "licm-fig9",
               "licm-table1", "expand-fig3", "expand-fig4", "expand-fig5", "expand-fig6", "expand-fig7",
               "expand-fig8", "expand-fig9", "fidelity")
OMNIGLOT_FIGURES = ("licm-fig7", "licm-fig8")
# Beyond the papers (licm composition, independence, genericity).
COMPOSITION_FIGURES = ("cmp-pairs", "cmp-matrix")
INDEPENDENCE_FIGURES = ("wc-independence",)
GENERICITY_FIGURES = ("bsv-io", "bsv-fig5", "bsv-fig2", "bsv-fig3")
_FIELD = re.compile(r"\{(\w+)\}")


def result(kind: str, root: str | Path = RESULTS, folder: str | Path | None = None, **fields) -> str:
    """The path of `kind` (a key of TEMPLATES) under `root` (or its collection in `folder`), its given
    fields filled in."""
    rel = _FIELD.sub(lambda m: str(fields[m[1]]) if m[1] in fields else m[0], TEMPLATES[kind])
    if folder is not None:
        head, _, rest = rel.partition("/")
        return Path(folder).as_posix() + (f"/{rest}" if rest else "")
    return f"{Path(root).as_posix()}/{rel}"


__all__ = ["RESULTS", "TEMPLATES", "DATA_FIGURES", "RUN_FIGURES", "OMNIGLOT_FIGURES", "COMPOSITION_FIGURES",
           "INDEPENDENCE_FIGURES", "GENERICITY_FIGURES", "result"]
