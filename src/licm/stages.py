"""The pipeline's stages, written once: each stage's `licm` command, what it reads and what it writes.

Both tools read this table: the Snakemake rules (workflow/rules/*.smk, through the helpers of
workflow/rules/common.smk) and the generated dvc.yaml (licm.dvcyaml). A stage whose rule has no
wildcards (`generic`) gets its Snakemake rule from workflow/rules/stages.smk and its DVC stage from
licm.dvcyaml with no other edit: add an entry here, run `licm dvc-yaml`. The stages whose jobs are
per experiment, seed or domain (prepare, plan, train, evaluate) have rules of their own in
workflow/rules/*.smk that read their commands and outputs from here.

A stage reads artifacts (`deps`, names of ARTIFACTS): each has a DVC path (a folder DVC hashes) and
the files Snakemake waits for (`files`). Its params: `reads="plan"` the resolved keys `keys`
(results/plan/stages/<stage>.json, licm.pipeline), `reads="data"` raw keys of params.yaml (the data
stages run before `licm plan`), `reads="experiment"` an experiment's plan (results/plan/<E>.json).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from licm import config
from licm.paths import (COMPOSITION_FIGURES, DATA_FIGURES, GENERICITY_FIGURES, INDEPENDENCE_FIGURES, OMNIGLOT_FIGURES,
                        RUN_FIGURES, result)

DOMAINS = ("paper", "expanded")
# The experiment whose committee is shown on Omniglot (LICM §5.3: the main experiment), and whose
# typical seed the composition and genericity analyses read.
OMNIGLOT_EXPERIMENT = "main"


def figures(ids) -> tuple[str, ...]:
    return tuple(result("figure", figure=i) for i in ids)


# ---------------------------------------------------------------- raw and prepared data

def raw_dir(params: dict) -> str:
    return params["data"]["raw_dir"]


def mnist_test(params: dict) -> list[str]:
    return [f"{raw_dir(params)}/MNIST/raw/t10k-{k}-idx{d}-ubyte" for k, d in (("images", 3), ("labels", 1))]


def mnist(params: dict) -> list[str]:
    train = [f"{raw_dir(params)}/MNIST/raw/train-{k}-idx{d}-ubyte" for k, d in (("images", 3), ("labels", 1))]
    return train + mnist_test(params)


def omniglot_archive(params: dict) -> list[str]:
    return [f"{raw_dir(params)}/omniglot/{params['data']['omniglot_archive']}.zip"]


def prepared(params: dict, domain: str, splits=("train_transformed", "train_canonical", "test")) -> list[str]:
    folder = f"{params['data']['prepared_dir']}/{domain}"
    return [f"{folder}/{s}.npz" for s in splits] + [f"{folder}/mechanisms.json"]


# ---------------------------------------------------------------- artifacts

@dataclass(frozen=True)
class Artifact:
    dvc: tuple[str, ...]                 # what a DVC stage depends on
    files: object                        # params -> the files a Snakemake rule waits for


def _runs_of(params: dict, name: str) -> list[str]:
    return [result("run_record", experiment=name)] + [result("run_metrics", experiment=name, seed=s)
                                                      for s in config.seeds(params, name)]


ARTIFACTS: dict[str, Artifact] = {
    "raw": Artifact(("data/raw",), lambda p: mnist(p) + omniglot_archive(p)),
    "mnist": Artifact(("data/raw/MNIST",), mnist),
    "omniglot_archive": Artifact(("data/raw/omniglot",), omniglot_archive),
    "prepared": Artifact(("data/prepared",), lambda p: [f for d in DOMAINS for f in prepared(p, d)]),
    "prepared_test": Artifact(tuple(f"data/prepared/{d}/test.npz" for d in DOMAINS),
                              lambda p: [f"{p['data']['prepared_dir']}/{d}/test.npz" for d in DOMAINS]),
    "runs": Artifact((result("runs"),), lambda p: [result("run_record", experiment=e) for e in p["experiments"]]),
    f"runs/{OMNIGLOT_EXPERIMENT}": Artifact((result("runs") + f"/{OMNIGLOT_EXPERIMENT}",),
                                            lambda p: _runs_of(p, OMNIGLOT_EXPERIMENT)),
    "runs/{experiment}": Artifact((result("runs") + "/{experiment}",), None),    # rules of their own
    "evals": Artifact((result("evals"),), lambda p: [result("eval_record", experiment=e) for e in p["experiments"]]),
    "classifier_model": Artifact((result("classifier_model"),), lambda p: [result("classifier_model")]),
    "classifier_metrics": Artifact((result("classifier_metrics"),), lambda p: [result("classifier_metrics")]),
    "restoration": Artifact((result("restoration"),), lambda p: [result("restoration")]),
    "summary": Artifact((result("summary"),), lambda p: [result("summary")]),
    "composition": Artifact((result("composition_json"),), lambda p: [result("composition_json")]),
    "independence": Artifact((result("independence_json"),), lambda p: [result("independence_json")]),
    "genericity": Artifact((result("genericity_json"),), lambda p: [result("genericity_json")]),
    "figures": Artifact((result("figures"),), lambda p: [f for s in STAGES for f in s.outs
                                                         if f.startswith(result("figures") + "/")]),
}


# ---------------------------------------------------------------- stages

@dataclass(frozen=True)
class Stage:
    name: str                              # the DVC stage (foreach: name@<item>); its rule's params plan
    commands: dict[str, str]               # Snakemake rule -> the arguments of its `licm` command
    deps: tuple[str, ...] = ()             # ARTIFACTS it reads
    outs: tuple[str, ...] = ()             # the files its (first) rule writes
    reads: str | None = "plan"             # "plan" | "data" | "experiment" | None (see the module docstring)
    keys: tuple[str, ...] | None = None    # the params it reads (None: all of them)
    foreach: str | None = None             # DVC: "experiments" or "domains"
    generic: bool = True                   # rule from workflow/rules/stages.smk (no wildcards)
    threads: int = 1
    doc: str = ""
    dvc: dict = field(default_factory=dict)  # DVC-only entries: outs (folders), metrics, plots
    rule_file: str = "workflow/rules/stages.smk"

    @property
    def rule(self) -> str:
        return next(iter(self.commands))

    @property
    def runs_licm(self) -> bool:
        """DVC runs `licm` itself (the data stages, before `licm plan`) instead of Snakemake."""
        return self.reads == "data"


STAGES: tuple[Stage, ...] = (
    Stage("fetch", {"fetch": "data fetch"}, reads="data", keys=("data.omniglot_archive", "data.raw_dir"),
          generic=False, rule_file="workflow/rules/data.smk", dvc={"outs": ["data/raw"]}),
    Stage("prepare", {"prepare": "data prepare --domain {domain}"}, deps=("raw",), reads="data", foreach="domains",
          keys=("data.image_size", "data.split", "data.split_seed", "data.transform_seed", "mechanisms",
                "domains.{domain}"), generic=False, rule_file="workflow/rules/data.smk",
          dvc={"outs": ["data/prepared/{domain}"]}),
    Stage("figures_data", {"figures_data": f"figures data --out {result('figures')}"}, deps=("prepared_test",),
          outs=figures(DATA_FIGURES), reads="data", keys=("figures",)),
    Stage("plan", {"plan": f"plan --out {result('plans')}"}, reads=None, generic=False,
          rule_file="workflow/rules/train.smk",
          doc="""\
