# Evaluation: the MNIST classifier (one job), one `licm evaluate` job per trained (experiment, seed)
# and, per experiment, a record of its evaluations; Omniglot generalization of experiment main.
# All cheap next to training, and none of them is an input of training: a classifier change
# re-runs the classifier, the evaluations and what follows, never a training job.
# dvc.yaml runs `snakemake ... evaluations_<name>` per experiment (stage evaluate@<name>).
EVAL = "results/eval"
CLASSIFIER = "results/classifier"
# The experiment whose committee is shown on Omniglot (LICM §5.3: the main experiment).
OMNIGLOT_EXPERIMENT = "main"

localrules: collect_evaluations, evaluate_all


def stage_fingerprint(stage):
    """A stage's resolved params (licm.pipeline.STAGE_KEYS; DVC: results/plan/stages/<stage>.json)."""
    return pipeline.stage_fingerprint(PARAMS, stage)


rule classifier:
    input:
        [f for f in RAW_FILES if "/MNIST/" in f],
        code("classifier", "data"),
    output:
        model=CLASSIFIER + "/classifier.pt",
        metrics=CLASSIFIER + "/metrics.json",
    params: fingerprint=stage_fingerprint("classifier")
    log: "logs/classifier.log"
    threads: 2
    shell: "OMP_NUM_THREADS={threads} {LICM} classifier --out " + CLASSIFIER + " > {log} 2>&1"


def run_test_inputs(wildcards):
    """The prepared test digits of the run's domain and the raw MNIST test set (the originals)."""
    domain = licm_config.experiment(PARAMS, wildcards.experiment)["train"]["domain"]
    return [f"{PREPARED}/{domain}/test.npz", f"{PREPARED}/{domain}/mechanisms.json"] + \
        [f for f in RAW_FILES if "/t10k-" in f]


rule evaluate:
    """Numbers over iterations of one finished run (win matrices, classifier accuracy of the winners'
    outputs), from its evaluation.npz (written by `licm train` before metrics.json)."""
    input:
        metrics=RUNS + "/{experiment}/seed{seed}/metrics.json",
        classifier=rules.classifier.output.model,
        test=run_test_inputs,
        code=code("evaluate", "classifier", "data"),
    output: EVAL + "/{experiment}/seed{seed}.json"
    params:
        fingerprint=stage_fingerprint("evaluate"),
        folder=RUNS + "/{experiment}/seed{seed}",
    log: "logs/evaluate/{experiment}/seed{seed}.log"
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} {LICM} evaluate --run {params.folder} --classifier {input.classifier} "
        "--out {output} > {log} 2>&1"


rule collect_evaluations:
    """results/eval/<exp>/experiment.json: which seeds were evaluated (none when the profile does not
    select the experiment), so that DVC's evaluate@<exp> always has its output folder."""
    input:
        lambda w: expand(EVAL + "/{experiment}/seed{seed}.json", experiment=w.experiment, seed=SEEDS[w.experiment]),
        code("pipeline"),
    output: EVAL + "/{experiment}/experiment.json"
    params:
        seeds=lambda w: SEEDS[w.experiment],
        profile=PROFILE,
    log: "logs/collect_evaluations/{experiment}.log"
    shell: "{LICM} collect --experiment {wildcards.experiment} --evaluations --eval-dir " + EVAL + " > {log} 2>&1"


# One target rule per experiment, for dvc.yaml (`snakemake evaluations_main`) and for people.
for _name in EXPERIMENTS:
    rule:
        name: f"evaluations_{_name}"
        input: EVAL + f"/{_name}/experiment.json"


rule evaluate_all:
    input: expand(EVAL + "/{experiment}/experiment.json", experiment=EXPERIMENTS)


rule omniglot:
    """LICM Fig. 7 and 8 and the restoration table, from one finished seed of experiment main
    (`licm omniglot --experiment` picks it from the experiment's record and says why)."""
    input:
        RUNS + f"/{OMNIGLOT_EXPERIMENT}/experiment.json",
        expand(RUNS + "/{experiment}/seed{seed}/metrics.json", experiment=OMNIGLOT_EXPERIMENT,
               seed=SEEDS[OMNIGLOT_EXPERIMENT]),
        [f for f in RAW_FILES if "/omniglot/" in f],
        code("omniglot", "mechanisms", "data", "figures", "models", "__init__"),
    output:
        "results/figures/licm-fig7.png",
        "results/figures/licm-fig8.png",
        "results/omniglot/restoration.json",
    params: fingerprint=stage_fingerprint("omniglot")
    log: "logs/omniglot.log"
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} {LICM} omniglot --experiment " + OMNIGLOT_EXPERIMENT +
        " --runs {RUNS} --figures results/figures --out results/omniglot > {log} 2>&1"
