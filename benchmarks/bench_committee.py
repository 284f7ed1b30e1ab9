"""Time one full LICM training iteration (forward, scoring, D update, expert updates) with the
vectorized (grouped-convolution) committee and with the reference per-expert loop.

Both run in the same process, from identical weights, interleaved repeat by repeat; the median
over repeats (after warm-up) is reported in ms/iteration with the ratio vectorized/loop.
`train.implementation: auto` follows these numbers (loop on CPU, vectorized on CUDA).

    python benchmarks/bench_committee.py [--device cpu|cuda] [--experts 6 10 16] [--repeats R]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from licm.models import Discriminator, LoopCommittee, loop_to_grouped
from licm.train import LoopAdam, MaskedAdam, StepConfig, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(n_experts: int, device: torch.device, batch: int, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    loop = LoopCommittee(n_experts).to(device)
    grouped = loop_to_grouped(loop).to(device)
    disc_l = Discriminator().to(device)
    disc_g = copy.deepcopy(disc_l)
    setups = {
        "loop": (loop, disc_l, LoopAdam(loop, 1e-3, (0.9, 0.999)), torch.optim.Adam(disc_l.parameters(), 1e-3)),
        "vectorized": (grouped, disc_g, MaskedAdam(grouped, 1e-3, (0.9, 0.999)),
                       torch.optim.Adam(disc_g.parameters(), 1e-3)),
    }
    gen = torch.Generator().manual_seed(0)
    times = {k: [] for k in setups}
    cfg = StepConfig()
    for r in range(warmup + repeats):
        x_real = torch.rand(batch, 1, 32, 32, generator=gen).to(device)
        x_t = torch.rand(batch, 1, 32, 32, generator=gen).to(device)
        for name, (committee, disc, eopt, dopt) in setups.items():
            _sync(device)
            t0 = time.perf_counter()
            train_step(committee, disc, eopt, dopt, x_real, x_t, cfg)
            _sync(device)
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    loop_ms, vec_ms = statistics.median(times["loop"]), statistics.median(times["vectorized"])
    return {"experts": n_experts, "batch": batch, "loop_ms": round(loop_ms, 2), "vectorized_ms": round(vec_ms, 2),
            "ratio_vectorized_over_loop": round(vec_ms / loop_ms, 3), "repeats": repeats, "warmup": warmup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--experts", type=int, nargs="+", default=[6, 10, 16])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=None, help="default 1 on CPU, 5 on CUDA")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 on CPU, 30 on CUDA")
    ap.add_argument("--out", default=None, help="default benchmarks/results/committee-<device>.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    repeats = args.repeats if args.repeats is not None else (30 if cuda else 3)
    results = []
    for n in args.experts:
        row = bench(n, device, args.batch, warmup, repeats)
        print(json.dumps(row), flush=True)
        results.append(row)
    report = {"device": str(device),
              "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "results": results}
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"committee-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