What the workflow plans per experiment (profile, seeds, the params its jobs read) and per stage
(the resolved params its command reads), from the whole params.yaml: licm.pipeline. Cheap; its
files change only where a plan changed, so only the matching stages below become stale.
Like the stages below, it runs its Snakemake rule, so that Snakemake records what DVC ran."""),
    Stage("train", {"train": "train --experiment {experiment} --seeds {seeds}",
                    "collect": "collect --experiment {experiment} --runs " + result("runs")
                               + f" --metrics {result('metrics')} --plot {result('plot')}"},
          deps=("prepared",), reads="experiment", foreach="experiments", generic=False, threads=2,
          rule_file="workflow/rules/train.smk",
          dvc={"outs": [{result("runs", ) + "/{experiment}": {"persist": True}}],
               "metrics": [{result("metrics"): {"cache": False}}],
               "plots": [{result("plot"): {"cache": False, "x": "iteration", "y": "best_score",
                                           "template": "linear"}}]},
          doc="""\
One stage per entry of `experiments:` in params.yaml (add an entry, get a stage). Its Snakemake
target trains the experiment's seeds (one job per seed on the CPU, several seeds per job on a GPU:
`seeds_per_job`) and records them. `data_rules=false`: data/ belongs to the stages above, so
Snakemake has no rule to rebuild it; `--forceall`: DVC has decided the stage is stale, so all of
its runs are redone whatever the mtimes (dvc checkout/pull reset them) or Snakemake's records say;
a run whose params are unchanged resumes from its final checkpoint (only re-evaluated).
The stage's params: the experiment's plan (profile, seeds, the resolved params its jobs read:
licm.pipeline.TRAIN_KEYS), content-hashed; raw `params:` keys would re-run experiments whose
resolved params did not change (profiles override).
persist: DVC must not delete the run folders before running: checkpoints are resumed."""),
    Stage("classifier", {"classifier": f"classifier --out {result('classifier')}"}, deps=("mnist",),
          outs=(result("classifier_model"), result("classifier_metrics")), threads=2,
          keys=("profile", "device", "data.raw_dir", "data.image_size", "classifier"),
          dvc={"outs": [result("classifier_model")], "metrics": [result("classifier_metrics")]},
          doc="""\
