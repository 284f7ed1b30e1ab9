"""Time one full LICM training iteration, the plain reference against the engine's variants, in one process.

Per number of experts N' (default 6, 10, 16), batch 32, 32x32 digits, the LICM networks:
  reference            licm.reference.Reference: a ModuleList of experts, one torch.optim.Adam each,
                       Python loops (what most code does)
  loop                 the engine, experts one after the other over slices of one tensor set
                       (channels_last on the CPU: the CPU's `implementation: auto`)
  vectorized           the engine, grouped convolutions, eager
  vectorized_compiled  the same, torch.compile(fullgraph=True) (CPU) or captured in a CUDA graph (CUDA)
  batched_S<k>         k seeds in one network with the device's fastest engine (CPU: loop + channels_last
                       eager; CUDA: vectorized, CUDA graph), reported per seed-iteration
Each in fp32 and, on CUDA, TF32 (bf16 with --bf16). Median ms per seed-iteration over repeats after
warm-up (compilation and graph capture happen in the warm-up), every configuration timed in turn
within each repeat so that drift of the machine hits all alike; ratios are against the reference.
On the CPU a matrix-multiply floor is measured in the same run: the iteration's analytic FLOPs
(91 GFLOP at N'=10, ENGINE.md) at the rate of a large float32 matrix product.
On CUDA, captured and eager iterations are also compared from one state (max abs difference).

    .venv/bin/python benchmarks/bench_committee.py                  # CPU (~15 min on 2 idle cores)
    python benchmarks/bench_committee.py --device cuda --bf16       # GPU
Writes benchmarks/results/engine-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from licm import config, models
from licm.reference import Reference
from licm.state import RunState
from licm.step import Sampler, StepConfig, Stepper, TrainData, make_loss, minibatch, train_step

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_precision(precision: str, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"


def paper_params(experts: int) -> dict:
    params = config.experiment(config.load(ROOT / "params.yaml", profile="paper"), "main")
    params["model"]["experts"] = experts
    return params


def iteration_gflop(params: dict) -> float:
    """Analytic FLOPs of one iteration (ENGINE.md): experts forward + backward (3x forward) on B
    digits, D forward on B*N' outputs + B canonical digits, D's input gradient for the experts' loss
    (B*N'), D's weight and input gradients for its own loss (2x forward on B*N' + B)."""
    m = params["model"]
    expert, disc = models.seed_networks(params, 0)
    e, d = per_image_flops(expert[0].net, (1, 32, 32)), per_image_flops(disc.net, (1, 32, 32))
    n, b = m["experts"], BATCH
    return (3 * b * n * e + 3 * (b * n + b) * d + b * n * d) / 1e9


def per_image_flops(net: torch.nn.Sequential, shape: tuple) -> float:
    """Multiply-adds x 2 of the convolutions and linear layers of `net` on one image of `shape`."""
    flops, x = 0.0, torch.zeros(1, *shape)
    with torch.no_grad():
        for layer in net:
            y = layer(x)
            if isinstance(layer, torch.nn.Conv2d):
                flops += 2 * y[0].numel() * layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            elif isinstance(layer, torch.nn.Linear):
                flops += 2 * layer.in_features * layer.out_features
            x = y
    return flops


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * size ** 3 / statistics.median(times) / 1e9


class EngineCase:
    """The engine on `seeds` seeds with one layout and step mode; one call = one iteration."""

    def __init__(self, params, data, seeds: int, layout: str, mode: str, channels_last: bool, device, bf16=False):
        self.seeds = seeds
        ids = list(range(seeds))
        self.state = RunState.fresh(params, ids, 10, device, layout)
        self.state.use_channels_last(channels_last)
        self.state.start_adversarial(params)
        cfg = StepConfig(bf16=bf16)
        self.step = Stepper(partial(train_step, self.state, data, Sampler(ids, BATCH, device), cfg,
                                    make_loss(params["train"])), mode, device)

    def __call__(self) -> None:
        self.step()


class ReferenceCase:
    seeds = 1

    def __init__(self, params, data, device):
        experts, disc = models.seed_networks(params, 0)
        self.ref = Reference([e.to(device) for e in experts], disc.to(device), params)
        self.ref.start_adversarial()
        self.data, self.sampler, self.it = data, Sampler([0], BATCH, device), 0

    def __call__(self) -> None:
        self.it += 1
        x_t, _, x_r = minibatch(self.data, self.sampler, torch.tensor(self.it, device=self.data.canonical.device))
        self.ref.step(x_r[:, 0].unsqueeze(1), x_t[:, 0].unsqueeze(1))


def cases(params, data, device: torch.device, batched: list[int], bf16: bool) -> dict:
    fast = "graph" if device.type == "cuda" else "compiled"
    cpu = device.type == "cpu"
    out = {"reference": ReferenceCase(params, data, device),
           "loop": EngineCase(params, data, 1, "loop", "eager", cpu, device),
           "vectorized": EngineCase(params, data, 1, "vectorized", "eager", False, device),
           "vectorized_compiled": EngineCase(params, data, 1, "vectorized", fast, False, device)}
    for s in batched:
        out[f"batched_S{s}"] = (EngineCase(params, data, s, "loop", "eager", True, device) if cpu else
                                EngineCase(params, data, s, "vectorized", "graph", False, device))
    if bf16 and device.type == "cuda":
        for s in batched:
            out[f"batched_S{s}_bf16"] = EngineCase(params, data, s, "vectorized", "graph", False, device, bf16=True)
    return out


def time_cases(cs: dict, device, warmup: int, repeats: int, log) -> dict:
    for name, case in cs.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            case()
        sync(device)
        log(f"  warm-up {name}: {time.perf_counter() - t0:.1f}s")
    times = {k: [] for k in cs}
    for _ in range(repeats):
        for name, case in cs.items():
            sync(device)
            t0 = time.perf_counter()
            case()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3 / case.seeds)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def graph_matches_eager(params, device, iterations: int = 8) -> float:
    """Max abs difference of all parameters after `iterations` from one state, captured vs eager."""
    data = random_data(device)
    a = EngineCase(params, data, 2, "vectorized", "eager", False, device)
    b = EngineCase(params, data, 2, "vectorized", "graph", False, device)
    for _ in range(iterations):
        a()
        b()
    return max(float((p - q).abs().max()) for p, q in zip(
        [*a.state.committee.parameters(), *a.state.discs.parameters()],
        [*b.state.committee.parameters(), *b.state.discs.parameters()]))


def random_data(device) -> TrainData:
    gen = torch.Generator().manual_seed(0)
    return TrainData(torch.rand(1000, 32, 32, generator=gen).to(device), torch.arange(1000, device=device) % 10,
                     torch.rand(1000, 32, 32, generator=gen).to(device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--experts", type=int, nargs="+", default=[6, 10, 16])
    ap.add_argument("--batched", type=int, nargs="+", default=[1, 10], help="seeds per network (default 1 10)")
    ap.add_argument("--repeats", type=int, default=None, help="default: 5 on CPU, 50 on CUDA")
    ap.add_argument("--warmup", type=int, default=None, help="default: 2 on CPU, 10 on CUDA")
    ap.add_argument("--bf16", action="store_true", help="also bf16 autocast (CUDA)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    repeats, warmup = args.repeats or (50 if cuda else 5), args.warmup or (10 if cuda else 2)
    log = lambda m: print(m, flush=True)  # noqa: E731
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor()
              or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "batch": BATCH, "repeats": repeats, "warmup": warmup, "unit": "ms per seed-iteration (median)",
              "rows": []}
    if not cuda:
        result["matmul_gflops"] = round(matmul_gflops(device), 1)
        log(f"matrix multiply: {result['matmul_gflops']} GFLOP/s")
    precisions = ["fp32", "tf32"] if cuda else ["fp32"]
    for n in args.experts:
        params, data = paper_params(n), random_data(device)
        for precision in precisions:
            set_precision(precision, device)
            torch.manual_seed(0)
            log(f"N'={n} {precision}")
            ms = time_cases(cases(params, data, device, args.batched, args.bf16), device, warmup, repeats, log)
            row = {"experts": n, "precision": precision, "gflop_per_iteration": round(iteration_gflop(params), 1),
                   "ms": ms, "speedup_vs_reference": {k: round(ms["reference"] / v, 2) for k, v in ms.items()}}
            if not cuda:
                floor = row["gflop_per_iteration"] / result["matmul_gflops"] * 1e3
                row["floor_ms"] = round(floor, 1)
                row["ratio_to_floor"] = {k: round(v / floor, 2) for k, v in ms.items()}
            log(json.dumps(row))
            result["rows"].append(row)
    if cuda:
        set_precision("fp32", device)
        result["graph_vs_eager_max_abs_diff_fp32"] = graph_matches_eager(paper_params(10), device)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"engine-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
