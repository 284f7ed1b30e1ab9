"""The mechanism registry: every transformation is a name and a small function.

A mechanism maps a batch of canonical images `x` [N,H,W] (float32 in [0,1]) to transformed
images of the same shape. It receives the `mechanisms:` block of params.yaml and a numpy
Generator (only noise draws from it). A domain in params.yaml is an ordered list of these
names, so adding a mechanism means adding one decorated function here.

Geometry conventions: row 0 is the top of the image; "up" moves content towards row 0;
rotations are counter-clockwise (as `np.rot90`), about the image centre; stretch and
compression scale about the centre with bilinear interpolation and zero fill.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

Mechanism = Callable[[np.ndarray, dict, np.random.Generator], np.ndarray]
REGISTRY: dict[str, Mechanism] = {}


def register(name: str) -> Callable[[Mechanism], Mechanism]:
    """Add a mechanism to the registry under `name` (the name used in params.yaml)."""

    def wrap(fn: Mechanism) -> Mechanism:
        if name in REGISTRY:
            raise ValueError(f"mechanism {name!r} registered twice")
        REGISTRY[name] = fn
        return fn

    return wrap


def shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move content by (dy, dx) pixels, filling the uncovered border with zeros."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


_DIRECTIONS = {
    "up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1),
    "up_left": (-1, -1), "up_right": (-1, 1), "down_left": (1, -1), "down_right": (1, 1),
}


def _make_translation(name: str, dy: int, dx: int) -> None:
    @register(f"translate_{name}")
    def translate(x: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
        k = p["translate_pixels"]
        return shift(x, dy * k, dx * k)

    translate.__doc__ = f"Translate {name.replace('_', '-')} by `translate_pixels` (LICM App. C)."


for _name, (_dy, _dx) in _DIRECTIONS.items():
    _make_translation(_name, _dy, _dx)


@register("invert")
def invert(x: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Contrast inversion 1 - x (LICM App. C)."""
    return (1.0 - x).astype(x.dtype)


@register("noise")
def noise(x: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, noise_variance) per pixel, then clamp to [0, 1] (LICM App. C)."""
    sigma = math.sqrt(p["noise_variance"])
    return np.clip(x + rng.normal(0.0, sigma, size=x.shape).astype(x.dtype), 0.0, 1.0)


def warp(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample every image at `matrix @ (u, v)` in normalized coordinates (centre = 0).

    `matrix` maps output coordinates to input coordinates (2x2, u = column, v = row, both
    in [-1, 1] with pixel centres as align_corners=False places them), so a stretch by s
    uses diag(1/s, 1). Bilinear interpolation, zeros outside.
    """
    import torch  # here, not at the top: params validation imports this module and must stay light
    import torch.nn.functional as F
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    theta = torch.zeros(len(t), 2, 3, dtype=torch.float64)
    theta[:, :, :2] = torch.from_numpy(np.asarray(matrix, dtype=np.float64))
    grid = F.affine_grid(theta, list(t.shape), align_corners=False).to(torch.float32)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].numpy().clip(0.0, 1.0)


def _make_rotation(degrees: int) -> None:
    @register(f"rotate_{degrees}")
    def rotate(x: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
        a = math.radians(degrees)
        # Output pixel (u, v) samples the input at [[c, -s], [s, c]] (u, v); with v pointing
        # down, content at the input's right appears at the output's top: counter-clockwise
        # on screen, as np.rot90 does. Rounding makes right angles land exactly on pixels.
        c, s = round(math.cos(a), 12), round(math.sin(a), 12)
        return warp(x, np.array([[c, -s], [s, c]]))

    rotate.__doc__ = f"Rotate {degrees} degrees counter-clockwise about the centre (EXPAND §4.1)."


for _deg in range(45, 360, 45):
    _make_rotation(_deg)


def _make_scaling(name: str, axis: str, stretch: bool) -> None:
    @register(name)
    def scale(x: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
        f = p["stretch_factor"] if stretch else 1.0 / p["stretch_factor"]
        m = np.diag([1.0 / f, 1.0]) if axis == "horizontal" else np.diag([1.0, 1.0 / f])
        return warp(x, m)

    verb = "Stretch" if stretch else "Compress"
    scale.__doc__ = f"{verb} {axis}ly about the centre by `stretch_factor` (EXPAND §4.1)."


for _axis in ("horizontal", "vertical"):
    _make_scaling(f"stretch_{_axis}", _axis, True)
    _make_scaling(f"compress_{_axis}", _axis, False)


def apply(names: list[str], images: np.ndarray, assignment: np.ndarray, params: dict,
          rng: np.random.Generator) -> np.ndarray:
    """Transform images[i] by mechanism names[assignment[i]], one vectorized call per mechanism.

    Mechanisms are applied in label order, each drawing from `rng` in turn, so the
    result depends only on the inputs and the generator's seed.
    """
    out = np.empty_like(images)
    for k, name in enumerate(names):
        idx = np.flatnonzero(assignment == k)
        if len(idx):
            out[idx] = REGISTRY[name](images[idx], params, rng)
    return out