The stages below run their Snakemake rule (like train@), so that Snakemake records what DVC
ran (params, mtimes) and `snakemake -n report` has nothing to do afterwards. Their params:
results/plan/stages/<stage>.json (licm.pipeline, resolved with the profile). None of them is
upstream of training: a classifier change re-runs classifier, evaluate@*, figures_runs,
summarize and report only.

The MNIST classifier of LICM Fig. 6. metrics.json (test accuracy) is a DVC metric, cached
like the weights (not in git): `dvc metrics show` lists it where results are pulled."""),
    Stage("evaluate", {"evaluate": f"evaluate --run {result('run')} --classifier {result('classifier_model')} "
                                   f"--out {result('eval')}",
                       "collect_evaluations": "collect --experiment {experiment} --evaluations --eval-dir "
                                              + result("evals")},
          deps=("runs/{experiment}", "classifier_model", "prepared", "mnist"), keys=("device",),
          foreach="experiments", generic=False, rule_file="workflow/rules/evaluate.smk",
          dvc={"outs": [result("evals") + "/{experiment}"]},
          doc="""\
Per experiment, `licm evaluate` of each trained seed (results/eval/<exp>/seed<K>.json) and a
record of them (results/eval/<exp>/experiment.json, also for experiments not run)."""),
    Stage("omniglot", {"omniglot": f"omniglot --experiment {OMNIGLOT_EXPERIMENT} --runs {result('runs')} "
                                   f"--figures {result('figures')} --out {result('omniglot')}"},
          deps=(f"runs/{OMNIGLOT_EXPERIMENT}", "omniglot_archive"),
          outs=(*figures(OMNIGLOT_FIGURES), result("restoration")),
          keys=("data.raw_dir", "data.omniglot_archive", "mechanisms", "omniglot", "figures"),
          doc="Omniglot generalization (LICM Fig. 7, 8) of one finished seed of experiment main."),
    Stage("composition", {"composition": f"composition --experiment {OMNIGLOT_EXPERIMENT} --runs {result('runs')} "
                                         f"--classifier {result('classifier_model')} --out {result('composition')} "
                                         f"--figures {result('figures')}"},
          deps=(f"runs/{OMNIGLOT_EXPERIMENT}", "omniglot_archive", "mnist", "classifier_model"),
          outs=(result("composition_json"), *figures(COMPOSITION_FIGURES)),
          keys=("data.raw_dir", "data.omniglot_archive", "omniglot", "figures", "composition"),
          doc="""\
