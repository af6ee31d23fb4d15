"""BEMA: noise level ``sigma2`` and bulk edge ``lambda_plus`` of a weight spectrum.

The bulk-edge matching estimator of Ke, Ma & Lin, exactly as docs/method.md section 2:
a least-squares fit through the origin of the middle order statistics of the
spectrum against the quantiles of ``MP(ratio, 1)``, then the edge with a
Tracy–Widom margin.  The Marchenko–Pastur quantiles come from the closed-form
CDF, vectorised (:func:`rmtprune.rmt.marchenko_pastur.mp_ppf`), so the
fit costs about a millisecond for ``p = 3000`` and is negligible beside the
eigenvalues themselves.

Example
-------
>>> import numpy as np
>>> from rmtprune.rmt import BEMA
>>> W = 0.5 * np.random.default_rng(0).standard_normal((400, 800))
>>> bema = BEMA().fit(W)
>>> round(bema.sigma2_, 2), bema.n_spikes_
(0.25, 0)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtprune._util.errors import DegenerateSpectrumWarning
from rmtprune._util.validation import check_int, check_real
from rmtprune.rmt.fit import FIT_FIELDS, FitAttributes, SpectralFit
from rmtprune.rmt.goodness_of_fit import (
    check_eigenvalues,
    check_shape,
    null_statistics,
    simulation_pvalue,
    window_statistic,
)
from rmtprune.rmt.marchenko_pastur import mp_ppf
from rmtprune.rmt.spectrum import as_matrix, eigenvalues
from rmtprune.rmt.tracy_widom import tw_ppf

__all__ = [
    "BEMA",
    "MIN_WINDOW",
    "BEMAResult",
    "NotFittedError",
    "bulk_window",
    "tw_corrected_edge",
]

FloatArray = NDArray[np.float64]

MIN_WINDOW = 5
"""Fewest order statistics BEMA fits (at the default ``alpha = 0.25`` that needs ``p >= 10``)."""


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before ``fit``."""


@lru_cache(maxsize=64)
def _tw_quantile(level: float) -> float:
    """``TW₁`` quantile, cached (the Fredholm-determinant inversion is the slow part)."""
    return float(tw_ppf(level, beta=1))


def tw_corrected_edge(sigma2: float, ratio: float, size: int, beta: float) -> float:
    """The bulk edge with a Tracy–Widom margin (docs/method.md section 2, step 5); its one home.

    ``σ² [(1+√γ)² + t_{1−β} N^(−2/3) γ^(−1/6) (1+√γ)^(4/3)]`` with ``t_{1−β}`` the ``1 − β``
    quantile of ``TW₁``, ``γ = ratio`` and ``N = size = max(m, n)``.  On pure noise of
    variance ``sigma2`` the largest eigenvalue exceeds it with probability about ``beta``.

    >>> round(tw_corrected_edge(1.0, 1.0, 1000, 0.1) - 4.0, 4)  # 0.4501 · 1000^(-2/3) · 2^(4/3)
    0.0113
    """
    root = math.sqrt(ratio)
    t = _tw_quantile(1.0 - beta)
    return sigma2 * (
        (1 + root) ** 2 + t * size ** (-2 / 3) * ratio ** (-1 / 6) * (1 + root) ** (4 / 3)
    )


def _window_size(p: int, alpha: float) -> int:
    return math.floor((1.0 - alpha) * p + 1e-9) - math.floor(alpha * p + 1e-9)


def _min_dimension(alpha: float) -> int:
    """Smallest ``p0`` with a window of ``MIN_WINDOW`` values for every ``p >= p0``."""
    # floor((1-a)p) - floor(a p) > (1 - 2a) p - 1, so p >= MIN_WINDOW / (1 - 2a) always works.
    p = math.ceil(MIN_WINDOW / (1.0 - 2.0 * alpha))
    while p > 1 and _window_size(p - 1, alpha) >= MIN_WINDOW:
        p -= 1
    return p


