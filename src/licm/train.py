"""Competitive training of a committee of experts against one discriminator (LICM Alg. 1).

One iteration (LICM §4 and the paragraph after Alg. 1), all in `train_step`:
  1. a minibatch x' of transformed digits goes through every expert;
  2. the discriminator D scores every output; the winner of a digit is the expert with the
     highest score;
  3. D's gradient: canonical digits x as real, ALL experts' outputs (no gradient into the
     experts) as fake, each expert weighted 1/N' (LICM eq. 3);
  4. each expert that won digits takes one Adam step on the non-saturating loss -log D over the
     digits it won, using D *before* this iteration's update; an expert that won nothing is not
     stepped at all (its weights, Adam moments and step count stay put);
  5. D takes its Adam step (then weight clipping, for the Wasserstein critic).

Choices where the papers are silent are parameters (params.yaml `train:` documents each):
`carry_aii_optimizer`, `bn_mode_scoring`, `expert_update`. Minibatches are drawn uniformly with
replacement, from a `torch.Generator` seeded with the run seed; model initialisation uses the
global torch RNG seeded with the same seed. Approximate identity initialisation (LICM App. B)
trains every expert towards the identity on transformed digits, all experts on the same
minibatches; an expert stops (for good) at its first minibatch MSE below `aii.mse_threshold`
(as in EXPAND Alg. 1) or after `aii.max_iterations`.

Two implementations of the committee and its optimizer, same numbers up to round-off:
`loop` (a ModuleList of experts, one torch.optim.Adam each) and `vectorized` (grouped
convolutions, `masked_adam_step` with per-expert step counts). `auto` follows
benchmarks/bench_committee.py (`AUTO_IMPLEMENTATION`).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from licm import config, data
from licm.config import LicmError
from licm.models import Discriminator, GroupedCommittee, LoopCommittee, build, grouped_to_loop

NAN_CHECK_EVERY = 25   # iterations between checks of the losses for NaN/Inf (each check syncs)


# ---------------------------------------------------------------- optimizers of the committee

def masked_adam_step(params, grads, state: dict, mask: torch.Tensor, lr: float, betas, eps: float = 1e-8) -> None:
    """One Adam step (Kingma & Ba; same arithmetic as torch.optim.Adam) for the experts in `mask` only.

    `params` are a grouped committee's tensors, whose dim 0 is N' equal contiguous slices, slice i
    belonging to expert i. `state` holds `step` [N'] and the moments; experts outside `mask` keep
    their weights, moments and step count exactly.
    """
    b1, b2 = betas
    n = mask.numel()
    state["step"] += mask.to(state["step"].dtype)
    step = state["step"].clamp(min=1)
    step_size = (lr / (1 - b1 ** step)).view(n, 1)
    bc2_sqrt = (1 - b2 ** step).sqrt().view(n, 1)
    keep = mask.view(n, 1)
    with torch.no_grad():
        for p, g, m, v in zip(params, grads, state["exp_avg"], state["exp_avg_sq"]):
            g = g.reshape(n, -1)
            m2, v2, p2 = m.view(n, -1), v.view(n, -1), p.view(n, -1)
            m2.copy_(torch.where(keep, torch.lerp(m2, g, 1 - b1), m2))
            v2.copy_(torch.where(keep, v2 * b2 + (1 - b2) * g * g, v2))
            denom = v2.sqrt() / bc2_sqrt.to(v2.dtype) + eps
            p2.sub_(torch.where(keep, step_size.to(p2.dtype) * m2 / denom, torch.zeros((), dtype=p2.dtype, device=p2.device)))


class MaskedAdam:
    """Adam for a `GroupedCommittee` with one step count per expert (see `masked_adam_step`)."""

    def __init__(self, committee: GroupedCommittee, lr: float, betas, eps: float = 1e-8):
        self.params = list(committee.parameters())
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        p0 = self.params[0]
        self.state = {"step": torch.zeros(committee.n_experts, dtype=torch.float64, device=p0.device),
                      "exp_avg": [torch.zeros_like(p) for p in self.params],
                      "exp_avg_sq": [torch.zeros_like(p) for p in self.params]}

    def step(self, grads, mask: torch.Tensor) -> None:
        masked_adam_step(self.params, grads, self.state, mask, self.lr, self.betas, self.eps)

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def state_dict(self) -> dict:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "state": self.state}

    def load_state_dict(self, sd: dict) -> None:
        self.lr, self.betas, self.eps = sd["lr"], tuple(sd["betas"]), sd["eps"]
        self.state = {"step": sd["state"]["step"].clone(),
                      "exp_avg": [t.clone() for t in sd["state"]["exp_avg"]],
                      "exp_avg_sq": [t.clone() for t in sd["state"]["exp_avg_sq"]]}


class LoopAdam:
    """Reference: one torch.optim.Adam per expert of a `LoopCommittee`; only masked experts step."""

    def __init__(self, committee: LoopCommittee, lr: float, betas, eps: float = 1e-8):
        self.groups = [list(e.parameters()) for e in committee.experts]
        self.optims = [torch.optim.Adam(g, lr=lr, betas=tuple(betas), eps=eps) for g in self.groups]

    def step(self, grads, mask: torch.Tensor) -> None:
        k = len(self.groups[0])
        for i, won in enumerate(mask.tolist()):
            if not won:
                continue
            for p, g in zip(self.groups[i], grads[i * k:(i + 1) * k]):
                p.grad = g
            self.optims[i].step()
            for p in self.groups[i]:
                p.grad = None

    def set_lr(self, lr: float) -> None:
        for o in self.optims:
            for group in o.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict:
        return {"experts": [o.state_dict() for o in self.optims]}

    def load_state_dict(self, sd: dict) -> None:
        for o, s in zip(self.optims, sd["experts"]):
            o.load_state_dict(s)


def expert_optimizer(committee: nn.Module, lr: float, betas):
    if isinstance(committee, GroupedCommittee):
        return MaskedAdam(committee, lr, betas)
    return LoopAdam(committee, lr, betas)


# What `implementation: auto` picks per device type, from benchmarks/bench_committee.py. On the
# idle 2-core CPU (torch 2.14) the grouped committee took 1.13x, 1.25x and 1.55x the loop's time
# per full iteration at N' = 6, 10, 16 (loop: 0.50, 0.89, 1.58 s); earlier measurements on a
# loaded machine favoured the grouped one and were not reproducible. On CUDA one batched
# computation instead of N' small kernel launches is expected to win; not measured yet (no GPU).
AUTO_IMPLEMENTATION = {"cpu": "loop", "cuda": "vectorized"}


def resolve_implementation(choice: str, device: torch.device) -> str:
    """`auto` -> AUTO_IMPLEMENTATION[device type] (loop for device types never measured)."""
    if choice != "auto":
        return choice
    return AUTO_IMPLEMENTATION.get(torch.device(device).type, "loop")


# ---------------------------------------------------------------- approximate identity initialisation

def approximate_identity(committee: nn.Module, optimizer, images: torch.Tensor, max_iterations: int,
                         threshold: float, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Train every expert towards the identity (MSE to its input) on `images` [n,1,H,W].

    All experts see the same minibatches; an expert whose minibatch MSE is below `threshold` is
    done for good (no further steps). Returns the number of steps each expert took [N'].
    """
    n = committee.n_experts
    done = torch.zeros(n, dtype=torch.bool, device=images.device)
    steps = torch.zeros(n, dtype=torch.long, device=images.device)
    params = list(committee.parameters())
    committee.train()
    for _ in range(max_iterations):
        idx = torch.randint(len(images), (batch_size,), generator=generator).to(images.device)
        x = images[idx]
        y = committee(x)                                             # [B, N', 1, H, W]
        mse = ((y - x.unsqueeze(1)) ** 2).mean(dim=(0, 2, 3, 4))     # [N']
        done |= mse.detach() < threshold
        active = ~done
        if not bool(active.any()):
            break
        grads = torch.autograd.grad(mse.sum(), params)
        optimizer.step(grads, active)
        steps += active.long()
    return steps


# ---------------------------------------------------------------- one training iteration

@dataclass
class StepConfig:
    loss: str = "gan"                    # gan | wasserstein
    label_smoothing: float = 0.0
    wgan_clip: float = 0.01
    detach_expert_scores: bool = False
    bn_mode_scoring: str = "train"       # train | eval
    expert_update: str = "minibatch"     # minibatch | per_example

    @classmethod
    def from_params(cls, params: dict) -> "StepConfig":
        t = params["train"]
        return cls(t["loss"], t["label_smoothing"], t["wgan_clip"], t["detach_expert_scores"],
                   t["bn_mode_scoring"], t["expert_update"])


def train_step(committee: nn.Module, disc: Discriminator, expert_opt, disc_opt,
               x_real: torch.Tensor, x_t: torch.Tensor, cfg: StepConfig) -> dict:
    """One iteration of LICM Alg. 1. x_real: canonical digits [B,1,H,W]; x_t: transformed [B,1,H,W].

    Returns detached tensors (no host sync): `scores` [B,N'] (D's probabilities, or critic values),
    `won` [B,N'] one-hot winners, `d_loss`, `e_loss` (mean over the winning experts).
    """
    B, N = x_t.shape[0], committee.n_experts
    wgan = cfg.loss == "wasserstein"
    # -log D(y) (non-saturating) for the experts; the critic value itself for WGAN.
    expert_loss = (lambda z: -z) if wgan else (lambda z: F.softplus(-z))
    disc_params = list(disc.parameters())
    expert_params = list(committee.parameters())

    # 1-2. all experts map x'; D scores every output; the winner of a digit = the highest score.
    committee.train()
    if cfg.bn_mode_scoring == "eval":
        committee.eval()
        with torch.no_grad():
            choice_logits = disc.logits(committee(x_t).flatten(0, 1)).view(B, N)
        committee.train()
    out = committee(x_t)                                             # [B, N', 1, H, W]
    scored = out.detach() if cfg.detach_expert_scores else out
    logits = disc.logits(scored.flatten(0, 1)).view(B, N)
    if cfg.bn_mode_scoring == "train":
        choice_logits = logits.detach()
    winners = choice_logits.argmax(dim=1)                            # [B]
    won = F.one_hot(winners, N).to(out.dtype)                        # [B, N']
    wins = won.sum(0)                                                # [N']

    # 3. D's gradient (the step comes last, so the experts are trained against D before it):
    #    real = canonical digits, fake = every expert's output, weighted 1/N' (LICM eq. 3).
    real_logits = disc.logits(x_real)
    if wgan:
        d_loss = logits.mean() - real_logits.mean()
    else:
        target = torch.full_like(real_logits, 1.0 - cfg.label_smoothing)
        d_loss = (F.binary_cross_entropy_with_logits(real_logits, target)
                  + F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)))
    d_grads = torch.autograd.grad(d_loss, disc_params, retain_graph=True)   # no gradient into experts

    # 4. experts: each winner steps on the digits it won; experts that won nothing do not step.
    if cfg.expert_update == "minibatch":
        per_expert = (won * expert_loss(logits)).sum(0) / wins.clamp(min=1)   # [N']
        e_loss = per_expert.detach().sum() / (wins > 0).sum()
        if not cfg.detach_expert_scores:      # detached: no gradient path to the experts, nobody steps
            grads = torch.autograd.grad(per_expert.sum(), expert_params)
            expert_opt.step(grads, wins > 0)
    else:                                                            # per_example, in minibatch order
        losses = []
        for b in range(B):
            y = committee(x_t[b:b + 1])[0]                           # [N', 1, H, W]
            y = y.detach() if cfg.detach_expert_scores else y
            loss = expert_loss(disc.logits(y)[winners[b]])
            losses.append(loss.detach())
            if not cfg.detach_expert_scores:
                grads = torch.autograd.grad(loss, expert_params, allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g for p, g in zip(expert_params, grads)]
                expert_opt.step(grads, won[b] > 0)
        e_loss = torch.stack(losses).mean()

    # 5. D's step (then weight clipping for the Wasserstein critic, Arjovsky et al. 2017).
    for p, g in zip(disc_params, d_grads):
        p.grad = g
    disc_opt.step()
    disc_opt.zero_grad(set_to_none=True)
    if wgan:
        with torch.no_grad():
            for p in disc_params:
                p.clamp_(-cfg.wgan_clip, cfg.wgan_clip)

    scores = logits.detach() if wgan else torch.sigmoid(logits.detach())
    return {"scores": scores, "won": won.detach(), "d_loss": d_loss.detach(), "e_loss": e_loss}


