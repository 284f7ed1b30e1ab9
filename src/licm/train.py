"""`licm train`: train, resume, or recognise as finished the runs of one experiment.

Several seeds train together in one process and one batched network (licm.models: groups = seeds
x experts), each seed with its own initialisation, minibatches, winners and Adam state, and each
written to its own run folder (licm.rundir.RunDir) exactly as if it had trained alone; a seed
resumes alone or in any batch. The iteration itself is licm.step.Step; `run_batch` below is
the loop: sample-and-step, pull the history, evaluate, checkpoint.

Choices where the papers are silent are parameters (params.yaml `train:` documents each one).
Initial weights: torch's default initialisation under torch.manual_seed(seed). Minibatches: uniform
with replacement from a counter-based sampler keyed by the seed (licm.step.Sampler). Approximate
identity initialisation (LICM App. B): licm.step.approximate_identity.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from licm import config, data, paths
from licm.config import LicmError
from licm.rundir import RunDir
from licm.state import RunState
from licm.step import (NEVER, Sampler, Step, StepConfig, Stepper, TrainData, approximate_identity, compete,
                       expert_gradient, make_loss, step_mode)

# What `implementation: auto` picks per device type: (layout, channels_last), from
# benchmarks/bench_committee.py (benchmarks/results/engine-cpu-layouts.json, benchmarks/README.md).
# CPU (2 cores, torch 2.14): the loop over experts with channels_last convolutions, the fastest eager
# layout (706/1228/1911 ms per iteration at N' = 6/10/16 vs 842/1249/2002 grouped). CUDA: grouped
# convolutions, one launch per layer for the whole batch of seeds x experts (benchmarks/README.md).
AUTO_IMPLEMENTATION = {"cpu": ("loop", True), "cuda": ("vectorized", False)}


def resolve_implementation(choice: str, device: torch.device) -> tuple[str, bool]:
    """train.implementation -> (layout, channels_last): auto follows AUTO_IMPLEMENTATION."""
    device = torch.device(device)
    if choice == "auto":
        return AUTO_IMPLEMENTATION.get(device.type, ("loop", False))
    return choice, AUTO_IMPLEMENTATION.get(device.type, ("loop", False))[1] and choice == "loop"


def set_numerics(t: dict, device: torch.device) -> None:
    """train.deterministic and train.precision for this process.

    Without deterministic kernels a GPU run can differ from a re-run of itself (atomic adds, cuDNN
    autotuning), and the competition amplifies such round-off into a different winner; with them,
    re-runs on the same GPU and software repeat exactly, at some cost in speed. CPU runs are
    deterministic either way. tf32 applies on CUDA only; bf16 (autocast) is the step's (`precision`)."""
    if t["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if t["deterministic"] != torch.are_deterministic_algorithms_enabled():   # (the call imports torch._dynamo: 2 s)
        torch.use_deterministic_algorithms(t["deterministic"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not t["deterministic"]
        torch.backends.cudnn.deterministic = t["deterministic"]
        torch.backends.cuda.matmul.allow_tf32 = t["precision"] == "tf32"
        torch.backends.cudnn.allow_tf32 = t["precision"] == "tf32"


# ---------------------------------------------------------------- progress on the terminal

class Progress:
    """Messages and progress lines (iteration, rate, ETA). Without a log file everything goes to
    stderr; with one (`licm train --log`, what the pipeline does), the file gets everything and the
    terminal a progress line at least every `every` seconds, so `make report` shows each training
    job's rate and ETA while Snakemake runs it."""

    def __init__(self, label: str, log: str | None = None, every: float = 20.0, quiet: bool = False):
        self.label, self.every, self.quiet = label, every, quiet
        if log:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(log, "a", buffering=1) if log else None
        self.phase, self.total, self.t0, self.done0, self.last = "", 0, 0.0, 0, 0.0

    def message(self, text: str, terminal: bool = True) -> None:
        line = f"licm train {self.label}: {text}"
        if self.file:
            self.file.write(line + "\n")
        if terminal or not self.file:
            print(line, file=sys.stderr, flush=True)

    def start(self, phase: str, total: int, done: int = 0) -> None:
        self.phase, self.total, self.done0 = phase, total, done
        self.t0 = self.last = time.monotonic()
        if not self.quiet:
            self.message(f"{phase} {done}/{total}")

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.quiet or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        rate = (done - self.done0) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        self.message(f"{self.phase} {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%), "
                     f"{rate:.2f} it/s, ETA {_duration(eta)}")

    def close(self) -> None:
        if self.file:
            self.file.close()


def _duration(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ---------------------------------------------------------------- data

@dataclass
class EvalDigits:
    """The test digits evaluated during training: the first train.eval_examples transformed ones."""

    images: torch.Tensor        # [n,H,W] on the device
    rows: np.ndarray            # rows of test.npz
    mechanism: np.ndarray
    label: np.ndarray


def eval_subset(test: dict, examples: int | None) -> np.ndarray:
    """Rows of test.npz evaluated during training: the first `examples` transformed test digits."""
    rows = np.flatnonzero(test["mechanism"] >= 0)
    return rows if examples is None else rows[:examples]


def load_data(params: dict, device, dtype) -> tuple[TrainData, list[str], EvalDigits]:
    t, prepared = params["train"], params["data"]["prepared_dir"]
    if t["domain"] not in params["domains"]:
        raise LicmError(f"train.domain: expected one of {sorted(params['domains'])}, given {t['domain']!r}")
    names = data.mechanism_names(prepared, t["domain"])
    tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device, dtype)  # noqa: E731
    tr = data.load_split(prepared, t["domain"], "train_transformed")
    ca = data.load_split(prepared, t["domain"], "train_canonical")
    canonical = ca["images"] if t["canonical_examples"] is None else ca["images"][: t["canonical_examples"]]
    train = TrainData(tensor(tr["images"]), torch.from_numpy(tr["mechanism"]).to(device), tensor(canonical))
    test = data.load_split(prepared, t["domain"], "test")
    rows = eval_subset(test, t["eval_examples"])
    ev = EvalDigits(tensor(test["images"][rows]), rows, test["mechanism"][rows], test["label"][rows])
    return train, names, ev


# ---------------------------------------------------------------- what a loop iteration calls

@torch.no_grad()
def evaluate(st: RunState, ev: EvalDigits, iteration: int, dirs: list[RunDir], batch_size: int = 256) -> None:
    """Each evaluated digit's winner and that expert's output, per seed, appended to its run folder.
    Experts and D in eval mode (BatchNorm running statistics): a digit's winner does not depend on
    its batch; no random numbers are drawn, so evaluating never changes training."""
    S, (n, H, W) = len(st.seeds), ev.images.shape
    winners, outputs = [], []
    for a in range(0, n, batch_size):
        x = ev.images[a:a + batch_size].unsqueeze(1).expand(-1, S, H, W)
        out, _, win = compete(st.committee, st.discs, x, "running")
        best = out.gather(2, win[:, :, None, None, None].expand(-1, -1, 1, H, W)).squeeze(2)   # [b,S,H,W]
        winners.append(win.cpu())
        outputs.append(torch.round(torch.nan_to_num(best.float()).clamp(0, 1) * 255).to(torch.uint8).cpu())
    win, out = torch.cat(winners).numpy(), torch.cat(outputs).numpy()
    for i, d in enumerate(dirs):
        d.append_evaluation(iteration, win[:, i], out[:, i])


class HostHistory:
    """The history on the host: rows pulled from the device ring (licm.step.History) every few
    iterations, kept per seed at every log_every-th iteration, saved in checkpoints and history.csv."""

    def __init__(self, seeds: int, log_every: int, names: list[str], experts: int, pulled: int = 0):
        self.log_every, self.names, self.experts, self.pulled = log_every, names, experts, pulled
        self.chunks: list[list[dict]] = [[] for _ in range(seeds)]

    def load(self, i: int, saved: dict) -> None:
        if len(saved["iteration"]):
            self.chunks[i] = [{k: torch.as_tensor(v) for k, v in saved.items()}]

    def pull(self, st: RunState, upto: int, last_checkpoint: int, dirs: list[RunDir]) -> None:
        """Copy iterations pulled+1..upto from the device (one sync) and stop on a non-finite loss."""
        if upto <= self.pulled:
            return
        rows = st.history.rows(self.pulled + 1, upto)
        bad = st.first_bad.cpu().tolist()
        for i, first in enumerate(bad):
            if first < NEVER:
                raise LicmError(f"seed {st.seeds[i]}: non-finite loss (NaN/Inf) at iteration {first}; last good "
                                f"checkpoint: {dirs[i].checkpoint_file} (iteration {last_checkpoint}); nothing was "
                                "overwritten")
        keep = rows["iteration"] % self.log_every == 0
        for i, chunks in enumerate(self.chunks):
            if bool(keep.any()):
                chunks.append({"iteration": rows["iteration"][keep], "score_sum": rows["score_sum"][keep, i],
                               "count": rows["count"][keep, i], "wins": rows["wins"][keep, i]})
        self.pulled = upto

    def tensors(self, i: int) -> dict[str, torch.Tensor]:
        chunks, M, N = self.chunks[i], len(self.names), self.experts
        if not chunks:
            return {"iteration": torch.zeros(0, dtype=torch.long), "score_sum": torch.zeros(0, M, N),
                    "count": torch.zeros(0, M), "wins": torch.zeros(0, M, N, dtype=torch.long)}
        joined = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
        self.chunks[i] = [joined]
        return joined

    def frame(self, i: int):
        """history.csv: one row per logged iteration, expert and mechanism (mean score, wins)."""
        import pandas as pd

        h = self.tensors(i)
        it, count = h["iteration"].numpy(), h["count"].double().numpy()
        score_sum, wins = h["score_sum"].double().numpy(), h["wins"].numpy()
        L, M, N = score_sum.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count[:, :, None] > 0, score_sum / count[:, :, None], np.nan)
        g_it, g_m, g_e = np.meshgrid(np.arange(L), np.arange(M), np.arange(N), indexing="ij")
        return pd.DataFrame({"iteration": it[g_it.ravel()], "expert": g_e.ravel(),
                             "mechanism": np.asarray(self.names, dtype=object)[g_m.ravel()],
                             "score_mean": mean.ravel(), "wins": wins.ravel().astype(np.int64)})


def save(st: RunState, hist: HostHistory, dirs: list[RunDir]) -> None:
    for i, d in enumerate(dirs):
        d.save_checkpoint({**st.checkpoint(i), "history": hist.tensors(i)})
        d.write_history(hist.frame(i))


def finish(st: RunState, dirs: list[RunDir], names: list[str], ev: EvalDigits, T: int, layout: str) -> list[dict]:
    """metrics.json of every seed (written last: it marks the run finished), from its last evaluation."""
    from licm.specialization import matrix_from_winners, specialization

    out = []
    for i, d in enumerate(dirs):
        rec = d.evaluation(keys=("iterations", "winner"))
        matrix = matrix_from_winners(rec["winner"][-1], ev.mechanism, len(names), st.committee.n_experts)
        metrics = {"iterations": T, "mechanisms": names, "win_matrix": matrix.tolist(),
                   "top_expert": matrix.argmax(axis=1).tolist(), "top_share": matrix.max(axis=1).tolist(),
                   **specialization(matrix), "test_examples": int(len(ev.rows)),
                   "eval_iterations": rec["iterations"].tolist(),
                   "aii_iterations": st.aii_steps[i].tolist(), "implementation": layout}
        meta = d.meta() or {}
        meta["finished"] = config.now()
        d.write_json("meta.json", meta)
        d.write_json("metrics.json", metrics)
        out.append(metrics)
    return out


# ---------------------------------------------------------------- the loop

def run_batch(params: dict, seeds: list[int], dirs: list[RunDir], device: torch.device, fresh: bool,
              progress: Progress, dtype=torch.float32) -> list[dict]:
    """Train seeds `seeds` (all fresh, or all resuming from checkpoints at the same iteration) to
    train.iterations; return their metrics."""
    t = params["train"]
    T, checkpoint_every, eval_every = t["iterations"], t["checkpoint_every"], t["eval_every"]
    set_numerics(t, device)
    train_data, names, ev = load_data(params, device, dtype)
    layout, channels_last = resolve_implementation(t["implementation"], device)
    cfg = replace(StepConfig.from_params(params), bf16=t["precision"] == "bf16")
    loss, sampler = make_loss(t), Sampler(seeds, t["batch_size"], device)
    mode, why = step_mode(t["compile"], device, cfg)
    cfg = replace(cfg, expert_gradient=expert_gradient(mode))
    meta = run_meta(seeds, device, layout, channels_last, mode, t)
    hist = HostHistory(len(seeds), t["log_every"], names, params["model"]["experts"])
    if fresh:
        st = start_fresh(params, seeds, dirs, train_data, sampler, ev, hist, meta, layout, channels_last, progress,
                         dtype)
    else:
        st = resume(params, dirs, hist, device, layout, channels_last, meta, progress, dtype)
    start = last_checkpoint = int(st.iteration)
    step = Stepper(partial(Step(cfg, loss), st, train_data, sampler), mode, device)
    progress.message(f"step: {mode} ({why}), {cfg.expert_gradient} expert gradient; {layout} layout"
                     f"{', channels_last' if channels_last else ''}; {precision(t, device)}")
    progress.start("iteration", T, start)
    for it in range(start + 1, T + 1):
        step()
        at_eval, at_checkpoint = it % eval_every == 0 or it == T, it % checkpoint_every == 0 or it == T
        if it % st.history.capacity == 0 or at_eval or at_checkpoint:
            hist.pull(st, it, last_checkpoint, dirs)
        if at_eval:
            evaluate(st, ev, it, dirs)
        if at_checkpoint:
            save(st, hist, dirs)
            last_checkpoint = it
        progress.update(it)
    if any(T not in d.evaluation_iterations() for d in dirs):       # resumed at the end, evaluation lost
        evaluate(st, ev, T, dirs)
    return finish(st, dirs, names, ev, T, layout)


def start_fresh(params, seeds, dirs, train_data, sampler, ev, hist, meta, layout, channels_last, progress,
                dtype) -> RunState:
    """New runs: folders started, approximate identity initialisation, evaluation and checkpoint 0."""
    a = params["aii"]
    digits = {"test_index": ev.rows.astype(np.int64), "mechanism": ev.mechanism.astype(np.int64),
              "label": ev.label.astype(np.int64)}
    for s, d in zip(seeds, dirs):
        d.start(params, {**meta, "seed": s}, digits)
    st = RunState.fresh(params, seeds, len(hist.names), train_data.transformed.device, layout, dtype)
    st.use_channels_last(channels_last)
    if a["enabled"]:
        progress.start("identity initialisation step", a["max_iterations"])
        approximate_identity(st, train_data, sampler, a["max_iterations"], a["mse_threshold"], progress.update)
        progress.message(f"identity initialisation steps per expert: {st.aii_steps.tolist()}")
    st.start_adversarial(params)
    evaluate(st, ev, 0, dirs)
    save(st, hist, dirs)
    return st


def resume(params, dirs, hist, device, layout, channels_last, meta, progress, dtype) -> RunState:
    """Runs from their checkpoints (all at one iteration): state, history so far, meta.json updated."""
    checkpoints = [d.load_checkpoint() for d in dirs]
    st = RunState.resume(params, checkpoints, len(hist.names), device, layout, dtype)
    st.use_channels_last(channels_last)
    hist.pulled = int(st.iteration)
    for i, (d, ck) in enumerate(zip(dirs, checkpoints)):
        hist.load(i, ck["history"])
        d.resume(hist.pulled, {**meta, "seed": st.seeds[i]})
    progress.message(f"resuming {', '.join(str(d.path) for d in dirs)} at iteration {hist.pulled}")
    return st


def precision(t: dict, device: torch.device) -> str:
    """The arithmetic a run uses: train.precision, except that a CPU has no TF32 (fp32 instead)."""
    return "fp32" if t["precision"] == "tf32" and device.type != "cuda" else t["precision"]


def run_meta(seeds, device, layout, channels_last, mode, t) -> dict:
    meta = {"batch": list(seeds), "device": str(device), "implementation": layout, "channels_last": channels_last,
            "step": mode, "expert_gradient": expert_gradient(mode), "precision": precision(t, device),
            "deterministic": t["deterministic"], "torch": torch.__version__, "python": platform.python_version(),
            "git_commit": config.git_commit(), "started": config.now(), "resumed": [],
            "cpu": config.cpu_info(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    try:   # from the package's metadata: importing torchvision costs 2 s (it imports torch._dynamo)
        meta["torchvision"] = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        meta["torchvision"] = "absent"
    return meta


def train(params: dict, seeds: list[int], dirs: list[RunDir], device, progress: Progress,
          restart_if_changed: bool = False, dtype=torch.float32) -> list[dict]:
    """Train, resume or recognise as finished each run; seeds at the same point train together."""
    device = torch.device(device)
    status = [d.status(params, restart_if_changed) for d in dirs]
    groups: dict[object, list[int]] = {}
    for i, (d, s) in enumerate(zip(dirs, status)):
        if s == "finished":
            progress.message(f"{d.path} already finished ({params['train']['iterations']} iterations)")
        else:
            key = "fresh" if s == "fresh" else int(d.load_checkpoint()["iteration"])
            groups.setdefault(key, []).append(i)
    metrics: dict[int, dict] = {i: dirs[i].metrics() for i, s in enumerate(status) if s == "finished"}
    for key, members in groups.items():
        got = run_batch(params, [seeds[i] for i in members], [dirs[i] for i in members], device, key == "fresh",
                        progress, dtype)
        metrics.update(zip(members, got))
    return [metrics[i] for i in range(len(dirs))]


def run(params: dict, seed: int, out: str | Path, device="cpu", progress: bool = True) -> dict:
    """Train (or resume, or recognise as finished) one run in folder `out`; return its metrics."""
    return train(params, [seed], [RunDir(out)], device, Progress(f"seed {seed}", quiet=not progress))[0]


# ---------------------------------------------------------------- CLI

def parse_seeds(text: str) -> list[int]:
    """`0-9`, `0,3,5`, `0-2,7` -> sorted unique seeds; a clear error otherwise."""
    seeds: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise LicmError(f"--seeds: expected seeds like 0-9, 0,3,5 or 0-2,7, given {text!r}")
        seeds.update(range(int(lo), int(hi or lo) + 1))
    return sorted(seeds)


def seeds_label(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {','.join(map(str, seeds))}"


def _cmd_train(args) -> None:
    params = config.load(args.params, profile=args.profile)
    params = config.experiment(params, args.experiment)
    if args.iterations is not None:
        params["train"]["iterations"] = args.iterations
    if args.device is not None:
        params["device"] = args.device
    config.validate(params, "params (with command-line overrides)")
    device = config.device(params["device"])
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    if args.out and len(seeds) != 1:
        raise LicmError("--out: only with one seed (several seeds go to <runs>/<experiment>/seed<K>)")
    dirs = [RunDir(args.out) if args.out else RunDir.of(args.runs, args.experiment, s) for s in seeds]
    progress = Progress(f"{args.experiment} {seeds_label(seeds)}", args.log, quiet=args.no_progress)
    try:
        for d, m in zip(dirs, train(params, seeds, dirs, device, progress, args.restart_if_changed)):
            progress.message(f"{d.path}: {m['distinct_winners']}/{len(m['mechanisms'])} mechanisms won (>50%) by "
                             f"distinct experts; fully specialized: {m['fully_specialized']}")
    except LicmError as exc:
        progress.message(f"error: {exc}", terminal=False)
        raise
    finally:
        progress.close()


def register(sub) -> None:
    p = sub.add_parser("train", help="train a committee of experts (LICM Alg. 1) into run folders",
                       description="Train, resume, or recognise as finished the runs <runs>/<experiment>/seed<K> "
                                   "of one experiment; several seeds train together in one batched network.")
    p.add_argument("--experiment", required=True, help="a key of `experiments:` in params.yaml")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--seeds", default=None, help="seeds trained together: 0-9, 0,3,5 or 0-2,7")
    which.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds K)")
    p.add_argument("--runs", default=paths.result("runs"), help="run folders <runs>/<experiment>/seed<K> (default: %(default)s)")
    p.add_argument("--out", default=None, help="the run folder, for one seed (default <runs>/<experiment>/seed<K>)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: params `device:`)")
    p.add_argument("--iterations", type=int, default=None, help="override train.iterations")
    p.add_argument("--log", default=None,
                   help="append every message to this file; the terminal gets a progress line (rate, ETA) "
                        "at least every 20 s")
    restart = p.add_mutually_exclusive_group()
    restart.add_argument("--restart-if-changed", action="store_true",
                         help="a run folder whose checkpoint holds other params, or an unfinished run started at "
                              "another commit, is restarted instead of refused")
    restart.add_argument("--no-restart", dest="restart_if_changed", action="store_false",
                         help="refuse such a folder (the default; for the pipeline's restart_if_changed=false)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines (messages still shown)")
    p.set_defaults(func=_cmd_train)
