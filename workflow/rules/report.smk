# Figures of the runs, the claims summary and the HTML report; `report` is the target that builds
# everything (Snakefile). The page lands in results/report/index.html.
from licm import figures as licm_figures


rule figures_runs:
    """Every figure drawn from runs and evaluations (licm.figures.RUN_FIGURE_IDS); a figure whose
    experiment the profile does not run is a labelled placeholder, so the outputs never vary."""
    input:
        rules.train_all.input,
        rules.evaluate_all.input,
        expand(f"{PREPARED}/{{domain}}/test.npz", domain=["paper", "expanded"]),
        code("figures_runs"),
    output:
        expand("results/figures/{figure}.png", figure=licm_figures.RUN_FIGURE_IDS),
    params:
        fingerprint=stage_fingerprint("figures_runs"),
    log:
        "logs/figures-runs.log",
    threads: 1
    conda:
        LICM_ENV
    shell:
        "OMP_NUM_THREADS={threads} licm figures runs --out results/figures > {log} 2>&1"


rule summarize:
    """Numbers and verdict per claim ID -> results/summary.json (DVC metrics, in git)."""
    input:
        rules.train_all.input,
        rules.evaluate_all.input,
        rules.classifier.output.metrics,
        rules.omniglot.output[2],
        rules.composition.output[0],
        code("summarize"),
    output:
        "results/summary.json",
    params:
        fingerprint=stage_fingerprint("summarize"),
    log:
        "logs/summarize.log",
    conda:
        LICM_ENV
    shell:
        "licm summarize --out {output} > {log} 2>&1"


rule html_report:
    """The HTML report: one section per figure and claim ID, from everything above."""
    input:
        rules.summarize.output,
        FIGURES_DATA,
        rules.omniglot.output,
        rules.figures_runs.output,
        rules.composition.output,
        rules.independence.output,
        rules.genericity.output,
        rules.train_all.input,
        rules.classifier.output.metrics,
        code("html_report"),
    output:
        "results/report/index.html",
    params:
        fingerprint=stage_fingerprint("report"),
    log:
        "logs/report.log",
    conda:
        LICM_ENV
    shell:
        "licm report --out results/report > {log} 2>&1"