# ---------------------------------------------------------------- run folder

def _images(arrays: dict, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arrays["images"], dtype=np.float32)).unsqueeze(1).to(device)


def _write_json(path: Path, obj) -> None:
    data.atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    data.atomic_write_bytes(path, buf.getvalue())


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _history_frame(history: dict, names: list[str]):
    import pandas as pd

    it = history["iteration"].numpy()                   # [L]
    score_sum = history["score_sum"].double().numpy()   # [L, M, N]
    count = history["count"].double().numpy()           # [L, M]
    wins = history["wins"].numpy()                      # [L, M, N]
    L, M, N = score_sum.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = score_sum / count[:, :, None]
    mean[np.broadcast_to(count[:, :, None] == 0, mean.shape)] = np.nan
    grid_it, grid_m, grid_e = np.meshgrid(np.arange(L), np.arange(M), np.arange(N), indexing="ij")
    return pd.DataFrame({
        "iteration": it[grid_it.ravel()],
        "expert": grid_e.ravel(),
        "mechanism": np.asarray(names, dtype=object)[grid_m.ravel()],
        "score_mean": mean.ravel(),
        "wins": wins.ravel().astype(np.int64),
    })


def _write_history(out: Path, history: dict, names: list[str]) -> None:
    data.atomic_write_text(out / "history.csv", _history_frame(history, names).to_csv(index=False))


