# Training: one job per (experiment, seed), the experiment matrix of params.yaml (`experiments:`)
# at the selected profile (`profiles.<p>.max_seeds`, `.only_experiments`). Per experiment a
# collect job (`licm collect`) writes the experiment's record, its summary metrics (DVC metrics)
# and score curves (DVC plots). dvc.yaml runs `snakemake ... experiment_<name>` per experiment.
# The bookkeeping logic (plans, fingerprints, records) lives in src/licm/pipeline.py.
import json

from licm import pipeline

EXPERIMENTS = list(PARAMS["experiments"])
SELECTED = licm_config.selected_experiments(PARAMS)
SEEDS = {name: licm_config.seeds(PARAMS, name) for name in EXPERIMENTS}
RUNS = "results/runs"


def train_fingerprint(wildcards):
    """What a job's result depends on (licm.pipeline.TRAIN_KEYS of the experiment's resolved params,
    also in results/plan/<exp>.json for DVC); a change re-runs the job (Snakemake's params trigger)."""
    return pipeline.fingerprint(PARAMS, wildcards.experiment)


def resume_key(wildcards):
    """licm.pipeline.resume_key: same key = the job resumes the folder's checkpoint (also when only
    iterations grew); another key = the checkpoint is of other params, the job discards it."""
    return pipeline.resume_key(PARAMS, wildcards.experiment)


# ---- GPUs. A training job takes one `gpu` unit; locally the pool is gpus x seeds_per_gpu, so that
# many seeds train on the GPUs at once (CPU-only: no pool, jobs are limited by --cores).
# On SLURM (workflow/profiles/slurm) gpu=1 becomes --gpus=1 per job.
def _uses_gpu(params):
    dev = params["device"]
    return dev.startswith("cuda") or (dev == "auto" and licm_config.cuda_available())


USE_GPU = _uses_gpu(PARAMS)
SEEDS_PER_GPU = int(config.get("seeds_per_gpu", 2))
if USE_GPU and "gpu" not in workflow.global_resources:
    import torch
    workflow.register_resource("gpu", int(config.get("gpus", torch.cuda.device_count())) * SEEDS_PER_GPU)


# Bookkeeping jobs run on the submitting machine, also under a cluster executor.
localrules: plan, plan_all, collect, train_all


wildcard_constraints:
    experiment="[a-z][a-z0-9_]*",
    seed="[0-9]+",


def prepared_inputs(wildcards):
    domain = licm_config.experiment(PARAMS, wildcards.experiment)["train"]["domain"]
    return expand(f"{PREPARED}/{domain}/{{split}}.npz", split=["train_transformed", "train_canonical", "test"]) + \
        [f"{PREPARED}/{domain}/mechanisms.json"]


rule train:
    """One run. Only metrics.json is a declared output: `licm train` writes it last and atomically,
    so a failed or killed job never leaves it (and Snakemake deletes it before re-running). The
    rest of the folder (checkpoint.pt, history.csv rewritten at every checkpoint, params.json,
    meta.json) is not declared on purpose: the checkpoint must survive for the resume. The whole
    folder is inside DVC's output results/runs/<experiment>."""
    input:
        prepared_inputs,
        code("train", "models", "evaluate", "data"),
    output:
        metrics=RUNS + "/{experiment}/seed{seed}/metrics.json",
    params:
        fingerprint=train_fingerprint,
        resume_key=resume_key,
        folder=RUNS + "/{experiment}/seed{seed}",
    log: "logs/train/{experiment}/seed{seed}.log"
    threads: 1
    resources:
        gpu=1 if USE_GPU else 0,
        mem_mb=4000,
        runtime=240,
    shell:
        "mkdir -p {params.folder} && "
        "if [ -f {params.folder}/.resume-key ] && [ \"$(cat {params.folder}/.resume-key)\" != {params.resume_key} ]; then "
        "echo 'params changed: discarding the old checkpoint' && "
        "rm -f {params.folder}/checkpoint.pt {params.folder}/meta.json {params.folder}/params.json; fi > {log} 2>&1; "
        "echo {params.resume_key} > {params.folder}/.resume-key && "
        "OMP_NUM_THREADS={threads} {LICM} train --experiment {wildcards.experiment} --seed {wildcards.seed} "
        "--out {params.folder} --no-progress >> {log} 2>&1"


rule collect:
    """The experiment's record (which seeds ran, at which profile), summary metrics and score
    curves, from the runs' metrics.json and history.csv. Unselected experiments get a record
    saying so (and empty metrics), so every DVC train stage has its outputs."""
    input:
        lambda w: expand(RUNS + "/{experiment}/seed{seed}/metrics.json", experiment=w.experiment, seed=SEEDS[w.experiment]),
        code("pipeline", "data"),
    output:
        record=RUNS + "/{experiment}/experiment.json",
        metrics="results/metrics/{experiment}.json",
        plot="results/plots/{experiment}.csv",
    params:
        seeds=lambda w: SEEDS[w.experiment],
        profile=PROFILE,
    log: "logs/collect/{experiment}.log"
    shell:
        "{LICM} collect --experiment {wildcards.experiment} --runs {RUNS} --metrics {output.metrics} "
        "--plot {output.plot} > {log} 2>&1"


rule plan:
    """Every experiment's and stage's plan (the resolved params its jobs read; `licm plan` rewrites a
    file only when its content changes). DVC stages depend on them; Snakemake re-runs this job when
    any plan changes (params trigger: a hash of every plan, so also when licm/pipeline.py changes
    what a plan holds) and compares its other jobs' params itself. No code inputs on purpose: a plan
    whose content did not change is not rewritten, so its mtime would stay older than the code."""
    output:
        expand("results/plan/{experiment}.json", experiment=EXPERIMENTS),
        expand("results/plan/stages/{stage}.json", stage=list(pipeline.STAGE_KEYS)),
    params: plans=licm_config.params_hash(pipeline.plans(PARAMS))
    log: "logs/plan.log"
    shell: "{LICM} plan --out results/plan > {log} 2>&1"


rule plan_all:
    input: rules.plan.output


# One target rule per experiment, for dvc.yaml (`snakemake experiment_main`) and for people.
for _name in EXPERIMENTS:
    rule:
        name: f"experiment_{_name}"
        input: RUNS + f"/{_name}/experiment.json", f"results/metrics/{_name}.json", f"results/plots/{_name}.csv"


rule train_all:
    input:
        expand(RUNS + "/{experiment}/experiment.json", experiment=EXPERIMENTS),
