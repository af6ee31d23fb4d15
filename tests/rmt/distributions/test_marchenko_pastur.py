"""Marchenko–Pastur law: quadrature of the density, closed forms and simulated spectra."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from scipy import integrate, stats

from rmtprune.rmt.marchenko_pastur import marchenko_pastur, mp_cdf, mp_edges, mp_ppf

RATIOS = [0.05, 0.25, 0.5, 0.9, 1.0]
FRACTIONS = [0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999, 1.0]


def _quad(func: Callable[[float], float], lo: float, hi: float, wvar: tuple[float, float]) -> float:
    """∫ func(t) (t − lo)^wvar[0] (hi − t)^wvar[1] dt by QAWS (exact algebraic weights)."""
    with warnings.catch_warnings():  # quad's round-off notice at this tolerance
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        return integrate.quad(
            func, lo, hi, weight="alg", wvar=wvar, epsabs=1e-300, epsrel=1e-13, limit=200
        )[0]


def _cdf_by_quadrature(x: float, ratio: float) -> float:
    """∫ₐˣ sqrt((b − t)(t − a)) / (2π ratio t) dt with the endpoint singularities as weights."""
    a, b = mp_edges(ratio)
    if ratio == 1.0:  # density sqrt(4 − t) t^(−1/2) / (2π): a 1/sqrt singularity at 0
        return _quad(lambda t: math.sqrt(b - t) / (2 * math.pi), 0.0, x, (-0.5, 0.0))
    if x == b:
        return _quad(lambda t: 1.0 / (2 * math.pi * ratio * t), a, b, (0.5, 0.5))
    return _quad(lambda t: math.sqrt(b - t) / (2 * math.pi * ratio * t), a, x, (0.5, 0.0))


@pytest.mark.parametrize("ratio", RATIOS)
def test_cdf_matches_quadrature_of_pdf(ratio: float) -> None:
    a, b = mp_edges(ratio)
    for frac in FRACTIONS:
        x = a + (b - a) * frac
        assert marchenko_pastur.cdf(x, ratio) == pytest.approx(
            _cdf_by_quadrature(x, ratio), abs=1e-10
        )


@pytest.mark.parametrize("ratio", RATIOS)
def test_sf_keeps_relative_precision_away_from_the_edge(ratio: float) -> None:
    a, b = mp_edges(ratio)
    for frac in [0.5, 0.9, 0.99, 0.999]:
        x = a + (b - a) * frac
        tail = _quad(lambda t: math.sqrt(t - a) / (2 * math.pi * ratio * t), x, b, (0.0, 0.5))
        assert marchenko_pastur.sf(x, ratio) == pytest.approx(tail, rel=1e-9)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("sigma2", [1.0, 0.3])
def test_ppf_inverts_cdf(ratio: float, sigma2: float) -> None:
    a, b = mp_edges(ratio, sigma2)
    x = a + (b - a) * np.linspace(0.01, 0.99, 41)
    q = marchenko_pastur.cdf(x, ratio, scale=sigma2)
    assert np.allclose(marchenko_pastur.ppf(q, ratio, scale=sigma2), x, rtol=0, atol=1e-9)
    assert np.allclose(mp_ppf(q, ratio, sigma2), x, rtol=0, atol=1e-9)
    assert np.allclose(mp_cdf(x, ratio, sigma2), q, rtol=0, atol=1e-15)
    assert marchenko_pastur.ppf(0.0, ratio, scale=sigma2) == pytest.approx(a, abs=1e-15)
    assert marchenko_pastur.ppf(1.0, ratio, scale=sigma2) == pytest.approx(b, abs=1e-15)


def _expect(func: Callable[[float], float], ratio: float) -> float:
    """E[func(X)] for X ~ MP(ratio, 1) by quadrature with the edge singularities as weights."""
    a, b = mp_edges(ratio)
    if ratio == 1.0:  # density (4 − t)^(1/2) t^(−1/2) / (2π)
        return _quad(lambda t: func(t) / (2 * math.pi), a, b, (-0.5, 0.5))
    return _quad(lambda t: func(t) / (2 * math.pi * ratio * t), a, b, (0.5, 0.5))


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("sigma2", [1.0, 2.5])
def test_moments_closed_form_and_quadrature(ratio: float, sigma2: float) -> None:
    mean, var, skew, kurt = marchenko_pastur.stats(ratio, scale=sigma2, moments="mvsk")
    assert mean == pytest.approx(sigma2, rel=1e-14)
    assert var == pytest.approx(sigma2**2 * ratio, rel=1e-14)
    # Independent: moments of the density by quadrature (scale-free, so on MP(ratio, 1)).
    assert _expect(lambda t: 1.0, ratio) == pytest.approx(1.0, abs=1e-12)
    assert _expect(lambda t: t, ratio) == pytest.approx(1.0, abs=1e-12)
    assert _expect(lambda t: (t - 1.0) ** 2, ratio) == pytest.approx(ratio, rel=1e-10)
    assert skew == pytest.approx(_expect(lambda t: (t - 1.0) ** 3, ratio) / ratio**1.5, rel=1e-9)
    assert kurt == pytest.approx(_expect(lambda t: (t - 1.0) ** 4, ratio) / ratio**2 - 3, abs=1e-9)
    for k in (3, 4, 5):
        raw = _expect(lambda t, k=k: t**k, ratio)
        assert marchenko_pastur.moment(k, ratio) == pytest.approx(raw, rel=1e-10)


def test_mp_edges_values() -> None:
    assert mp_edges(0.25) == (0.25, 2.25)
    assert mp_edges(1.0, 2.0) == (0.0, 8.0)
    lo, hi = mp_edges(0.5, 3.0)
    assert lo == pytest.approx(3.0 * (1 - math.sqrt(0.5)) ** 2, rel=1e-15)
    assert hi == pytest.approx(3.0 * (1 + math.sqrt(0.5)) ** 2, rel=1e-15)
    # The support of the distribution is the same interval.
    assert marchenko_pastur.support(0.5, scale=3.0) == pytest.approx((lo, hi), rel=1e-15)


@pytest.mark.parametrize("ratio", RATIOS)
def test_cdf_is_one_above_lambda_plus(ratio: float) -> None:
    """Regression: the authors' notebook returned 0 above the upper edge."""
    a, b = mp_edges(ratio, 2.0)
    above = np.array([b * (1 + 1e-12), b + 1e-3, 1.5 * b, 100.0])
    assert np.all(marchenko_pastur.cdf(above, ratio, scale=2.0) == 1.0)
    assert np.all(marchenko_pastur.sf(above, ratio, scale=2.0) == 0.0)
    assert np.all(marchenko_pastur.pdf(above, ratio, scale=2.0) == 0.0)
    assert np.all(mp_cdf(above, ratio, 2.0) == 1.0)
    below = np.array([-1.0, a * (1 - 1e-12) - 1e-300])
    assert np.all(marchenko_pastur.cdf(below, ratio, scale=2.0) == 0.0)


