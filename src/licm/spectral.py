"""The spectral density ratio (SDR) of Besserve et al. (BSV), in numpy: the formulas only.

Why a module of its own: the known-answer tests (tests/test_genericity.py), the toy models of BSV
Fig. 2 and 3 (licm.bsv_toys) and the analyses of trained runs (licm.genericity) all rest on these
few lines, and they must stay free of torch and matplotlib so the tests run in seconds.

BSV eq. (8): rho(V, k) = <|k^|^2 S_V> / (<|k^|^2> <S_V>), where ^ is the 2-D DFT on the image grid,
S_V(nu) = E|V^(nu)|^2 is the input's power spectrum and <.> is the plain mean over the non-zero
frequencies (DC excluded, as eq. 7 and 8 write). rho = 1: the filter is "generic" with respect to
its input; rho > 1: it amplifies where the input has power (matched, low-pass on digits); rho < 1:
it whitens. rho is invariant to scaling k or V and to adding a constant to V (DC only).
A kernel's DFT is taken zero-padded to the map's size; its position changes the phase only.
"""
from __future__ import annotations

import numpy as np


def nonzero_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the last two axes without the DC term [..., 0, 0] (BSV's <.>)."""
    a = np.asarray(a, dtype=np.float64)
    # Contiguous, so equal values are always summed in the same order (numpy sums strided views in
    # another order): outputs equal to the inputs then give rho == 1.0 exactly.
    flat = np.ascontiguousarray(a.reshape(*a.shape[:-2], -1)[..., 1:])
    return flat.mean(axis=-1)


def _dft(images: np.ndarray) -> np.ndarray:
    """DFT2 of each image with its own mean removed: that changes DC only (which <.> leaves out) and
    keeps the DFT's round-off of a large constant out of the other frequencies (so 1 - x has exactly
    the spectrum of x there, to round-off of the pixels)."""
    x = np.asarray(images, dtype=np.float64)
    return np.fft.fft2(x - x.mean(axis=(-2, -1), keepdims=True))


def power_spectrum(images: np.ndarray) -> np.ndarray:
    """S(nu) = mean over images of |DFT2(image)|^2: [..., n, H, W] -> [..., H, W], float64."""
    f = _dft(images)
    return np.mean(f.real ** 2 + f.imag ** 2, axis=-3)


def kernel_power(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """|k^|^2 of kernels [..., kh, kw] zero-padded to `shape` (the circular model of BSV Model 1)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    padded = np.zeros((*kernel.shape[:-2], *shape))
    padded[..., :kernel.shape[-2], :kernel.shape[-1]] = kernel
    f = np.fft.fft2(padded)
    return f.real ** 2 + f.imag ** 2


def sdr_power(power: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """rho = <P S> / (<P> <S>) for a filter's power P = |k^|^2 and an input spectrum S (broadcast)."""
    return nonzero_mean(power * spectrum) / (nonzero_mean(power) * nonzero_mean(spectrum))


def sdr_kernel(kernel: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """rho of a spatial kernel (or a stack of them) against an input spectrum [H, W]."""
    return sdr_power(kernel_power(kernel, spectrum.shape[-2:]), spectrum)


def transfer(inputs: np.ndarray, outputs: np.ndarray) -> dict[str, np.ndarray]:
    """The best linear filter from inputs to outputs, frequency by frequency (both [n, H, W]).

    Returns H = E[Y^ conj X^] / E|X^|^2 (complex), the cross-spectrum E[Y^ conj X^], S_in = E|X^|^2
    and S_out = E|Y^|^2. Outputs equal to the inputs give H = 1 exactly (the harness check of the
    tests): the cross-spectrum and S_in are then the same sums of the same products.
    """
    fi, fo = _dft(inputs), _dft(outputs)
    # Real arithmetic, one ufunc per product (numpy's complex product may fuse a multiply-add, which
    # leaves a round-off imaginary part in X^ conj X^): outputs equal to the inputs give H == 1.
    ir, ii, orr, oi = fi.real, fi.imag, fo.real, fo.imag
    s_in = np.mean(ir * ir + ii * ii, axis=0)
    s_out = np.mean(orr * orr + oi * oi, axis=0)
    cross = np.mean(orr * ir + oi * ii, axis=0) + 1j * np.mean(oi * ir - orr * ii, axis=0)
    safe = np.where(s_in > 0, s_in, 1.0)
    h = np.where(s_in > 0, cross.real / safe, 0.0) + 1j * np.where(s_in > 0, cross.imag / safe, 0.0)
    return {"H": h, "cross": cross, "S_in": s_in, "S_out": s_out}


def io_sdr(inputs: np.ndarray, outputs: np.ndarray) -> dict:
    """A network's input/output SDR (BEYOND.md A2 reading of BSV eq. 8): rho of the linear part H of
    the map inputs -> outputs against the input spectrum, and the mean coherence <gamma^2> (how much
    of the output is linear in the input: 1 for a linear filter, 0 for unrelated outputs)."""
    t = transfer(inputs, outputs)
    h, cross, s_in, s_out = t["H"], t["cross"], t["S_in"], t["S_out"]
    denom = s_in * s_out
    coherence = np.divide(cross.real ** 2 + cross.imag ** 2, denom, out=np.zeros_like(s_in), where=denom > 0)
    rho = sdr_power(h.real ** 2 + h.imag ** 2, s_in)
    return {"rho": float(rho), "coherence": float(nonzero_mean(coherence)), "n": int(len(inputs))}


def linear_anticausal_sdr(power: np.ndarray) -> float:
    """rho of the inverse filter 1/k^ against the output spectrum when the cause is white noise
    (BEYOND.md A.0, §2.6 reading): 1/(<|k^|^2><|k^|^-2>) <= 1, equal to 1 only for flat |k^|."""
    return float(1.0 / (nonzero_mean(power) * nonzero_mean(1.0 / power)))


__all__ = ["nonzero_mean", "power_spectrum", "kernel_power", "sdr_power", "sdr_kernel", "transfer", "io_sdr",
           "linear_anticausal_sdr"]
