"""The checks SciPy runs on each of its distributions, applied to every law of the package."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import rv_continuous

from rmtprune.rmt.marchenko_pastur import marchenko_pastur
from rmtprune.rmt.tracy_widom import tracy_widom

CASES = [
    pytest.param(marchenko_pastur, (0.05,), 1.0, id="mp-0.05"),
    pytest.param(marchenko_pastur, (0.3,), 2.5, id="mp-0.3-scale2.5"),
    pytest.param(marchenko_pastur, (0.7,), 0.4, id="mp-0.7-scale0.4"),
    pytest.param(marchenko_pastur, (1.0,), 1.0, id="mp-1"),
    pytest.param(marchenko_pastur, (1.0,), 3.0, id="mp-1-scale3"),
    pytest.param(tracy_widom, (1,), 1.0, id="tw-1"),
    pytest.param(tracy_widom, (2,), 1.0, id="tw-2"),
    pytest.param(tracy_widom, (4,), 1.0, id="tw-4"),
    pytest.param(tracy_widom, (1,), 0.5, id="tw-1-scale0.5"),
]
LEVELS = np.array([1e-6, 1e-3, 0.02, 0.25, 0.5, 0.75, 0.98, 0.999, 1 - 1e-6])


def _grid(dist: rv_continuous, args: tuple[float, ...], scale: float, n: int) -> np.ndarray:
    """Points across the bulk: the inner 99 % of a finite support, else mean ± 4 sd."""
    lo, hi = dist.support(*args, scale=scale)
    if np.isfinite(lo) and np.isfinite(hi):
        return lo + (hi - lo) * np.linspace(0.005, 0.995, n)
    mean, var = dist.stats(*args, scale=scale, moments="mv")
    return mean + np.sqrt(var) * np.linspace(-4.0, 4.0, n)


def _wide_grid(dist: rv_continuous, args: tuple[float, ...], scale: float) -> np.ndarray:
    """Points reaching far into the tails (and beyond a finite support)."""
    lo, hi = dist.support(*args, scale=scale)
    if np.isfinite(lo) and np.isfinite(hi):
        return np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 20001)
    mean, var = dist.stats(*args, scale=scale, moments="mv")
    return mean + np.sqrt(var) * np.linspace(-12.0, 60.0, 20001)


@pytest.mark.parametrize(("dist", "args", "scale"), CASES)
def test_ppf_of_cdf_round_trip(dist: rv_continuous, args: tuple[float, ...], scale: float) -> None:
    x = _grid(dist, args, scale, 101)
    assert np.allclose(dist.ppf(dist.cdf(x, *args, scale=scale), *args, scale=scale), x, atol=1e-9)
    assert np.allclose(dist.isf(dist.sf(x, *args, scale=scale), *args, scale=scale), x, atol=1e-9)


@pytest.mark.parametrize(("dist", "args", "scale"), CASES)
def test_cdf_of_ppf_round_trip(dist: rv_continuous, args: tuple[float, ...], scale: float) -> None:
    # Absolute 1e-13: MP's closed-form CDF loses relative (not absolute) precision at its edges.
    x = dist.ppf(LEVELS, *args, scale=scale)
    assert np.all(np.diff(x) > 0)
    assert np.allclose(dist.cdf(x, *args, scale=scale), LEVELS, rtol=1e-10, atol=1e-13)
    upper = dist.isf(LEVELS, *args, scale=scale)
    assert np.allclose(dist.sf(upper, *args, scale=scale), LEVELS, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(("dist", "args", "scale"), CASES)
def test_pdf_integrates_to_one(dist: rv_continuous, args: tuple[float, ...], scale: float) -> None:
    lo, hi = dist.support(*args, scale=scale)
    if np.isfinite(lo):
        points = lo + (hi - lo) * np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    else:
        mean, var = dist.stats(*args, scale=scale, moments="mv")
        points = mean + np.sqrt(var) * np.array([-10.0, -4, -2, -1, 0, 1, 2, 4, 10, 40])
    total = 0.0
    with warnings.catch_warnings():  # quad's round-off notice near an integrable singularity
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        for a, b in itertools.pairwise(points):
            total += integrate.quad(
                lambda x: dist.pdf(x, *args, scale=scale), a, b, epsabs=1e-13, limit=200
            )[0]
    assert abs(total - 1.0) < 1e-10


@pytest.mark.parametrize(("dist", "args", "scale"), CASES)
def test_logs_agree_with_functions(
    dist: rv_continuous, args: tuple[float, ...], scale: float
) -> None:
    x = _wide_grid(dist, args, scale)
    with np.errstate(divide="ignore"):
        for plain, log in [
            (dist.pdf, dist.logpdf),
            (dist.cdf, dist.logcdf),
            (dist.sf, dist.logsf),
        ]:
            values, logs = plain(x, *args, scale=scale), log(x, *args, scale=scale)
            positive = values > 1e-300
            assert np.allclose(logs[positive], np.log(values[positive]), rtol=1e-12, atol=1e-12)
            assert np.all(np.isneginf(logs[values == 0]) | (logs[values == 0] < -690))


@pytest.mark.parametrize(("dist", "args", "scale"), CASES)
def test_sf_plus_cdf_is_one(dist: rv_continuous, args: tuple[float, ...], scale: float) -> None:
    x = _wide_grid(dist, args, scale)
    total = dist.sf(x, *args, scale=scale) + dist.cdf(x, *args, scale=scale)
    assert np.allclose(total, 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize(("dist", "args", "scale"), CASES)
def test_cdf_is_monotone(dist: rv_continuous, args: tuple[float, ...], scale: float) -> None:
    x = _wide_grid(dist, args, scale)
    cdf = dist.cdf(x, *args, scale=scale)
    assert np.all(np.diff(cdf) >= 0)
    assert np.all(np.diff(dist.sf(x, *args, scale=scale)) <= 0)
    assert cdf[0] < 1e-15 and cdf[-1] == 1.0
    assert np.all(dist.pdf(x, *args, scale=scale) >= 0)


@pytest.mark.parametrize(("dist", "args", "scale"), CASES)
def test_sample_moments_match_stats(
    dist: rv_continuous, args: tuple[float, ...], scale: float
) -> None:
    n = 20_000
    sample = dist.rvs(*args, scale=scale, size=n, random_state=np.random.default_rng(7))
    mean, var, _, kurt = dist.stats(*args, scale=scale, moments="mvsk")
    # Five standard errors; the variance's standard error is var * sqrt((kurt + 2) / n).
    assert abs(sample.mean() - mean) < 5.0 * np.sqrt(var / n)
    assert abs(sample.var() - var) < 5.0 * var * np.sqrt((kurt + 2.0) / n)
