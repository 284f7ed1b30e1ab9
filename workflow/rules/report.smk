# The report target: everything the pipeline builds. It grows as stages land (evaluation,
# classifier, figures of runs, HTML report); see the TODO rules below.

localrules: report


rule report:
    input:
        rules.figures_data.output,
        rules.train_all.input,
        rules.plan_all.input,
    default_target: True

# TODO(evaluate, helper-3/lead): once `licm evaluate` exists:
# rule evaluate:
#     input: RUNS + "/{experiment}/seed{seed}/metrics.json", code("evaluate")
#     output: RUNS + "/{experiment}/seed{seed}/eval.json"
#     log: "logs/evaluate/{experiment}/seed{seed}.log"
#     shell: "{LICM} evaluate --run " + RUNS + "/{wildcards.experiment}/seed{wildcards.seed} > {log} 2>&1"
# and add its outputs to rule collect's input (then dvc.yaml's train stage covers them).
#
# TODO(classifier): rule classifier -> results/classifier/ (`{LICM} classifier`), DVC stage `classifier`.
# TODO(figures of runs): rule figures_runs -> results/figures/... (`{LICM} figures ...`), DVC stage.
# TODO(report): rule html_report -> results/report/index.html (`{LICM} report`), input: everything above;
#     make it the input of `report`; DVC stage `report` with the same deps.
