# Evaluation: one `licm evaluate` job per trained (experiment, seed) and, per experiment, a record of
# its evaluations (commands from the stage table, licm.stages). Cheap next to training, and not an
# input of training: a classifier change re-runs the classifier, the evaluations and what follows.
# dvc.yaml runs `snakemake ... evaluations_<name>` per experiment (stage evaluate@<name>).

localrules: collect_evaluations, evaluate_all


rule evaluate:
    """Numbers over iterations of one finished run (win matrices, classifier accuracy of the winners'
    outputs), from its evaluation arrays (written by `licm train` before metrics.json)."""
    input:
        metrics=result("run_metrics"),
        classifier=result("classifier_model"),
        test=run_test_inputs,
        code=code("evaluate"),
    output:
        result("eval"),
    params:
        fingerprint=stage_fingerprint("evaluate"),
    log:
        "logs/evaluate/{experiment}/seed{seed}.log",
    threads: 1
    conda:
        LICM_ENV
    shell:
        licm("evaluate")


rule collect_evaluations:
    """results/eval/<exp>/experiment.json: which seeds were evaluated (none when the profile does not
    select the experiment), so that DVC's evaluate@<exp> always has its output folder."""
    input:
        lambda w: [result("eval", experiment=w.experiment, seed=s) for s in SEEDS[w.experiment]],
        code("collect_evaluations"),
    output:
        result("eval_record"),
    params:
        seeds=lambda w: SEEDS[w.experiment],
        profile=PROFILE,
    log:
        "logs/collect_evaluations/{experiment}.log",
    conda:
        LICM_ENV
    shell:
        licm("collect_evaluations", threads=False)


# One target rule per experiment, for dvc.yaml (`snakemake evaluations_main`) and for people.
for _name in EXPERIMENTS:

    rule:
        name:
            f"evaluations_{_name}"
        input:
            result("eval_record", experiment=_name),


rule evaluate_all:
    input:
        [result("eval_record", experiment=e) for e in EXPERIMENTS],
