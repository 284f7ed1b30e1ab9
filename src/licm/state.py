"""The state of S runs trained together, built the same way for a fresh start and for a resume.

A `RunState` holds the batched committee and discriminators, both optimizers, the iteration (a
device tensor: the captured step advances it), the identity-initialisation step counts, the first
iteration with a non-finite loss per seed, and the device ring buffer of the history. Each seed's
part is a slice of every tensor (licm.models.seed_state), so a seed's checkpoint is written alone
into its own run folder and a later job may resume it alone or batched with other seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from licm import models
from licm.models import Committee, Discriminators
from licm.step import NEVER, GroupedAdam, History

HISTORY_CAPACITY = 50    # iterations between copies of the history to the host (one sync each)


@dataclass
class RunState:
    seeds: list[int]
    committee: Committee
    discs: Discriminators
    expert_opt: GroupedAdam
    disc_opt: GroupedAdam
    iteration: torch.Tensor        # [] int64, iterations done
    aii_steps: torch.Tensor        # [S, N'] int64, identity-initialisation steps per expert
    first_bad: torch.Tensor        # [S] int64, first iteration with a non-finite loss (NEVER if none)
    history: History

    @classmethod
    def fresh(cls, params: dict, seeds: list[int], mechanisms: int, device, layout: str,
              dtype=torch.float32) -> "RunState":
        """New runs: each seed's own initial weights, the committee's Adam at the AII learning rate."""
        committee, discs = models.build(params, seeds, layout)
        return cls._assemble(params, seeds, committee.to(device, dtype), discs.to(device, dtype), mechanisms,
                             params["aii"]["lr"])

    @classmethod
    def resume(cls, params: dict, checkpoints: list[dict], mechanisms: int, device, layout: str,
               dtype=torch.float32) -> "RunState":
        """Runs from their checkpoints (one per seed, all at the same iteration)."""
        seeds = [int(ck["seed"]) for ck in checkpoints]
        committee, discs = (net.to(device, dtype) for net in models.empty(params, len(seeds), layout))
        committee.load_state_dict(models.join_seeds([ck["committee"] for ck in checkpoints]))
        discs.load_state_dict(models.join_seeds([ck["discriminator"] for ck in checkpoints]))
        st = cls._assemble(params, seeds, committee.to(device, dtype), discs.to(device, dtype), mechanisms,
                           params["train"]["lr_expert"])
        st.expert_opt.load_state_dict(models.join_seeds([ck["expert_optimizer"] for ck in checkpoints]))
        st.disc_opt.load_state_dict(models.join_seeds([ck["discriminator_optimizer"] for ck in checkpoints]))
        st.iteration.fill_(int(checkpoints[0]["iteration"]))
        st.aii_steps.copy_(torch.stack([torch.as_tensor(ck["aii_iterations"]) for ck in checkpoints]))
        return st

    @classmethod
    def _assemble(cls, params, seeds, committee, discs, mechanisms, expert_lr) -> "RunState":
        t, device = params["train"], next(committee.parameters()).device
        S, N = len(seeds), committee.n_experts
        return cls(seeds, committee, discs,
                   GroupedAdam(list(committee.parameters()), S * N, expert_lr, t["adam_betas"]),
                   GroupedAdam(list(discs.parameters()), S, t["lr_discriminator"], t["adam_betas"]),
                   torch.zeros((), dtype=torch.int64, device=device),
                   torch.zeros(S, N, dtype=torch.int64, device=device),
                   torch.full((S,), NEVER, dtype=torch.int64, device=device),
                   History.empty(HISTORY_CAPACITY, S, mechanisms, N, device))

    def use_channels_last(self, on: bool) -> None:
        """Convolutions of both networks in channels_last memory format (faster on the CPU), weights
        and Adam moments stored so; checkpoints are the same in either format."""
        self.committee.use_channels_last(on)
        self.discs.use_channels_last(on)
        for opt in (self.expert_opt, self.disc_opt):
            opt.match_formats()

    def start_adversarial(self, params: dict) -> None:
        """After AII: the committee's Adam carries on with lr_expert (carry_aii_optimizer) or starts afresh."""
        t = params["train"]
        if t["carry_aii_optimizer"]:
            self.expert_opt.lr = float(t["lr_expert"])
        else:
            self.expert_opt = GroupedAdam(list(self.committee.parameters()), self.expert_opt.groups,
                                          t["lr_expert"], t["adam_betas"])

    def checkpoint(self, i: int) -> dict:
        """Seed number i's state (tensors on the CPU), without its history (the caller adds it) and
        without the format number (licm.checkpoint.save stamps it)."""
        part = lambda state: _cpu(models.seed_state(state, len(self.seeds), i))  # noqa: E731
        return {"seed": self.seeds[i], "iteration": int(self.iteration),
                "committee": part(self.committee.state_dict()), "discriminator": part(self.discs.state_dict()),
                "expert_optimizer": part(self.expert_opt.state_dict()),
                "discriminator_optimizer": part(self.disc_opt.state_dict()),
                "aii_iterations": self.aii_steps[i].cpu()}


def _cpu(state):
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_cpu(v) for v in state]
    return state.cpu() if isinstance(state, torch.Tensor) else state