Beyond the papers, one stage per analysis of finished runs (no training): the composition of the
inverse experts (LICM Fig. 8 made quantitative) on the typical seed of experiment main."""),
    Stage("independence", {"independence": f"independence --runs {result('runs')} --out {result('independence')} "
                                           f"--figures {result('figures')}"},
          deps=("runs",), outs=(result("independence_json"), *figures(INDEPENDENCE_FIGURES)),
          keys=("figures", "independence"),
          doc="Winning expert vs digit class given the mechanism, every finished run (permutation null)."),
    Stage("genericity", {"genericity": f"genericity --experiment {OMNIGLOT_EXPERIMENT} --runs {result('runs')} "
                                       f"--out {result('genericity')} --figures {result('figures')}"},
          deps=(f"runs/{OMNIGLOT_EXPERIMENT}", "prepared_test", "mnist"),
          outs=(result("genericity_json"), *figures(GENERICITY_FIGURES)),
          keys=("figures", "genericity"),
          doc="Spectral genericity (Besserve et al.) of the mechanisms and of the typical seed of main."),
    Stage("figures_runs", {"figures_runs": f"figures runs --out {result('figures')}"},
          deps=("runs", "evals", "prepared_test"), outs=figures(RUN_FIGURES),
          doc="""\
Figures of runs and evaluations: every ID of licm.paths.RUN_FIGURES (placeholders where
the profile did not run the experiment)."""),
    Stage("summarize", {"summarize": f"summarize --out {result('summary')}"},
          deps=("runs", "evals", "classifier_metrics", "restoration", "composition"), outs=(result("summary"),),
          dvc={"metrics": [{result("summary"): {"cache": False}}]},
          doc="Numbers and verdict per claim ID (in git: `dvc metrics show`, `dvc metrics diff`)."),
    Stage("report", {"html_report": f"report --out {result('report')}"},
          deps=("summary", "figures", "runs", "classifier_metrics", "composition", "independence", "genericity"),
          outs=(result("report_page"),),
          dvc={"outs": [result("report")]}, doc="The HTML report: results/report/index.html (+ assets/)."),
)

def dvc_name(stage: Stage) -> str:
    """The name of the DVC stage (`train@{experiment}`: a foreach stage, the item as a field)."""
    item = {"experiments": "@{experiment}", "domains": "@{domain}"}.get(stage.foreach, "")
    return stage.name + item


BY_NAME = {s.name: s for s in STAGES}
# Snakemake rule -> the arguments of its `licm` command, the `licm` command alone (licm.pipeline.code_deps:
# the code it runs), and the DVC stage that runs its jobs (tests compare the two tools' views through it).
COMMAND = {rule: cmd for s in STAGES for rule, cmd in s.commands.items()}
RULE_COMMAND = {rule: cmd.split()[0] for rule, cmd in COMMAND.items()}
RULE_STAGE = {rule: dvc_name(s) for s in STAGES for rule in s.commands}


def generic() -> list[Stage]:
    """The stages whose rule workflow/rules/stages.smk generates (data stages only with data rules)."""
    return [s for s in STAGES if s.generic]


def inputs(stage: Stage, params: dict) -> list[str]:
    """The files a generic stage's Snakemake rule waits for (its artifacts' files)."""
    return [f for dep in stage.deps for f in ARTIFACTS[dep].files(params)]


def outputs() -> list[str]:
    """Every file of the generic stages (inputs of the target rule `report`)."""
    return [f for s in generic() for f in s.outs]


__all__ = ["Stage", "Artifact", "STAGES", "BY_NAME", "ARTIFACTS", "COMMAND", "RULE_STAGE", "RULE_COMMAND", "DOMAINS",
           "OMNIGLOT_EXPERIMENT", "dvc_name", "generic",
           "inputs", "outputs", "figures", "mnist", "mnist_test", "omniglot_archive", "prepared"]
