"""Time one full LICM training iteration, the plain reference against the engine's steps, in one process.

Per number of experts N' (default 6, 10, 16), batch 32, 32x32 digits, the LICM networks:
  reference            licm.reference.Reference: a ModuleList of experts, one torch.optim.Adam each,
                       Python loops (what most code does)
CPU:
  gathered             what `train.implementation: auto` runs on the CPU: loop layout, channels_last
                       weights, the gathered experts' gradient (licm.step.GatheredUpdate), eager, fp32
  gathered_bf16        the same under bf16 autocast (train.precision: bf16; not the papers' numerics)
  masked               loop + channels_last with the capturable masked gradient (the CPU step before)
CUDA:
  vectorized, vectorized_graph, batched_S<k>[_bf16]: grouped convolutions, eager or captured in one
                       CUDA graph, k seeds in one network (per seed-iteration), TF32 and fp32
Median ms per seed-iteration over repeats after warm-up, every configuration timed in turn within
each repeat so that drift of the machine hits all alike; ratios are against the reference. Both
wall time (`ms`) and this process's CPU time (`cpu_ms`, all its threads): on a shared machine the
wall time stretches with the other jobs, the CPU time much less (it still counts the threads'
spin-waiting and suffers from shared caches), and the load average is recorded at both ends. The
run records the CPU (model, AVX-512/AMX flags), the fp32 and bf16 matrix-product rates, and two
floors at the fp32 rate (`floors`): `exact`, the FLOPs that any step equal to Alg. 1 does (experts
forward and backward on every digit: BatchNorm's batch statistics carry gradient to every digit;
D forward and backward on all fakes and reals for its loss; D's input gradient on each digit's
winner), and `won_only`, the same with the experts' backward on their won digits only (the
issue's ~54 GFLOP estimate, below what an exact step can do).
On CUDA, captured and eager iterations are also compared from one state (max abs difference).

    .venv/bin/python benchmarks/bench_committee.py                  # CPU (~5 min on 2 idle cores)
    python benchmarks/bench_committee.py --device cuda --bf16       # GPU
Writes benchmarks/results/engine-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from licm import config, models
from licm.reference import Reference
from licm.state import RunState
from licm.step import Sampler, Step, StepConfig, Stepper, TrainData, make_loss, minibatch

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


def iteration_gflop(params: dict) -> dict[str, float]:
    """Analytic FLOPs of one iteration (a backward = 2x its forward: weight and input gradients).
    masked: the capturable step (experts forward + backward on B digits each, D forward and
    backward on B*N' + B images, D's input gradient on all B*N' outputs: 91 GFLOP at N' = 10);
    exact: what a step equal to Alg. 1 needs (D's input gradient on the B winning outputs only);
    won_only: the experts' backward on their won digits only (B digits in all), not reachable
    exactly with BatchNorm in train mode."""
    expert, disc = models.seed_networks(params, 0)
    e, d = per_image_flops(expert[0].net, (1, 32, 32)), per_image_flops(disc.net, (1, 32, 32))
    n, b = params["model"]["experts"], BATCH
    d_loss = 3 * (b * n + b) * d
    return {"masked": round((3 * b * n * e + d_loss + b * n * d) / 1e9, 1),
            "exact": round((3 * b * n * e + d_loss + b * d) / 1e9, 1),
            "won_only": round((b * n * e + 2 * b * e + d_loss + b * d) / 1e9, 1)}


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


def matmul_gflops(device: torch.device, dtype=torch.float32, size: int = 2048, repeats: int = 5) -> float:
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
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

    def __init__(self, params, data, seeds: int, layout: str, mode: str, channels_last: bool, device, bf16=False,
                 expert_gradient: str = "masked"):
        self.seeds = seeds
        ids = list(range(seeds))
        self.state = RunState.fresh(params, ids, 10, device, layout)
        self.state.use_channels_last(channels_last)
        self.state.start_adversarial(params)
        step = Step(StepConfig(bf16=bf16, expert_gradient=expert_gradient), make_loss(params["train"]))
        self.step = Stepper(partial(step, self.state, data, Sampler(ids, BATCH, device)), mode, device)

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
    out = {"reference": ReferenceCase(params, data, device)}
    if device.type == "cpu":
        case = partial(EngineCase, params, data, 1, "loop", "eager", True, device)
        out.update(gathered=case(expert_gradient="gathered"), gathered_bf16=case(bf16=True, expert_gradient="gathered"),
                   masked=case())
        return out
    out.update(vectorized=EngineCase(params, data, 1, "vectorized", "eager", False, device),
               vectorized_graph=EngineCase(params, data, 1, "vectorized", "graph", False, device))
    for s in batched:
        out[f"batched_S{s}"] = EngineCase(params, data, s, "vectorized", "graph", False, device)
        if bf16:
            out[f"batched_S{s}_bf16"] = EngineCase(params, data, s, "vectorized", "graph", False, device, bf16=True)
    return out


def time_cases(cs: dict, device, warmup: int, repeats: int, log) -> dict:
    for name, case in cs.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            case()
        sync(device)
        log(f"  warm-up {name}: {time.perf_counter() - t0:.1f}s")
    times, cpu = {k: [] for k in cs}, {k: [] for k in cs}
    for _ in range(repeats):
        for name, case in cs.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            case()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3 / case.seeds)
            cpu[name].append((time.process_time() - c0) * 1e3 / case.seeds)
    median = lambda d: {k: round(statistics.median(v), 3) for k, v in d.items()}  # noqa: E731
    return median(times), median(cpu)


def graph_matches_eager(params, device, iterations: int = 8) -> float:
    """Max abs difference of all parameters after `iterations` from one state, captured vs eager."""
    data = random_data(device)
    a = EngineCase(params, data, 2, "vectorized", "eager", False, device)
    b = EngineCase(params, data, 2, "vectorized", "graph", False, device)  # masked, as train.py captures it
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
    ap.add_argument("--bf16", action="store_true", help="CUDA: also bf16 autocast (the CPU always measures it)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    repeats, warmup = args.repeats or (50 if cuda else 5), args.warmup or (10 if cuda else 2)
    log = lambda m: print(m, flush=True)  # noqa: E731
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor()
              or platform.machine(), "cpu": config.cpu_info(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "batch": BATCH, "repeats": repeats, "warmup": warmup,
              "unit": "ms per seed-iteration (median)", "load_average_at_start": os.getloadavg(), "rows": []}
    if not cuda:
        result["matmul_gflops"] = round(matmul_gflops(device), 1)
        result["matmul_gflops_bf16"] = round(matmul_gflops(device, torch.bfloat16), 1)
        log(f"matrix multiply: fp32 {result['matmul_gflops']}, bf16 {result['matmul_gflops_bf16']} GFLOP/s")
    precisions = ["fp32", "tf32"] if cuda else ["fp32"]
    for n in args.experts:
        params, data = paper_params(n), random_data(device)
        for precision in precisions:
            set_precision(precision, device)
            torch.manual_seed(0)
            log(f"N'={n} {precision}")
            cs = cases(params, data, device, args.batched, args.bf16)
            ms, cpu_ms = time_cases(cs, device, warmup, repeats, log)
            row = {"experts": n, "precision": precision, "gflop_per_iteration": iteration_gflop(params),
                   "ms": ms, "ratio_to_reference": {k: round(v / ms["reference"], 2) for k, v in ms.items()},
                   "cpu_ms": cpu_ms,
                   "cpu_ratio_to_reference": {k: round(v / cpu_ms["reference"], 2) for k, v in cpu_ms.items()}}
            if not cuda:
                floors = {k: round(g / result["matmul_gflops"] * 1e3, 1) for k, g in row["gflop_per_iteration"].items()
                          if k != "masked"}
                row["floor_ms"] = floors
                row["ratio_to_floor"] = {f: {k: round(v / floor, 2) for k, v in ms.items()}
                                         for f, floor in floors.items()}
            engine = next(c for k, c in cs.items() if k != "reference")
            row["experts_stepped_per_iteration"] = round(float(engine.state.expert_opt.step_count.sum())
                                                         / int(engine.state.iteration), 2)
            log(json.dumps(row))
            result["rows"].append(row)
    if cuda:
        set_precision("fp32", device)
        result["graph_vs_eager_max_abs_diff_fp32"] = graph_matches_eager(paper_params(10), device)
    result["load_average_at_end"] = os.getloadavg()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"engine-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
