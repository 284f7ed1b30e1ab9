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


# The PNG text chunk that marks a stand-in figure, so the report never calls a placeholder "produced".
PLACEHOLDER_KEY = "licm placeholder"


def save(fig: plt.Figure, path: Path, dpi: int, text: dict[str, str] | None = None) -> Path:
    """Render to memory, then write atomically; PNG metadata is fixed so bytes are stable (`text`: extra
    PNG text chunks)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None, **(text or {})})
    plt.close(fig)
    data.atomic_write_bytes(path, buf.getvalue())
    return path


def placeholder(path: Path, lines: list[str], reason: str, dpi: int) -> Path:
    """A labelled stand-in PNG for a figure that cannot be drawn (the pipelines declare every figure as an
    output): `lines` in a grey box, and `reason` in its PNG text (`placeholder_reason`)."""
    fig = plt.figure(figsize=(9, 0.5))       # the saved image is cropped to the text ("tight" bounding box)
    fig.text(0.01, 0.98, "\n".join(lines), ha="left", va="top", fontsize=9, wrap=True,
             bbox={"boxstyle": "round", "facecolor": "#f3f3f3", "edgecolor": "#999999"})
    return save(fig, Path(path), dpi, text={PLACEHOLDER_KEY: reason or "not drawn"})


def placeholder_reason(path: Path) -> str | None:
    """Why the PNG at `path` is a placeholder, or None for a drawn figure (or no PNG)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.text.get(PLACEHOLDER_KEY)
    except (OSError, ValueError):
        return None


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
