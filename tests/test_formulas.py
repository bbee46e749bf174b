"""The pure maths against Monte Carlo estimates and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dfq_gpu import formulas as fm

RNG = np.random.default_rng(1234)
Z = RNG.standard_normal(2_000_000)

CASES = [  # mu, sigma, lo, hi
    (0.0, 1.0, 0.0, np.inf),      # ReLU
    (1.3, 0.7, 0.0, np.inf),
    (-2.0, 1.5, 0.0, np.inf),
    (2.5, 2.0, 0.0, 6.0),         # ReLU6
    (7.0, 1.0, 0.0, 6.0),         # mostly saturated
    (0.4, 3.0, -1.0, 2.0),        # general clamp
    (0.0, 1.0, -np.inf, np.inf),  # identity
    (3.0, 0.0, 0.0, 6.0),         # degenerate sigma
]


@pytest.mark.parametrize("mu,sigma,lo,hi", CASES)
def test_clipped_normal_moments_match_monte_carlo(mu, sigma, lo, hi):
    x = np.clip(mu + sigma * Z, lo, hi)
    m = fm.clipped_normal_mean(mu, sigma, lo, hi)
    m2 = fm.clipped_normal_second_moment(mu, sigma, lo, hi)
    se = max(x.std() / math.sqrt(len(x)), 1e-12)
    assert abs(float(m) - x.mean()) < 6 * se + 1e-9
    assert float(m2) == pytest.approx((x * x).mean(), rel=5e-3, abs=1e-9)
    assert float(fm.clipped_normal_std(mu, sigma, lo, hi)) == pytest.approx(x.std(), rel=5e-3, abs=1e-9)


def test_relu_expectation_is_the_papers_formula():
    beta, gamma = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.5, 3.0])
    t = -beta / gamma
    paper = gamma * fm.normal_pdf(t) + beta * (1 - fm.normal_cdf(t))
    np.testing.assert_allclose(fm.clipped_normal_mean(beta, gamma), paper, rtol=1e-12)


def test_vectorized_per_channel():
    mu, sigma = np.array([0.0, 1.0, 5.0]), np.array([1.0, 2.0, 0.5])
    got = fm.clipped_normal_mean(mu, sigma, 0.0, np.array([6.0, 6.0, 4.0]))
    for i in range(3):
        assert got[i] == pytest.approx(float(fm.clipped_normal_mean(mu[i], sigma[i], 0.0, [6.0, 6.0, 4.0][i])))


@pytest.mark.parametrize("n", [1.0, 2.0, 3.0])
def test_absorption_shift_probability(n):
    beta, gamma = np.array([5.0, 0.5, 10.0]), np.array([1.0, 1.0, 2.0])
    c = fm.absorption_shift(beta, gamma, n)
    np.testing.assert_allclose(c, np.maximum(0.0, beta - n * gamma))
    # the fraction of pre-activations below c is Phi(-n) where c > 0
    for b, g, ci in zip(beta, gamma, c):
        if ci > 0:
            frac = np.mean(b + g * Z < ci)
            assert frac == pytest.approx(fm.normal_cdf(-n), abs=3e-3)
    # the paper's absorbed network computes relu(z - c) + c instead of relu(z): it differs exactly
    # where z < c, so on the fraction Phi(-n) of the pre-activations (a larger c changes more)
    for b, g, ci in zip(beta, gamma, c):
        z = b + g * Z
        changed = np.mean(np.maximum(z - ci, 0) + ci != np.maximum(z, 0))
        assert changed == pytest.approx(fm.normal_cdf(-n) if ci > 0 else 0.0, abs=3e-3)


def test_absorption_shift_saturated_channel_is_absorbed_whole():
    c = fm.absorption_shift(np.array([20.0]), np.array([1.0]), 3.0, hi=6.0)
    assert c[0] == 6.0


def test_equalization_makes_ranges_sqrt_r1_r2():
    r1 = RNG.uniform(0.01, 10, 50)
    r2 = RNG.uniform(0.01, 10, 50)
    s = fm.equalization_scales(r1, r2)
    np.testing.assert_allclose(r1 / s, np.sqrt(r1 * r2))
    np.testing.assert_allclose(r2 * s, np.sqrt(r1 * r2))


def test_equalization_guards_dead_channels_and_bounds():
    r1 = np.array([1.0, 0.0, 1e-9, 4.0, 1.0])
    r2 = np.array([1.0, 1.0, 1.0, 1e-12, 100.0])
    s = fm.equalization_scales(r1, r2, dead_threshold=1e-6, bound=4.0)
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    assert s[1] == 1.0 and s[2] == 1.0 and s[3] == 1.0  # dead on one side: untouched
    assert s[4] == pytest.approx(0.25)  # sqrt(0.01) = 0.1, bounded to 1/4
    with pytest.raises(ValueError):
        fm.equalization_scales(np.ones(2), np.ones(3))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_quant_params_cover_range_and_represent_zero(bits, symmetric):
    lo, hi = np.array([-0.3, 0.5, -2.0]), np.array([1.7, 2.0, -1.0])
    scale, zp = fm.quant_params(lo, hi, bits, symmetric)
    qmin, qmax = fm.quant_grid(bits, symmetric)
    assert np.all(scale > 0)
    # the step is exactly the range over the number of intervals: (hi - lo) / (2^b - 1) over
    # [min(lo, 0), max(hi, 0)], or max|.| / (2^(b-1) - 1) for the symmetric grid
    lo0, hi0 = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    want = np.maximum(-lo0, hi0) / (2 ** (bits - 1) - 1) if symmetric else (hi0 - lo0) / (2**bits - 1)
    np.testing.assert_allclose(scale, want, rtol=1e-14)
    assert (qmin, qmax) == ((-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1))
    if not symmetric:  # the zero point puts the real zero on the grid point nearest to it
        np.testing.assert_array_equal(zp, np.clip(np.round(-lo0 / want), 0, 2**bits - 1))
    # zero is exactly representable
    np.testing.assert_array_equal(fm.fake_quant(np.zeros(3), scale, zp, bits, symmetric), np.zeros(3))
    # the grid covers [min(lo,0), max(hi,0)] up to half a step
    top = (qmax - zp) * scale
    bottom = (qmin - zp) * scale
    assert np.all(top >= np.maximum(hi, 0) - scale / 2 - 1e-12)
    assert np.all(bottom <= np.minimum(lo, 0) + scale / 2 + 1e-12)
    # the error of values inside the range is at most half a step
    x = np.linspace(np.minimum(lo, 0), np.maximum(hi, 0), 101)
    err = np.abs(fm.fake_quant(x, scale, zp, bits, symmetric) - x)
    assert np.all(err <= scale / 2 + 1e-12)


def test_normal_function_moments_match_monte_carlo():
    def hardswish(x):
        return x * np.clip(x + 3, 0, 6) / 6

    mu, sigma = np.array([-1.0, 0.5, 3.0]), np.array([1.0, 2.0, 0.3])
    mean, std = fm.normal_function_moments(hardswish, mu, sigma)
    for i in range(3):
        v = hardswish(mu[i] + sigma[i] * Z)
        assert mean[i] == pytest.approx(v.mean(), abs=5e-3)
        assert std[i] == pytest.approx(v.std(), rel=1e-2)


def test_range_mse_matches_monte_carlo_with_laplace_tails():
    rng = np.random.default_rng(7)
    mu, sigma = np.array([1.0, 3.0]), np.array([1.0, 0.5])
    clamp_lo, clamp_hi = np.array([0.0, 0.0]), np.array([6.0, 4.0])
    lo, hi, levels = 0.0, 3.5, 16
    z = rng.laplace(0.0, 1.0 / math.sqrt(2.0), size=(2, 1_000_000))  # unit variance
    x = np.clip(mu[:, None] + sigma[:, None] * z, clamp_lo[:, None], clamp_hi[:, None])
    scale, zp = fm.quant_params(np.array(lo), np.array(hi), 4)
    mc = np.mean((fm.fake_quant(x, scale, zp, 4) - x) ** 2)
    model = fm.clipped_normal_range_mse(mu, sigma, clamp_lo, clamp_hi, lo, hi, levels)
    assert model == pytest.approx(mc, rel=0.05)


def test_mse_optimal_range_beats_the_full_range_and_its_neighbours():
    mu, sigma = np.full(8, 1.0), np.full(8, 1.0)
    clamp_lo, clamp_hi = np.zeros(8), np.full(8, 20.0)
    lo, hi, err = fm.mse_optimal_range(mu, sigma, clamp_lo, clamp_hi, 0.0, 20.0, 256)
    assert lo == 0.0 and 2.0 < hi < 20.0
    full = fm.clipped_normal_range_mse(mu, sigma, clamp_lo, clamp_hi, 0.0, 20.0, 256)
    assert err < full
    for f in (0.9, 1.1):
        assert err <= fm.clipped_normal_range_mse(mu, sigma, clamp_lo, clamp_hi, 0.0, hi * f, 256) + 1e-15
