# Training: one job per (experiment, seed), the experiment matrix of params.yaml (`experiments:`)
# at the selected profile (`profiles.<p>.max_seeds`, `.only_experiments`). Per experiment a
# collect job writes the experiment's record, its summary metrics (DVC metrics) and score
# curves (DVC plots). dvc.yaml runs `snakemake ... experiment_<name>` per experiment.
import json
import os

EXPERIMENTS = list(PARAMS["experiments"])
SELECTED = licm_config.selected_experiments(PARAMS)
SEEDS = {name: licm_config.seeds(PARAMS, name) for name in EXPERIMENTS}
RUNS = "results/runs"
# Blocks of the resolved (profile + overrides) params a training job reads: its `params:`
# fingerprint here, and results/plan/<exp>.json, which dvc.yaml's train@<exp> depends on
# (tests/test_pipeline.py checks that the two agree).
TRAIN_KEYS = ("device", "data.prepared_dir", "model", "aii", "train")


def _pick(params, keys):
    out = {}
    for key in keys:
        node = params
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def fingerprint(name):
    return json.dumps(_pick(licm_config.experiment(PARAMS, name), TRAIN_KEYS), sort_keys=True)


def train_fingerprint(wildcards):
    """What a job's result depends on; a change re-runs the job (Snakemake's params trigger)."""
    return fingerprint(wildcards.experiment)


def resume_key(wildcards):
    """Hash of the fingerprint without train.iterations, checkpoint_every and device. A run folder
    whose .resume-key differs holds a checkpoint of other params: the job discards it and starts
    afresh. Same key: the job resumes (also when only iterations grew: training continues from
    the last checkpoint)."""
    p = json.loads(train_fingerprint(wildcards))
    p.pop("device")
    p["train"] = {k: v for k, v in p["train"].items() if k not in ("iterations", "checkpoint_every", "eval_examples")}
    return licm_config.params_hash(p)


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
        "workflow/scripts/collect.py",
    output:
        record=RUNS + "/{experiment}/experiment.json",
        metrics="results/metrics/{experiment}.json",
        plot="results/plots/{experiment}.csv",
    params:
        seeds=lambda w: json.dumps(SEEDS[w.experiment]),
        profile=PROFILE,
        description=lambda w: PARAMS["experiments"][w.experiment].get("description", ""),
    log: "logs/collect/{experiment}.log"
    shell:
        "python workflow/scripts/collect.py --experiment {wildcards.experiment} --profile {params.profile} "
        "--seeds '{params.seeds}' --runs {RUNS} --record {output.record} --metrics {output.metrics} "
        "--plot {output.plot} > {log} 2>&1"


def plan(name):
    """Everything this workflow decides for one experiment from params.yaml: profile, seeds and the
    params its training jobs read. dvc.yaml's train@<name> depends on this file (content-hashed),
    so DVC re-runs exactly the experiments whose plan changed, whatever else changed in params.yaml
    (other experiments' entries, other profile blocks)."""
    return {"experiment": name, "profile": PROFILE, "seeds": SEEDS[name], "selected": name in SELECTED,
            "train_params": json.loads(fingerprint(name)) if name in SELECTED else None}


rule plan:
    """One job writes every experiment's plan (a file is rewritten only when its content changes)."""
    output: expand("results/plan/{experiment}.json", experiment=EXPERIMENTS)
    params: plans=lambda w: json.dumps({name: plan(name) for name in EXPERIMENTS}, sort_keys=True)
    run:
        plans = json.loads(params.plans)
        for name, path in zip(EXPERIMENTS, output):
            text = json.dumps(plans[name], indent=2, sort_keys=True) + "\n"
            if os.path.exists(path) and open(path).read() == text:
                continue
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)


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