def bulk_window(p: int, alpha: float, rank: int | None = None) -> tuple[int, int]:
    """BEMA's bulk window ``(start, stop)`` over the ascending order statistics.

    Without ``rank``: ``k = ⌊αp⌋, …, ⌊(1−α)p⌋ − 1``.  With ``rank = r < p`` only the top
    ``r`` values are real: the window is intersected with ``k >= p − r``; if fewer than
    :data:`MIN_WINDOW` values remain, it becomes the top ``r`` values with the top
    ``⌈α r⌉`` trimmed, ``k = p − r, …, p − ⌈α r⌉ − 1``.

    Raises
    ------
    ValueError
        When the window holds fewer than :data:`MIN_WINDOW` values.

    Examples
    --------
    >>> bulk_window(400, 0.25)
    (100, 300)
    >>> bulk_window(400, 0.25, rank=150)
    (250, 300)
    >>> bulk_window(400, 0.25, rank=100)
    (300, 375)
    """
    p = check_int(p, "p", "bulk_window", low=1)
    alpha = check_real(
        alpha, "alpha", "bulk_window", low=0, high=0.5, low_open=True, high_open=True
    )
    start = math.floor(alpha * p + 1e-9)
    stop = math.floor((1.0 - alpha) * p + 1e-9)
    if rank is None or rank >= p:
        if stop - start < MIN_WINDOW:
            raise ValueError(
                f"The 'p' parameter of bulk_window must leave at least {MIN_WINDOW} values in "
                f"the window ⌊alpha·p⌋ … ⌊(1−alpha)·p⌋−1 (p >= {_min_dimension(alpha)} at "
                f"alpha={alpha:g}). Got {p} instead."
            )
        return start, stop
    rank = check_int(rank, "rank", "bulk_window", low=1)
    start = max(start, p - rank)
    if stop - start < MIN_WINDOW:
        start, stop = p - rank, p - math.ceil(alpha * rank - 1e-9)
        if stop - start < MIN_WINDOW:
            raise ValueError(
                f"The 'rank' parameter of BEMA must leave at least {MIN_WINDOW} real "
                f"eigenvalues once the top ⌈alpha·rank⌉ are trimmed (rank >= "
                f"{_min_rank(alpha)} at alpha={alpha:g}). Got {rank} instead."
            )
    return start, stop


def _min_rank(alpha: float) -> int:
    r = MIN_WINDOW
    while r - math.ceil(alpha * r - 1e-9) < MIN_WINDOW:
        r += 1
    return r


@dataclass(frozen=True)
class BEMAResult(FitAttributes):
    """A fitted BEMA as plain values (one report row).

    ``fit`` is the :class:`~rmtprune.rmt.fit.SpectralFit` (``mp_like`` is ``None``: BEMA
    alone tests nothing); its values read as attributes too (``result.sigma2``), so the
    attributes mirror those of :class:`BEMA` without the trailing underscore.  ``rank`` is
    the number of real eigenvalues (``p`` when the spectrum is full).
    """

    shape: tuple[int, int]
    ratio: float
    fit: SpectralFit
    window: tuple[int, int]
    tw_quantile: float
    rank: int
    alpha: float
    beta: float

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the values (JSON-friendly), the fit's in place of ``fit``."""
        head = {"shape": self.shape, "ratio": self.ratio}
        fit = {k: getattr(self.fit, k) for k in FIT_FIELDS if k != "mp_like"}
        tail = {k: getattr(self, k) for k in ("window", "tw_quantile", "rank", "alpha", "beta")}
        return head | fit | tail


