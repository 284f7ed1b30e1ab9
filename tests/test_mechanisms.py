"""Each mechanism against an expectation computed independently of its implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from licm import mechanisms
from licm.mechanisms import REGISTRY

P = {"translate_pixels": 4, "noise_variance": 0.25, "stretch_factor": 1.75}
RNG = np.random.default_rng(0)


def run(name: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    return REGISTRY[name](x, P, np.random.default_rng(seed))


def blob(cy: float, cx: float, sy: float = 3.0, sx: float = 3.0, size: int = 32) -> np.ndarray:
    """A Gaussian blob whose centre is given in pixel coordinates (centre of image = 15.5)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return np.exp(-((y - cy) ** 2 / (2 * sy**2) + (x - cx) ** 2 / (2 * sx**2)))[None].astype(np.float32)


def moments(img: np.ndarray) -> tuple[float, float, float, float]:
    """Centroid (row, col) and standard deviations (row, col) of an image's mass."""
    y, x = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    m = img.sum()
    cy, cx = (img * y).sum() / m, (img * x).sum() / m
    return cy, cx, math.sqrt((img * (y - cy) ** 2).sum() / m), math.sqrt((img * (x - cx) ** 2).sum() / m)


@pytest.mark.parametrize("direction,dy,dx", [
    ("up", -4, 0), ("down", 4, 0), ("left", 0, -4), ("right", 0, 4),
    ("up_left", -4, -4), ("up_right", -4, 4), ("down_left", 4, -4), ("down_right", 4, 4)])
def test_translation_moves_content_by_exactly_4_pixels_with_zero_fill(direction, dy, dx):
    x = RNG.random((3, 32, 32), dtype=np.float32) + 0.1  # no zeros, so zero fill is visible
    out = run(f"translate_{direction}", x)
    for r in range(32):
        for c in range(32):
            sr, sc = r - dy, c - dx
            expected = x[:, sr, sc] if 0 <= sr < 32 and 0 <= sc < 32 else 0.0
            np.testing.assert_array_equal(out[:, r, c], expected)
    assert (out == 0).sum() == 3 * (32 * 32 - (32 - abs(dy)) * (32 - abs(dx)))


def test_translation_of_a_single_pixel():
    x = np.zeros((1, 32, 32), np.float32)
    x[0, 10, 20] = 1.0
    out = run("translate_down_left", x)
    assert out[0, 14, 16] == 1.0 and out.sum() == 1.0


def test_inversion_is_one_minus_x():
    x = RNG.random((4, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(run("invert", x), 1.0 - x, atol=1e-7)


def test_noise_statistics_and_clamping():
    """On a constant 0.5 image, N(0, 0.25) has sigma 0.5, so clamping at 0 and 1 is at +-1 sigma."""
    x = np.full((200, 32, 32), 0.5, np.float32)
    out = run("noise", x, seed=1)
    assert out.min() == 0.0 and out.max() == 1.0
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    tail = phi(-1.0)  # 0.1587
    assert abs((out == 0).mean() - tail) < 0.005
    assert abs((out == 1).mean() - tail) < 0.005
    inner = out[(out > 0) & (out < 1)]
    # Variance of a normal (sigma 0.5) truncated to +-1 sigma: sigma^2 (1 - 2 a pdf(a) / (2 Phi(a) - 1)), a = 1.
    pdf1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    expected_var = 0.25 * (1 - 2 * pdf1 / (2 * phi(1.0) - 1))
    assert abs(inner.mean() - 0.5) < 0.003
    assert abs(inner.var() - expected_var) / expected_var < 0.02


def test_noise_is_seeded():
    x = RNG.random((2, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(run("noise", x, seed=5), run("noise", x, seed=5))
    assert not np.array_equal(run("noise", x, seed=5), run("noise", x, seed=6))


@pytest.mark.parametrize("degrees,k", [(90, 1), (180, 2), (270, 3)])
def test_right_angle_rotations_equal_rot90(degrees, k):
    x = RNG.random((3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(run(f"rotate_{degrees}", x), np.rot90(x, k=k, axes=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("degrees", [45, 135, 225, 315])
def test_diagonal_rotations_move_a_blob_counter_clockwise(degrees):
    centre, r = 15.5, 8.0
    out = run(f"rotate_{degrees}", blob(centre, centre + r))  # blob to the right of the centre
    a = math.radians(degrees)
    cy, cx, _, _ = moments(out[0])
    # Counter-clockwise on screen: the blob goes up (row decreases) for 0 < a < 180.
    assert cy == pytest.approx(centre - r * math.sin(a), abs=0.3)
    assert cx == pytest.approx(centre + r * math.cos(a), abs=0.3)


@pytest.mark.parametrize("name,fy,fx", [
    ("stretch_horizontal", 1.0, 1.75), ("stretch_vertical", 1.75, 1.0),
    ("compress_horizontal", 1.0, 1 / 1.75), ("compress_vertical", 1 / 1.75, 1.0)])
def test_stretch_and_compression_geometry(name, fy, fx):
    x = blob(15.5, 15.5, sy=3.0, sx=3.0)
    cy, cx, sy, sx = moments(run(name, x)[0])
    assert (cy, cx) == (pytest.approx(15.5, abs=0.05), pytest.approx(15.5, abs=0.05))
    assert sy == pytest.approx(3.0 * fy, rel=0.04)
    assert sx == pytest.approx(3.0 * fx, rel=0.04)


def test_every_mechanism_keeps_shape_dtype_and_range():
    x = RNG.random((5, 32, 32), dtype=np.float32)
    for name in REGISTRY:
        out = run(name, x)
        assert out.shape == x.shape and out.dtype == np.float32, name
        assert out.min() >= 0.0 and out.max() <= 1.0, name


def test_apply_routes_each_image_to_its_mechanism():
    x = RNG.random((6, 32, 32), dtype=np.float32)
    names = ["invert", "translate_up"]
    assignment = np.array([0, 1, 0, 1, 1, 0])
    out = mechanisms.apply(names, x, assignment, P, np.random.default_rng(0))
    np.testing.assert_allclose(out[0], 1 - x[0], atol=1e-7)
    np.testing.assert_array_equal(out[1], mechanisms.shift(x[1:2], -4, 0)[0])


def test_a_new_mechanism_is_one_decorated_function():
    @mechanisms.register("test_only_identity")
    def identity(x, p, rng):
        return x

    try:
        assert REGISTRY["test_only_identity"] is identity
        with pytest.raises(ValueError, match="registered twice"):
            mechanisms.register("test_only_identity")(identity)
    finally:
        del REGISTRY["test_only_identity"]
