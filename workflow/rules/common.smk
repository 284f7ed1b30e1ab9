# Shared by workflow/rules/*.smk: the resolved params, the pipeline settings, and the functions that
# compute job parameters from the stage table (licm.stages: each stage's command, inputs and outputs)
# and licm.pipeline. No rules here (Snakemake's lint keeps rules and functions apart); no logic in any
# job's shell command.
import functools
import os
import re
from pathlib import Path

import yaml

from licm import config as licm_config
from licm import interrupts, pipeline
from licm import stages as licm_stages
from licm.paths import result

# ---- Pipeline settings: --config may set only these (they never change results). The jobs read
# params.yaml from disk, so any other override would make Snakemake's view and the jobs' differ.
#   profile=P          the scale (paper | quick | smoke | auto); default: `profile:` of params.yaml
#   seeds_per_job=N    seeds one training job trains together, in one batched network; `all`: every
#                      seed of the experiment. Default: all where the jobs use CUDA, 1 on the CPU.
#   seeds_per_gpu=N    training jobs sharing one GPU at a time (default 2)
#   gpus=N             GPUs on this machine (default: what torch sees)
#   data_rules=false   no rules for data/ (DVC's data stages own it; the train@ stages pass this)
#   restart_if_changed=false   a training job refuses a run folder holding other params or another
#                      commit's unfinished run (the default discards it and trains again: the job
#                      re-runs because its params or code changed). The CPU campaign passes false.
PIPELINE_CONFIG = ("profile", "seeds_per_job", "seeds_per_gpu", "gpus", "data_rules", "restart_if_changed")
_file = yaml.safe_load(Path("params.yaml").read_text())
_changed = sorted(k for k in config if k not in PIPELINE_CONFIG and config[k] != _file.get(k))
if _changed:
    raise licm_config.ParamsError(f"--config may set only {PIPELINE_CONFIG}; given {_changed} "
                                  "(licm jobs read params.yaml: edit it, or use `dvc exp run -S`)")

DATA_RULES = pipeline.setting_flag("data_rules", config.get("data_rules"), default=True)
TRAIN_RESTART = ("--restart-if-changed" if pipeline.setting_flag("restart_if_changed", config.get("restart_if_changed"),
                                                                  default=True) else "--no-restart")
PARAMS = licm_config.load("params.yaml", profile=config.get("profile"))
PROFILE = PARAMS["profile"]
# Every job's `licm` reads the resolved profile from here (cli.py: the default of --profile), so a
# --config profile=... reaches the jobs without a shell variable in the rules.
os.environ.update(LICM_PROFILE=PROFILE)

EXPERIMENTS = list(PARAMS["experiments"])
SEEDS = {name: licm_config.seeds(PARAMS, name) for name in EXPERIMENTS}
# The software of every job (`conda` of the rules, used with --software-deployment-method conda).
LICM_ENV = "../envs/licm.yaml"


def code(rule):
    """The package files the rule's `licm` command runs (licm.pipeline.code_deps: the import graph),
    inputs of the rule so that editing them re-runs it; dvc.yaml's deps come from the same function."""
    return pipeline.code_deps(licm_stages.RULE_COMMAND[rule])


def licm(rule, threads=True, tail="> {log} 2>&1", **fields):
    """The shell command of a rule: `licm` with the rule's arguments from the stage table, where a
    field ({experiment}, {seed}, ...) is the job's wildcard unless `fields` names another source
    (e.g. seeds="params.seeds"); its output goes to the job's log."""
    source = lambda m: fields.get(m[1], f"wildcards.{m[1]}")  # noqa: E731
    command = re.sub(r"\{(\w+)\}", lambda m: f"{{{source(m)}}}", licm_stages.COMMAND[rule])
    prefix = "OMP_NUM_THREADS={threads} " if threads else ""
    return f"{prefix}licm {command} {tail}"


def licm_train(**fields):
    """A training job's command: it resumes or restarts (TRAIN_RESTART) and writes its own log."""
    return licm("train", tail=f"{TRAIN_RESTART} --log {{log}}", **fields)


def stage_inputs(stage):
    """What a generic stage's job waits for: its artifacts' files (licm.stages) and its code."""
    return [*licm_stages.inputs(stage, PARAMS), *code(stage.rule)]


