"""One function per figure ID of shared/FIGURES.md: artifacts in, PNG out (no training here).

Each figure is saved as results/figures/<ID>.png so the report can link it by its ID.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from licm import config, data  # noqa: E402


def save(fig: plt.Figure, path: Path, dpi: int) -> Path:
    """Render to memory, then write atomically; PNG metadata is fixed so bytes are stable."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data.atomic_write_bytes(path, buf.getvalue())
    return path


def one_per_mechanism(split: dict[str, np.ndarray], n_mechanisms: int, seed: int) -> list[int]:
    """A seeded choice of one row per mechanism, all from the same source digit when possible."""
    rng = np.random.default_rng(seed)
    return [int(rng.choice(np.flatnonzero(split["mechanism"] == k))) for k in range(n_mechanisms)]


def mechanism_examples(prepared_dir: Path, domain: str, title: str, seed: int, dpi: int, out: Path) -> Path:
    """A row of test digits, one per mechanism of the domain, each titled with its label and name."""
    names = data.mechanism_names(prepared_dir, domain)
    test = data.load_split(prepared_dir, domain, "test")
    rows = one_per_mechanism(test, len(names), seed)
    fig, axes = plt.subplots(1, len(names), figsize=(1.25 * len(names), 1.9))
    for k, (ax, row) in enumerate(zip(axes, rows)):
        ax.imshow(test["images"][row], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{k}\n" + "\n".join(names[k].split("_", 1)).replace("_", " "), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return save(fig, out, dpi)


def expand_fig1(params: dict, out_dir: Path) -> Path:
    """EXPAND Fig. 1: the 10 original transformations (0-7 translations, 8 noise, 9 inversion)."""
    return mechanism_examples(Path(params["data"]["prepared_dir"]), "paper",
                              "Paper domain: 10 mechanisms (LICM App. C)", params["figures"]["examples_seed"],
                              params["figures"]["dpi"], out_dir / "expand-fig1.png")


def expand_fig2(params: dict, out_dir: Path) -> Path:
    """EXPAND Fig. 2: rotations by 45..315 degrees, stretches and compressions by 1.75."""
    return mechanism_examples(Path(params["data"]["prepared_dir"]), "expanded",
                              "Expanded domain: 11 mechanisms (EXPAND §4.1)", params["figures"]["examples_seed"],
                              params["figures"]["dpi"], out_dir / "expand-fig2.png")


DATA_FIGURES = {"expand-fig1": expand_fig1, "expand-fig2": expand_fig2}


def _cmd_data(args) -> None:
    params = config.load(args.params, profile=args.profile)
    out_dir = Path(args.out)
    for fig_id, fn in DATA_FIGURES.items():
        t0 = time.perf_counter()
        path = fn(params, out_dir)
        print(f"licm figures: {fig_id} -> {path} ({time.perf_counter() - t0:.1f}s)")


def register(sub) -> None:
    p = sub.add_parser("figures", help="draw the figures of shared/FIGURES.md from artifacts")
    s = p.add_subparsers(dest="figures_command", required=True, metavar="<group>")
    d = s.add_parser("data", help="figures drawn from the prepared data alone (expand-fig1, expand-fig2)")
    d.add_argument("--out", default="results/figures", help="output folder (default: %(default)s)")
    d.set_defaults(func=_cmd_data)
