"""Tests of the goodness-of-fit statistic, the Gaussian null sampler and the p-value."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from rmtprune.rmt import BEMA, fit_statistic
from rmtprune.rmt.goodness_of_fit import (
    gaussian_eigenvalues,
    null_statistics,
    simulation_pvalue,
)
from rmtprune.rmt.marchenko_pastur import mp_ppf


def _mp_cdf_by_quadrature(x: float, ratio: float, sigma2: float) -> float:
    """Independent MP CDF: integrate the density of SPEC section 1 numerically."""
    lo, hi = sigma2 * (1 - math.sqrt(ratio)) ** 2, sigma2 * (1 + math.sqrt(ratio)) ** 2
    if x <= lo:
        return 0.0
    if x >= hi:
        return 1.0

    def pdf(t: float) -> float:
        return math.sqrt(max((hi - t) * (t - lo), 0.0)) / (2 * math.pi * sigma2 * ratio * t)

    return integrate.quad(pdf, lo, x, limit=200)[0]


def test_statistic_is_zero_on_exact_quantiles() -> None:
    p = 200
    lam = mp_ppf(np.arange(p) / p, 0.3, 1.7)
    assert fit_statistic(lam, 0.3, 1.7, (50, 150)) < 1e-12


@pytest.mark.parametrize(("ratio", "scale"), [(0.5, 1.1), (1.0, 0.9), (0.2, 1.05)])
def test_statistic_matches_quadrature(ratio: float, scale: float) -> None:
    # Spectrum = MP quantiles stretched by `scale`, compared with MP(ratio, 1):
    # D = max_k |F(scale * q_k) - k/p| computed independently by quadrature.
    p = 60
    k = np.arange(15, 45)
    lam = scale * mp_ppf(np.arange(p) / p, ratio)
    expected = max(abs(_mp_cdf_by_quadrature(lam[i], ratio, 1.0) - i / p) for i in k)
    assert fit_statistic(lam, ratio, 1.0, (15, 45)) == pytest.approx(expected, abs=1e-9)
    assert expected > 0.01  # a real discrepancy, not a trivial zero


def test_statistic_bad_input() -> None:
    lam = np.linspace(0.1, 2.0, 20)
    with pytest.raises(ValueError, match=r"'window' .*0 <= start < stop <= 20\. Got \(5, 25\)"):
        fit_statistic(lam, 0.5, 1.0, (5, 25))
    with pytest.raises(ValueError, match=r"'sigma2' parameter of fit_statistic must be a float"):
        fit_statistic(lam, 0.5, -1.0, (5, 15))
    with pytest.raises(ValueError, match=r"'ratio' parameter of fit_statistic .*Got 1.5"):
        fit_statistic(lam, 1.5, 1.0, (5, 15))
    with pytest.raises(ValueError, match=r"'eigenvalues_sorted' .*1-D array\. Got shape \(2, 10\)"):
        fit_statistic(lam.reshape(2, 10), 0.5, 1.0, (5, 15))
    with pytest.raises(TypeError, match=r"'window' .*pair \(start, stop\) of ints\. Got 5"):
        fit_statistic(lam, 0.5, 1.0, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (40, 40)])
def test_bidiagonal_sampler_has_exact_wishart_moments(shape: tuple[int, int]) -> None:
    # For W (p x N) with N(0,1) entries: tr(WW^T) ~ chi2_{pN}, so E = pN and Var = 2pN;
    # E tr((WW^T)^2) = pN(N + p + 1).
    p, N = min(shape), max(shape)
    rng = np.random.default_rng(7)
    n = 4000
    tr1 = np.empty(n)
    tr2 = np.empty(n)
    for i in range(n):
        lam = gaussian_eigenvalues(shape, rng) * N
        tr1[i], tr2[i] = lam.sum(), (lam**2).sum()
    assert tr1.mean() == pytest.approx(p * N, abs=4 * math.sqrt(2 * p * N / n))
    assert tr1.var() == pytest.approx(2 * p * N, rel=0.1)
    assert tr2.mean() == pytest.approx(p * N * (N + p + 1), abs=4 * tr2.std() / math.sqrt(n))


def test_bidiagonal_and_dense_largest_eigenvalue_agree() -> None:
    shape = (40, 80)
    rng = np.random.default_rng(8)
    bidiagonal = [gaussian_eigenvalues(shape, rng)[-1] for _ in range(1500)]
    dense = [gaussian_eigenvalues(shape, rng, method="dense")[-1] for _ in range(1500)]
    assert stats.ks_2samp(bidiagonal, dense).pvalue > 0.01


def test_single_eigenvalue_is_chi_square_over_N() -> None:
    lam = np.array([gaussian_eigenvalues((1, 20), s)[0] for s in range(3000)])
    assert stats.kstest(lam * 20, stats.chi2(20).cdf).pvalue > 0.01


def test_null_statistics_seeded_and_pvalue_counting() -> None:
    def top(lam: np.ndarray) -> float:
        return float(lam[-1])

    a = null_statistics((20, 30), top, 25, random_state=3)
    b = null_statistics((20, 30), top, 25, random_state=3)
    np.testing.assert_array_equal(a, b)
    assert simulation_pvalue(0.5, [0.1, 0.2, 0.6, 0.7]) == pytest.approx(3 / 5)
    assert simulation_pvalue(1.0, [0.1, 0.2]) == pytest.approx(1 / 3)
    assert simulation_pvalue(0.0, [0.1, 0.2]) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(500, 1000), (1000, 1000), (784, 3000)])
def test_fit_error_small_on_gaussian_noise(shape: tuple[int, int]) -> None:
    W = np.random.default_rng(9).standard_normal(shape)
    assert BEMA().fit(W).fit_error_ <= 0.01


@pytest.mark.parametrize(("df", "low"), [(1.0, 0.2), (1.5, 0.08)])
def test_fit_error_above_cutoff_for_heavy_tails(df: float, low: float) -> None:
    # Student-t entries with df < 2 (infinite variance): the bulk is far from MP.
    # Measured D at 500 x 1000 over 5 seeds: 0.23-0.29 (df = 1), 0.10-0.12 (df = 1.5).
    W = np.random.default_rng(10).standard_t(df, size=(500, 1000))
    assert BEMA().fit(W).fit_error_ > low


def test_student_t2_is_rejected_by_the_pvalue_not_the_cutoff() -> None:
    # t with 2 degrees of freedom sits at the edge of the normal domain of attraction, so
    # its bulk drifts to MP as the size grows: D = 0.03-0.04 at 500 x 1000 (measured),
    # under the 0.05 cutoff, yet ten times the Gaussian D; the p-value rejects it.
    rng = np.random.default_rng(10)
    bema = BEMA().fit(rng.standard_t(2, size=(500, 1000)))
    gaussian = BEMA().fit(rng.standard_normal((500, 1000)))
    assert 0.02 < bema.fit_error_ < 0.05
    assert bema.fit_error_ > 4 * gaussian.fit_error_
    assert bema.pvalue(n_simulations=50, random_state=0) == pytest.approx(1 / 51)


@pytest.mark.slow
def test_pvalue_is_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(11)
    n_trials = 200
    pvalues = np.empty(n_trials)
    for i in range(n_trials):
        W = rng.standard_normal((60, 120))  # dense draws: independent of the bidiagonal null
        pvalues[i] = BEMA().fit(W).pvalue(n_simulations=100, random_state=rng)
    rate = float(np.mean(pvalues <= 0.05))
    assert 0.01 <= rate <= 0.10
    # Roughly uniform p-values overall (their grid is 1/101).
    assert stats.kstest(pvalues, "uniform").pvalue > 0.001
