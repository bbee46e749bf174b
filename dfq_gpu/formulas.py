"""The paper's maths as plain NumPy functions (no torch, no graphs).

Everything here works on arrays of per-channel values in float64 and is checked
against Monte Carlo estimates in ``tests/test_formulas.py``.

- uniform affine quantization parameters (:func:`quant_params`, :func:`fake_quant`);
- cross-layer equalization scales (:func:`equalization_scales`);
- moments of a clipped normal, ``E[clip(z, lo, hi)]`` and ``E[clip(z, lo, hi)^2]`` for
  ``z ~ N(mu, sigma^2)`` (:func:`clipped_normal_mean`, :func:`clipped_normal_second_moment`),
  which give the expected input of a layer after ReLU / ReLU6 / a per-channel clamp;
- the bias absorption shift ``c = clip(beta - n gamma, 0, hi)`` (:func:`absorption_shift`);
- moments of any elementwise function of a normal by Gauss-Hermite quadrature
  (:func:`normal_function_moments`), for activations without a closed form;
- SQNR in dB (:func:`sqnr_db`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.special import ndtr

__all__ = [
    "normal_pdf",
    "normal_cdf",
    "clipped_normal_mean",
    "clipped_normal_second_moment",
    "clipped_normal_std",
    "absorption_shift",
    "equalization_scales",
    "quant_params",
    "fake_quant",
    "sqnr_db",
    "normal_function_moments",
    "gaussian_interval",
    "clipped_normal_range_mse",
    "mse_optimal_range",
]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def normal_pdf(t: np.ndarray) -> np.ndarray:
    """Standard normal density."""
    t = np.asarray(t, dtype=np.float64)
    return _INV_SQRT_2PI * np.exp(-0.5 * t * t)


def normal_cdf(t: np.ndarray) -> np.ndarray:
    """Standard normal distribution function."""
    return ndtr(np.asarray(t, dtype=np.float64))


def _standardize(mu, sigma, lo, hi):
    mu, sigma, lo, hi = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (mu, sigma, lo, hi)))
    sigma = np.abs(sigma)
    safe = np.where(sigma > 0, sigma, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.where(np.isneginf(lo), -np.inf, (lo - mu) / safe)
        b = np.where(np.isposinf(hi), np.inf, (hi - mu) / safe)
    return mu, sigma, lo, hi, a, b


def clipped_normal_mean(mu, sigma, lo=0.0, hi=np.inf) -> np.ndarray:
    """``E[clip(z, lo, hi)]`` for ``z ~ N(mu, sigma^2)``, elementwise.

    ``lo = 0, hi = inf`` is ReLU, ``lo = 0, hi = 6`` ReLU6; ``lo``/``hi`` may be ``-inf``/``inf``.
    ``sigma = 0`` gives ``clip(mu, lo, hi)``.
    """
    mu, sigma, lo, hi, a, b = _standardize(mu, sigma, lo, hi)
    pa, pb = normal_cdf(a), normal_cdf(b)
    fa, fb = normal_pdf(a), normal_pdf(b)
    inside = mu * (pb - pa) + sigma * (fa - fb)
    with np.errstate(invalid="ignore"):
        below = np.where(np.isneginf(lo), 0.0, lo * pa)
        above = np.where(np.isposinf(hi), 0.0, hi * (1.0 - pb))
    out = below + inside + above
    return np.where(sigma > 0, out, np.clip(mu, lo, hi))


def clipped_normal_second_moment(mu, sigma, lo=0.0, hi=np.inf) -> np.ndarray:
    """``E[clip(z, lo, hi)^2]`` for ``z ~ N(mu, sigma^2)``, elementwise."""
    mu, sigma, lo, hi, a, b = _standardize(mu, sigma, lo, hi)
    pa, pb = normal_cdf(a), normal_cdf(b)
    fa, fb = normal_pdf(a), normal_pdf(b)
    # integral over [a, b] of (mu + sigma t)^2 phi(t) dt
    with np.errstate(invalid="ignore"):
        afa = np.where(np.isinf(a), 0.0, a * fa)
        bfb = np.where(np.isinf(b), 0.0, b * fb)
        inside = (mu * mu + sigma * sigma) * (pb - pa) + 2.0 * mu * sigma * (fa - fb) + sigma * sigma * (afa - bfb)
        below = np.where(np.isneginf(lo), 0.0, lo * lo * pa)
        above = np.where(np.isposinf(hi), 0.0, hi * hi * (1.0 - pb))
    out = below + inside + above
    return np.where(sigma > 0, out, np.clip(mu, lo, hi) ** 2)


def clipped_normal_std(mu, sigma, lo=0.0, hi=np.inf) -> np.ndarray:
    """Standard deviation of ``clip(z, lo, hi)`` for ``z ~ N(mu, sigma^2)``."""
    m = clipped_normal_mean(mu, sigma, lo, hi)
    m2 = clipped_normal_second_moment(mu, sigma, lo, hi)
    return np.sqrt(np.maximum(m2 - m * m, 0.0))


def absorption_shift(beta, gamma, n_sigmas: float = 3.0, hi=np.inf) -> np.ndarray:
    """The shift ``c`` that bias absorption moves from a layer into the next one.

    ``c = clip(beta - n gamma, 0, hi)``: the pre-activation ``z ~ N(beta, gamma^2)`` of a
    ReLU (``hi = inf``) or of a clamp to ``[0, hi]`` stays above ``c`` with probability
    ``Phi(n)`` (99.865% for ``n = 3``), where ``act(z) - c = act(z - c)`` holds exactly. A
    channel that saturates (``beta - n gamma >= hi``) is a constant ``hi`` and is absorbed
    whole.
    """
    beta = np.asarray(beta, dtype=np.float64)
    gamma = np.abs(np.asarray(gamma, dtype=np.float64))
    return np.clip(beta - n_sigmas * gamma, 0.0, hi)


def equalization_scales(
    r_src: np.ndarray,
    r_dst: np.ndarray,
    dead_threshold: float = 0.0,
    bound: float | None = None,
) -> np.ndarray:
    """Per-channel cross-layer equalization scales ``s = sqrt(r_src / r_dst)``.

    Scaling the producing side by ``1/s`` and the consuming side by ``s`` makes both
    ranges ``sqrt(r_src * r_dst)``. Channels whose range on either side is below
    ``dead_threshold`` times that side's largest range (dead or nearly dead channels) get
    ``s = 1``, so no channel is blown up by a near-zero range; ``bound`` clips the
    scales to ``[1/bound, bound]``. Always finite and positive.
    """
    r_src = np.abs(np.asarray(r_src, dtype=np.float64))
    r_dst = np.abs(np.asarray(r_dst, dtype=np.float64))
    if r_src.shape != r_dst.shape:
        raise ValueError(f"equalization_scales: shapes differ, {r_src.shape} vs {r_dst.shape}")
    live = (r_src > dead_threshold * r_src.max(initial=0.0)) & (r_dst > dead_threshold * r_dst.max(initial=0.0))
    live &= (r_src > 0) & (r_dst > 0) & np.isfinite(r_src) & np.isfinite(r_dst)
    s = np.ones_like(r_src)
    s[live] = np.sqrt(r_src[live] / r_dst[live])
    if bound is not None:
        s = np.clip(s, 1.0 / bound, bound)
    return s


def quant_params(lo, hi, bits: int, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of uniform ``bits``-bit quantization of ``[lo, hi]``.

    Asymmetric: the grid ``0 .. 2^bits - 1`` covers ``[min(lo, 0), max(hi, 0)]`` (zero is
    always exactly representable), ``zero_point = round(-lo / scale)``. Symmetric: the
    signed grid ``-(2^(bits-1) - 1) .. 2^(bits-1) - 1`` covers ``[-max|.|, max|.|]`` with
    zero point 0. Both are returned as float64 / int64 arrays shaped like ``lo``; a range
    of zero width gets scale 1.
    """
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = np.maximum(-lo, hi)
        scale = np.where(amax > 0, amax / qmax, 1.0)
        zp = np.zeros_like(scale, dtype=np.int64)
    else:
        levels = 2**bits - 1
        width = hi - lo
        scale = np.where(width > 0, width / levels, 1.0)
        zp = np.clip(np.round(-lo / scale), 0, levels).astype(np.int64)
    return scale, zp


