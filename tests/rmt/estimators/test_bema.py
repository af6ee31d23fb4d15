"""Tests of the BEMA estimator against closed forms and simulations with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from rmtprune import DegenerateSpectrumWarning
from rmtprune.rmt import BEMA, NotFittedError
from rmtprune.rmt.bema import MIN_WINDOW, bulk_window
from rmtprune.rmt.goodness_of_fit import gaussian_eigenvalues
from rmtprune.rmt.marchenko_pastur import mp_ppf


def edge(sigma2: float, shape: tuple[int, int], t: float) -> float:
    """SPEC section 2, step 5, written out independently (power 4/3, not ^4 / 3)."""
    p, N = min(shape), max(shape)
    g = p / N
    return sigma2 * (
        (1 + g**0.5) ** 2 + t * N ** (-2 / 3) * g ** (-1 / 6) * (1 + g**0.5) ** (4 / 3)
    )


def spiked(
    rng: np.random.Generator, shape: tuple[int, int], thetas: list[float], sigma: float = 1.0
) -> np.ndarray:
    """W = S + R with S = sigma sqrt(N) sum theta_i u_i v_i^T (orthonormal u, v)."""
    m, n = shape
    U, _ = np.linalg.qr(rng.standard_normal((m, len(thetas))))
    V, _ = np.linalg.qr(rng.standard_normal((n, len(thetas))))
    S = sigma * math.sqrt(max(shape)) * (U * np.asarray(thetas)) @ V.T
    return S + sigma * rng.standard_normal(shape)


# ---------------------------------------------------------------- exact cases


def test_tracy_widom_quantile_matches_published_value() -> None:
    bema = BEMA().fit(np.random.default_rng(0).standard_normal((50, 80)))
    assert bema.tw_quantile_ == pytest.approx(0.4501, abs=2e-4)  # TW1 0.90 quantile
    assert BEMA(beta=0.05).fit(np.eye(20)).tw_quantile_ == pytest.approx(0.9793, abs=2e-4)


@pytest.mark.parametrize(("shape", "sigma2"), [((300, 600), 2.5), ((500, 500), 0.01)])
def test_exact_quantile_spectrum_gives_exact_fit(shape: tuple[int, int], sigma2: float) -> None:
    # A spectrum made of the MP quantiles at k/p is fitted exactly: sigma2, D = 0.
    p = min(shape)
    lam = sigma2 * mp_ppf(np.arange(p) / p, p / max(shape))
    bema = BEMA().fit_eigenvalues(lam[::-1], shape)  # any order is accepted
    assert bema.sigma2_ == pytest.approx(sigma2, rel=1e-12)
    assert bema.fit_error_ < 1e-12
    assert bema.window_ == (p // 4, (3 * p) // 4)
    assert bema.lambda_plus_ == pytest.approx(edge(sigma2, shape, bema.tw_quantile_), rel=1e-12)
    assert bema.threshold_ == pytest.approx(math.sqrt(max(shape) * bema.lambda_plus_), rel=1e-12)
    assert bema.n_spikes_ == 0
    np.testing.assert_allclose(bema.singular_values_, np.sqrt(lam[::-1] * max(shape)))


def test_window_formula() -> None:
    for p in (10, 11, 37, 400, 3000):
        for alpha in (0.1, 0.25, 0.4):
            start, stop = math.floor(alpha * p), math.floor((1 - alpha) * p)
            if stop - start >= MIN_WINDOW:
                assert bulk_window(p, alpha) == (start, stop)
    assert bulk_window(400, 0.25, rank=300) == (100, 300)
    assert bulk_window(400, 0.25, rank=150) == (250, 300)
    assert bulk_window(400, 0.25, rank=100) == (300, 375)  # fallback: top 100, top 25 trimmed
    assert bulk_window(400, 0.25, rank=7) == (393, 398)
    with pytest.raises(ValueError, match=r"'p' parameter of bulk_window .*p >= 10 .*Got 9"):
        bulk_window(9, 0.25)


# ---------------------------------------------------------------- pure noise


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "n_seeds"),
    [((200, 200), 100), ((784, 3000), 16), ((1000, 1000), 16)],
)  # (3000, 784) fits as (784, 3000) to 1e-12: test_invariances
def test_pure_noise_sigma2_and_edge(shape: tuple[int, int], n_seeds: int) -> None:
    sigma = 0.3
    rng = np.random.default_rng(sum(shape))
    ratios, edges = [], []
    for _ in range(n_seeds):
        W = (sigma * rng.standard_normal(shape)).astype(np.float32)
        bema = BEMA().fit(W)
        ratios.append(bema.sigma2_ / sigma**2)
        edges.append(bema.lambda_plus_ / edge(sigma**2, shape, bema.tw_quantile_))
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.01)
    assert np.mean(edges) == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow
def test_false_spike_rate_at_most_beta() -> None:
    # 300 Gaussian matrices per shape; the chance of >= 1 false spike should be <= beta
    # and of the same order (measured in docs/benchmarks_bema.md).  The spectra are exact
    # draws of the Gaussian matrices' eigenvalues (the bidiagonal model, checked against
    # dense matrices in test_goodness_of_fit.py), much cheaper than dense matrices.
    shapes = [(200, 800), (300, 600), (500, 500)]
    rng = np.random.default_rng(12)
    hits = 0
    trials = 0
    for shape in shapes:
        for _ in range(300):
            lam = gaussian_eigenvalues(shape, random_state=rng)
            hits += BEMA(beta=0.1).fit_eigenvalues(lam, shape).n_spikes_ > 0
            trials += 1
    ci = stats.binomtest(int(hits), trials).proportion_ci(method="exact")
    assert ci.high < 0.1 + 0.02  # at most beta (exact 95 % interval, small slack)
    assert ci.low > 0.02  # same order as beta: not a vacuous zero


def test_invariances() -> None:
    W = np.random.default_rng(13).standard_normal((150, 260))
    a = BEMA().fit(W)
    b = BEMA().fit(W.T)
    c = BEMA().fit(3.0 * W)
    assert b.sigma2_ == pytest.approx(a.sigma2_, rel=1e-12)
    assert b.lambda_plus_ == pytest.approx(a.lambda_plus_, rel=1e-12)
    assert b.shape_ == (260, 150) and b.ratio_ == a.ratio_
    assert c.sigma2_ == pytest.approx(9.0 * a.sigma2_, rel=1e-12)
    assert c.threshold_ == pytest.approx(3.0 * a.threshold_, rel=1e-12)
    assert c.fit_error_ == pytest.approx(a.fit_error_, abs=1e-12)
    W32 = W.astype(np.float32)
    n32 = BEMA().fit(W32)
    for tensor in (torch.from_numpy(W32), torch.from_numpy(W32.copy()).double()):
        t = BEMA().fit(tensor)
        assert t.sigma2_ == n32.sigma2_
        np.testing.assert_array_equal(t.eigenvalues_, n32.eigenvalues_)


# ---------------------------------------------------------------- signal plus noise


@pytest.mark.slow
def test_spikes_above_bbp_found_at_predicted_place() -> None:
    shape = (400, 800)
    thetas = [2.0, 3.0, 5.0]
    g = 0.5
    N = max(shape)
    predicted = [math.sqrt(N) * math.sqrt((1 + t**2) * (g + t**2)) / t for t in thetas]
    rng = np.random.default_rng(14)
    exact = 0
    n_seeds = 40
    found = []
    for _ in range(n_seeds):
        bema = BEMA().fit(spiked(rng, shape, thetas))
        exact += bema.n_spikes_ == 3
        found.append(np.sort(bema.singular_values_[:3]) / predicted - 1.0)
        assert bema.sigma2_ == pytest.approx(1.0, abs=0.02)
    assert exact >= 0.95 * n_seeds
    deviation = np.asarray(found)
    # The formula is the limit: the mean over seeds sits on it (measured |bias| < 0.1 %),
    # single seeds fluctuate by about 1-1.6 % (O(N^-1/2)).
    np.testing.assert_allclose(deviation.mean(axis=0), 0.0, atol=0.01)
    assert np.abs(deviation).max() < 0.05


@pytest.mark.slow
def test_spikes_below_bbp_threshold_are_not_counted() -> None:
    shape = (400, 800)  # BBP threshold ratio^(1/4) = 0.84
    rng = np.random.default_rng(15)
    counts = [BEMA().fit(spiked(rng, shape, [5.0, 0.5, 0.6])).n_spikes_ for _ in range(30)]
    assert np.mean(np.asarray(counts) == 1) >= 0.9  # only the strong one


# ---------------------------------------------------------------- rank-deficient


def test_rank_deficient_fit_recovers_noise_level() -> None:
    rng = np.random.default_rng(16)
    shape = (400, 800)
    U, s, Vt = np.linalg.svd(rng.standard_normal(shape), full_matrices=False)
    for r in (300, 150, 100):
        W = (U[:, :r] * s[:r]) @ Vt[:r]
        good = BEMA().fit(W, rank=r)
        assert good.sigma2_ == pytest.approx(1.0, abs=0.03)
        assert good.n_spikes_ <= 1
        assert len(good.eigenvalues_) == 400 and good.rank_ == r
        assert good.window_[0] >= 400 - r
        # The r largest eigenvalues alone (any order) mean the same thing.
        top = np.random.default_rng(0).permutation(good.eigenvalues_[-r:])
        same = BEMA().fit_eigenvalues(top, shape)
        assert same.sigma2_ == pytest.approx(good.sigma2_, rel=1e-12)
        assert same.n_spikes_ == good.n_spikes_
        if r == 100:  # the bulk window holds only zeros: the fit says it is meaningless
            with pytest.warns(DegenerateSpectrumWarning, match="exactly low-rank"):
                naive = BEMA().fit(W)
        else:
            naive = BEMA().fit(W)
        if r == 300:
            # At alpha = 0.25 the 100 zeros lie below the window k >= 100: no harm done.
            assert naive.sigma2_ == pytest.approx(good.sigma2_, rel=1e-6)
        else:
            assert naive.sigma2_ < 0.6  # zeros in the window drag sigma2 down
            assert naive.n_spikes_ > 0.6 * r  # and most kept values look like spikes
    assert naive.n_spikes_ >= r  # r = 100: every kept value is a "spike"


def test_rank_deficient_pvalue_is_not_small() -> None:
    rng = np.random.default_rng(17)
    U, s, Vt = np.linalg.svd(rng.standard_normal((120, 240)), full_matrices=False)
    W = (U[:, :60] * s[:60]) @ Vt[:60]
    bema = BEMA().fit(W, rank=60)
    assert bema.pvalue(n_simulations=100, random_state=1) > 0.05
    assert BEMA().fit(W).fit_error_ > 0.2  # the naive fit is rejected


# ---------------------------------------------------------------- p-value and summary


def test_pvalue_seeded_and_summary() -> None:
    lam = gaussian_eigenvalues((100, 150), random_state=3)
    bema = BEMA(alpha=0.2, beta=0.05).fit_eigenvalues(lam, (150, 100))
    p1 = bema.pvalue(n_simulations=40, random_state=5)
    assert p1 == bema.pvalue(n_simulations=40, random_state=5)
    assert 1 / 41 <= p1 <= 1.0 and (p1 * 41) == pytest.approx(round(p1 * 41))
    row = bema.summary().to_dict()
    assert row["shape"] == (150, 100) and row["alpha"] == 0.2 and row["beta"] == 0.05
    assert row["sigma2"] == bema.sigma2_ and row["window"] == (20, 80)


def test_not_fitted() -> None:
    with pytest.raises(NotFittedError, match=r"not fitted yet.*before 'pvalue'"):
        BEMA().pvalue()
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


# ---------------------------------------------------------------- bad input

W_OK = np.random.default_rng(18).standard_normal((40, 60))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"alpha": 0.7},
            ValueError,
            r"^The 'alpha' parameter of BEMA must be a float in \(0, 0\.5\)\. Got 0\.7 instead\.$",
        ),
        ({"alpha": 0.0}, ValueError, r"'alpha' parameter of BEMA must be a float in \(0, 0\.5\)"),
        ({"alpha": "0.3"}, TypeError, r"'alpha' .*float in \(0, 0\.5\)\. Got '0\.3' of type str"),
        (
            {"beta": 1.0},
            ValueError,
            r"'beta' parameter of BEMA must be a float in \(0, 1\)\. Got 1",
        ),
        ({"beta": True}, TypeError, r"'beta' parameter of BEMA .*Got True of type bool"),
        ({"beta": float("nan")}, ValueError, r"'beta' parameter of BEMA must be a float"),
    ],
)
def test_bad_parameters(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    bema = BEMA(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        bema.fit(W_OK)


@pytest.mark.parametrize(
    ("W", "error", "match"),
    [
        (np.ones(10), ValueError, r"'W' parameter must be a 2-D matrix"),
        (np.ones((0, 10)), ValueError, r"'W' parameter must be a non-empty"),
        (np.full((20, 20), np.nan), ValueError, r"'W' parameter must contain only finite values"),
        (np.ones((20, 20), dtype=np.complex128), TypeError, r"'W' .*real floating-point"),
        (np.ones((20, 20), dtype=np.int32), TypeError, r"'W' .*real floating-point.*integer"),
        (
            np.ones((9, 100)),
            ValueError,
            r"'W' parameter of BEMA must have at least 10 rows and columns .*Got shape \(9, 100\)",
        ),
        (np.zeros((20, 30)), ValueError, r"'W' parameter of BEMA must have a non-zero bulk"),
    ],
)
def test_bad_matrix(W: np.ndarray, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BEMA().fit(W)


def test_minimum_size_depends_on_alpha() -> None:
    with pytest.raises(ValueError, match=r"at least 50 rows and columns .*alpha=0\.45"):
        BEMA(alpha=0.45).fit(np.random.default_rng(0).standard_normal((49, 60)))
    assert BEMA(alpha=0.45).fit(np.random.default_rng(0).standard_normal((50, 60))).window_ == (
        22,
        27,
    )


def test_bad_rank_and_eigenvalues() -> None:
    lam = gaussian_eigenvalues((40, 60), random_state=0)
    with pytest.raises(ValueError, match=r"'rank' parameter of BEMA must be an int in \[1, "):
        BEMA().fit(W_OK, rank=41)
    with pytest.raises(TypeError, match=r"'rank' parameter of BEMA must be an int"):
        BEMA().fit(W_OK, rank=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'rank' parameter of BEMA must leave at least 5 .*Got 6"):
        BEMA().fit(W_OK, rank=6)
    with pytest.raises(ValueError, match=r"'rank' .*at most the number of eigenvalues given"):
        BEMA().fit_eigenvalues(lam[-20:], (40, 60), rank=30)
    with pytest.raises(ValueError, match=r"'eigenvalues' .*length 1 to min\(m, n\) = 40"):
        BEMA().fit_eigenvalues(np.ones(41), (40, 60))
    with pytest.raises(ValueError, match=r"'eigenvalues' parameter of BEMA must be non-negative"):
        BEMA().fit_eigenvalues(lam - 1.0, (40, 60))
    with pytest.raises(TypeError, match=r"'eigenvalues' .*real numbers\. Got dtype complex"):
        BEMA().fit_eigenvalues(lam.astype(complex), (40, 60))
    with pytest.raises(TypeError, match=r"'shape' parameter of BEMA must be a pair"):
        BEMA().fit_eigenvalues(lam, 40)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'shape' parameter of BEMA must have min\(m, n\) >= 10"):
        BEMA().fit_eigenvalues(lam[:8], (8, 60))
    with pytest.raises(TypeError, match=r"'n_simulations' parameter of BEMA.pvalue"):
        BEMA().fit(W_OK).pvalue(n_simulations=1.5)  # type: ignore[arg-type]
