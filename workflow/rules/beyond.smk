# Beyond the papers (issue 18): three analyses of finished runs, no training. Composition of the
# inverse experts and spectral genericity look at one run of their experiment (the typical seed,
# licm.beyond.shown_run); independence of winner and class reads every finished run. Each writes its
# JSON under results/<analysis>/ and its figures; the summary (licm-c9) and the report read them.
# An experiment the profile does not run gives labelled placeholders, so the outputs never vary.
COMPOSITION_EXPERIMENT = PARAMS["composition"]["experiment"]
GENERICITY_EXPERIMENT = PARAMS["genericity"]["experiment"]


rule composition:
    """LICM Fig. 8 made quantitative: every ordered pair of mechanisms, the triple, group test, expert x
    mechanism matrix, blind multi-pass; the harness validated on the true operators first."""
    input:
        f"results/runs/{COMPOSITION_EXPERIMENT}/experiment.json",
        run_metrics(COMPOSITION_EXPERIMENT, SEEDS[COMPOSITION_EXPERIMENT]),
        OMNIGLOT,
        MNIST_TEST,
        classifier=rules.classifier.output.model,
        code=code("composition"),
    output:
        "results/composition/composition.json",
        "results/figures/cmp-pairs.png",
        "results/figures/cmp-matrix.png",
    params:
        fingerprint=stage_fingerprint("composition"),
        experiment=COMPOSITION_EXPERIMENT,
    log:
        "logs/composition.log",
    threads: 1
    conda:
        LICM_ENV
    shell:
        "OMP_NUM_THREADS={threads} licm composition --experiment {params.experiment} --runs results/runs "
        "--classifier {input.classifier} --out results/composition --figures results/figures > {log} 2>&1"


rule independence:
    """I(winner; class | mechanism) of every finished run over its evaluations, with a permutation null."""
    input:
        rules.train_all.input,
        code("independence"),
    output:
        "results/independence/independence.json",
        "results/figures/wc-independence.png",
    params:
        fingerprint=stage_fingerprint("independence"),
    log:
        "logs/independence.log",
    threads: 1
    conda:
        LICM_ENV
    shell:
        "OMP_NUM_THREADS={threads} licm independence --runs results/runs --out results/independence "
        "--figures results/figures > {log} 2>&1"


rule genericity:
    """BSV's spectral density ratio: mechanisms both ways, experts' input/output, layers vs nulls, toys."""
    input:
        f"results/runs/{GENERICITY_EXPERIMENT}/experiment.json",
        run_metrics(GENERICITY_EXPERIMENT, SEEDS[GENERICITY_EXPERIMENT]),
        f"{PREPARED}/{domain_of(GENERICITY_EXPERIMENT)}/test.npz",
        MNIST_TEST,
        code("genericity"),
    output:
        "results/genericity/genericity.json",
        expand("results/figures/{figure}.png", figure=["bsv-io", "bsv-fig5", "bsv-fig2", "bsv-fig3"]),
    params:
        fingerprint=stage_fingerprint("genericity"),
        experiment=GENERICITY_EXPERIMENT,
    log:
        "logs/genericity.log",
    threads: 1
    conda:
        LICM_ENV
    shell:
        "OMP_NUM_THREADS={threads} licm genericity --experiment {params.experiment} --runs results/runs "
        "--out results/genericity --figures results/figures > {log} 2>&1"
