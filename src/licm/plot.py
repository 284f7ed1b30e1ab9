"""Matplotlib set up once for every command that draws (headless: Agg), the atomic PNG writer and the
small helpers the figure modules (figures.py, omniglot.py) share.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from licm import data  # noqa: E402


def save(fig: plt.Figure, path: Path, dpi: int) -> Path:
    """Render to memory, then write atomically; PNG metadata is fixed so bytes are stable."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data.atomic_write_bytes(path, buf.getvalue())
    return path


def off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def frame(ax, color, width: float = 3.0) -> None:
    for side in ax.spines.values():
        side.set_edgecolor(color)
        side.set_linewidth(width)


def digit(ax, image, title: str | None = None, fontsize: float = 7) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    off(ax)
    if title is not None:
        ax.set_title(title, fontsize=fontsize)


__all__ = ["plt", "save", "off", "frame", "digit"]
