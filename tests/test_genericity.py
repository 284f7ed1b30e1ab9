"""Known-answer tests of the spectral density ratio (licm.spectral) and of BSV's toy models
(licm.bsv_toys), before either is turned on trained experts (licm.genericity).

Expected values: closed forms, and the numpy probes of the issue's design note (matched filter on
MNIST 18.8, whitening 0.064, the mechanism table: noise inverse 3.44, forward 0.93 at n = 5000).
The MNIST spectrum is that of the project's own padded test digits (licm.data.pad_and_scale).
"""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from licm import bsv_toys, spectral
from licm.data import pad_and_scale


@pytest.fixture(scope="module")
def digits(mirror) -> np.ndarray:
    """The 10,000 MNIST test digits, padded 2+28+2 and scaled to [0,1] as licm.data prepares them."""
    with gzip.open(mirror / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return pad_and_scale(raw, 32)


@pytest.fixture(scope="module")
def spectrum(digits) -> np.ndarray:
    return spectral.power_spectrum(digits[:2000])


def test_delta_kernel_and_inversion_give_one(spectrum, digits):
    """A shifted delta has |k^| = 1 everywhere: rho = 1 for any input. Inversion 1 - x changes only
    DC: its input/output SDR is 1 (in float64; the float32 rounding of 1 - x moves it by ~2e-8)."""
    for pos in [(0, 0), (1, 2), (2, 2)]:
        k = np.zeros((3, 3))
        k[pos] = 1.0
        assert spectral.sdr_kernel(k, spectrum) == pytest.approx(1.0, abs=1e-9)
    x = digits[:500].astype(np.float64)
    assert spectral.io_sdr(x, 1.0 - x)["rho"] == pytest.approx(1.0, abs=1e-9)


def test_white_noise_inputs_give_one_for_any_kernel():
    rng = np.random.default_rng(0)
    white = spectral.power_spectrum(rng.standard_normal((1000, 32, 32)))
    rho = spectral.sdr_kernel(rng.standard_normal((200, 3, 3)), white)
    assert np.abs(rho - 1).max() < 0.01


def test_matched_and_whitening_filters_closed_forms(spectrum):
    """|k^|^2 = S gives <S^2>/<S>^2 (18.8 on MNIST); |k^|^2 = 1/S gives 1/(<S><1/S>) (0.064)."""
    m = spectral.nonzero_mean
    matched = spectral.sdr_power(spectrum, spectrum)
    inverse = np.divide(1.0, spectrum, out=np.zeros_like(spectrum), where=spectrum > 0)   # DC: 0, unused
    whitening = spectral.sdr_power(inverse, spectrum)
    assert matched == pytest.approx(m(spectrum ** 2) / m(spectrum) ** 2, rel=1e-9)
    assert whitening == pytest.approx(1.0 / (m(spectrum) * m(inverse)), rel=1e-9)
    assert matched == pytest.approx(18.8, abs=0.2)
    assert whitening == pytest.approx(0.064, abs=0.003)


def test_invariant_to_scaling_and_constants(spectrum, digits):
    rng = np.random.default_rng(1)
    k = rng.standard_normal((3, 3))
    x = digits[:300]
    base = spectral.sdr_kernel(k, spectrum)
    assert spectral.sdr_kernel(7.5 * k, spectrum) == pytest.approx(base, rel=1e-9)
    assert spectral.sdr_kernel(k, spectral.power_spectrum(3.0 * x)) == pytest.approx(
        spectral.sdr_kernel(k, spectral.power_spectrum(x)), rel=1e-9)
    assert spectral.sdr_kernel(k, spectral.power_spectrum(x + 0.3)) == pytest.approx(
        spectral.sdr_kernel(k, spectral.power_spectrum(x)), rel=1e-9)


def test_io_harness_truth_reproduces_reference_and_inputs_give_one(digits):
    """Feeding the inputs as outputs gives exactly 1; feeding the ground truth reproduces the
    reference ratio bit for bit (the same computation licm.genericity uses for rho*)."""
    rng = np.random.default_rng(2)
    x = digits[:400]
    noisy = np.clip(x + rng.normal(0, 0.5, x.shape), 0, 1)
    assert spectral.io_sdr(noisy, noisy)["rho"] == 1.0
    assert spectral.io_sdr(noisy, noisy)["coherence"] == pytest.approx(1.0, abs=1e-12)
    assert spectral.io_sdr(noisy, x)["rho"] == spectral.io_sdr(noisy.copy(), x.copy())["rho"]


def test_noise_mechanism_both_directions(digits):
    """The §2.6 direction claim on LICM's noise (design note A.1): the Wiener inverse amplifies where
    digits have power (3.44 +- 0.1), the forward map's linear part whitens slightly (0.93 +- 0.03)."""
    rng = np.random.default_rng(1)
    x = digits[rng.choice(len(digits), 5000, replace=False)]
    noisy = np.clip(x + rng.normal(0, 0.5, x.shape), 0, 1)
    assert spectral.io_sdr(noisy, x)["rho"] == pytest.approx(3.44, abs=0.1)
    assert spectral.io_sdr(x, noisy)["rho"] == pytest.approx(0.93, abs=0.03)


def test_random_kernels_narrow_with_size(spectrum):
    """'Generic' random kernels: a 3x3 one lands far from 1, larger ones closer (design note A.3)."""
    rng = np.random.default_rng(3)
    spread = {s: np.quantile(np.log10(bsv_toys.random_kernel_sdr(s, spectrum, 400, rng)), [0.05, 0.95])
              for s in (3, 15)}
    assert spread[3][1] - spread[3][0] > spread[15][1] - spread[15][0]
    assert 10 ** spread[3][0] < 0.35 and 10 ** spread[3][1] > 2.0


def test_haar_average_is_one():
    rng = np.random.default_rng(4)
    spec = np.abs(np.fft.fft(rng.standard_normal(37))) ** 2 + 0.1
    mean, values = bsv_toys.haar_average(spec, rng.standard_normal(37))
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert values.min() < 0.98 < 1.02 < values.max()


def test_eye_generator():
    """Example 1: the true pair is generic (1 with DC, BSV A.3), the square-root pair is not
    (<c^2>/<c>^2 > 1); both make the same image."""
    out = bsv_toys.eye_generator(37, 5, 15, 2)
    assert out["true"]["rho_dc"] == pytest.approx(1.0, abs=1e-10)
    assert out["true"]["rho"] < 1.0
    assert out["square_root"]["rho_dc"] == pytest.approx(out["square_root_closed_form"], rel=1e-9)
    assert out["square_root_closed_form"] > 1.5
    np.testing.assert_allclose(out["square_root"]["image"], out["true"]["image"], atol=1e-9)


def test_sgd_drifts_to_the_balanced_solution_and_gd_stays():
    rng = np.random.default_rng(5)
    starts = np.array([[2.0, 0.5], [4.0, 0.25], [2.0, 0.5], [4.0, 0.25]])
    path = bsv_toys.sgd_drift(starts, 1.0, np.array([1.0, 1.0, 0.0, 0.0]), np.full(4, 1e-2), 200_000, 50_000, rng)
    end = path[-1]
    assert np.all(np.abs(end[:2, 0] / end[:2, 1] - 1) < 0.02)
    assert np.abs(end[2:] - starts[2:]).max() < 1e-6


def test_model2_square_root_solution_is_not_generic():
    out = bsv_toys.model2_drift(101, 1.0, 1e-2, 2000, 1000, np.random.default_rng(6))
    assert out["rho_true"] == pytest.approx(1.0, abs=0.05)
    assert out["rho_square_root"] == pytest.approx(1.254, abs=0.05)
    assert out["rho_square_root"] == pytest.approx(out["limit"], rel=1e-12)


@pytest.mark.parametrize("case", ["no ties", "ties", "zeros", "one-sided", "n=30"])
def test_wilcoxon_signed_rank_against_scipy(case):
    """stats.wilcoxon_p (the layer tests' p-values) equals scipy's: its exact test without ties, its
    (complete, hence deterministic) permutation test with ties or zeros at n <= 13."""
    from scipy.stats import wilcoxon

    from licm import stats

    rng = np.random.default_rng(7)
    d = {"no ties": rng.normal(0.3, 1, 10), "ties": np.round(rng.normal(0.5, 1, 12), 0),
         "zeros": np.r_[0.0, 0.0, rng.normal(0, 1, 9)], "one-sided": np.abs(rng.normal(0, 1, 8)),
         "n=30": rng.normal(0.2, 1, 30)}[case]
    assert stats.wilcoxon_p(d) == pytest.approx(float(wilcoxon(d).pvalue), rel=1e-9)
    assert stats.wilcoxon_p(np.zeros(5)) == 1.0
