"""LICM Algorithm 1 for one seed, written the plain way: the reference the engine is tested against.

One nn.Module and one torch.optim.Adam per expert, one discriminator with its own Adam, Python
loops over experts and digits, every variant a branch. It is what most code does and what the
benchmark calls the reference loop (benchmarks/bench_committee.py). It draws no
minibatches itself: the caller passes the digits, so the engine's and the reference's iterations
can be fed the same ones. Not used by `licm train`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from licm.models import Discriminator, Expert


class Reference:
    def __init__(self, experts: list[Expert], disc: Discriminator, params: dict):
        t, a = params["train"], params["aii"]
        self.t, self.a = t, a
        self.experts, self.disc = nn.ModuleList(experts), disc
        self.expert_opts = [torch.optim.Adam(e.parameters(), lr=a["lr"], betas=tuple(t["adam_betas"]))
                            for e in experts]
        self.disc_opt = torch.optim.Adam(disc.parameters(), lr=t["lr_discriminator"], betas=tuple(t["adam_betas"]))
        self.wgan = t["loss"] == "wasserstein"

    # ------------------------------------------------------------ approximate identity (LICM App. B)

    def identity_step(self, x: torch.Tensor, done: list[bool]) -> list[bool]:
        """One AII step on digits x [B,1,H,W]: an expert not yet done maps x; if its MSE is below the
        threshold it is done for good (its BatchNorm statistics are put back), else it steps."""
        for j, e in enumerate(self.experts):
            if done[j]:
                continue
            stats = {k: v.clone() for k, v in e.state_dict().items() if "running" in k}
            mse = ((e(x) - x) ** 2).mean()
            if float(mse.detach()) < self.a["mse_threshold"]:
                done[j] = True
                e.load_state_dict(stats, strict=False)
                continue
            self.expert_opts[j].zero_grad()
            mse.backward()
            self.expert_opts[j].step()
        return done

    def start_adversarial(self) -> None:
        t = self.t
        if t["carry_aii_optimizer"]:
            for o in self.expert_opts:
                for g in o.param_groups:
                    g["lr"] = t["lr_expert"]
        else:
            self.expert_opts = [torch.optim.Adam(e.parameters(), lr=t["lr_expert"], betas=tuple(t["adam_betas"]))
                                for e in self.experts]

    # ------------------------------------------------------------ one iteration of Alg. 1

    def expert_loss(self, z: torch.Tensor) -> torch.Tensor:
        return -z if self.wgan else F.softplus(-z)

    def d_loss_fake(self, z: torch.Tensor) -> torch.Tensor:
        return z.mean() if self.wgan else F.binary_cross_entropy_with_logits(z, torch.zeros_like(z))

    def d_loss_real(self, z: torch.Tensor) -> torch.Tensor:
        target = torch.full_like(z, 1.0 - self.t["label_smoothing"])
        return -z.mean() if self.wgan else F.binary_cross_entropy_with_logits(z, target)

    def d_step(self, loss: torch.Tensor) -> None:
        self.disc_opt.zero_grad()
        loss.backward(inputs=list(self.disc.parameters()))
        self.disc_opt.step()
        if self.wgan:
            with torch.no_grad():
                for p in self.disc.parameters():
                    p.clamp_(-self.t["wgan_clip"], self.t["wgan_clip"])

    def update_discriminator(self, outputs: list[torch.Tensor], x_real: torch.Tensor) -> None:
        """LICM eq. 3 on the experts' outputs (detached) and canonical digits: one step, or two (§4)."""
        fake = torch.stack([self.disc.logits(o.detach()) for o in outputs], 1)        # [B,N']
        if self.t["d_update"] == "joint":
            self.d_step(self.d_loss_fake(fake) + self.d_loss_real(self.disc.logits(x_real)))
        else:
            self.d_step(self.d_loss_fake(fake))
            self.d_step(self.d_loss_real(self.disc.logits(x_real)))

    def step(self, x_real: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """One iteration on canonical digits x_real and transformed digits x_t [B,1,H,W]; returns the
        winners [B]."""
        t = self.t
        outputs = [e(x_t) for e in self.experts]
        if t["expert_scores_from"] == "d_after_update":
            self.update_discriminator(outputs, x_real)
        scored = [o.detach() if t["detach_expert_scores"] else o for o in outputs]
        logits = torch.stack([self.disc.logits(o) for o in scored], 1)                 # [B,N']
        if t["bn_mode_scoring"] == "eval":
            with torch.no_grad():
                choice = []
                for e in self.experts:
                    e.eval()
                    choice.append(self.disc.logits(e(x_t)))
                    e.train()
                winners = torch.stack(choice, 1).argmax(1)
        else:
            winners = logits.detach().argmax(1)
        if not t["detach_expert_scores"] and t["expert_update"] == "minibatch":
            for j, e in enumerate(self.experts):
                won = winners == j
                if bool(won.any()):
                    loss = self.expert_loss(logits[won, j]).mean()
                    grads = torch.autograd.grad(loss, list(e.parameters()), retain_graph=True)
                    for p, g in zip(e.parameters(), grads):
                        p.grad = g
                    self.expert_opts[j].step()
        elif not t["detach_expert_scores"]:                                     # per example, in order
            for b in range(len(x_t)):
                ys = [e(x_t[b:b + 1]) for e in self.experts]                   # every expert runs (BN)
                j = int(winners[b])
                loss = self.expert_loss(self.disc.logits(ys[j])).sum()
                grads = torch.autograd.grad(loss, list(self.experts[j].parameters()))
                for p, g in zip(self.experts[j].parameters(), grads):
                    p.grad = g
                self.expert_opts[j].step()
        if t["expert_scores_from"] == "d_before_update":
            self.update_discriminator(outputs, x_real)
        return winners
