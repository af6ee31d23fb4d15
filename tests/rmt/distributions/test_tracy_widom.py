"""Tracy–Widom laws: published constants, exact identities, asymptotics and simulation."""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from scipy import integrate, special, stats

from rmtprune.rmt.tracy_widom import _BREAKS, _log_cdf_sf, tracy_widom, tw_ppf

SQRT2 = math.sqrt(2.0)
ZETA_PRIME_M1 = 1.0 / 12.0 - 0.2487544770337843  # ζ'(−1) = 1/12 − log(Glaisher's constant)
# Split points for scipy.integrate.quad over the real line (the mass beyond is < 1e-16).
SPLITS = (-12.0, -6.0, -3.0, -1.5, 0.0, 1.5, 3.0, 6.0, 12.0, 40.0)


def _quad_real_line(func: Callable[[float], float]) -> float:
    total = 0.0
    for lo, hi in itertools.pairwise(SPLITS):
        total += integrate.quad(func, lo, hi, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
    return total


def _airy_ai(x: float) -> float:
    return float(special.airy(x)[0])


# Tracy & Widom (1994, 1996); digits as tabulated by Bornemann (2010, Math. Comp. 79, 871–915).
PUBLISHED = {
    1: (-1.2065335745820, 1.6077810345810, 0.29346452408, 0.1652429384),
    2: (-1.7710868074116, 0.8131947928329, 0.224084203610, 0.0934480876),
    4: (-2.3068848932410, 0.5177237207726, 0.1655094943, 0.0491951565),
}


@pytest.mark.parametrize("beta", [1, 2])
def test_mean_and_variance_to_1e8(beta: int) -> None:
    mean, var = tracy_widom.stats(beta, moments="mv")
    assert abs(mean - PUBLISHED[beta][0]) < 1e-8
    assert abs(var - PUBLISHED[beta][1]) < 1e-8


def test_beta4_uses_tracy_widom_original_normalisation() -> None:
    mean, var = tracy_widom.stats(4, moments="mv")
    assert abs(mean - (-2.3069)) < 1e-4
    assert abs(var - 0.5177) < 1e-4
    # The other convention (the law of √2·X) would have mean −3.2624 and variance 1.0354.
    assert abs(mean - PUBLISHED[4][0]) < 1e-8
    assert abs(var - PUBLISHED[4][1]) < 1e-8


@pytest.mark.parametrize("beta", [1, 2, 4])
def test_skewness_and_kurtosis(beta: int) -> None:
    _, _, skew, kurt = tracy_widom.stats(beta, moments="mvsk")
    assert abs(skew - PUBLISHED[beta][2]) < 1e-8
    assert abs(kurt - PUBLISHED[beta][3]) < 1e-8


@pytest.mark.parametrize(
    ("q", "beta", "expected"),
    [(0.90, 1, 0.4501), (0.95, 1, 0.9793), (0.99, 1, 2.0234), (0.95, 2, -0.2325)],
)
def test_published_quantiles(q: float, beta: int, expected: float) -> None:
    assert abs(tracy_widom.ppf(q, beta) - expected) < 2e-4
    assert float(tw_ppf(q, beta=beta)) == pytest.approx(tracy_widom.ppf(q, beta), abs=1e-14)


@pytest.mark.parametrize("beta", [1, 2, 4])
def test_pdf_integrates_to_one(beta: int) -> None:
    assert abs(_quad_real_line(lambda x: tracy_widom.pdf(x, beta)) - 1.0) < 1e-10


@pytest.mark.parametrize("beta", [1, 2, 4])
def test_moments_agree_with_quad_of_pdf(beta: int) -> None:
    """The Chebyshev-quadrature moments against adaptive quadrature of the density."""
    mean = _quad_real_line(lambda x: x * tracy_widom.pdf(x, beta))
    var = _quad_real_line(lambda x: (x - mean) ** 2 * tracy_widom.pdf(x, beta))
    assert tracy_widom.mean(beta) == pytest.approx(mean, abs=1e-10)
    assert tracy_widom.var(beta) == pytest.approx(var, abs=1e-10)
    entropy = _quad_real_line(lambda x: -tracy_widom.pdf(x, beta) * tracy_widom.logpdf(x, beta))
    assert tracy_widom.entropy(beta) == pytest.approx(entropy, abs=1e-10)


def test_quantile_after_warm_up_is_fast() -> None:
    tw_ppf(0.9, beta=1)
    tracy_widom.ppf(0.9, 1)
    fast, full = [], []
    for _ in range(30):
        start = time.perf_counter()
        tw_ppf(0.9, beta=1)
        fast.append(time.perf_counter() - start)
        start = time.perf_counter()
        tracy_widom.ppf(0.9, 1)
        full.append(time.perf_counter() - start)
    assert float(np.median(fast)) < 5e-3
    assert float(np.median(full)) < 5e-3


@pytest.mark.parametrize("s", [-7.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0])
def test_identity_f2_equals_f1_times_det_i_plus_b(s: float) -> None:
    """det(I − K_Ai) = det(I − B_s) det(I + B_s): the Airy-kernel path against the Hankel one.

    With det(I − B_s) = F1(s) and det(I + B_s) = 2 F4(s/√2) − F1(s).
    """
    f1, f2, f4 = tracy_widom.cdf(s, 1), tracy_widom.cdf(s, 2), tracy_widom.cdf(s / SQRT2, 4)
    assert f2 == pytest.approx(f1 * (2.0 * f4 - f1), rel=1e-7, abs=1e-14)
    # Upper tails: 1 − F2 = S1 + F1 (2 S4 − S1), relative precision kept.
    s1, s2, s4 = tracy_widom.sf(s, 1), tracy_widom.sf(s, 2), tracy_widom.sf(s / SQRT2, 4)
    assert s2 == pytest.approx(s1 + f1 * (2.0 * s4 - s1), rel=1e-11)


@pytest.mark.parametrize("s", [-6.0, -7.0, -8.0])
def test_left_tail_beta2_matches_asymptotic_expansion(s: float) -> None:
    """log F2(s) = −|s|³/12 − ⅛ log|s| + ζ'(−1) + (1/24) log 2 + 3/(64|s|³) + O(|s|⁻⁶).

    Deift, Its & Krasovsky (2008); Baik, Buckingham & DiFranco (2008).
    """
    a = abs(s)
    expansion = -(a**3) / 12 - math.log(a) / 8 + ZETA_PRIME_M1 + math.log(2) / 24
    expansion += 3 / (64 * a**3)
    assert tracy_widom.logcdf(s, 2) == pytest.approx(expansion, abs=2e-5)


@pytest.mark.parametrize("s", [-7.0, -8.0])
def test_left_tail_beta1_and_beta4_match_leading_asymptotics(s: float) -> None:
    """Baik, Buckingham & DiFranco (2008), up to a relative factor 1 + O(|s|^(−3/2)).

    F1(s) ≈ τ1 |s|^(−1/16) exp(−|s|³/24 − |s|^(3/2)/(3√2)), τ1 = 2^(−11/48) e^(ζ'(−1)/2);
    F4(s/√2) ≈ τ4 |s|^(−1/16) exp(−|s|³/24 + |s|^(3/2)/(3√2)), τ4 = 2^(−35/48) e^(ζ'(−1)/2).
    """
    a = abs(s)
    common = -(a**3) / 24 - math.log(a) / 16 + ZETA_PRIME_M1 / 2
    log_f1 = common - a**1.5 / (3 * SQRT2) - 11 / 48 * math.log(2)
    log_f4 = common + a**1.5 / (3 * SQRT2) - 35 / 48 * math.log(2)
    assert abs(tracy_widom.logcdf(s, 1) - log_f1) < 0.06 * a**-1.5
    assert abs(tracy_widom.logcdf(s / SQRT2, 4) - log_f4) < 0.06 * a**-1.5


@pytest.mark.parametrize("s", [8.0, 12.0, 20.0, 40.0])
def test_right_tail_beta2_is_the_airy_kernel_trace(s: float) -> None:
    """1 − F2(s) = ∫ₛ^∞ K_Ai(x, x) dx · (1 + O(1 − F2)); f2(s) = K_Ai(s, s) (1 + O(1 − F2))."""

    def diag(x: float) -> float:
        ai, aip, _, _ = special.airy(x)
        return float(aip**2 - x * ai**2)

    trace = integrate.quad(diag, s, np.inf, epsabs=1e-300, epsrel=1e-13, limit=200)[0]
    assert tracy_widom.sf(s, 2) == pytest.approx(trace, rel=1e-10)
    assert tracy_widom.pdf(s, 2) == pytest.approx(diag(s), rel=1e-10)


@pytest.mark.parametrize("s", [12.0, 20.0, 40.0, 90.0])
def test_right_tail_beta1_is_half_the_airy_integral(s: float) -> None:
    """1 − F1(s) = ½ ∫ₛ^∞ Ai · (1 + O(1 − F1)) and f1(s) = ½ Ai(s) (1 + O(1 − F1))."""
    half = 0.5 * integrate.quad(_airy_ai, s, np.inf, epsabs=1e-300, epsrel=1e-13, limit=200)[0]
    assert tracy_widom.sf(s, 1) == pytest.approx(half, rel=1e-10)
    assert tracy_widom.pdf(s, 1) == pytest.approx(0.5 * _airy_ai(s), rel=1e-10)


@pytest.mark.parametrize("t", [4.0, 10.0, 20.0])
def test_right_tail_beta4_is_minus_e2(t: float) -> None:
    """1 − F4(t) = −e₂(B_s) (1 + O(1 − F4)) with s = √2 t, and for B_s(x, y) = Ai(x + y + s)

    −e₂ = ½ [∫₀^∞ u Ai(u + s)² du − ¼ (∫ₛ^∞ Ai)²]  (one-dimensional quadratures).
    """
    s = SQRT2 * t
    opts = {"epsabs": 1e-300, "epsrel": 1e-14, "limit": 200}
    with warnings.catch_warnings():  # quad's round-off notice at this tolerance
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        first = integrate.quad(lambda u: u * _airy_ai(u + s) ** 2, 0, np.inf, **opts)[0]
        second = integrate.quad(_airy_ai, s, np.inf, **opts)[0]
    assert tracy_widom.sf(t, 4) == pytest.approx(0.5 * (first - 0.25 * second**2), rel=1e-8)


@pytest.mark.parametrize("beta", [1, 2, 4])
def test_interpolant_reproduces_the_fredholm_determinant(beta: int) -> None:
    rng = np.random.default_rng(11)
    for s in rng.uniform(-4.0, 30.0, 8):
        log_f, log_s = _log_cdf_sf(float(s), beta)
        assert tracy_widom.logcdf(s, beta) == pytest.approx(log_f, abs=1e-12)
        assert tracy_widom.logsf(s, beta) == pytest.approx(log_s, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("beta", [1, 2, 4])
def test_extreme_tails_round_trip(beta: int) -> None:
    levels = np.array([1e-250, 1e-100, 1e-30, 1e-12])
    assert np.allclose(tracy_widom.logsf(tracy_widom.isf(levels, beta), beta), np.log(levels))
    assert np.allclose(tracy_widom.logcdf(tracy_widom.ppf(levels, beta), beta), np.log(levels))
    assert np.all(np.diff(tracy_widom.isf(levels, beta)) < 0)


@pytest.mark.parametrize("beta", [1, 2, 4])
def test_tails_continue_smoothly_past_the_table(beta: int) -> None:
    for edge in (_BREAKS[beta][0], _BREAKS[beta][-1]):
        x = edge + np.array([-1e-7, 0.0, 1e-7])
        for log in (tracy_widom.logcdf, tracy_widom.logsf):
            values = log(x, beta)  # no jump in value or slope: second difference ~ h²
            assert abs(values[0] - 2 * values[1] + values[2]) < 1e-9 * (1.0 + abs(values[1]))
        # The density's relative jump where the expansion takes over (F < 1e-16) is ~1e-5.
        assert np.all(np.abs(np.diff(tracy_widom.logpdf(x, beta))) < 1e-4)
    # β = 2 beyond the table against the expansion with its next term (test above).
    if beta == 2:
        a = 12.0
        expansion = -(a**3) / 12 - math.log(a) / 8 + ZETA_PRIME_M1 + math.log(2) / 24
        assert tracy_widom.logcdf(-a, 2) == pytest.approx(expansion + 3 / (64 * a**3), abs=1e-4)


def test_bad_beta_gives_nan_per_scipy_convention() -> None:
    assert np.isnan(tracy_widom.cdf(0.0, 3))
    assert np.isnan(tracy_widom.pdf(0.0, 1.5))
    assert np.isnan(tracy_widom.ppf(0.5, 3))
    assert np.isnan(tracy_widom.mean(3))
    with pytest.raises(ValueError):
        tracy_widom.rvs(3, size=2, random_state=0)


def test_tw_ppf_validates_beta_and_handles_edges() -> None:
    with pytest.raises(ValueError, match="'beta'"):
        tw_ppf(0.9, beta=3)
    with pytest.raises(ValueError, match="'beta'"):
        tw_ppf(0.9, beta=True)
    out = tw_ppf([[0.0, 0.5], [1.0, 1.5]], beta=2)
    assert out.shape == (2, 2)
    assert out[0, 0] == -np.inf and out[1, 0] == np.inf and np.isnan(out[1, 1])
    assert out[0, 1] == pytest.approx(tracy_widom.median(2), abs=1e-14)


def _goe(rng: np.random.Generator, n: int) -> np.ndarray:
    a = rng.standard_normal((n, n))
    return (a + a.T) / SQRT2  # off-diagonal variance 1, diagonal variance 2


def _gue(rng: np.random.Generator, n: int) -> np.ndarray:
    a = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / SQRT2
    return (a + a.conj().T) / SQRT2  # E|H_ij|² = 1, diagonal variance 1


@pytest.mark.slow
@pytest.mark.parametrize(("beta", "make"), [(1, _goe), (2, _gue)])
def test_largest_eigenvalue_of_gaussian_ensembles(
    beta: int, make: Callable[[np.random.Generator, int], np.ndarray]
) -> None:
    """n^(1/6) (λ_max − 2√n') → TW_β, n' = n − ½ for GOE (Johnstone & Ma 2012), n for GUE."""
    n, samples = 200, 400
    rng = np.random.default_rng(2024 + beta)
    top = np.array([np.linalg.eigvalsh(make(rng, n))[-1] for _ in range(samples)])
    centre = 2.0 * math.sqrt(n - 0.5 if beta == 1 else n)
    scaled = (top - centre) * n ** (1.0 / 6.0)
    assert stats.kstest(scaled, tracy_widom(beta).cdf).pvalue > 1e-3
    # Against the wrong law the same sample fails clearly.
    assert stats.kstest(scaled, tracy_widom(4 if beta == 1 else 1).cdf).pvalue < 1e-6
