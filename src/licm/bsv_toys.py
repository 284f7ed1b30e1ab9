"""BSV's toy models rebuilt in numpy: the eye generator (BSV Fig. 2, Example 1), the Haar average of
Prop. 2/4, and the SGD drift of §3.2 (Fig. 3a, eq. 10-11) with its Model-2 consequence (Prop. 6).

Why: they are the known answers the SDR code is checked against before it is turned on trained
experts (tests/test_genericity.py), and the report redraws BSV Fig. 2 and 3 from them. The papers'
own hyper-parameters for Fig. 3 (App. B.7-B.9) are missing from the text, so the step counts, rates
and noise levels come from params.yaml (`genericity.toys`).
"""
from __future__ import annotations

import numpy as np

from licm.spectral import kernel_power, nonzero_mean


def eye_kernel(size: int) -> np.ndarray:
    """A small 'eye' (a disk with a dark pupil) in a size x size square (BSV Example 1's k2)."""
    r = (size - 1) / 2
    y, x = np.mgrid[:size, :size] - r
    d = np.hypot(y, x)
    return ((d <= r + 0.25).astype(float) - 0.7 * (d <= max(r / 2.5, 0.5)))


def two_diracs(d: int, distance: int) -> np.ndarray:
    """k1 of Example 1: unit Diracs at (0, 0) and (0, distance) on a d x d grid."""
    k = np.zeros((d, d))
    k[0, 0] = k[0, distance] = 1.0
    return k


def sdr_with_dc(p1: np.ndarray, p2: np.ndarray) -> float:
    """<P1 P2> / (<P1><P2>) with DC included (the A.3 proof of BSV sums over every frequency)."""
    return float(np.mean(p1 * p2) / (np.mean(p1) * np.mean(p2)))


def sdr_no_dc(p1: np.ndarray, p2: np.ndarray) -> float:
    """The same ratio with DC excluded, as BSV eq. (8) writes it."""
    return float(nonzero_mean(p1 * p2) / (nonzero_mean(p1) * nonzero_mean(p2)))


def stretch(kernel: np.ndarray, g: int) -> np.ndarray:
    """BSV §2.4 stretching on a prime d x d grid: (g.k)(m, n) = k(g m mod d, g n mod d)."""
    d = kernel.shape[-1]
    idx = (g * np.arange(d)) % d
    return kernel[..., idx[:, None], idx[None, :]]


def circular_convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.real(np.fft.ifft2(np.fft.fft2(a) * np.fft.fft2(b)))


def eye_generator(d: int, eye: int, distance: int, g: int) -> dict:
    """Example 1 (BSV Fig. 2): the true pair (k1 = two Diracs, k2 = an eye) and the 'square-root'
    alternative with |k1'^| = |k2'^| = |k1^ k2^|^(1/2) (phases kept), which makes the same image; each
    pair's SDR, with DC (the proof's convention: 1 for the true pair) and without (eq. 8), and each
    pair's image after stretching k1 by g (the extrapolation; the alternative shows interference)."""
    k1 = two_diracs(d, distance)
    k2 = np.zeros((d, d))
    k2[:eye, :eye] = eye_kernel(eye)
    f1, f2 = np.fft.fft2(k1), np.fft.fft2(k2)
    root = np.sqrt(np.abs(f1 * f2))
    a1 = np.real(np.fft.ifft2(root * np.exp(1j * np.angle(f1))))
    a2 = np.real(np.fft.ifft2(root * np.exp(1j * np.angle(f2))))
    pairs = {"true": (k1, k2), "square_root": (a1, a2)}
    out: dict = {"d": d, "eye": eye, "distance": distance, "g": g}
    for name, (p, q) in pairs.items():
        pp, pq = np.abs(np.fft.fft2(p)) ** 2, np.abs(np.fft.fft2(q)) ** 2
        out[name] = {"rho_dc": sdr_with_dc(pp, pq), "rho": sdr_no_dc(pp, pq),
                     "k1": p, "k2": q, "image": circular_convolve(p, q),
                     "stretched": circular_convolve(stretch(p, g), q)}
    c = np.abs(f1 * f2)
    out["square_root_closed_form"] = float(np.mean(c ** 2) / np.mean(c) ** 2)
    return out