def test_broadcasting_over_ratio_x_and_scale() -> None:
    ratios = np.array([0.1, 0.5, 1.0])
    x = np.linspace(0.05, 3.0, 7)[:, None]
    scales = np.array([1.0, 1.5, 0.8])
    grid = marchenko_pastur.cdf(x, ratios, scale=scales)
    assert grid.shape == (7, 3)
    for i in range(7):
        for j in range(3):
            value = marchenko_pastur.cdf(float(x[i, 0]), float(ratios[j]), scale=scales[j])
            assert grid[i, j] == value
    assert marchenko_pastur.pdf(x, ratios).shape == (7, 3)
    assert marchenko_pastur.ppf(np.array([[0.2], [0.8]]), ratios).shape == (2, 3)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("m", "n", "sigma"),
    [(200, 400, 1.0), (300, 300, 0.5), (500, 100, 2.0), (150, 600, 1.3), (400, 250, 0.7)],
)
def test_simulated_spectra_follow_mp(m: int, n: int, sigma: float) -> None:
    rng = np.random.default_rng(1000 * m + n)
    big, small = max(m, n), min(m, n)
    eigenvalues = np.concatenate(
        [
            np.linalg.svd(sigma * rng.standard_normal((m, n)), compute_uv=False) ** 2 / big
            for _ in range(3)
        ]
    )
    law = marchenko_pastur(small / big, scale=sigma**2)
    assert stats.kstest(eigenvalues, law.cdf).pvalue > 1e-3
    # A 25 % error in sigma2 is detected by the same test.
    wrong = marchenko_pastur(small / big, scale=1.25 * sigma**2)
    assert stats.kstest(eigenvalues, wrong.cdf).pvalue < 1e-4


@pytest.mark.parametrize(
    ("ratio", "sigma2", "name"),
    [
        (0.0, 1.0, "ratio"),
        (1.5, 1.0, "ratio"),
        (-0.2, 1.0, "ratio"),
        (float("nan"), 1.0, "ratio"),
        (0.5, 0.0, "sigma2"),
        (0.5, -1.0, "sigma2"),
        (0.5, float("inf"), "sigma2"),
    ],
)
def test_mp_edges_rejects_bad_parameters(ratio: float, sigma2: float, name: str) -> None:
    with pytest.raises(ValueError, match=f"'{name}'"):
        mp_edges(ratio, sigma2)


def test_mp_edges_rejects_non_numbers() -> None:
    with pytest.raises(TypeError, match="'ratio'"):
        mp_edges("0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'sigma2'"):
        mp_edges(0.5, True)


def test_bad_shape_gives_nan_per_scipy_convention() -> None:
    assert np.isnan(marchenko_pastur.cdf(1.0, 1.5))
    assert np.isnan(marchenko_pastur.pdf(1.0, 0.0))
    assert np.isnan(marchenko_pastur.ppf(0.5, -0.1))
