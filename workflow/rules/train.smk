# Training: the experiment matrix of params.yaml (`experiments:`) at the selected profile
# (`profiles.<p>.max_seeds`, `.only_experiments`). A training job trains `seeds_per_job` seeds of one
# experiment in one process (batched in one network): on the CPU one seed per job (rule `train`, the
# seeds run in parallel), where jobs use CUDA all seeds of an experiment together (a rule per
# experiment and seeds, train_<experiment>_seeds<a>-<b>, since Snakemake needs every output of a job
# spelled out; a rule without wildcards wins over `train` for the same file). Each seed keeps its run
# folder and metrics.json, what evaluation and everything after it read. Per experiment a collect
# job (`licm collect`) writes the experiment's record, summary metrics (DVC metrics) and score
# curves (DVC plots). dvc.yaml runs `snakemake ... experiment_<name>` per experiment.

# Bookkeeping jobs run on the submitting machine, also under a cluster executor.
localrules: plan, plan_all, collect, train_all


wildcard_constraints:
    experiment="[a-z][a-z0-9_]*",
    seed="[0-9]+",


rule train:
    """One seed. Only metrics.json is a declared output: `licm train` writes it last and atomically, so
    a failed or killed job never leaves it (and Snakemake deletes it before re-running). The rest of
    the folder (checkpoint.pt, ...) is not declared on purpose: the checkpoint must survive for the
    resume (--restart-if-changed: unless it was made with other params or at another commit). The whole folder is inside
    DVC's output results/runs/<experiment>."""
    input:
        lambda w: prepared_files(w.experiment),
        code("train"),
    output:
        result("run_metrics"),
    params:
        fingerprint=lambda w: train_fingerprint(w.experiment),
    log:
        "logs/train/{experiment}/seed{seed}.log",
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    conda:
        LICM_ENV
    shell:
        licm_train(seeds="wildcards.seed")


for _name, _seeds in TRAIN_BATCHES:

    rule:
        name:
            train_batch_rule(_name, _seeds)
        input:
            prepared_files(_name),
            code("train"),
        output:
            run_metrics(_name, _seeds),
        params:
            fingerprint=train_fingerprint(_name),
            experiment=_name,
            seeds=pipeline.seeds_text(_seeds),
        log:
            f"logs/train/{_name}/seeds{pipeline.seeds_text(_seeds)}.log",
        threads: TRAIN_THREADS
        resources:
            **TRAIN_RESOURCES,
        conda:
            LICM_ENV
        shell:
            licm_train(experiment="params.experiment", seeds="params.seeds")

    apply_train_settings(train_batch_rule(_name, _seeds))


rule collect:
    """The experiment's record (which seeds ran, at which profile), summary metrics and score
    curves, from the runs' metrics.json and history.csv. Unselected experiments get a record
    saying so (and empty metrics), so every DVC train stage has its outputs."""
    input:
        lambda w: run_metrics(w.experiment, SEEDS[w.experiment]),
        code("collect"),
    output:
        record=result("run_record"),
        metrics=result("metrics"),
        plot=result("plot"),
    params:
        seeds=lambda w: SEEDS[w.experiment],
        profile=PROFILE,
    log:
        "logs/collect/{experiment}.log",
    conda:
        LICM_ENV
    shell:
        licm("collect", threads=False)


rule plan:
    """Every experiment's and stage's plan (the resolved params its jobs read; `licm plan` rewrites a
    file only when its content changes). DVC stages depend on them; Snakemake re-runs this job when
    any plan changes (params trigger: a hash of every plan, so also when licm/pipeline.py changes
    what a plan holds) and compares its other jobs' params itself. No code inputs on purpose: a plan
    whose content did not change is not rewritten, so its mtime would stay older than the code."""
    output:
        [result("plan", experiment=e) for e in EXPERIMENTS],
        [result("stage_plan", stage=s) for s in pipeline.STAGE_KEYS],
    params:
        plans=licm_config.params_hash(pipeline.plans(PARAMS)),
    log:
        "logs/plan.log",
    conda:
        LICM_ENV
    shell:
        licm("plan", threads=False)


rule plan_all:
    input:
        rules.plan.output,


# One target rule per experiment, for dvc.yaml (`snakemake experiment_main`) and for people.
for _name in EXPERIMENTS:

    rule:
        name:
            f"experiment_{_name}"
        input:
            result("run_record", experiment=_name),
            result("metrics", experiment=_name),
            result("plot", experiment=_name),


rule train_all:
    input:
        [result("run_record", experiment=e) for e in EXPERIMENTS],