def haar_average(spectrum: np.ndarray, kernel: np.ndarray) -> tuple[float, np.ndarray]:
    """1-D, prime d: the mean over the stretching group S of rho(V, g.k) (BSV Prop. 2 and 4 say 1),
    and the individual values. spectrum: S_V [d]; kernel: k [d]; g.k^(u) = k^(u g^-1 mod d)."""
    d = len(spectrum)
    p = np.abs(np.fft.fft(kernel)) ** 2
    u = np.arange(1, d)
    values = []
    for g in range(1, d):
        g_inv = pow(g, -1, d)
        pg = p[(u * g_inv) % d]
        values.append(np.mean(pg * spectrum[u]) / (np.mean(p[u]) * np.mean(spectrum[u])))
    values = np.asarray(values)
    return float(values.mean()), values


def sgd_drift(starts: np.ndarray, c0: float, sigma: np.ndarray, lr: np.ndarray, steps: int, record: int,
              rng: np.random.Generator) -> np.ndarray:
    """SGD on eq. (11), |C - a b|^2 with C ~ N(c0, sigma^2), for several (a, b) at once.

    starts [T, 2]; sigma, lr [T] (sigma 0 = gradient descent on eq. 10). Returns the path
    [steps // record + 1, T, 2]. The noise is drawn in blocks from `rng`, so a seed fixes the path.
    """
    ab = np.array(starts, dtype=np.float64)
    sigma, lr = np.asarray(sigma, np.float64), np.asarray(lr, np.float64)
    path = [ab.copy()]
    block = max(record, 1)
    for start in range(0, steps, block):
        noise = rng.standard_normal((min(block, steps - start), len(ab)))
        for z in noise:
            err = 2.0 * (c0 + sigma * z - ab[:, 0] * ab[:, 1]) * lr
            ab = ab + err[:, None] * ab[:, ::-1]
        path.append(ab.copy())
    return np.stack(path)


def model2_drift(d: int, sigma: float, lr: float, steps: int, record: int, rng: np.random.Generator) -> dict:
    """Model 2, diagonal (BSV §3.2, Prop. 5-6): a*, b* ~ U(0.5, 2) i.i.d. on d coordinates; SGD on each
    coordinate from the true solution. rho'(A, B) = <a^2 b^2>/(<a^2><b^2>) over the steps; the true
    pair's value, the square-root solution's <c^2>/<c>^2 (c = a* b*, Prop. 6's limit)."""
    a_true, b_true = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    c = a_true * b_true

    def rho(a, b):
        return float(np.mean(a ** 2 * b ** 2) / (np.mean(a ** 2) * np.mean(b ** 2)))

    ab = np.stack([a_true, b_true], axis=1)
    curve, its = [rho(a_true, b_true)], [0]
    for start in range(0, steps, record):
        for z in rng.standard_normal((min(record, steps - start), d)):
            err = 2.0 * (c + sigma * z - ab[:, 0] * ab[:, 1]) * lr
            ab = ab + err[:, None] * ab[:, ::-1]
        curve.append(rho(ab[:, 0], ab[:, 1]))
        its.append(min(start + record, steps))
    root = np.sqrt(c)
    return {"d": d, "rho_true": rho(a_true, b_true), "rho_square_root": rho(root, root),
            "limit": float(np.mean(c ** 2) / np.mean(c) ** 2), "steps": its, "rho": curve}


def random_kernel_sdr(size: int, spectrum: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """rho of n i.i.d. N(0,1) kernels of size x size against a spectrum: how far a 'generic' random
    filter lands from 1 at that size (BEYOND.md A.3: wide at 3x3, narrowing as kernels grow)."""
    from licm.spectral import sdr_kernel

    return sdr_kernel(rng.standard_normal((n, size, size)), spectrum)


__all__ = ["eye_kernel", "two_diracs", "stretch", "eye_generator", "haar_average", "sgd_drift", "model2_drift",
           "sdr_with_dc", "sdr_no_dc", "random_kernel_sdr"]
