"""Networks of LICM (Parascandolo et al. 2018, Table 1 and §4).

* `Expert`, `Discriminator`: one network each, written plainly as nn.Sequential. They define the
  architecture (and its initialisation), are drawn in licm-table1 / EXPAND Fig. 3-4, and serve as
  the reference the batched networks are tested against.
  - Expert: Conv3x3(1->w)+BN+ELU, `hidden_layers` x [Conv3x3(w->w)+BN+ELU], Conv3x3(w->1)+sigmoid,
    1-pixel zero padding, fully convolutional. Convolutions followed by BatchNorm have no bias: BN
    removes any constant, so the bias's true gradient is 0 and Adam would turn round-off into
    full-size steps. w=32, 3 hidden layers: 28,481 parameters (LICM footnote 5: "~27K").
    `receptive_field=True` (LICM §5) adds two 2x2 average poolings and two nearest upsamplings.
  - Discriminator: [Conv3x3 16, ELU]x3, avgpool2, [Conv3x3 32, ELU]x2, avgpool2, [Conv3x3 64, ELU]x2,
    avgpool2, FC 1024 + ELU, FC 1 (+ sigmoid; raw for a Wasserstein critic).
* `Committee`: S seeds x N' experts as ONE set of tensors. Every layer's tensors of all experts are
  concatenated along dim 0, seed-major (seed 0's experts 0..N'-1, then seed 1's, ...), so a seed's
  or an expert's state is a contiguous slice. Two forwards over the same tensors, equal up to
  round-off: `vectorized` (grouped convolutions: one kernel launch per layer for the whole
  committee, what a GPU wants) and `loop` (expert after expert on slices of the tensors, the
  per-expert arrangement, fastest on small CPUs: benchmarks/README.md). BatchNorm is per (seed, expert).
  Initial weights come from plain `Expert`s (`build`), so a seed starts from the same weights
  whatever batch it trains in and whatever the layout.
* `Discriminators`: S discriminators as one network: convolutions grouped by seed, the fully
  connected layers as batched matrix products. D has no BatchNorm, so a digit's score does not
  depend on the rest of its batch.
Batched input layout: [K, S, H, W], channel s = seed s's image (each seed samples its own digits).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM, BN_EPS = 0.1, 1e-5          # nn.BatchNorm2d's defaults


def _expert_layers(width: int, hidden_layers: int, receptive_field: bool) -> list[nn.Module]:
    convs = [nn.Conv2d(1, width, 3, padding=1, bias=False)]
    convs += [nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(hidden_layers)]
    layers: list[nn.Module] = []
    for i, conv in enumerate(convs):
        layers += [conv, nn.BatchNorm2d(width), nn.ELU()]
        if receptive_field and i in (0, 1):
            layers.append(nn.AvgPool2d(2))
        if receptive_field and i in (len(convs) - 2, len(convs) - 1):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    return layers + [nn.Conv2d(width, 1, 3, padding=1, bias=True), nn.Sigmoid()]


class Expert(nn.Module):
    """One expert: maps [B,1,H,W] in [0,1] to [B,1,H,W] in (0,1)."""

    def __init__(self, width: int = 32, hidden_layers: int = 3, receptive_field: bool = False):
        super().__init__()
        self.net = nn.Sequential(*_expert_layers(width, hidden_layers, receptive_field))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def expert_parameter_count(width: int = 32, hidden_layers: int = 3, receptive_field: bool = False) -> int:
    return sum(p.numel() for p in Expert(width, hidden_layers, receptive_field).parameters())


class Discriminator(nn.Module):
    """LICM Table 1 discriminator: `logits(x[B,1,H,W]) -> [B]`; `forward` adds the sigmoid unless Wasserstein."""

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


# ---------------------------------------------------------------- batched networks

class _Tensors(nn.Module):
    """A named holder of parameters and buffers (so state_dict keys read conv0.weight, bn0.running_mean)."""

    def __init__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor] | None = None):
        super().__init__()
        for k, v in params.items():
            self.register_parameter(k, nn.Parameter(v))
        for k, v in (buffers or {}).items():
            self.register_buffer(k, v)


class Committee(nn.Module):
    """S seeds x N' experts in one set of tensors: forward(x[B,S,H,W]) -> [B,S,N',H,W].

    `layout` picks the forward (see the module docstring); `copy_from` loads plain `Expert`s.
    """

    def __init__(self, experts: int, width: int, hidden_layers: int, receptive_field: bool = False,
                 seeds: int = 1, layout: str = "vectorized"):
        super().__init__()
        if layout not in ("vectorized", "loop"):
            raise ValueError(f"layout: expected vectorized or loop, given {layout!r}")
        self.config = dict(experts=experts, width=width, hidden_layers=hidden_layers,
                           receptive_field=receptive_field)
        self.seeds, self.n_experts, self.width, self.layout = seeds, experts, width, layout
        self.channels_last = False          # see use_channels_last
        g, w = seeds * experts, width
        self.convs = nn.ModuleList(
            _Tensors({"weight": torch.zeros(g * w, 1 if i == 0 else w, 3, 3)}) for i in range(hidden_layers + 1))
        self.bns = nn.ModuleList(
            _Tensors({"weight": torch.ones(g * w), "bias": torch.zeros(g * w)},
                     {"running_mean": torch.zeros(g * w), "running_var": torch.ones(g * w)})
            for _ in range(hidden_layers + 1))
        self.out = _Tensors({"weight": torch.zeros(g, w, 3, 3), "bias": torch.zeros(g)})

    def copy_from(self, experts: list[list[Expert]]) -> "Committee":
        """Load experts[s][j] (expert j of seed s, plain `Expert`s of this architecture) into the tensors."""
        flat = [e for seed in experts for e in seed]
        assert len(flat) == self.seeds * self.n_experts
        with torch.no_grad():
            for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
                conv.weight.copy_(torch.cat([_convs(e)[i].weight for e in flat]))
                for k in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, k).copy_(torch.cat([getattr(_bns(e)[i], k) for e in flat]))
            self.out.weight.copy_(torch.cat([_convs(e)[-1].weight for e in flat]))
            self.out.bias.copy_(torch.cat([_convs(e)[-1].bias for e in flat]))
        return self

    def use_channels_last(self, on: bool) -> None:
        """Convolutions in channels_last (NHWC) memory format, the weights stored so (no conversion
        per call): measured 1.2x faster for the loop's experts on the project's 2-core CPUs
        (benchmarks/README.md). Values, state_dict keys and checkpoints are the same in either format."""
        self.channels_last = on
        _set_format(self.parameters(), on)

    def forward(self, x: torch.Tensor, bn: str = "batch") -> torch.Tensor:
        """x [B,S,H,W] -> [B,S,N',H,W]. bn: `batch` (train mode: batch statistics, running stats
        updated) or `running` (eval mode: running statistics, nothing updated)."""
        B, S, H, W = x.shape
        x = self._format(x)
        y = self._grouped(x, bn) if self.layout == "vectorized" else torch.cat(self._loop(x, bn), dim=1)
        return y.reshape(B, S, self.n_experts, y.shape[-2], y.shape[-1])

    def outputs(self, x: torch.Tensor, bn: str = "batch") -> list[torch.Tensor]:
        """Each (seed, expert)'s output [B,1,H,W] for x [B,S,H,W], seed-major. In the loop layout each
        has an autograd graph of its own, so a backward from some outputs never runs the other
        experts' backward (licm.step.GatheredUpdate skips the experts that won nothing)."""
        x = self._format(x)
        return list(self._grouped(x, bn).split(1, dim=1)) if self.layout == "vectorized" else self._loop(x, bn)

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _block(self, h, i: int, weight, bn_params, groups: int, bn: str):
        h = F.conv2d(h, weight, padding=1, groups=groups)
        h = F.elu(F.batch_norm(h, bn_params[2], bn_params[3], bn_params[0], bn_params[1],
                               training=bn == "batch", momentum=BN_MOMENTUM, eps=BN_EPS))
        blocks = len(self.convs)
        if self.config["receptive_field"] and i in (0, 1):
            h = F.avg_pool2d(h, 2)
        if self.config["receptive_field"] and i in (blocks - 2, blocks - 1):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return h

    def _bn(self, i: int):
        b = self.bns[i]
        return b.weight, b.bias, b.running_mean, b.running_var

    def _grouped(self, x, bn: str):
        g = self.seeds * self.n_experts
        h = x
        for i, conv in enumerate(self.convs):
            h = self._block(h, i, conv.weight, self._bn(i), self.seeds if i == 0 else g, bn)
        return torch.sigmoid(F.conv2d(h, self.out.weight, self.out.bias, padding=1, groups=g))

    def _loop(self, x, bn: str) -> list[torch.Tensor]:
        g, w = self.seeds * self.n_experts, self.width
        weights = [conv.weight.split(w) for conv in self.convs]
        bns = [[t.split(w) for t in self._bn(i)] for i in range(len(self.convs))]
        out_w, out_b = self.out.weight.split(1), self.out.bias.split(1)
        outs = []
        for e in range(g):
            h = x[:, e // self.n_experts].unsqueeze(1)
            for i in range(len(self.convs)):
                h = self._block(h, i, weights[i][e], [t[e] for t in bns[i]], 1, bn)
            outs.append(torch.sigmoid(F.conv2d(h, out_w[e], out_b[e], padding=1)))
        return outs


def _set_format(tensors, channels_last: bool) -> None:
    """Every 4-d tensor of `tensors` in place (same tensor objects, so optimizers keep them) in
    channels_last or contiguous memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for t in tensors:
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=fmt)


def _convs(expert: Expert) -> list[nn.Conv2d]:
    return [m for m in expert.net if isinstance(m, nn.Conv2d)]


def _bns(expert: Expert) -> list[nn.BatchNorm2d]:
    return [m for m in expert.net if isinstance(m, nn.BatchNorm2d)]


class Discriminators(nn.Module):
    """S discriminators as one network: logits(x[K,S,H,W]) -> [K,S] (seed s scores channel s)."""

    def __init__(self, widths=(16, 32, 64), convs=(3, 2, 2), fc: int = 1024, image_size: int = 32,
                 wasserstein: bool = False, seeds: int = 1):
        super().__init__()
        self.wasserstein, self.seeds = wasserstein, seeds
        self.channels_last = False          # see use_channels_last
        self.stages = [int(c) for c in convs]
        layers, channels, size = [], 1, image_size
        for width, count in zip(widths, convs):
            for _ in range(count):
                layers.append(_Tensors({"weight": torch.zeros(seeds * width, channels, 3, 3),
                                        "bias": torch.zeros(seeds * width)}))
                channels = width
            size //= 2
        self.convs = nn.ModuleList(layers)
        flat = channels * size * size
        self.fc1 = _Tensors({"weight": torch.zeros(seeds, fc, flat), "bias": torch.zeros(seeds, fc)})
        self.fc2 = _Tensors({"weight": torch.zeros(seeds, 1, fc), "bias": torch.zeros(seeds, 1)})

    def copy_from(self, discs: list[Discriminator]) -> "Discriminators":
        """Load plain `Discriminator`s of this architecture, one per seed, into the tensors."""
        assert len(discs) == self.seeds
        with torch.no_grad():
            for i, layer in enumerate(self.convs):
                ms = [[m for m in d.net if isinstance(m, nn.Conv2d)][i] for d in discs]
                layer.weight.copy_(torch.cat([m.weight for m in ms]))
                layer.bias.copy_(torch.cat([m.bias for m in ms]))
            for j, fc in enumerate((self.fc1, self.fc2)):
                ms = [[m for m in d.net if isinstance(m, nn.Linear)][j] for d in discs]
                fc.weight.copy_(torch.stack([m.weight for m in ms]))
                fc.bias.copy_(torch.stack([m.bias for m in ms]))
        return self

    def use_channels_last(self, on: bool) -> None:
        """As Committee.use_channels_last."""
        self.channels_last = on
        _set_format(self.parameters(), on)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        K, S = x.shape[:2]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        h, k = x.contiguous(memory_format=fmt), 0
        for count in self.stages:
            for _ in range(count):
                layer = self.convs[k]
                h = F.elu(F.conv2d(h, layer.weight, layer.bias, padding=1, groups=S))
                k += 1
            h = F.avg_pool2d(h, 2)
        h = h.reshape(K, S, -1).transpose(0, 1)                                  # [S, K, C*h*w]
        h = F.elu(torch.baddbmm(self.fc1.bias.unsqueeze(1), h, self.fc1.weight.transpose(1, 2)))
        h = torch.baddbmm(self.fc2.bias.unsqueeze(1), h, self.fc2.weight.transpose(1, 2))   # [S, K, 1]
        return h.squeeze(2).transpose(0, 1)                                        # [K, S]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        return out if self.wasserstein else torch.sigmoid(out)


# ---------------------------------------------------------------- per-seed state

def seed_slice(tensor: torch.Tensor, seeds: int, s: int) -> torch.Tensor:
    """Seed s's block of a batched tensor (dim 0 splits into `seeds` equal contiguous blocks)."""
    if tensor.dim() == 0:
        return tensor
    return tensor.reshape(seeds, -1)[s].reshape(tensor.shape[0] // seeds, *tensor.shape[1:])


def seed_state(state: dict, seeds: int, s: int) -> dict:
    """Seed s's part of a batched state dict (nested dicts and lists of tensors too), cloned."""
    if isinstance(state, dict):
        return {k: seed_state(v, seeds, s) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [seed_state(v, seeds, s) for v in state]
    if isinstance(state, torch.Tensor):
        return seed_slice(state, seeds, s).clone()
    return state


def join_seeds(states: list) -> dict:
    """The batched state of several seeds' states (inverse of `seed_state`)."""
    first = states[0]
    if isinstance(first, dict):
        return {k: join_seeds([st[k] for st in states]) for k in first}
    if isinstance(first, (list, tuple)):
        return [join_seeds([st[i] for st in states]) for i in range(len(first))]
    if isinstance(first, torch.Tensor):
        return torch.cat([t.reshape(-1) for t in states]).reshape(len(states) * first.shape[0], *first.shape[1:]) \
            if first.dim() else first
    return first


# ---------------------------------------------------------------- construction

def seed_networks(params: dict, seed: int) -> tuple[list[Expert], Discriminator]:
    """Seed `seed`'s initial experts (expert 0 first) and discriminator, drawn from torch's default
    initialisation under `torch.manual_seed(seed)` (the global RNG is restored afterwards)."""
    m = params["model"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        experts = [Expert(m["expert_width"], m["expert_hidden_layers"], m["receptive_field"])
                   for _ in range(m["experts"])]
        disc = Discriminator(m["disc_widths"], m["disc_convs"], m["disc_fc"], params["data"]["image_size"],
                             wasserstein=params["train"]["loss"] == "wasserstein")
    return experts, disc


def empty(params: dict, seeds: int = 1, layout: str = "vectorized") -> tuple[Committee, Discriminators]:
    """Batched networks of the right shapes, not initialised (to load a checkpoint into)."""
    m = params["model"]
    return (Committee(m["experts"], m["expert_width"], m["expert_hidden_layers"], m["receptive_field"], seeds, layout),
            Discriminators(m["disc_widths"], m["disc_convs"], m["disc_fc"], params["data"]["image_size"],
                           params["train"]["loss"] == "wasserstein", seeds))


def build(params: dict, seeds: list[int], layout: str = "vectorized") -> tuple[Committee, Discriminators]:
    """The batched committee and discriminators of `seeds`, each seed initialised as its own run."""
    committee, discs = empty(params, len(seeds), layout)
    nets = [seed_networks(params, s) for s in seeds]
    return committee.copy_from([e for e, _ in nets]), discs.copy_from([d for _, d in nets])


# ---------------------------------------------------------------- one seed, the public API (licm.load_run)

class SeedExperts(nn.Module):
    """One seed's committee with the single-run interface: x [B,1,H,W] -> [B,N',1,H,W]."""

    def __init__(self, committee: Committee):
        super().__init__()
        assert committee.seeds == 1
        self.committee = committee
        self.config, self.n_experts = committee.config, committee.n_experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.committee(x, bn="batch" if self.training else "running").transpose(1, 2)


class SeedDiscriminator(nn.Module):
    """One seed's discriminator with the single-run interface: x [B,1,H,W] -> [B]."""

    def __init__(self, discs: Discriminators):
        super().__init__()
        assert discs.seeds == 1
        self.discs, self.wasserstein = discs, discs.wasserstein

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.discs.logits(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        return out if self.wasserstein else torch.sigmoid(out)
