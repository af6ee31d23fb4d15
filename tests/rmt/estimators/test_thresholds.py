"""Tests of the Gavish–Donoho optimal hard threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.optimize import brentq

from rmtprune.rmt import BEMA, GavishDonoho
from rmtprune.rmt.goodness_of_fit import gaussian_eigenvalues
from rmtprune.rmt.thresholds import gavish_donoho_lambda, gavish_donoho_omega

RATIOS = [0.05, 0.1, 0.3, 0.5, 0.8, 1.0]


def lambda_star_by_break_even(b: float) -> float:
    """Independent derivation: the observed singular value at which keeping a spike of
    strength x costs as much as dropping it, y(x) = 2 x c(x) c~(x) (Gavish & Donoho 2014),
    with y(x) = sqrt((1+x²)(b+x²))/x and the squared cosines of the BBP theory."""

    def y(x: float) -> float:
        return math.sqrt((1 + x * x) * (b + x * x)) / x

    def gap(x: float) -> float:
        c2 = (x**4 - b) / (x**4 + b * x * x)
        ct2 = (x**4 - b) / (x**4 + x * x)
        return y(x) - 2 * x * math.sqrt(c2 * ct2)

    return y(brentq(gap, b**0.25 * (1 + 1e-9), 100.0, xtol=1e-14))


def mp_median_by_quadrature(b: float) -> float:
    lo, hi = (1 - math.sqrt(b)) ** 2, (1 + math.sqrt(b)) ** 2

    def cdf(x: float) -> float:
        def pdf(t: float) -> float:
            return math.sqrt(max((hi - t) * (t - lo), 0.0)) / (2 * math.pi * b * t)

        return integrate.quad(pdf, lo, x, limit=200)[0]

    return brentq(lambda x: cdf(x) - 0.5, lo + 1e-12, hi, xtol=1e-13)


@pytest.mark.parametrize("b", RATIOS)
def test_lambda_star_closed_form(b: float) -> None:
    closed = math.sqrt(2 * (b + 1) + 8 * b / ((b + 1) + math.sqrt(b * b + 14 * b + 1)))
    assert gavish_donoho_lambda(b) == pytest.approx(closed, rel=1e-14)
    assert gavish_donoho_lambda(b) == pytest.approx(lambda_star_by_break_even(b), rel=1e-10)


@pytest.mark.parametrize("b", RATIOS)
def test_omega_exact_and_cubic(b: float) -> None:
    exact = lambda_star_by_break_even(b) / math.sqrt(mp_median_by_quadrature(b))
    assert gavish_donoho_omega(b) == pytest.approx(exact, rel=1e-8)
    cubic = 0.56 * b**3 - 0.95 * b**2 + 1.82 * b + 1.43
    assert gavish_donoho_omega(b, approximate=True) == pytest.approx(cubic, rel=1e-15)
    assert abs(cubic - exact) < 0.01  # the published approximation is that close


def test_published_constants_at_ratio_one() -> None:
    assert gavish_donoho_lambda(1.0) == pytest.approx(4 / math.sqrt(3), rel=1e-15)
    assert gavish_donoho_omega(1.0) == pytest.approx(2.858, abs=5e-4)


def test_unknown_noise_on_gaussian_matrix() -> None:
    rng = np.random.default_rng(20)
    shape = (300, 900)
    W = 0.7 * rng.standard_normal(shape)
    gd = GavishDonoho().fit(W)
    s = np.linalg.svd(W, compute_uv=False)
    assert gd.threshold_ == pytest.approx(gavish_donoho_omega(1 / 3) * np.median(s), rel=1e-9)
    assert gd.sigma2_ == pytest.approx(0.49, rel=0.02)
    assert gd.lambda_plus_ == pytest.approx(gd.threshold_**2 / 900, rel=1e-12)
    assert gd.n_spikes_ == 0
    assert gd.coefficient_ == pytest.approx(gavish_donoho_omega(1 / 3))
    approx = GavishDonoho(approximate=True).fit(W)
    assert approx.threshold_ == pytest.approx(gd.threshold_, rel=0.005)


def test_known_noise_threshold_and_transpose() -> None:
    W = np.random.default_rng(21).standard_normal((200, 500))
    gd = GavishDonoho(sigma2=4.0).fit(W)
    assert gd.threshold_ == pytest.approx(gavish_donoho_lambda(0.4) * math.sqrt(500 * 4.0))
    assert gd.sigma2_ == 4.0
    a, b = GavishDonoho().fit(W), GavishDonoho().fit(W.T)
    assert b.threshold_ == pytest.approx(a.threshold_, rel=1e-12)


def test_fit_eigenvalues_matches_fit() -> None:
    lam = gaussian_eigenvalues((400, 400), random_state=0)
    gd = GavishDonoho().fit_eigenvalues(lam, (400, 400))
    assert gd.sigma2_ == pytest.approx(1.0, rel=0.02)
    W = np.random.default_rng(22).standard_normal((60, 80))
    from_matrix = GavishDonoho().fit(W)
    from_values = GavishDonoho().fit_eigenvalues(from_matrix.eigenvalues_, (60, 80))
    assert from_values.threshold_ == from_matrix.threshold_


def test_between_bbp_and_gd_threshold_only_bema_counts() -> None:
    # theta = 1.5 at ratio 1: above the BBP threshold 1, observed at (1 + θ²)/θ = 2.17 σ√N,
    # below λ*(1) = 2.31: detectable (BEMA) but not worth keeping (Gavish–Donoho).
    rng = np.random.default_rng(23)
    n = 1000
    U, _ = np.linalg.qr(rng.standard_normal((n, 2)))
    V, _ = np.linalg.qr(rng.standard_normal((n, 2)))
    W = rng.standard_normal((n, n)) + math.sqrt(n) * (U * np.array([1.5, 4.0])) @ V.T
    assert BEMA().fit(W).n_spikes_ == 2
    assert GavishDonoho().fit(W).n_spikes_ == 1
    assert GavishDonoho(sigma2=1.0).fit(W).n_spikes_ == 1


def test_bad_input() -> None:
    W = np.ones((5, 5))
    with pytest.raises(ValueError, match=r"'sigma2' parameter of GavishDonoho must be a float"):
        GavishDonoho(sigma2=-1.0).fit(W)
    with pytest.raises(TypeError, match=r"'approximate' parameter of GavishDonoho must be a bool"):
        GavishDonoho(approximate="yes").fit(W)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'eigenvalues' .*must hold all min\(m, n\) = 5"):
        GavishDonoho().fit_eigenvalues(np.ones(3), (5, 8))
    with pytest.raises(ValueError, match=r"'W' parameter of GavishDonoho must have a positive"):
        GavishDonoho().fit(np.zeros((5, 8)))
    with pytest.raises(ValueError, match=r"'ratio' parameter of gavish_donoho_lambda .*Got 0"):
        gavish_donoho_lambda(0.0)
    with pytest.raises(TypeError, match=r"'W' .*real floating-point.*complex"):
        GavishDonoho().fit(np.ones((5, 5), dtype=complex))