def quant_grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid ``(qmin, qmax)`` used by :func:`quant_params`."""
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def fake_quant(x, scale, zero_point, bits: int, symmetric: bool = False) -> np.ndarray:
    """Quantize and dequantize: ``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``."""
    qmin, qmax = quant_grid(bits, symmetric)
    x = np.asarray(x, dtype=np.float64)
    q = np.clip(np.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def sqnr_db(reference, approx) -> float:
    """``10 log10(|ref|^2 / |ref - approx|^2)`` in dB (``inf`` when they are equal)."""
    reference = np.asarray(reference, dtype=np.float64)
    approx = np.asarray(approx, dtype=np.float64)
    noise = float(np.sum((reference - approx) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(96)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def normal_function_moments(f: Callable[[np.ndarray], np.ndarray], mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``f(z)``, ``z ~ N(mu, sigma^2)``, by Gauss-Hermite quadrature.

    ``f`` is a vectorized elementwise function (for example hardswish or SiLU); ``mu`` and
    ``sigma`` are per-channel arrays. Exact for polynomials up to degree 191, accurate for
    smooth activations; kinks (ReLU) converge more slowly, which is why they have closed forms.
    """
    mu = np.asarray(mu, dtype=np.float64)[..., None]
    sigma = np.abs(np.asarray(sigma, dtype=np.float64))[..., None]
    vals = np.asarray(f(mu + sigma * _GH_NODES), dtype=np.float64)
    mean = vals @ _GH_WEIGHTS
    second = (vals * vals) @ _GH_WEIGHTS
    return mean, np.sqrt(np.maximum(second - mean * mean, 0.0))


