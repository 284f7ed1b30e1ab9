"""One iteration of LICM Algorithm 1 for S seeds at once (`Step`), eager on the CPU or captured whole.

An iteration (LICM §4 and the paragraph after Alg. 1):
  1. each seed samples a minibatch x' of transformed digits and x of canonical digits;
  2. every expert maps x'; D scores every output; the winner of a digit is the expert with the
     highest score (`compete` is the same choice outside training);
  3. each expert that won digits takes one Adam step on -log D over the digits it won; an expert
     that won nothing is not stepped (weights, Adam moments and step count stay put);
  4. D's update: canonical digits as real, ALL experts' outputs (no gradient into the experts) as
     fake, each expert weighted 1/N' (eq. 3); one joint Adam step (Alg. 1 line 5) or, with
     `d_update: fakes_then_real`, a step on the fakes and "then" one on a canonical minibatch (§4).
The scores come from D before its update (Alg. 1: c_j of line 4 are used in line 6) or, with
`expert_scores_from: d_after_update`, from D after it (DCGAN-style code re-scores the outputs).
Where the papers are silent the choice is a parameter (params.yaml `train:` cites the text each
one interprets); `Step` picks each variant once, as an object or a function, and the losses are
objects (`GanLoss`, `WassersteinLoss`). Names: a *logit* is D's raw output, a *score* what the
papers plot (GAN: the probability sigmoid(logit); Wasserstein: the critic's value).

Two ways to compute the experts' gradient, equal up to round-off:
  * `MaskedUpdate` (capturable, the CUDA graph's): no host synchronisation inside the step (who won
    what is a mask, never a list of indices; no .item(), no bool(tensor)); the gradient runs back
    through D on all B x N' outputs and through every expert;
  * `GatheredUpdate` (eager, the CPU's): D's input gradient only on each digit's winning output (B
    per seed) and no backward at all for an expert that won nothing (one host synchronisation).
Minibatches come from a counter-based sampler on the device (`Sampler`: index = hash(seed, stream,
iteration, position), so a seed draws the same digits whether it trains alone or batched, on any
device, and a resume needs no RNG state); optimizer state, per-expert step counts included, is
device tensors (`GroupedAdam`); the history is written into a device ring buffer. `Stepper` runs
the step eagerly, compiled (CPU: torch.compile with fullgraph=True) or captured in one CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from licm.models import Committee, Discriminators

NEVER = 2 ** 62          # "no non-finite loss yet" in RunState.first_bad


# ---------------------------------------------------------------- sampling

_M32 = 0xFFFFFFFF
STREAM_TRANSFORMED, STREAM_CANONICAL, STREAM_AII = 0, 1, 2


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32, in int64 without overflow (16-bit halves)."""
    return (((x & 0xFFFF) * c) + ((((x >> 16) * c) & 0xFFFF) << 16)) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (C. Wellons' `lowbias32`), on int64 tensors."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class Sampler:
    """Minibatch indices [B,S] for each seed: uniform with replacement, index = hash(seed, stream,
    iteration, position) mod n. Counter-based (no generator state), so it runs on the device inside
    a captured step and a seed's draws do not depend on the other seeds of its batch."""

    def __init__(self, seeds: list[int], batch_size: int, device):
        base = hash32(torch.tensor(seeds, dtype=torch.int64, device=device) + 0x9E3779B9)
        self.base = base                                        # [S]
        self.position = torch.arange(batch_size, dtype=torch.int64, device=device).unsqueeze(1)   # [B,1]

    def __call__(self, iteration: torch.Tensor, stream: int, n: int) -> torch.Tensor:
        h = hash32(self.base + stream)
        h = hash32(h + iteration)
        return hash32(h.unsqueeze(0) + self.position) % n       # [B,S]


@dataclass
class TrainData:
    """The training digits of one domain on the device: transformed [n_t,H,W] with their mechanism
    labels (for the history only: training never reads them), canonical [n_c,H,W]."""

    transformed: torch.Tensor
    mechanism: torch.Tensor
    canonical: torch.Tensor


def minibatch(data: TrainData, sampler: Sampler, iteration: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each seed's transformed digits [B,S,H,W], their mechanisms [B,S], canonical digits [B,S,H,W]."""
    it = sampler(iteration, STREAM_TRANSFORMED, len(data.transformed))
    ic = sampler(iteration, STREAM_CANONICAL, len(data.canonical))
    return data.transformed[it], data.mechanism[it], data.canonical[ic]


# ---------------------------------------------------------------- the committee's optimizer

class GroupedAdam:
    """Adam (Kingma & Ba; the arithmetic of torch.optim.Adam) for tensors whose dim 0 splits into
    `groups` equal contiguous blocks (one expert of one seed, or one seed's discriminator), each
    with its own step count. A block outside the step's mask keeps weights, moments and step count
    exactly. Only tensor operations, state on the device: it can be compiled or captured."""

    def __init__(self, params: list[torch.Tensor], groups: int, lr: float, betas, eps: float = 1e-8):
        self.params, self.groups = list(params), groups
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        device = self.params[0].device
        self.step_count = torch.zeros(groups, dtype=torch.float64, device=device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, grads, mask: torch.Tensor | None = None) -> None:
        g_, (b1, b2) = self.groups, self.betas
        keep = torch.ones(g_, dtype=torch.bool, device=self.step_count.device) if mask is None else mask.reshape(g_)
        self.step_count += keep.to(self.step_count.dtype)
        step = self.step_count.clamp(min=1)
        step_size = self.lr / (1 - b1 ** step)
        bc2_sqrt = (1 - b2 ** step).sqrt()
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            # [groups, rest of dim 0, ...]: splitting dim 0 is a view in any memory format (channels_last too)
            g, m2, v2, p2 = (t.unflatten(0, (g_, -1)) for t in (g, m, v, p))
            per_group = lambda t: t.view(g_, *[1] * (p2.dim() - 1))  # noqa: E731
            k = per_group(keep)
            m2.copy_(torch.where(k, torch.lerp(m2, g, 1 - b1), m2))
            v2.copy_(torch.where(k, v2 * b2 + (1 - b2) * g * g, v2))
            update = per_group(step_size).to(p.dtype) * m2 / (v2.sqrt() / per_group(bc2_sqrt).to(p.dtype) + self.eps)
            p2.sub_(torch.where(k, update, torch.zeros((), dtype=p.dtype, device=p.device)))

    def match_formats(self) -> None:
        """Moments in their parameter's memory format (after licm.models' use_channels_last)."""
        self.exp_avg = [torch.empty_like(p).copy_(m) for p, m in zip(self.params, self.exp_avg)]
        self.exp_avg_sq = [torch.empty_like(p).copy_(v) for p, v in zip(self.params, self.exp_avg_sq)]

    def state_dict(self) -> dict:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "step": self.step_count,
                "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        self.lr, self.betas, self.eps = float(sd["lr"]), tuple(sd["betas"]), float(sd["eps"])
        self.step_count.copy_(sd["step"])
        for mine, theirs in ((self.exp_avg, sd["exp_avg"]), (self.exp_avg_sq, sd["exp_avg_sq"])):
            for t, u in zip(mine, theirs):
                t.copy_(u)


# ---------------------------------------------------------------- losses

class GanLoss:
    """Non-saturating GAN (LICM eq. 3): D maximises log D(x) + 1/N' sum_j log(1 - D(E_j(x'))) (real
    target 1 - label_smoothing, EXPAND §4.2); the experts minimise -log D(E(x'))."""

    def __init__(self, label_smoothing: float = 0.0):
        self.real_target = 1.0 - label_smoothing

    def expert(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(-logits)

    def real(self, logits: torch.Tensor) -> torch.Tensor:              # [B,S] -> [S]
        target = torch.full_like(logits, self.real_target)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(0)

    def fake(self, logits: torch.Tensor) -> torch.Tensor:              # [B,S,N'] -> [S]
        return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none").mean((0, 2))

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """The score the papers plot: D's probability that the digit is canonical."""
        return torch.sigmoid(logits)

    def after_d_step(self, discs: Discriminators) -> None:
        pass


class WassersteinLoss:
    """WGAN critic with weight clipping (Arjovsky et al. 2017; EXPAND §4.2): the critic raises real
    digits' values and lowers the experts' (loss = mean fake - mean real), the experts raise theirs."""

    def __init__(self, clip: float):
        self.clip = clip

    def expert(self, logits: torch.Tensor) -> torch.Tensor:
        return -logits

    def real(self, logits: torch.Tensor) -> torch.Tensor:
        return -logits.mean(0)

    def fake(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.mean((0, 2))

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """The critic's value (the logit itself)."""
        return logits

    @torch.no_grad()
    def after_d_step(self, discs: Discriminators) -> None:
        for p in discs.parameters():
            p.clamp_(-self.clip, self.clip)


def make_loss(train: dict):
    return WassersteinLoss(train["wgan_clip"]) if train["loss"] == "wasserstein" else GanLoss(train["label_smoothing"])


@dataclass(frozen=True)
class StepConfig:
    detach_expert_scores: bool = False
    bn_mode_scoring: str = "train"                   # train | eval
    expert_update: str = "minibatch"                 # minibatch | per_example
    expert_scores_from: str = "d_before_update"      # d_before_update | d_after_update
    d_update: str = "joint"                          # joint | fakes_then_real
    bf16: bool = False                               # bf16 autocast (train.precision: bf16)
    expert_gradient: str = "masked"                  # masked (capturable) | gathered (eager): Step

    @classmethod
    def from_params(cls, params: dict) -> "StepConfig":
        t = params["train"]
        return cls(t["detach_expert_scores"], t["bn_mode_scoring"], t["expert_update"], t["expert_scores_from"],
                   t["d_update"])


# ---------------------------------------------------------------- the competition

def d_logits(discs: Discriminators, outputs: torch.Tensor, real: torch.Tensor | None = None):
    """D's logits of every expert's output: outputs [B,S,N',H,W] -> [B,S,N']. With `real` [B,S,H,W],
    one D forward on [outputs; real] also gives the real digits' logits [B,S] (D has no BatchNorm)."""
    B, S, N, H, W = outputs.shape
    images = outputs.transpose(1, 2).reshape(B * N, S, H, W)           # seed s's images in channel s
    if real is not None:
        images = torch.cat([images, real])
    logits = discs.logits(images)                                      # [B*N' (+B), S]
    # [B,S,N'] by indexing, not view + transpose: the backward of that view receives a
    # non-contiguous gradient, which torch.compile's traced autograd cannot view (torch 2.14).
    rows = torch.arange(B * N, device=logits.device).view(B, 1, N)
    fake = logits[rows, torch.arange(S, device=logits.device).view(1, S, 1)]
    return fake if real is None else (fake, logits[B * N:])


def compete(committee: Committee, discs: Discriminators, x: torch.Tensor, bn: str = "running"):
    """Every expert on x [B,S,H,W]; D scores every output; the winner of a digit is the expert with
    the highest score. Returns outputs [B,S,N',H,W], logits [B,S,N'], winners [B,S]. Training,
    evaluation, figures and Omniglot all choose winners through this function."""
    outputs = committee(x, bn)
    logits = d_logits(discs, outputs)
    return outputs, logits, logits.argmax(-1)


def one_hot(index: torch.Tensor, n: int, dtype) -> torch.Tensor:
    """F.one_hot without its host-side range check (which would synchronise inside a captured step)."""
    return (index.unsqueeze(-1) == torch.arange(n, device=index.device)).to(dtype)


@dataclass
class History:
    """Per iteration and seed, per (mechanism, expert): sum of the experts' scores, digit counts and
    wins, in a device ring buffer of `capacity` iterations; the loop copies it to the host every
    `capacity` iterations at most (`rows`), which is the only synchronisation of a training run."""

    score_sum: torch.Tensor     # [K, S, M, N']
    count: torch.Tensor         # [K, S, M]
    wins: torch.Tensor          # [K, S, M, N']

    @classmethod
    def empty(cls, capacity: int, seeds: int, mechanisms: int, experts: int, device) -> "History":
        z = lambda *shape: torch.zeros(capacity, *shape, dtype=torch.float32, device=device)  # noqa: E731
        return cls(z(seeds, mechanisms, experts), z(seeds, mechanisms), z(seeds, mechanisms, experts))

    @property
    def capacity(self) -> int:
        return self.count.shape[0]

    def record(self, iteration: torch.Tensor, mechanism: torch.Tensor, scores: torch.Tensor,
               won: torch.Tensor) -> None:
        """mechanism [B,S], scores and won [B,S,N'] of `iteration` into its slot of the ring."""
        K, S, M, N = self.score_sum.shape
        slot = ((iteration - 1) % K).view(1)
        flat = (mechanism + M * torch.arange(S, device=mechanism.device)).transpose(0, 1).reshape(-1)  # [S*B]
        per = lambda v: v.transpose(0, 1).reshape(-1, *v.shape[2:]).float()  # noqa: E731
        score_sum = torch.zeros(S * M, N, device=scores.device).index_add_(0, flat, per(scores))
        wins = torch.zeros(S * M, N, device=scores.device).index_add_(0, flat, per(won))
        count = torch.zeros(S * M, device=scores.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
        self.score_sum.index_copy_(0, slot, score_sum.view(1, S, M, N))
        self.wins.index_copy_(0, slot, wins.view(1, S, M, N))
        self.count.index_copy_(0, slot, count.view(1, S, M))

    def rows(self, first: int, last: int) -> dict[str, torch.Tensor]:
        """Iterations first..last (at most `capacity` of them) on the host: iteration [L] and
        score_sum [L,S,M,N'], count [L,S,M], wins [L,S,M,N']."""
        its = torch.arange(first, last + 1)
        slots = (its - 1) % self.capacity
        return {"iteration": its, "score_sum": self.score_sum[slots.to(self.count.device)].cpu(),
                "count": self.count[slots.to(self.count.device)].cpu(),
                "wins": self.wins[slots.to(self.count.device)].cpu().round().long()}


# ---------------------------------------------------------------- one iteration

class MaskedUpdate:
    """The experts' update without host synchronisation (capturable: CUDA graph, torch.compile): each
    expert's loss is masked to the digits it won and the gradient runs back through D on every
    expert's output and through every expert, whether it won or not."""

    def forward(self, committee: Committee, x_t: torch.Tensor):
        return committee(x_t, "batch"), None

    def scored(self, out: torch.Tensor) -> torch.Tensor:
        return out                                  # the scores carry the experts' graph

    def update(self, st, loss, x_t, outputs, logits, won) -> None:
        wins = won.sum(0)                                                    # [S,N']
        per_expert = (won * loss.expert(logits)).sum(0) / wins.clamp(min=1)
        grads = torch.autograd.grad(per_expert.sum(), list(st.committee.parameters()), retain_graph=True)
        st.expert_opt.step(grads, (wins > 0).reshape(-1))


class GatheredUpdate:
    """The experts' update doing only the algorithm's work (the CPU's eager step): D re-scores each
    digit's winning output alone (B images per seed, not B x N'), so D's input gradient runs on those;
    experts that won nothing are left out of the backward (their outputs detached, a host
    synchronisation). The other experts' backward still covers the whole minibatch: with BatchNorm
    in train mode every digit's statistics carry gradient. Equal to MaskedUpdate up to round-off."""

    def forward(self, committee: Committee, x_t: torch.Tensor):
        outputs = committee.outputs(x_t, "batch")                            # S*N' x [B,1,H,W]
        B, S, H, W = x_t.shape
        with torch.no_grad():
            out = torch.cat(outputs, 1).reshape(B, S, committee.n_experts, H, W)
        return out, outputs

    def scored(self, out: torch.Tensor) -> torch.Tensor:
        return out                                  # already detached: the scores carry no graph

    def update(self, st, loss, x_t, outputs, logits, won) -> None:
        B, S, N = won.shape
        wins = won.sum(0)                                                    # [S,N']
        active = (wins > 0).reshape(-1)
        graphs = [o if a else o.detach() for o, a in zip(outputs, active.tolist())]
        winner = won.argmax(-1)                                              # [B,S]
        column = (winner + N * torch.arange(S, device=winner.device)).view(B, S, 1, 1)
        best = torch.cat(graphs, 1).gather(1, column.expand(B, S, *x_t.shape[2:]))   # [B,S,H,W]
        per_digit = loss.expert(st.discs.logits(best)) / wins.gather(1, winner.T).T  # mean over its digits
        grads = torch.autograd.grad(per_digit.sum(), list(st.committee.parameters()), allow_unused=True,
                                    materialize_grads=True)
        st.expert_opt.step(grads, active)


class NoGradForward:
    """The minibatch forward of updates that take no gradient through it (they differentiate their
    own forwards, or none): BatchNorm statistics move, no graph is kept."""

    @torch.no_grad()
    def forward(self, committee: Committee, x_t: torch.Tensor):
        return committee(x_t, "batch"), None

    def scored(self, out: torch.Tensor) -> torch.Tensor:
        return out


class PerExampleUpdate(NoGradForward):
    """LICM §3 read literally ("after an expert wins a data point x', its parameters are updated"):
    one Adam step per digit, in minibatch order, for that digit's winner. Every expert maps the digit
    (BatchNorm statistics move as in the reference); a Python loop over digits, never captured."""

    def update(self, st, loss, x_t, outputs, logits, won) -> None:
        params = list(st.committee.parameters())
        for b in range(x_t.shape[0]):
            z = d_logits(st.discs, st.committee(x_t[b:b + 1], "batch"))[0]  # [S,N']
            lb = (won[b] * loss.expert(z)).sum(1)                            # each seed's winner of digit b
            st.expert_opt.step(torch.autograd.grad(lb.sum(), params), won[b].reshape(-1) > 0)


class NoUpdate(NoGradForward):
    """detach_expert_scores (EXPAND's public code): outputs detached before scoring, the experts never
    step (their BatchNorm statistics still move)."""

    def update(self, st, loss, x_t, outputs, logits, won) -> None:
        pass


class JointD:
    """Alg. 1 line 5, eq. 3: one Adam step of D on the canonical digits (real) and every expert's
    output (fake, each expert weighted 1/N'); one D forward on [fakes; real] serves the scores too."""

    def logits(self, discs: Discriminators, fakes: torch.Tensor, x_r: torch.Tensor):
        return d_logits(discs, fakes, x_r)

    def update(self, st, loss, fake: torch.Tensor, real: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
        d_loss = loss.fake(fake) + loss.real(real)
        st.disc_opt.step(torch.autograd.grad(d_loss.sum(), list(st.discs.parameters())))
        loss.after_d_step(st.discs)
        return d_loss.detach()


class FakesThenRealD:
    """LICM §4's text: D is trained against the experts' outputs, "then" a minibatch of canonical
    digits updates it: two Adam steps, the second from D after the first."""

    def logits(self, discs: Discriminators, fakes: torch.Tensor, x_r: torch.Tensor):
        return d_logits(discs, fakes), None

    def update(self, st, loss, fake: torch.Tensor, real, x_r: torch.Tensor) -> torch.Tensor:
        params = list(st.discs.parameters())
        fake_loss = loss.fake(fake)
        st.disc_opt.step(torch.autograd.grad(fake_loss.sum(), params))
        loss.after_d_step(st.discs)
        real_loss = loss.real(st.discs.logits(x_r))
        st.disc_opt.step(torch.autograd.grad(real_loss.sum(), params))
        loss.after_d_step(st.discs)
        return (fake_loss + real_loss).detach()


def winners_from_scores(st, x_t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """One-hot winners [B,S,N'] from the logits of the trained forward (BatchNorm in train mode)."""
    return one_hot(logits.detach().argmax(-1), logits.shape[-1], logits.dtype)


@torch.no_grad()
def winners_from_running_stats(st, x_t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """bn_mode_scoring: eval: winners from a forward with the experts' running statistics, scored by
    the same D (the update still differentiates the train-mode forward)."""
    z = d_logits(st.discs, st.committee(x_t, "running"))
    return one_hot(z.argmax(-1), z.shape[-1], logits.dtype)


class Step:
    """One iteration of Alg. 1 for every seed of a licm.state.RunState, everything in place. The
    variants are chosen here, once: the order (scores from D before or after its update), the
    experts' update (masked, gathered, per example, none), D's update (joint, fakes then real) and
    the winners' BatchNorm mode; the iteration itself tests no flag."""

    def __init__(self, cfg: StepConfig, loss):
        self.loss, self.bf16 = loss, cfg.bf16
        self.order = self.literal if cfg.expert_scores_from == "d_before_update" else self.dcgan
        self.d = JointD() if cfg.d_update == "joint" else FakesThenRealD()
        self.choose = winners_from_scores if cfg.bn_mode_scoring == "train" else winners_from_running_stats
        if cfg.detach_expert_scores:
            self.experts = NoUpdate()
        elif cfg.expert_update == "per_example":
            self.experts = PerExampleUpdate()
        else:
            self.experts = GatheredUpdate() if cfg.expert_gradient == "gathered" else MaskedUpdate()

    def __call__(self, st, data: TrainData, sampler: Sampler) -> None:
        iteration = st.iteration + 1
        x_t, mechanism, x_r = minibatch(data, sampler, iteration)
        with torch.autocast(st.iteration.device.type, torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            logits, won, d_loss = self.order(st, x_t, x_r)
        logits = logits.detach()
        wins = won.sum(0)                                                    # [S,N']
        e_loss = ((won * self.loss.expert(logits)).sum(0) / wins.clamp(min=1)).sum(1) / (wins > 0).sum(1)
        st.history.record(iteration, mechanism, self.loss.score(logits), won)
        finite = torch.isfinite(d_loss) & torch.isfinite(e_loss)
        st.first_bad.copy_(torch.where(finite, st.first_bad, torch.minimum(st.first_bad, iteration)))
        st.iteration.add_(1)

    def literal(self, st, x_t: torch.Tensor, x_r: torch.Tensor):
        """Alg. 1 as written: the scores c_j of line 4 pick the winners and give their gradient
        (line 6), D's update (line 5) sees the same outputs. Lines 5 and 6 change disjoint parameters
        and both read the state of line 4: the experts go first, since they read D before its step."""
        # (1) lines 3-4: every expert maps x'; D scores every output (and, joint, the canonical digits)
        out, outputs = self.experts.forward(st.committee, x_t)
        fake, real = self.d.logits(st.discs, self.experts.scored(out), x_r)
        won = self.choose(st, x_t, fake)
        # (2) line 6: each winning expert's Adam step on its digits, scored by D before its update
        self.experts.update(st, self.loss, x_t, outputs, fake, won)
        # (3) line 5: D's update on the outputs of (1)
        return fake, won, self.d.update(st, self.loss, fake, real, x_r)

    def dcgan(self, st, x_t: torch.Tensor, x_r: torch.Tensor):
        """expert_scores_from: d_after_update, as DCGAN-style code re-scores G's outputs: D steps
        first, then the updated D scores the outputs, picks the winners and gives their gradient."""
        out, outputs = self.experts.forward(st.committee, x_t)
        # (1) line 5: D's update on every expert's output
        fake, real = self.d.logits(st.discs, out.detach(), x_r)
        d_loss = self.d.update(st, self.loss, fake, real, x_r)
        # (2) line 4 with the updated D: scores and winners
        logits = d_logits(st.discs, self.experts.scored(out))
        won = self.choose(st, x_t, logits)
        # (3) line 6: each winning expert's Adam step on its digits
        self.experts.update(st, self.loss, x_t, outputs, logits, won)
        return logits, won, d_loss


# ---------------------------------------------------------------- approximate identity initialisation

def approximate_identity(st, data: TrainData, sampler: Sampler, max_iterations: int, threshold: float,
                         on_step: Callable[[int], None] | None = None) -> None:
    """LICM App. B: train every expert towards the identity (MSE to its input) on transformed digits,
    every expert of a seed on the same minibatches. An expert whose minibatch MSE is below
    `threshold` is done for good (EXPAND Alg. 1): from then on its weights, Adam state and BatchNorm
    statistics stay put, so a seed's result does not depend on how long the other seeds of its batch
    go on. Stops when every expert is done or after `max_iterations`; st.aii_steps counts the steps."""
    c = st.committee
    S, N, w = c.seeds, c.n_experts, c.width
    done = torch.zeros(S, N, dtype=torch.bool, device=st.aii_steps.device)
    params = list(c.parameters())
    for k in range(1, max_iterations + 1):
        x = data.transformed[sampler(torch.tensor(k, device=done.device), STREAM_AII, len(data.transformed))]
        stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in c.bns]
        y = c(x, "batch")
        mse = ((y - x.unsqueeze(2)) ** 2).mean(dim=(0, 3, 4))               # [S,N']
        done |= mse.detach() < threshold
        if not bool(done.all()):
            st.expert_opt.step(torch.autograd.grad(mse.sum(), params), ~done.reshape(-1))
            st.aii_steps += (~done).long()
        frozen = done.reshape(-1).repeat_interleave(w)
        with torch.no_grad():
            for bn, (mean, var) in zip(c.bns, stats):
                bn.running_mean.copy_(torch.where(frozen, mean, bn.running_mean))
                bn.running_var.copy_(torch.where(frozen, var, bn.running_var))
        if bool(done.all()):
            break
        if on_step is not None:
            on_step(k)


# ---------------------------------------------------------------- eager, compiled or captured

class Stepper:
    """Calls `fn` (one whole iteration; no host synchronisation unless eager) eagerly, compiled with
    torch.compile(fullgraph=True) (CPU), or captured once in a CUDA graph and replayed (CUDA: the
    first WARMUP calls run eagerly on a side stream, so cuDNN and the allocator settle first)."""

    WARMUP = 3

    def __init__(self, fn: Callable[[], None], mode: str, device: torch.device, backend: str = "inductor"):
        self.fn, self.mode, self.device = fn, mode, torch.device(device)
        self.graph, self.calls = None, 0
        if mode == "compiled":
            from torch import _dynamo

            # a compiled function that calls torch.autograd.grad needs this, else a graph break
            _dynamo.config.trace_autograd_ops = True
            self.fn = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)

    def __call__(self) -> None:
        if self.mode != "graph":
            self.fn()
            return
        if self.graph is None and self.calls < self.WARMUP:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            if self.graph is None:
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.fn()
            self.graph.replay()
        self.calls += 1


def step_mode(choice, device: torch.device, cfg: StepConfig) -> tuple[str, str]:
    """train.compile (auto | on | off; YAML may give a boolean) -> (eager | compiled | graph, why).

    auto = on for CUDA (a captured iteration removes ~190 kernel launches: 9.2 -> 5.9 ms on an H100,
    benchmarks/README.md), off for CPU (torch.compile measured no gain there). Per-example updates stay eager."""
    choice = {True: "on", False: "off"}.get(choice, choice)
    if cfg.expert_update == "per_example":
        return "eager", "per-example updates loop over digits in Python: not capturable"
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return "eager", f"train.compile: {choice}"
    return ("graph" if device.type == "cuda" else "compiled"), f"train.compile: {choice}"


def expert_gradient(mode: str) -> str:
    """The experts' gradient for a step mode: `gathered` (the algorithm's work only) where the step
    runs eagerly, `masked` where it is compiled or captured (no host synchronisation allowed)."""
    return "gathered" if mode == "eager" else "masked"