class BEMA:
    """Bulk-edge matching estimator of the noise level and the bulk edge (Ke, Ma & Lin).

    The steps are those of docs/method.md section 2, for the ascending eigenvalues
    ``λ_(0) ≤ … ≤ λ_(p−1)`` (``λ = s²/N``) of an ``m × n`` matrix:

    1. window ``k = ⌊αp⌋, …, ⌊(1−α)p⌋ − 1``;
    2. ``q_k`` = quantile of ``MP(ratio, 1)`` at level ``k/p``;
    3. ``sigma2 = Σ q_k λ_(k) / Σ q_k²`` (least squares through the origin);
    4. ``lambda_plus = sigma2 [(1+√γ)² + t_{1−β} N^(−2/3) γ^(−1/6) (1+√γ)^(4/3)]`` with
       ``t_{1−β}`` the ``1 − β`` quantile of ``TW₁``;
    5. spikes: the eigenvalues above ``lambda_plus``.

    Parameters
    ----------
    alpha : float, default 0.25
        Trimming fraction in ``(0, 0.5)``: the fit uses the middle ``1 − 2α`` of the spectrum.
    beta : float, default 0.1
        Tail level in ``(0, 1)``: on pure noise the chance of one or more false spikes is
        about ``beta`` or less (measured 0.05–0.08 at ``beta = 0.1``; see
        ``docs/benchmarks_bema.md``).

    Attributes
    ----------
    shape_ : tuple of int
        ``(m, n)``.
    ratio_ : float
        ``γ = p / N``.
    eigenvalues_ : numpy.ndarray
        All ``p`` eigenvalues, ascending, float64 (zeros included for rank-deficient input).
    singular_values_ : numpy.ndarray
        ``sqrt(N · λ)``, descending.
    sigma2_ : float
        Estimated entry variance of the noise.
    lambda_plus_ : float
        Estimated upper bulk edge (eigenvalue scale).
    threshold_ : float
        The same edge on the singular-value scale, ``sqrt(N · lambda_plus_)``.
    n_spikes_ : int
        Number of real eigenvalues above ``lambda_plus_`` (the estimated signal rank).
    fit_error_ : float
        The goodness-of-fit statistic ``D`` of docs/method.md section 3 on the window.
    window_ : tuple of int
        ``(start, stop)`` indices of the order statistics used.
    tw_quantile_ : float
        ``t_{1−β}`` of ``TW₁``.
    rank_ : int
        Number of real eigenvalues (``p`` unless ``rank`` was given).

    Notes
    -----
    **Rank-deficient spectra.**  A matrix already factorised at rank ``r < p`` (a pruned
    layer) has ``p − r`` eigenvalues that are exact zeros (or rounding, ~1e-30) and are
    *not* noise: fitting them as bulk would underestimate ``sigma2`` badly and make every
    kept value a spike.  Pass ``rank=r`` (to :meth:`fit` or :meth:`fit_eigenvalues`): the
    ``r`` largest eigenvalues are then taken as the top ``r`` order statistics of an MP
    sample of size ``p``.  The window becomes the usual window intersected with
    ``k >= p − r`` (quantile levels keep their meaning ``k/p`` in the full index space).
    If fewer than ``MIN_WINDOW`` (= 5) values remain, the window is the top ``r`` values
    with the largest ``⌈α r⌉`` trimmed, ``k = p − r, …, p − ⌈α r⌉ − 1``, still at levels
    ``k/p``; if even that has fewer than 5 values a ``ValueError`` is raised.
    :meth:`fit_eigenvalues` also accepts just the ``r`` largest eigenvalues (any order),
    meaning the same.  ``eigenvalues_`` still has length ``p``; ``n_spikes_`` counts only
    among the real values, and :meth:`pvalue` simulates the same truncated null.

    **Minimum size.**  The window must hold at least 5 values: ``min(m, n) >= 10`` at the
    default ``alpha``; smaller matrices raise ``ValueError``.

    Examples
    --------
    Three spikes of strength ``θ = 3`` on top of unit noise:

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> m, n = 300, 600
    >>> U, _ = np.linalg.qr(rng.standard_normal((m, 3)))
    >>> V, _ = np.linalg.qr(rng.standard_normal((n, 3)))
    >>> W = rng.standard_normal((m, n)) + 3 * np.sqrt(n) * U @ V.T
    >>> bema = BEMA().fit(W)
    >>> bema.n_spikes_, round(bema.sigma2_, 1), bool(bema.fit_error_ < 0.05)
    (3, 1.0, True)
    """

    def __init__(self, alpha: float = 0.25, beta: float = 0.1) -> None:
        self.alpha = alpha
        self.beta = beta

    def __repr__(self) -> str:
        return f"BEMA(alpha={self.alpha!r}, beta={self.beta!r})"

    def _check_params(self) -> tuple[float, float]:
        alpha = check_real(
            self.alpha, "alpha", "BEMA", low=0, high=0.5, low_open=True, high_open=True
        )
        beta = check_real(self.beta, "beta", "BEMA", low=0, high=1, low_open=True, high_open=True)
        return alpha, beta

    def fit(self, W: Any, *, rank: int | None = None) -> BEMA:
        """Fit to a weight matrix.

        Parameters
        ----------
        W : numpy.ndarray or torch.Tensor
            Real ``m × n`` matrix (any float dtype and device; the spectrum is float64).
        rank : int, optional
            Number of real (non-zero) singular values when ``W`` is known to be
            rank-deficient; see the class notes.

        Returns
        -------
        BEMA
            ``self``, fitted.
        """
        alpha, _ = self._check_params()
        A = as_matrix(W)
        p = min(A.shape)
        rank = self._check_rank(rank, p)
        if rank is None and _window_size(p, alpha) < MIN_WINDOW:
            raise ValueError(
                f"The 'W' parameter of BEMA must have at least {_min_dimension(alpha)} rows "
                f"and columns so that the bulk window holds {MIN_WINDOW} eigenvalues "
                f"(alpha={alpha:g}). Got shape {A.shape} instead."
            )
        return self._fit(eigenvalues(A), (A.shape[0], A.shape[1]), rank)

    def fit_eigenvalues(
        self, eigenvalues: ArrayLike, shape: tuple[int, int], *, rank: int | None = None
    ) -> BEMA:
        """Fit to a precomputed spectrum.

        Parameters
        ----------
        eigenvalues : array-like
            The ``p = min(m, n)`` eigenvalues ``λ = s²/N`` in any order, or only the
            ``r < p`` largest of them (then ``rank`` defaults to ``r``).
        shape : tuple of int
            ``(m, n)`` of the matrix.
        rank : int, optional
            Number of real eigenvalues; see the class notes.

        Returns
        -------
        BEMA
            ``self``, fitted.

        Examples
        --------
        >>> from rmtprune.rmt.goodness_of_fit import gaussian_eigenvalues
        >>> lam = 4.0 * gaussian_eigenvalues((500, 1000), random_state=0)
        >>> round(BEMA().fit_eigenvalues(lam, (500, 1000)).sigma2_, 1)
        4.0
        """
        alpha, _ = self._check_params()
        m, n = check_shape(shape, "BEMA")
        p = min(m, n)
        lam = check_eigenvalues(eigenvalues, p)
        given = lam.shape[0]
        if given < p:
            if rank is None:
                rank = given
            elif check_int(rank, "rank", "BEMA", low=1) > given:
                raise ValueError(
                    f"The 'rank' parameter of BEMA must be at most the number of eigenvalues "
                    f"given ({given}). Got {rank!r} instead."
                )
            lam = np.concatenate([np.zeros(p - given), lam])
        rank = self._check_rank(rank, p)
        if rank is None and _window_size(p, alpha) < MIN_WINDOW:
            raise ValueError(
                f"The 'shape' parameter of BEMA must have min(m, n) >= {_min_dimension(alpha)} "
                f"so that the bulk window holds {MIN_WINDOW} eigenvalues (alpha={alpha:g}). "
                f"Got {(m, n)} instead."
            )
        return self._fit(lam, (m, n), rank)

    @staticmethod
    def _check_rank(rank: Any, p: int) -> int | None:
        if rank is None:
            return None
        r = check_int(rank, "rank", "BEMA", low=1)
        if r > p:
            raise ValueError(
                f"The 'rank' parameter of BEMA must be an int in [1, min(m, n) = {p}]. "
                f"Got {rank!r} instead."
            )
        return None if r == p else r

    def _fit(self, lam: FloatArray, shape: tuple[int, int], rank: int | None) -> BEMA:
        alpha, beta = self._check_params()
        m, n = shape
        p, N = min(m, n), max(m, n)
        ratio = p / N
        start, stop = bulk_window(p, alpha, rank)
        quantiles = mp_ppf(np.arange(start, stop, dtype=np.float64) / p, ratio)
        sigma2 = float(quantiles @ lam[start:stop] / (quantiles @ quantiles))
        if not sigma2 > 0.0:
            raise ValueError(
                "The 'W' parameter of BEMA must have a non-zero bulk: the eigenvalues in the "
                f"window {(start, stop)} are all zero. Got {p - np.count_nonzero(lam)} zero "
                f"eigenvalues of {p} (pass rank= for a rank-deficient matrix)."
            )
        if sigma2 < 1e-12 * float(lam[-1]):  # singular values of the bulk below 1e-6 · s_max
            warnings.warn(
                f"BEMA: the bulk is at rounding level (sigma2 = {sigma2:.3g}, largest eigenvalue "
                f"{float(lam[-1]):.3g}): the matrix is exactly low-rank and its spike count is "
                "meaningless; pass rank= (its numerical rank) to fit only its real eigenvalues",
                DegenerateSpectrumWarning,
                stacklevel=3,
            )
        tw = _tw_quantile(1.0 - beta)
        lambda_plus = tw_corrected_edge(sigma2, ratio, N, beta)
        real = p if rank is None else rank

        self.shape_ = (m, n)
        self.ratio_ = ratio
        self.eigenvalues_ = lam
        self.singular_values_ = np.sqrt(lam[::-1] * N)
        self.sigma2_ = sigma2
        self.lambda_plus_ = float(lambda_plus)
        self.threshold_ = math.sqrt(N * lambda_plus) if lambda_plus > 0 else 0.0
        self.n_spikes_ = int(np.count_nonzero(lam[p - real :] > lambda_plus))
        self.fit_error_ = window_statistic(lam, ratio, sigma2, start, stop)
        self.window_ = (start, stop)
        self.tw_quantile_ = tw
        self.rank_ = real
        self._quantiles = quantiles
        self._params = (alpha, beta)
        return self

    def _check_fitted(self, method: str) -> None:
        if not hasattr(self, "sigma2_"):
            raise NotFittedError(
                f"This BEMA instance is not fitted yet. Call 'fit' or 'fit_eigenvalues' "
                f"before {method!r}."
            )

    def pvalue(
        self, n_simulations: int = 200, random_state: int | np.random.Generator | None = None
    ) -> float:
        """Calibrated goodness-of-fit p-value of ``fit_error_`` by simulation.

        Spectra of Gaussian matrices of the same shape are drawn (seeded by
        ``random_state``), BEMA is refitted to each with the same ``alpha`` (and the
        same ``rank``), and ``p = (1 + #{D_sim >= D}) / (1 + n_simulations)``.
        Small values mean the bulk does not look like Marchenko–Pastur.

        Parameters
        ----------
        n_simulations : int, default 200
            Number of simulated matrices (each costs an ``O(p²)`` tridiagonal
            eigenvalue problem, about 0.1 s for ``p = 3000``).
        random_state : int, numpy.random.Generator or None
            Seed or generator.

        Returns
        -------
        float
            p-value in ``(0, 1]``.

        Examples
        --------
        >>> import numpy as np
        >>> W = np.random.default_rng(0).standard_normal((100, 200))
        >>> bool(BEMA().fit(W).pvalue(n_simulations=50, random_state=0) > 0.05)
        True
        """
        self._check_fitted("pvalue")
        n_simulations = check_int(n_simulations, "n_simulations", "BEMA.pvalue", low=1)
        start, stop = self.window_
        quantiles = self._quantiles
        qq = float(quantiles @ quantiles)
        ratio = self.ratio_

        def statistic(lam: FloatArray) -> float:
            sigma2 = float(quantiles @ lam[start:stop]) / qq
            return window_statistic(lam, ratio, sigma2, start, stop)

        simulated = null_statistics(self.shape_, statistic, n_simulations, random_state)
        return simulation_pvalue(self.fit_error_, simulated)

    def summary(self) -> BEMAResult:
        """The fitted values as a frozen :class:`BEMAResult`."""
        self._check_fitted("summary")
        alpha, beta = self._params
        return BEMAResult(
            shape=self.shape_,
            ratio=self.ratio_,
            fit=SpectralFit(
                sigma2=float(self.sigma2_),
                lambda_plus=float(self.lambda_plus_),
                threshold=float(self.threshold_),
                n_spikes=int(self.n_spikes_),
                fit_error=float(self.fit_error_),
            ),
            window=self.window_,
            tw_quantile=self.tw_quantile_,
            rank=self.rank_,
            alpha=alpha,
            beta=beta,
        )
