"""`licm standalone`: the pipeline's jobs in order without Snakemake or DVC, for a bare GPU machine.

Why a module of its own: the GPU machines lent to this project have torch but neither Snakemake nor
DVC, no network, at most 10 minutes per command and 64 MiB that travel each way. This runner calls
the same `licm` commands as the Snakemake rules (`jobs`; tests/test_standalone.py checks the commands,
their order and their declared inputs against Snakemake's own dry run of the same tree):

  setup     data fetch (from a mirror folder), data prepare per domain, figures data, plan, classifier
  training  per chosen experiment, in the order given: train (all its seeds in one process), collect,
            evaluate per seed, collect evaluations. An experiment is evaluated as soon as it is
            trained, so that its evaluation arrays need not survive to a later GPU session.
  tail      omniglot, figures runs, summarize, report: for what has run

Each job runs as `python -m licm.cli ...` in a process of its own, except short ones (records,
one run's evaluation), which go through licm.cli.main in this process.

Resumable: results/standalone.json records per job its key (its command, the params it reads, the
key and content hash of the jobs it reads from) and the hashes of its outputs; a job whose key and
outputs still match is skipped; one whose key changed has its outputs deleted first (as Snakemake
does) and runs again. Training resumes from checkpoints (`licm train`). `--budget` stops cleanly
before a deadline (SIGTERM to the running job, which stops cleanly), keeping `--reserve` seconds of it for the
tail, so that every call ends with a report of what has run. `--pack DIR` writes what comes back from
the machine (`pack_results`); `--restore DIR` unpacks an earlier pack on a fresh machine.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from licm import config, pipeline
from licm.data import SPLITS, atomic_write_bytes, atomic_write_text

STATE = "results/standalone.json"
RUNS, EVAL, CLASSIFIER = "results/runs", "results/eval", "results/classifier"
# The experiment shown on Omniglot (workflow/rules/evaluate.smk: OMNIGLOT_EXPERIMENT).
OMNIGLOT_EXPERIMENT = "main"
# Exit codes besides 0 (every job done), 1 (a job failed) and 2 (bad input, licm.cli).
STOPPED = 3  # the budget ran out before every job was done: call again to continue
# After SIGTERM, a job gets this long to stop on its own before SIGKILL.
GRACE_SECONDS = 20


@dataclass(frozen=True)
class Job:
    """One `licm` command of the pipeline and what the runner needs to know about it."""

    name: str                      # unique: fetch, train/main, evaluate/main/seed0, ...
    argv: tuple[str, ...]          # arguments after `licm --params P --profile X`
    outputs: tuple[str, ...]       # files it writes (all present + recorded hashes = done)
    phase: str                     # setup | training | tail (the budget's phases)
    needs: tuple[str, ...] = ()    # jobs whose outputs are its inputs: it waits until they are done
    reads: tuple[str, ...] = ()    # jobs it reads from when they are done (the tail: "what has run")
    params: str = ""               # hash of the resolved params it reads (licm.pipeline)
    own_log: str | None = None     # the log it writes itself (--log); it prints progress lines meanwhile
    adopt: bool = True             # outputs found without a record count as done (see `decide`)
    folders: tuple[str, ...] = ()  # folders it writes besides its outputs (run folders): in its content hash
    inline: bool = False           # short (a record, one run's evaluation): in this process, no start-up


# ---------------------------------------------------------------- the jobs, in order

def raw_files(params: dict) -> tuple[str, ...]:
    """What `licm data fetch` leaves in data.raw_dir (the Snakefile's RAW_FILES)."""
    from licm.data import MNIST_FILES

    raw = params["data"]["raw_dir"]
    return tuple(f"{raw}/MNIST/raw/{f}" for f in MNIST_FILES) + \
        (f"{raw}/omniglot/{params['data']['omniglot_archive']}.zip",)


def chosen_experiments(params: dict, names: str | None) -> list[str]:
    """`--experiments a,b` (kept in that order) or, by default, every experiment the profile selects."""
    selected = config.selected_experiments(params)
    if names is None or names == "all":
        return selected
    chosen = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    for name in chosen:
        config.experiment(params, name)  # an unknown name: ParamsError listing the choices
        if name not in selected:
            raise config.LicmError(f"--experiments: {name} is not run at profile {params['profile']} "
                                   f"(profiles.{params['profile']}.only_experiments); choose among {selected}")
    return chosen


def experiment_jobs(params: dict, name: str, train_args: tuple[str, ...]) -> list[Job]:
    """Train all seeds of one experiment in one process, record it, evaluate each seed, record that."""
    seeds = config.seeds(params, name)
    domain = config.experiment(params, name)["train"]["domain"]
    folders = {s: f"{RUNS}/{name}/seed{s}" for s in seeds}
    log = f"logs/train/{name}.log"
    train = Job(f"train/{name}",
                ("train", "--experiment", name, "--seeds", pipeline.seeds_text(seeds), "--runs", RUNS,
                 "--log", log, "--restart-if-changed", *train_args),
                tuple(f"{f}/metrics.json" for f in folders.values()), "training",
                needs=(f"prepare/{domain}",), params=config.params_hash(pipeline.train_params(params, name)),
                own_log=log, adopt=False, folders=tuple(folders.values()))
    evaluations = [Job(f"evaluate/{name}/seed{s}",
                       ("evaluate", "--run", f, "--classifier", f"{CLASSIFIER}/classifier.pt",
                        "--out", f"{EVAL}/{name}/seed{s}.json"),
                       (f"{EVAL}/{name}/seed{s}.json",), "training", needs=(train.name, "classifier"),
                       params=pipeline.stage_fingerprint(params, "evaluate"), inline=True)
                   for s, f in folders.items()]
    return [train, collect_job(name, "training", (train.name,)), *evaluations,
            collect_evaluations_job(name, "training", tuple(e.name for e in evaluations))]


def collect_job(name: str, phase: str, needs: tuple[str, ...] = ()) -> Job:
    return Job(f"collect/{name}",
               ("collect", "--experiment", name, "--runs", RUNS, "--metrics", f"results/metrics/{name}.json",
                "--plot", f"results/plots/{name}.csv"),
               (f"{RUNS}/{name}/experiment.json", f"results/metrics/{name}.json", f"results/plots/{name}.csv"),
               phase, needs=needs, inline=True)


def collect_evaluations_job(name: str, phase: str, needs: tuple[str, ...] = ()) -> Job:
    return Job(f"collect_evaluations/{name}", ("collect", "--experiment", name, "--evaluations", "--eval-dir", EVAL),
               (f"{EVAL}/{name}/experiment.json",), phase, needs=needs, inline=True)


def jobs(params: dict, experiments: list[str], device: str | None = None) -> list[Job]:
    """Every job for `experiments` (selected at the profile) in an order the pipeline's DAG allows.

    The commands and outputs are those of the Snakemake rules (workflow/rules/*.smk); experiments the
    profile does not select get their records (collect) as there. Selected experiments left out of
    `experiments` get no job: the figures and the summary treat them as not run yet.
    """
    from licm import figures

    prep = params["data"]["prepared_dir"]
    domains = params["data"]["prepare"]
    out = [Job("fetch", ("data", "fetch"), raw_files(params), "setup",
               params=pipeline.data_fingerprint(params, "fetch"))]
    out += [Job(f"prepare/{d}", ("data", "prepare", "--domain", d),
                tuple(f"{prep}/{d}/{s}.npz" for s in SPLITS) + (f"{prep}/{d}/mechanisms.json",), "setup",
                needs=("fetch",), params=pipeline.data_fingerprint(params, "prepare", domain=d)) for d in domains]
    prepared = tuple(f"prepare/{d}" for d in domains)
    out.append(Job("figures_data", ("figures", "data", "--out", "results/figures"),
                   tuple(f"results/figures/{i}.png" for i in figures.DATA_FIGURES), "setup", needs=prepared,
                   params=pipeline.data_fingerprint(params, "figures_data")))
    out.append(Job("plan", ("plan", "--out", "results/plan"),
                   tuple(f"results/plan/{rel}" for rel in pipeline.plans(params)), "setup",
                   params=config.params_hash(params), inline=True))
    out.append(Job("classifier", ("classifier", "--out", CLASSIFIER),
                   (f"{CLASSIFIER}/classifier.pt", f"{CLASSIFIER}/metrics.json"), "setup", needs=("fetch",),
                   params=pipeline.stage_fingerprint(params, "classifier")))
    selected = config.selected_experiments(params)
    for name in params["experiments"]:
        if name not in selected:  # records saying "not selected", as the Snakemake rules write them
            out += [collect_job(name, "setup"), collect_evaluations_job(name, "setup")]
    train_args = ("--device", device) if device else ()
    for name in experiments:
        out += experiment_jobs(params, name, train_args)
    records = tuple(j.name for j in out if j.name.startswith(("collect/", "collect_evaluations/")))
    runs = tuple(j.name for j in out if j.name.startswith("collect/"))
    omniglot_reads = tuple(n for n in (f"collect/{OMNIGLOT_EXPERIMENT}",) if n in runs)
    out += [
        Job("omniglot", ("omniglot", "--experiment", OMNIGLOT_EXPERIMENT, "--runs", RUNS, "--figures",
                         "results/figures", "--out", "results/omniglot"),
            ("results/figures/licm-fig7.png", "results/figures/licm-fig8.png", "results/omniglot/restoration.json"),
            "tail", needs=("fetch",), reads=omniglot_reads, params=pipeline.stage_fingerprint(params, "omniglot")),
        Job("figures_runs", ("figures", "runs", "--out", "results/figures"),
            tuple(f"results/figures/{i}.png" for i in figures.RUN_FIGURE_IDS), "tail", needs=prepared,
            reads=records, params=pipeline.stage_fingerprint(params, "figures_runs")),
        Job("summarize", ("summarize", "--out", "results/summary.json"), ("results/summary.json",), "tail",
            needs=("classifier", "omniglot"), reads=records, params=pipeline.stage_fingerprint(params, "summarize")),
        Job("report", ("report", "--out", "results/report"), ("results/report/index.html",), "tail",
            needs=("summarize", "figures_data", "figures_runs", "omniglot", "classifier"), reads=runs,
            params=pipeline.stage_fingerprint(params, "report")),
    ]
    return out


# ---------------------------------------------------------------- state: what ran, with which key

def file_hash(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class State:
    """results/standalone.json: per job its key, output hashes, status and wall time; per call a record."""

    def __init__(self, root: Path):
        self.path = root / STATE
        self.root = root
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"jobs": {}, "sessions": []}

    def record(self, name: str) -> dict | None:
        return self.data["jobs"].get(name)

    def done_key(self, name: str) -> str | None:
        rec = self.record(name)
        return rec["key"] if rec and rec["status"] == "done" else None

    def outputs(self, job: Job) -> dict[str, str] | None:
        """Hashes of the job's outputs, or None when one is missing."""
        paths = [self.root / o for o in job.outputs]
        return {o: file_hash(p) for o, p in zip(job.outputs, paths)} if all(p.is_file() for p in paths) else None

    def content(self, job: Job) -> str:
        """Hash of everything the job wrote (outputs and the files of its folders), taken when it finishes:
        the jobs that read from it run again when it changed."""
        files = [self.root / o for o in job.outputs]
        files += sorted(p for f in job.folders for p in (self.root / f).rglob("*") if p.is_file())
        return config.params_hash({str(p.relative_to(self.root)): file_hash(p) for p in files if p.is_file()})

    def key(self, job: Job) -> str:
        """Its command, the params it reads, and the key and content of each job it reads from (as
        recorded when they finished): a job runs again when its params or what it reads changed."""
        upstream = {d: [self.done_key(d), (self.record(d) or {}).get("content")] for d in (*job.needs, *job.reads)}
        return config.params_hash({"argv": list(job.argv), "params": job.params, "upstream": upstream})

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def decide(job: Job, state: State, key: str) -> str:
    """run | done | adopt | stale (outputs made with another key: delete them, then run).

    Outputs found without a record (a tree built by Snakemake, or data put in place) are adopted as
    done, as Snakemake takes existing outputs; except training's, which `licm train` checks itself
    (a run folder may hold fewer iterations, or other params, than asked)."""
    rec, found = state.record(job.name), state.outputs(job)
    if rec is None:
        return "adopt" if found is not None and job.adopt else "run"
    if rec["status"] == "done" and rec["key"] != key:
        return "stale"
    if rec["status"] == "done" and found is not None and found == rec.get("outputs"):
        return "done"
    return "run"


# ---------------------------------------------------------------- running one job

def stop(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to the job's process group (a licm command stops cleanly on it: licm.interrupts), SIGKILL
    after `grace` seconds. Not SIGINT: a shell that starts the runner in the background ignores SIGINT
    for it, and so for its jobs."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_inline(argv: list[str], cwd: Path, log: Path) -> tuple[str, int]:
    """A short command through licm.cli.main in this process (as `licm ARGV`, output to log): the same
    code as in a process of its own, without a Python start, imports and CUDA set-up per job (seconds
    each; an experiment of 10 seeds has 10 evaluations and 2 records)."""
    import contextlib
    import traceback

    from licm import cli, interrupts

    with open(log, "a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
            contextlib.chdir(cwd):
        try:
            rc = cli.main(argv)
        except Exception:  # noqa: BLE001 (a bug in the command: its traceback goes to its log)
            traceback.print_exc()
            rc = 1
    if rc - 128 in (signal.SIGINT, signal.SIGTERM):  # cli.main caught Ctrl-C or SIGTERM: stop here too
        raise interrupts.Interrupted(rc - 128)
    return ("done" if rc == 0 else "failed"), rc


def run_command(cmd: list[str], cwd: Path, log: Path | None, deadline: float | None,
                grace: float = GRACE_SECONDS) -> tuple[str, int | None]:
    """Run cmd in its own process group until it ends or the deadline (time.monotonic) passes.

    Returns (done | failed | interrupted, exit code). The group is not a new session, so a command
    killed from outside (the device's time limit) takes the job with it. log=None: the job's output
    goes to this process's terminal."""
    out = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                process_group=0)
        try:
            rc = proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop(proc, grace)
            return "interrupted", proc.returncode
        except BaseException:  # the runner was signalled: it has GRACE_S (licm.interrupts) to stop
            stop(proc, min(grace, 3))
            raise
        return ("done" if rc == 0 else "failed"), rc
    finally:
        if out is not None:
            out.close()


# ---------------------------------------------------------------- the runner

def environment(root: Path) -> dict:
    """Where this call runs: device, versions, the commit (LICM_GIT_COMMIT where the tree has no .git)
    and a hash of the package sources and params, so a result can be matched to its code."""
    import torch

    sources = sorted(p for p in (root / "src" / "licm").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for p in [*sources, root / "params.yaml"]:
        if p.is_file():
            digest.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    cuda = torch.cuda.is_available()
    return {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None, "commit": config.git_commit(),
            "source_sha256": digest.hexdigest()[:16]}


def execute(job: Job, state: State, key: str, verdict: str, options: list[str], deadline: float | None,
            grace: float, say) -> dict:
    """Run one job that is due; record and return its outcome (status done | failed | interrupted)."""
    root = state.root
    if verdict == "stale":  # made from other params or inputs: delete them first, as Snakemake does
        for o in job.outputs:
            (root / o).unlink(missing_ok=True)
    log = root / (job.own_log or f"logs/standalone/{job.name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"{job.name}: licm {' '.join(job.argv)}")
    started, start_time = time.monotonic(), config.now()
    rec = {"key": key, "started": start_time}
    try:
        if job.inline:
            status, rc = run_inline([*options, *job.argv], root, log)
        else:
            status, rc = run_command([sys.executable, "-m", "licm.cli", *options, *job.argv], root,
                                     None if job.own_log else log, deadline, grace)
    except KeyboardInterrupt:  # the runner got SIGINT or SIGTERM; the job was stopped
        rec.update(status="interrupted", rc=None, seconds=round(time.monotonic() - started, 2), finished=config.now())
        state.data["jobs"][job.name] = rec
        raise
    rec.update(status=status, rc=rc, seconds=round(time.monotonic() - started, 2), finished=config.now())
    if status == "done":
        rec.update(outputs=state.outputs(job), content=state.content(job))
        if rec["outputs"] is None:
            rec.update(status="failed", error="exited 0 but did not write all its outputs")
    state.data["jobs"][job.name] = rec
    state.save()
    say(f"{job.name}: {rec['status']} in {rec['seconds']:.1f}s" + (f" (exit {rc}; log: {log})" if rec["status"] ==
                                                                     "failed" else ""))
    if rec["status"] == "failed" and log.is_file():
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr, flush=True)
    return rec


def run(params: dict, params_path: str, root: Path, experiments: list[str], budget: float | None = None,
        reserve: float = 120.0, device: str | None = None, grace: float = GRACE_SECONDS) -> int:
    """Run (or skip, when done) every job in order; return 0, 1 (a job failed) or STOPPED (budget).

    With a budget, the setup and training phases end `reserve` seconds before it (a training job then
    gets SIGTERM, and resumes from its checkpoint next time), the tail at the budget."""
    t0 = time.monotonic()
    say = lambda text: print(f"licm standalone [{time.monotonic() - t0:6.0f}s] {text}", flush=True)  # noqa: E731
    end = None if budget is None else t0 + budget
    deadlines = {"setup": None if end is None else end - reserve, "training": None if end is None else end - reserve,
                 "tail": end}
    state = State(root)
    session = {"started": config.now(), "budget": budget, "reserve": reserve, "experiments": experiments,
               "profile": params["profile"], **environment(root), "jobs": []}
    state.data["sessions"].append(session)
    options = ["--params", params_path, "--profile", params["profile"]]   # before the command, for every job
    todo = jobs(params, experiments, device)
    say(f"profile {params['profile']}, experiments {', '.join(experiments) or '(none)'}; {len(todo)} jobs"
        + (f"; budget {budget:.0f}s ({reserve:.0f}s kept for the tail)" if budget else ""))
    failed, stopped = [], set()       # stopped: phases whose time is spent
    try:
        for job in todo:
            if job.phase in stopped:
                continue
            blocked = [d for d in job.needs if state.done_key(d) is None]
            if blocked:
                say(f"{job.name}: not run (waits for {', '.join(blocked)})")
                continue
            key = state.key(job)
            verdict = decide(job, state, key)
            if verdict == "adopt":
                state.data["jobs"][job.name] = {"key": key, "status": "done", "outputs": state.outputs(job),
                                                "content": state.content(job), "seconds": None, "finished": config.now(),
                                                "adopted": True}
            if verdict in ("done", "adopt"):
                continue
            deadline = deadlines[job.phase]
            if deadline is not None and deadline - time.monotonic() <= 1:
                say(f"{job.name}: not started, the budget's {job.phase} time is spent")
                stopped.update(("setup", "training") if job.phase != "tail" else ("setup", "training", "tail"))
                continue
            rec = execute(job, state, key, verdict, options, deadline, grace, say)
            session["jobs"].append({"job": job.name, "status": rec["status"], "seconds": rec["seconds"]})
            if rec["status"] == "failed":
                failed.append(job.name)
            elif rec["status"] == "interrupted":
                stopped.update(("setup", "training") if job.phase != "tail" else ("setup", "training", "tail"))
    except KeyboardInterrupt as exc:  # licm.interrupts: SIGINT or SIGTERM; the job in flight was stopped
        session["stopped"] = f"signal {getattr(exc, 'name', 'SIGINT')}"
        raise
    finally:
        session.update(seconds=round(time.monotonic() - t0, 1), finished=config.now(), failed=failed)
        session.setdefault("stopped", "budget" if stopped else None)
        state.save()
    pending = [j.name for j in todo if decide(j, state, state.key(j)) != "done"]
    say(("finished" if not pending else f"{len(pending)} job(s) not done: {', '.join(pending[:8])}"
         + (" ..." if len(pending) > 8 else "")) + f"; state: {state.path}")
    return 1 if failed else (STOPPED if pending else 0)


# ---------------------------------------------------------------- what comes back from the machine

# Limits of the device tool on what comes back (README of the device): files, bytes per file, bytes in all.
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES = 8, 16 * 2**20, 64 * 2**20
PART_BYTES = MAX_FILE_BYTES - 2**20


def is_heavy(rel: Path) -> bool:
    """Large files, kept out of results.tar.gz: weights (*.pt) and whatever a run folder holds besides its
    JSON files (checkpoint, history, evaluation arrays: megabytes per run at the paper's scale)."""
    parts = rel.parts
    in_run = len(parts) >= 5 and parts[:2] == ("results", "runs") and parts[3].startswith("seed")
    return rel.suffix == ".pt" or (in_run and not (len(parts) == 5 and rel.suffix == ".json"))


def _files(root: Path, folder: Path) -> list[tuple[str, Path]]:
    return [(str(p.relative_to(root)), p) for p in sorted(folder.rglob("*")) if p.is_file()]


def _small_results(root: Path) -> list[tuple[str, Path]]:
    """results/ less the heavy files, logs/, benchmarks/results/*.json, params.yaml."""
    found = [(rel, p) for folder in ("results", "logs") for rel, p in _files(root, root / folder)
             if not is_heavy(Path(rel))]
    found += [(str(p.relative_to(root)), p) for p in sorted((root / "benchmarks" / "results").glob("*.json"))]
    return found + [("params.yaml", root / "params.yaml")]


def _state_groups(root: Path, params: dict, experiments: list[str], scratch: Path) -> list[dict]:
    """What a later call needs of the heavy files, in priority order; each group all or nothing.

    1. the classifier (later evaluations must use the same one);
    2. per finished experiment (recorded by collect): its typical seed (figures.RunSet.shown: the seed
       the figures and Omniglot read), its checkpoint without optimizer state (`publish.export_weights`);
       and what `licm evaluate` reads of seeds not evaluated yet;
    3. per unfinished experiment, its run folders whole (checkpoints with optimizer state), to resume.
    """
    from licm import figures, rundir
    from licm.publish import export_weights

    groups = [{"what": "classifier", "files": [(rel, p) for rel, p in _files(root, root / CLASSIFIER)
                                                if is_heavy(Path(rel))],
               "if_left_out": "a later call trains the classifier again"}]
    unfinished = []
    for name in experiments:
        runs = rundir.experiment_runs(root / RUNS, name)
        if not runs or not all(r.is_finished() for r in runs.values()):
            unfinished.append(name)
            continue
        seed, folder, _ = figures.load_runset(root / RUNS, name, params).shown()
        files = []
        for s, r in runs.items():
            if s == seed or not (root / EVAL / name / f"seed{s}.json").is_file():
                files += [(rel, p) for rel, p in _files(root, r.path) if is_heavy(Path(rel)) and p.name != "checkpoint.pt"]
        if rundir.RunDir(folder).has_checkpoint():
            files.append((str((folder / "checkpoint.pt").relative_to(root)),
                          export_weights(folder, scratch / name / f"seed{seed}")))
        groups.append({"what": f"{name}: typical seed {seed}", "files": files,
                       "if_left_out": f"a later call draws {name}'s figures as placeholders"})
    for name in unfinished:
        files = _files(root, root / RUNS / name) if (root / RUNS / name).is_dir() else []
        if files:
            groups.append({"what": f"{name}: unfinished runs", "files": files,
                           "if_left_out": f"a later call trains {name} from the start"})
    return groups


def packed_size(path: Path) -> int:
    """About what a file adds to a tar.gz (deflate at level 1, plus a tar header): history and
    evaluation arrays shrink a lot, weights hardly."""
    return len(zlib.compress(path.read_bytes(), 1)) + 512


def _write_archive(files: list[tuple[str, Path]], out_dir: Path, name: str) -> list[str]:
    """A tar.gz of the files; split into name.00, name.01, ... when over PART_BYTES. Returns the parts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for arcname, path in files:
            tar.add(path, arcname=arcname, recursive=False)
    blob = buf.getvalue()
    chunks = [blob[i:i + PART_BYTES] for i in range(0, len(blob), PART_BYTES)] or [b""]
    names = [name] if len(chunks) == 1 else [f"{name}.{i:02d}" for i in range(len(chunks))]
    for part, chunk in zip(names, chunks):
        atomic_write_bytes(out_dir / part, chunk)
    return names


def pack_results(root: Path, params: dict, experiments: list[str], out_dir: Path,
                 state_budget: int = 28 * 2**20) -> dict:
    """Write results.tar.gz (small results: what is published and looked at), state.tar.gz (what a later
    call needs, about state_budget bytes compressed at most) and pack.json (contents, sizes, what was
    left out and why) into out_dir, within the device's limits on what comes back."""
    out_dir.mkdir(parents=True, exist_ok=True)
    small = _small_results(root)
    manifest: dict = {"created": config.now(), "profile": params["profile"], "experiments": experiments,
                      "archives": {}, "left_out": []}
    manifest["archives"]["results.tar.gz"] = {"parts": _write_archive(small, out_dir, "results.tar.gz"),
                                              "files": len(small)}
    with tempfile.TemporaryDirectory() as scratch:
        chosen, used = [], 0
        for group in _state_groups(root, params, experiments, Path(scratch)):
            size = sum(packed_size(p) for _, p in group["files"])
            if used + size <= state_budget:
                chosen += group["files"]
                used += size
            else:
                manifest["left_out"].append({"what": group["what"], "bytes": size, "why": "over the state budget",
                                             "consequence": group["if_left_out"]})
        manifest["archives"]["state.tar.gz"] = {"parts": _write_archive(chosen, out_dir, "state.tar.gz"),
                                                "files": len(chosen), "budget": state_budget}
    manifest["left_out"] += [{"what": "other seeds' checkpoints, history and (once evaluated) evaluation arrays",
                              "why": "no later stage reads them", "consequence": "none"}]
    sizes = {p: (out_dir / p).stat().st_size for a in manifest["archives"].values() for p in a["parts"]}
    manifest["bytes"] = sizes
    atomic_write_text(out_dir / "pack.json", json.dumps(manifest, indent=1) + "\n")
    files = [*sizes, "pack.json"]
    total = sum(sizes.values()) + (out_dir / "pack.json").stat().st_size
    if len(files) > MAX_FILES or total > MAX_TOTAL_BYTES:
        raise config.LicmError(f"{out_dir}: {len(files)} files, {total / 2**20:.1f} MiB: over the device's limits "
                               f"({MAX_FILES} files, {MAX_TOTAL_BYTES // 2**20} MiB); lower --state-budget")
    return manifest


def restore(pack_dir: Path, root: Path) -> bool:
    """Unpack a pack (results and state archives) into root, unless root already has results of its own
    (a warm machine keeps its files between calls, and they are newer than any pack)."""
    if (root / STATE).is_file():
        print(f"licm standalone: --restore {pack_dir}: skipped, {root / STATE} exists (this tree's results are "
              "newer)", flush=True)
        return False
    manifest_path = pack_dir / "pack.json"
    if not pack_dir.is_dir():
        raise config.LicmError(f"{pack_dir}: no such folder; --restore takes a folder written by --pack "
                               "(results.tar.gz, state.tar.gz, pack.json)")
    if not manifest_path.is_file():  # a first call: nothing packed yet
        print(f"licm standalone: --restore {pack_dir}: no pack.json there, nothing to restore", flush=True)
        return False
    manifest = json.loads(manifest_path.read_text())
    for archive in manifest["archives"].values():
        parts = [pack_dir / p for p in archive["parts"]]
        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            raise config.LicmError(f"{', '.join(missing)}: missing from the pack; copy every file the device "
                                   "returned into the folder")
        with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
            tar.extractall(root, filter="data")
    print(f"licm standalone: restored {pack_dir} ({manifest['created']}, experiments "
          f"{', '.join(manifest['experiments'])}) into {root}", flush=True)
    return True


# ---------------------------------------------------------------- CLI

def _cmd_standalone(args) -> int:
    root = Path.cwd()
    params = config.load(args.params, profile=args.profile)
    experiments = chosen_experiments(params, args.experiments)
    if args.restore:
        restore(Path(args.restore), root)
    if args.dry_run:
        state = State(root)
        for job in jobs(params, experiments, args.device):
            print(f"{job.phase:8s} {decide(job, state, state.key(job)):5s} {job.name}: licm {' '.join(job.argv)}")
        return 0
    code = run(params, args.params, root, experiments, args.budget, args.reserve, args.device)
    if args.pack:
        manifest = pack_results(root, params, experiments, Path(args.pack), int(args.state_budget * 2**20))
        print(f"licm standalone: packed into {args.pack}: " + ", ".join(
            f"{p} {b / 2**20:.2f} MiB" for p, b in manifest["bytes"].items())
            + "".join(f"; left out {x['what']} ({x['why']})" for x in manifest["left_out"][:-1]), flush=True)
    return code


def register(sub) -> None:
    p = sub.add_parser("standalone", help="run the pipeline's jobs in order without Snakemake or DVC (GPU machines)",
                       description="Run the jobs of the Snakemake rules in order (setup, then per experiment: train "
                                   "all seeds, collect, evaluate; then omniglot, figures, summary, report), skipping "
                                   "finished ones (results/standalone.json), within a time budget.")
    p.add_argument("--experiments", default=None,
                   help="experiments to train, in this order, e.g. main,no_aii (default: all the profile selects)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds: start nothing after, and interrupt what runs at, this deadline (default: none)")
    p.add_argument("--reserve", type=float, default=120.0,
                   help="seconds of the budget kept for omniglot, figures, summary and report (default: %(default)s)")
    p.add_argument("--device", default=None, help="passed to `licm train --device` (default: params `device:`)")
    p.add_argument("--pack", default=None, help="folder for what comes back: results.tar.gz, state.tar.gz, pack.json")
    p.add_argument("--state-budget", type=float, default=28.0,
                   help="MiB (compressed) of run files kept in state.tar.gz (default: %(default)s)")
    p.add_argument("--restore", default=None, help="a folder written by --pack: unpacked first on a fresh tree")
    p.add_argument("--dry-run", action="store_true", help="list the jobs and whether each would run")
    p.set_defaults(func=_cmd_standalone)


__all__ = ["Job", "jobs", "run", "run_command", "pack_results", "restore", "State", "STOPPED"]