def gaussian_interval(mu, sigma, n_sigmas: float, lo=-np.inf, hi=np.inf) -> tuple[np.ndarray, np.ndarray]:
    """``[mu - n sigma, mu + n sigma]`` passed through a clamp to ``[lo, hi]`` (per channel)."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.abs(np.asarray(sigma, dtype=np.float64))
    return np.clip(mu - n_sigmas * sigma, lo, hi), np.clip(mu + n_sigmas * sigma, lo, hi)


# The value model for choosing activation ranges: per channel a Laplace distribution with the
# channel's mean and standard deviation (through the activation's clamp). Activations of real
# networks have heavier tails than the Gaussian that batch-norm statistics suggest; with a
# Gaussian model the MSE-optimal range clips too much (measured on EfficientNet-Lite0:
# 16.5 dB logit SQNR with Gaussian tails, 19.4 dB with Laplace tails, 19.0 dB with min/max).
_GRID_T = np.linspace(-12.0, 12.0, 193)
_GRID_W = np.exp(-math.sqrt(2.0) * np.abs(_GRID_T))
_GRID_W = _GRID_W / _GRID_W.sum()


def clipped_normal_range_mse(mu, sigma, clamp_lo, clamp_hi, lo: float, hi: float, levels: int) -> float:
    """Expected squared error per element of quantizing ``x = clip(z, clamp_lo, clamp_hi)`` with
    ``levels`` uniform levels over ``[lo, hi]``; ``z`` per channel has mean ``mu`` and standard
    deviation ``sigma`` with Laplace tails (see ``_GRID_W``).

    Clipping error ``E[(x - clip(x, lo, hi))^2]`` plus rounding error ``step^2 / 12`` inside the
    range, averaged over channels (each channel has as many elements). Integrated on a fixed
    grid in ``z`` (the integrand has kinks, where quadrature rules converge slowly).
    """
    return float(_range_mse(_value_grid(mu, sigma, clamp_lo, clamp_hi), np.array([lo]), np.array([hi]), levels)[0])


def _value_grid(mu, sigma, clamp_lo, clamp_hi) -> np.ndarray:
    mu = np.asarray(mu, dtype=np.float64)[:, None]
    sigma = np.abs(np.asarray(sigma, dtype=np.float64))[:, None]
    return np.clip(mu + sigma * _GRID_T[None, :], np.asarray(clamp_lo, dtype=np.float64)[:, None],
                   np.asarray(clamp_hi, dtype=np.float64)[:, None])


def _range_mse(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """MSE for each candidate range ``[lo[k], hi[k]]`` over the value grid ``x`` [channels, grid]."""
    out = np.empty(len(lo))
    for k, (l, h) in enumerate(zip(lo, hi)):
        clipped = np.clip(x, l, h)
        step = (h - l) / max(levels - 1, 1)
        inside = (x >= l) & (x <= h)
        err = (x - clipped) ** 2 + inside * (step * step / 12.0)
        out[k] = float((err @ _GRID_W).mean())
    return out


def mse_optimal_range(mu, sigma, clamp_lo, clamp_hi, lo: float, hi: float, levels: int) -> tuple[float, float, float]:
    """The range ``f * [lo, hi]`` (``0.1 <= f <= 1``) with the least :func:`clipped_normal_range_mse`.

    Coarse-to-fine search over ``f``; returns ``(lo, hi, mse)``. ``[lo, hi]`` is the full range.
    """
    x = _value_grid(mu, sigma, clamp_lo, clamp_hi)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi <= lo:
        return lo, hi, 0.0
    best_f, best_e = 1.0, math.inf
    width = 0.9
    center = 0.55
    for _ in range(3):
        fs = np.clip(np.linspace(center - width / 2, center + width / 2, 9), 0.1, 1.0)
        errs = _range_mse(x, fs * lo, fs * hi, levels)
        k = int(np.argmin(errs))
        if errs[k] < best_e:
            best_f, best_e = float(fs[k]), float(errs[k])
        center, width = best_f, width / 4
    return best_f * lo, best_f * hi, best_e