EVALUATION_FILE = "evaluation.npz"


def eval_subset(test: dict, examples: int | None) -> np.ndarray:
    """Rows of test.npz evaluated during training: the first `examples` transformed test digits."""
    rows = np.flatnonzero(test["mechanism"] >= 0)
    return rows if examples is None else rows[:examples]


def _load_evaluations(out: Path, upto: int) -> dict:
    """Evaluations already made by this run, up to iteration `upto` (the checkpoint resumed from)."""
    path = out / EVALUATION_FILE
    if not path.is_file():
        return {"iterations": [], "winner": [], "outputs": []}
    with np.load(path) as z:
        keep = z["iterations"] <= upto
        return {"iterations": z["iterations"][keep].tolist(), "winner": list(z["winner"][keep]),
                "outputs": list(z["outputs"][keep])}


def _write_evaluations(out: Path, ev: dict, test: dict, rows: np.ndarray) -> None:
    """evaluation.npz: which expert won each evaluated test digit, and its output, at every evaluation."""
    H, W = test["images"].shape[1:]
    n = len(rows)
    data.write_npz(out / EVALUATION_FILE, {
        "iterations": np.asarray(ev["iterations"], dtype=np.int64),
        "test_index": rows.astype(np.int64),
        "mechanism": test["mechanism"][rows].astype(np.int64),
        "label": test["label"][rows].astype(np.int64),
        "winner": np.stack(ev["winner"]).astype(np.int16) if ev["winner"] else np.zeros((0, n), np.int16),
        "outputs": np.stack(ev["outputs"]) if ev["outputs"] else np.zeros((0, n, H, W), np.uint8),
    }, compress=True)


