# Evaluation: the MNIST classifier (one job), one `licm evaluate` job per trained (experiment, seed)
# and, per experiment, a record of its evaluations; Omniglot generalization of experiment main.
# All cheap next to training, and none of them is an input of training: a classifier change
# re-runs the classifier, the evaluations and what follows, never a training job.
# dvc.yaml runs `snakemake ... evaluations_<name>` per experiment (stage evaluate@<name>).

localrules: collect_evaluations, evaluate_all


rule classifier:
    input:
        MNIST,
        code("classifier"),
    output:
        model="results/classifier/classifier.pt",
        metrics="results/classifier/metrics.json",
    params:
        fingerprint=stage_fingerprint("classifier"),
    log:
        "logs/classifier.log",
    threads: 2
    conda:
        LICM_ENV
    shell:
        "OMP_NUM_THREADS={threads} licm classifier --out results/classifier > {log} 2>&1"


rule evaluate:
    """Numbers over iterations of one finished run (win matrices, classifier accuracy of the winners'
    outputs), from its evaluation arrays (written by `licm train` before metrics.json)."""
    input:
        metrics="results/runs/{experiment}/seed{seed}/metrics.json",
        classifier=rules.classifier.output.model,
        test=run_test_inputs,
        code=code("evaluate"),
    output:
        "results/eval/{experiment}/seed{seed}.json",
    params:
        fingerprint=stage_fingerprint("evaluate"),
    log:
        "logs/evaluate/{experiment}/seed{seed}.log",
    threads: 1
    conda:
        LICM_ENV
    shell:
        "OMP_NUM_THREADS={threads} licm evaluate --run results/runs/{wildcards.experiment}/seed{wildcards.seed} "
        "--classifier {input.classifier} --out {output} > {log} 2>&1"


rule collect_evaluations:
    """results/eval/<exp>/experiment.json: which seeds were evaluated (none when the profile does not
    select the experiment), so that DVC's evaluate@<exp> always has its output folder."""
    input:
        lambda w: expand("results/eval/{experiment}/seed{seed}.json", experiment=w.experiment,
                         seed=SEEDS[w.experiment]),
        code("collect_evaluations"),
    output:
        "results/eval/{experiment}/experiment.json",
    params:
        seeds=lambda w: SEEDS[w.experiment],
        profile=PROFILE,
    log:
        "logs/collect_evaluations/{experiment}.log",
    conda:
        LICM_ENV
    shell:
        "licm collect --experiment {wildcards.experiment} --evaluations --eval-dir results/eval > {log} 2>&1"


# One target rule per experiment, for dvc.yaml (`snakemake evaluations_main`) and for people.
for _name in EXPERIMENTS:

    rule:
        name:
            f"evaluations_{_name}"
        input:
            f"results/eval/{_name}/experiment.json",


rule evaluate_all:
    input:
        expand("results/eval/{experiment}/experiment.json", experiment=EXPERIMENTS),


rule omniglot:
    """LICM Fig. 7 and 8 and the restoration table, from one finished seed of experiment main
    (`licm omniglot --experiment` picks it from the experiment's record and says why)."""
    input:
        f"results/runs/{OMNIGLOT_EXPERIMENT}/experiment.json",
        run_metrics(OMNIGLOT_EXPERIMENT, SEEDS[OMNIGLOT_EXPERIMENT]),
        OMNIGLOT,
        code("omniglot"),
    output:
        "results/figures/licm-fig7.png",
        "results/figures/licm-fig8.png",
        "results/omniglot/restoration.json",
    params:
        fingerprint=stage_fingerprint("omniglot"),
        experiment=OMNIGLOT_EXPERIMENT,
    log:
        "logs/omniglot.log",
    threads: 1
    conda:
        LICM_ENV
    shell:
        "OMP_NUM_THREADS={threads} licm omniglot --experiment {params.experiment} --runs results/runs "
        "--figures results/figures --out results/omniglot > {log} 2>&1"