def stage_fingerprint_of(stage):
    """A generic stage's params: raw keys (a data stage) or its resolved plan (licm.pipeline)."""
    return data_fingerprint(stage.name) if stage.reads == "data" else stage_fingerprint(stage.name)


# ---- GPUs and training jobs. A training job takes one `gpu` unit; locally the pool is
# gpus x seeds_per_gpu, so that many jobs train on the GPUs at once (CPU-only: no pool, jobs are
# limited by --cores). On SLURM (workflow/profiles/slurm) gpu=1 becomes --gpus=1 per job.
def _uses_gpu(params):
    dev = params["device"]
    return dev.startswith("cuda") or (dev == "auto" and licm_config.cuda_available())


USE_GPU = _uses_gpu(PARAMS)
SEEDS_PER_GPU = int(config.get("seeds_per_gpu", 2))
if USE_GPU and "gpu" not in workflow.global_resources:
    import torch

    workflow.register_resource("gpu", int(config.get("gpus", torch.cuda.device_count())) * SEEDS_PER_GPU)
SEEDS_PER_JOB = pipeline.seeds_per_job(config.get("seeds_per_job"), USE_GPU)
# (experiment, seeds) of the training jobs that train several seeds together (rules
# train_<experiment>_seeds<a>-<b>); a seed alone in its job is trained by the wildcard rule `train`.
TRAIN_BATCHES = [(name, chunk) for name in EXPERIMENTS for chunk in pipeline.seed_chunks(SEEDS[name], SEEDS_PER_JOB)
                 if len(chunk) > 1]
TRAIN_RESOURCES = {"gpu": 1 if USE_GPU else 0, "mem_mb": 4000, "runtime": 240}
# Threads per training job: on 2 CPU cores one job with 2 threads does ~1.2 s per iteration, two jobs
# with 1 thread each ~3.3 s (measured on this project's 2-core machine), so a job takes both; Snakemake lowers it to --cores.
TRAIN_THREADS = 2


def train_batch_rule(name, seeds):
    return f"train_{name}_seeds{pipeline.seeds_text(seeds).replace(',', '_')}"


def apply_train_settings(rule_name):
    """A profile's `set-resources: train:` (the SLURM profile's GPU, memory, time) for a training rule
    of another name (the batched ones are named per experiment and seeds)."""
    settings = workflow.resource_settings.overwrite_resources.get("train")
    if settings:
        workflow.get_rule(rule_name).resources.update(settings)


def run_metrics(name, seeds):
    """metrics.json of the given seeds' run folders: written last by `licm train`, a run's completion."""
    return [result("run_metrics", experiment=name, seed=s) for s in seeds]


@functools.cache
def domain_of(name):
    """The data domain an experiment trains on (resolving an experiment validates it: done once)."""
    return licm_config.experiment(PARAMS, name)["train"]["domain"]


def prepared_files(name):
    """The prepared data of the experiment's domain (what its training jobs read)."""
    return licm_stages.prepared(PARAMS, domain_of(name))


def run_test_inputs(wildcards):
    """The prepared test digits of the run's domain and the raw MNIST test set (the originals)."""
    return [*licm_stages.prepared(PARAMS, domain_of(wildcards.experiment), ("test",)),
            *licm_stages.mnist_test(PARAMS)]


@functools.cache
def train_fingerprint(name):
    """What a training job's result depends on (licm.pipeline.TRAIN_KEYS of the experiment's resolved
    params, also in results/plan/<exp>.json for DVC); a change re-runs the job (params trigger)."""
    return pipeline.fingerprint(PARAMS, name)


def stage_fingerprint(stage):
    """A stage's resolved params (licm.pipeline.STAGE_KEYS; DVC: results/plan/stages/<stage>.json)."""
    return pipeline.stage_fingerprint(PARAMS, stage)


def data_fingerprint(stage, **fields):
    """The raw params keys a data stage reads (licm.pipeline.DATA_KEYS; DVC: the stage's `params:`)."""
    return pipeline.data_fingerprint(PARAMS, stage, **fields)


# ---- Interrupts. Snakemake runs local jobs in its own process group and, on Ctrl-C, waits for them
# without signalling them; on SIGTERM it waits until they finish. licm.interrupts makes both
# signals stop the running jobs (they exit cleanly and resume from their checkpoints next time).
onstart:
    interrupts.stop_jobs_on_signals(local=workflow.local_exec)