def set_deterministic(on: bool, device: torch.device) -> None:
    """train.deterministic: deterministic kernels on CUDA (CPU runs are deterministic anyway).

    Without it a GPU run can differ from a re-run of itself (atomic adds, cuDNN autotuning), and
    the competition amplifies such round-off into a different winner; with it, re-runs on the same
    GPU and software give the same result, at some cost in speed."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not on
        torch.backends.cudnn.deterministic = on


def _checkpoint_path(out: Path) -> Path:
    return out / "checkpoint.pt"


# What a run's result depends on, less what may change between a run and its resume
# (more iterations, another checkpoint interval or test subset, another device).
RESUMABLE_CHANGES = ("iterations", "checkpoint_every")


def _comparable(params: dict) -> dict:
    p = {"model": params["model"], "aii": params["aii"], "train": dict(params["train"]),
         "domain": params["domains"][params["train"]["domain"]], "mechanisms": params["mechanisms"]}
    for key in RESUMABLE_CHANGES:
        p["train"].pop(key, None)
    return json.loads(json.dumps(p))


def run(params: dict, seed: int, out: str | os.PathLike, device: torch.device | str = "cpu",
        progress: bool = True) -> dict:
    """Train (or resume, or recognise as finished) the run in folder `out`; return metrics."""
    from tqdm import tqdm

    from licm import evaluate

    out = Path(out)
    device = torch.device(device)
    t, a = params["train"], params["aii"]
    T = t["iterations"]
    metrics_path, ckpt_path = out / "metrics.json", _checkpoint_path(out)
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("iterations") == T:
            print(f"licm train: {out} already finished ({T} iterations)", file=sys.stderr)
            return metrics
    if ckpt_path.is_file() and (out / "params.json").is_file():
        old = json.loads((out / "params.json").read_text())
        if _comparable(old) != _comparable(params):
            raise LicmError(f"{out}: holds a run with different params; use another --out or delete the folder")
    out.mkdir(parents=True, exist_ok=True)
    if t["domain"] not in params["domains"]:
        raise LicmError(f"train.domain: expected one of {sorted(params['domains'])}, given {t['domain']!r}")

    prepared, domain = params["data"]["prepared_dir"], t["domain"]
    names = data.mechanism_names(prepared, domain)
    M = len(names)
    tr = data.load_split(prepared, domain, "train_transformed")
    ca = data.load_split(prepared, domain, "train_canonical")
    transformed, transformed_mech = _images(tr, device), torch.from_numpy(tr["mechanism"]).to(device)
    canonical = _images(ca, device)
    if t["canonical_examples"] is not None:
        canonical = canonical[: t["canonical_examples"]]

    test = data.load_split(prepared, domain, "test")
    eval_rows = eval_subset(test, t["eval_examples"])
    eval_images = torch.from_numpy(np.ascontiguousarray(test["images"][eval_rows], dtype=np.float32))

    set_deterministic(t["deterministic"], device)
    implementation = resolve_implementation(t["implementation"], device)
    torch.manual_seed(seed)
    committee, disc = build(params, implementation)
    committee, disc = committee.to(device), disc.to(device)
    generator = torch.Generator().manual_seed(seed)
    disc_opt = torch.optim.Adam(disc.parameters(), lr=t["lr_discriminator"], betas=tuple(t["adam_betas"]))
    cfg = StepConfig.from_params(params)
    if (t["expert_scores_from"], t["d_update"]) != ("d_before_update", "joint"):  # interim, until the new engine
        raise LicmError("train.expert_scores_from / train.d_update: only the literal step is implemented yet")
    history = {"iteration": [], "score_sum": [], "count": [], "wins": []}
    meta = {"seed": seed, "device": str(device), "implementation": implementation,
            "torch": torch.__version__, "python": platform.python_version(), "git_commit": _git_commit(),
            "deterministic": t["deterministic"], "started": _now(), "resumed": []}
    try:
        import torchvision
        meta["torchvision"] = torchvision.__version__
    except ImportError:
        meta["torchvision"] = "absent"

    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck["implementation"] != implementation:
            implementation = ck["implementation"]
            torch.manual_seed(seed)
            committee, disc = build(params, implementation)
            committee, disc = committee.to(device), disc.to(device)
            disc_opt = torch.optim.Adam(disc.parameters(), lr=t["lr_discriminator"], betas=tuple(t["adam_betas"]))
        committee.load_state_dict(ck["committee"])
        disc.load_state_dict(ck["discriminator"])
        expert_opt = expert_optimizer(committee, t["lr_expert"], t["adam_betas"])
        expert_opt.load_state_dict(ck["expert_optimizer"])
        disc_opt.load_state_dict(ck["discriminator_optimizer"])
        generator.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        if device.type == "cuda" and ck.get("cuda_rng"):
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        start, aii_steps = ck["iteration"], ck["aii_iterations"].tolist()
        evaluations = _load_evaluations(out, start)
        for k in history:
            history[k] = [ck["history"][k]] if len(ck["history"][k]) else []
        if (out / "meta.json").is_file():
            meta = json.loads((out / "meta.json").read_text())
        meta.setdefault("resumed", []).append({"at": _now(), "iteration": start})
        print(f"licm train: resuming {out} at iteration {start}", file=sys.stderr)
    else:
        expert_opt = expert_optimizer(committee, a["lr"], t["adam_betas"])
        aii_steps = [0] * committee.n_experts
        if a["enabled"]:
            print(f"licm train: approximate identity initialisation (at most {a['max_iterations']} iterations)",
                  file=sys.stderr, flush=True)
            aii_steps = approximate_identity(committee, expert_opt, transformed, a["max_iterations"],
                                             a["mse_threshold"], a["batch_size"], generator).tolist()
            print(f"licm train: identity steps per expert: {aii_steps}", file=sys.stderr, flush=True)
        if t["carry_aii_optimizer"]:
            expert_opt.set_lr(t["lr_expert"])
        else:
            expert_opt = expert_optimizer(committee, t["lr_expert"], t["adam_betas"])
        start = 0
        evaluations = {"iterations": [], "winner": [], "outputs": []}
    meta["implementation"] = implementation
    _write_json(out / "params.json", params)
    _write_json(out / "meta.json", meta)

    def history_tensors() -> dict:
        if not history["iteration"]:
            return {"iteration": torch.zeros(0, dtype=torch.long), "score_sum": torch.zeros(0, M, committee.n_experts),
                    "count": torch.zeros(0, M), "wins": torch.zeros(0, M, committee.n_experts, dtype=torch.long)}
        return {k: torch.cat(history[k]).cpu() for k in history}   # every entry has a leading iteration dim

    def checkpoint(iteration: int) -> None:
        h = history_tensors()
        for k in history:                       # keep one concatenated chunk, so checkpoints stay cheap
            history[k] = [h[k].to(device)] if len(h[k]) else []
        _save_checkpoint(ckpt_path, {
            "iteration": iteration, "implementation": implementation, "seed": seed,
            "committee": committee.state_dict(), "discriminator": disc.state_dict(),
            "expert_optimizer": expert_opt.state_dict(), "discriminator_optimizer": disc_opt.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "aii_iterations": torch.tensor(aii_steps), "history": h})

    def evaluate_now(iteration: int) -> None:
        """Winners and their outputs on the evaluation digits (eval mode, no RNG: training is unchanged)."""
        winner, output = evaluate.winners_and_outputs(committee, disc, eval_images)
        evaluations["iterations"].append(iteration)
        evaluations["winner"].append(winner.astype(np.int16))
        evaluations["outputs"].append(np.rint(np.clip(np.nan_to_num(output), 0, 1) * 255).astype(np.uint8))

    last_good = start if ckpt_path.is_file() else None
    if not ckpt_path.is_file():
        evaluate_now(0)
        _write_evaluations(out, evaluations, test, eval_rows)
        checkpoint(0)
        last_good = 0
    pending_losses: list[tuple[int, torch.Tensor]] = []

    def check_losses() -> None:
        if not pending_losses:
            return
        its = [i for i, _ in pending_losses]
        finite = torch.isfinite(torch.stack([l for _, l in pending_losses]).float()).all(dim=1).tolist()
        pending_losses.clear()
        for i, ok in zip(its, finite):
            if not ok:
                raise LicmError(f"non-finite loss (NaN/Inf) at iteration {i}; last good checkpoint: "
                                f"{ckpt_path} (iteration {last_good}); nothing was overwritten")

    n_t, n_c, B = len(transformed), len(canonical), t["batch_size"]
    bar = tqdm(total=T, initial=start, file=sys.stderr, unit="it", disable=not progress, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0, desc="licm train")
    for iteration in range(start + 1, T + 1):
        idx_t = torch.randint(n_t, (B,), generator=generator).to(device)
        idx_c = torch.randint(n_c, (B,), generator=generator).to(device)
        result = train_step(committee, disc, expert_opt, disc_opt, canonical[idx_c], transformed[idx_t], cfg)
        pending_losses.append((iteration, torch.stack([result["d_loss"], result["e_loss"]])))
        if iteration % t["log_every"] == 0:
            mech = transformed_mech[idx_t]
            history["iteration"].append(torch.tensor([iteration], device=device))
            history["score_sum"].append(torch.zeros(M, committee.n_experts, device=device)
                                        .index_add_(0, mech, result["scores"].float()).unsqueeze(0))
            history["count"].append(torch.bincount(mech, minlength=M).float().unsqueeze(0))
            history["wins"].append(torch.zeros(M, committee.n_experts, dtype=torch.long, device=device)
                                   .index_add_(0, mech, result["won"].long()).unsqueeze(0))
        if iteration % NAN_CHECK_EVERY == 0 or iteration % t["checkpoint_every"] == 0 or iteration == T:
            check_losses()
        if iteration % t["eval_every"] == 0 or iteration == T:
            evaluate_now(iteration)
        if iteration % t["checkpoint_every"] == 0 or iteration == T:
            _write_evaluations(out, evaluations, test, eval_rows)
            checkpoint(iteration)
            last_good = iteration
            _write_history(out, history_tensors(), names)
        bar.update(1)
    bar.close()
    if T == start and not (out / "history.csv").is_file():
        _write_history(out, history_tensors(), names)

    if not evaluations["iterations"] or evaluations["iterations"][-1] != T:   # finished checkpoint, evaluation lost
        evaluate_now(T)
        _write_evaluations(out, evaluations, test, eval_rows)

    mech = test["mechanism"][eval_rows]
    matrix = evaluate.matrix_from_winners(evaluations["winner"][-1], mech, M, committee.n_experts)
    spec = evaluate.specialization(matrix)
    metrics = {"iterations": T, "mechanisms": names, "win_matrix": matrix.tolist(),
               "top_expert": matrix.argmax(axis=1).tolist(), "top_share": matrix.max(axis=1).tolist(),
               **spec, "test_examples": int(len(eval_rows)), "eval_iterations": list(evaluations["iterations"]),
               "aii_iterations": [int(s) for s in aii_steps], "implementation": implementation}
    meta["finished"] = _now()
    _write_json(out / "meta.json", meta)
    _write_json(metrics_path, metrics)
    return metrics


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


def _cmd_train(args) -> None:
    params = config.load(args.params, profile=args.profile)
    params = config.experiment(params, args.experiment)
    if args.iterations is not None:
        params["train"]["iterations"] = args.iterations
    if args.device is not None:
        params["device"] = args.device
    config.validate(params, "params (with command-line overrides)")
    dev = config.device(params["device"])
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    if args.log:  # interim: everything to the log (the engine rewrite adds progress lines on the terminal)
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        sys.stdout = sys.stderr = open(args.log, "a", buffering=1)
    if args.out and len(seeds) != 1:
        raise LicmError("--out: only with one seed (several seeds go to <runs>/<experiment>/seed<K>)")
    for seed in seeds:
        out = Path(args.out) if args.out else Path(args.runs) / args.experiment / f"seed{seed}"
        if args.restart_if_changed and (out / "params.json").is_file() and not (out / "metrics.json").is_file():
            old = json.loads((out / "params.json").read_text())
            if _comparable(old) != _comparable(params):
                print(f"licm train: {out}: params changed, discarding its checkpoint", file=sys.stderr)
                for f in ("checkpoint.pt", "params.json", "meta.json"):
                    (out / f).unlink(missing_ok=True)
        metrics = run(params, seed, out, dev, progress=not args.no_progress)
        print(f"licm train: {out}: {metrics['distinct_winners']}/{len(metrics['mechanisms'])} mechanisms won "
              f"(>50%) by distinct experts; fully specialized: {metrics['fully_specialized']}")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a committee of experts (LICM Alg. 1) into run folders",
                       description="Train, resume, or recognise as finished the runs results/runs/<experiment>/seed<K> "
                                   "of one experiment (several seeds: together, in one network where batched).")
    p.add_argument("--experiment", required=True, help="a key of `experiments:` in params.yaml")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--seeds", default=None, help="seeds trained together: 0-9, 0,3,5 or 0-2,7")
    which.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds K)")
    p.add_argument("--runs", default="results/runs", help="run folders <runs>/<experiment>/seed<K> (default: %(default)s)")
    p.add_argument("--out", default=None, help="the run folder, for one seed (default <runs>/<experiment>/seed<K>)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: params `device:`)")
    p.add_argument("--iterations", type=int, default=None, help="override train.iterations")
    p.add_argument("--log", default=None, help="append the full log to this file; the terminal gets progress lines")
    p.add_argument("--restart-if-changed", action="store_true",
                   help="a run folder whose checkpoint holds other params is restarted instead of refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
