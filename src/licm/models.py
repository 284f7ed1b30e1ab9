"""Networks of LICM (Parascandolo et al. 2018, Table 1 and §4), written plainly.

* `Expert`: Conv3x3(1->w)+BN+ELU, `hidden_layers` x [Conv3x3(w->w)+BN+ELU], Conv3x3(w->1)+sigmoid,
  1-pixel zero padding everywhere, so it is fully convolutional (any H, W). Convolutions followed
  by BatchNorm have no bias: BN removes any constant, so the bias's true gradient is 0 and Adam
  would turn round-off into full-size steps. With w=32 and 3 hidden layers it has 28,481
  parameters (LICM footnote 5: "~27K"; the convolution weights alone are 28,224).
  `receptive_field=True` (LICM §5) adds two 2x2 average poolings and two nearest-neighbour
  upsamplings inside (H and W must then be divisible by 4).
* `Discriminator`: [Conv3x3 16, ELU]x3, avgpool2, [Conv3x3 32, ELU]x2, avgpool2, [Conv3x3 64, ELU]x2,
  avgpool2, FC 1024 + ELU, FC 1 (+ sigmoid; raw for a Wasserstein critic).
* A committee of N' experts, two implementations with one interface, `forward(x[B,1,H,W]) ->
  [B,N',1,H,W]`:
  - `LoopCommittee`: a ModuleList of `Expert`s, run one after the other (the reference);
  - `GroupedCommittee`: the same N' networks as one network whose convolutions have groups=N'
    (BatchNorm2d over N'*w channels is then exactly per-expert BatchNorm).
  Both use the same layer layout, so a grouped tensor is the concatenation along dim 0 of the
  experts' tensors; `loop_to_grouped` / `grouped_to_loop` convert in both directions.
"""
from __future__ import annotations

import torch
from torch import nn


def _expert_layers(width: int, hidden_layers: int, receptive_field: bool, experts: int = 1) -> list[nn.Module]:
    """Layer list shared by `Expert` (experts=1) and `GroupedCommittee` (experts=N', groups=N')."""
    n, w = experts, width
    convs = [nn.Conv2d(1, n * w, 3, padding=1, bias=False)]
    convs += [nn.Conv2d(n * w, n * w, 3, padding=1, bias=False, groups=n) for _ in range(hidden_layers)]
    blocks = len(convs)
    layers: list[nn.Module] = []
    for i, conv in enumerate(convs):
        layers += [conv, nn.BatchNorm2d(n * w), nn.ELU()]
        if receptive_field:
            if i in (0, 1):
                layers.append(nn.AvgPool2d(2))
            if i in (blocks - 2, blocks - 1):
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    layers += [nn.Conv2d(n * w, n, 3, padding=1, bias=True, groups=n), nn.Sigmoid()]
    return layers


class Expert(nn.Module):
    """One expert: maps [B,1,H,W] in [0,1] to [B,1,H,W] in (0,1)."""

    def __init__(self, width: int = 32, hidden_layers: int = 3, receptive_field: bool = False):
        super().__init__()
        self.net = nn.Sequential(*_expert_layers(width, hidden_layers, receptive_field))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LoopCommittee(nn.Module):
    """Reference committee: N' independent `Expert`s applied one after the other."""

    def __init__(self, experts: int = 10, width: int = 32, hidden_layers: int = 3, receptive_field: bool = False):
        super().__init__()
        self.config = dict(experts=experts, width=width, hidden_layers=hidden_layers, receptive_field=receptive_field)
        self.experts = nn.ModuleList(Expert(width, hidden_layers, receptive_field) for _ in range(experts))

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([e(x) for e in self.experts], dim=1)


class GroupedCommittee(nn.Module):
    """Vectorized committee: the N' experts as one grouped-convolution network."""

    def __init__(self, experts: int = 10, width: int = 32, hidden_layers: int = 3, receptive_field: bool = False):
        super().__init__()
        self.config = dict(experts=experts, width=width, hidden_layers=hidden_layers, receptive_field=receptive_field)
        self.net = nn.Sequential(*_expert_layers(width, hidden_layers, receptive_field, experts))

    @property
    def n_experts(self) -> int:
        return self.config["experts"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)                       # [B, N', H, W]: channel j is expert j's output
        return y.unsqueeze(2)                 # [B, N', 1, H, W]


def loop_to_grouped(loop: LoopCommittee, grouped: GroupedCommittee | None = None) -> GroupedCommittee:
    """Copy the experts' weights and BN statistics into a grouped committee (made if not given)."""
    grouped = grouped if grouped is not None else GroupedCommittee(**loop.config)
    states = [e.net.state_dict() for e in loop.experts]
    target = {}
    for key, value in grouped.net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            target[key] = states[0][key].clone()
        else:
            target[key] = torch.cat([s[key] for s in states], dim=0).to(value)
    grouped.net.load_state_dict(target)
    return grouped


def grouped_to_loop(grouped: GroupedCommittee, loop: LoopCommittee | None = None) -> LoopCommittee:
    """Copy a grouped committee's weights and BN statistics into per-expert networks."""
    loop = loop if loop is not None else LoopCommittee(**grouped.config)
    n = grouped.n_experts
    state = grouped.net.state_dict()
    for i, expert in enumerate(loop.experts):
        own = {}
        for key, value in expert.net.state_dict().items():
            if key.endswith("num_batches_tracked"):
                own[key] = state[key].clone()
            else:
                own[key] = state[key].chunk(n, dim=0)[i].clone().to(value)
        expert.net.load_state_dict(own)
    return loop


def expert_parameter_count(width: int = 32, hidden_layers: int = 3, receptive_field: bool = False) -> int:
    return sum(p.numel() for p in Expert(width, hidden_layers, receptive_field).parameters())


class Discriminator(nn.Module):
    """LICM Table 1 discriminator. `forward` gives [B] scores: probabilities in (0,1) when
    `wasserstein` is False, raw critic values otherwise; `logits` gives the pre-sigmoid values."""

    def __init__(self, widths=(16, 32, 64), convs=(3, 2, 2), fc: int = 1024, image_size: int = 32,
                 wasserstein: bool = False):
        super().__init__()
        self.wasserstein = wasserstein
        layers: list[nn.Module] = []
        channels, size = 1, image_size
        for width, count in zip(widths, convs):
            for _ in range(count):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ELU()]
                channels = width
            layers.append(nn.AvgPool2d(2))
            size //= 2
        layers += [nn.Flatten(), nn.Linear(channels * size * size, fc), nn.ELU(), nn.Linear(fc, 1)]
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        return out if self.wasserstein else torch.sigmoid(out)


def build(params: dict, implementation: str = "loop") -> tuple[nn.Module, Discriminator]:
    """Committee and discriminator from `params` (model, data.image_size, train.loss).

    The committee is always initialised as a `LoopCommittee` (expert 0 first, then expert 1, ...)
    and converted, so a seed gives the same initial weights whatever the implementation.
    """
    m = params["model"]
    committee: nn.Module = LoopCommittee(m["experts"], m["expert_width"], m["expert_hidden_layers"],
                                         m["receptive_field"])
    disc = Discriminator(m["disc_widths"], m["disc_convs"], m["disc_fc"], params["data"]["image_size"],
                         wasserstein=params["train"]["loss"] == "wasserstein")
    if implementation == "vectorized":
        committee = loop_to_grouped(committee)
    elif implementation != "loop":
        raise ValueError(f"implementation: expected loop or vectorized, given {implementation!r}")
    return committee, disc
