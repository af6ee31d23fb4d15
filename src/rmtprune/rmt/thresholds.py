"""The optimal hard threshold for singular values of Gavish & Donoho (2014).

A second edge rule beside BEMA, with the same estimator shape.  For an
``m × n`` matrix ``Y = X + σ Z`` (``Z`` with i.i.d. ``N(0, 1)`` entries),
``N = max(m, n)`` and ``β = ratio = min(m, n) / N``, the threshold that
minimises the asymptotic mean squared error of hard thresholding is

- known noise: ``τ = λ*(β) · sqrt(N) · σ`` with
  ``λ*(β) = sqrt(2(β+1) + 8β / ((β+1) + sqrt(β² + 14β + 1)))``;
- unknown noise: ``τ = ω(β) · median(s)`` with ``ω(β) = λ*(β) / sqrt(μ_β)``,
  ``μ_β`` the median of ``MP(β, 1)``; Gavish & Donoho's cubic
  ``ω(β) ≈ 0.56β³ − 0.95β² + 1.82β + 1.43`` is offered as an option.
  The noise level follows from the same median: ``σ̂² = median(s)² / (N μ_β)``.

Example
-------
>>> round(gavish_donoho_lambda(1.0), 4), round(gavish_donoho_omega(1.0), 3)
(2.3094, 2.858)
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtprune._util.validation import check_real
from rmtprune.rmt.goodness_of_fit import check_eigenvalues, check_shape
from rmtprune.rmt.marchenko_pastur import marchenko_pastur
from rmtprune.rmt.spectrum import as_matrix, eigenvalues

__all__ = ["GavishDonoho", "gavish_donoho_lambda", "gavish_donoho_omega"]

FloatArray = NDArray[np.float64]


def gavish_donoho_lambda(ratio: float) -> float:
    """Known-noise optimal threshold coefficient ``λ*(β)`` (in units of ``σ sqrt(N)``).

    Examples
    --------
    >>> round(gavish_donoho_lambda(1.0) ** 2, 12) == round(16 / 3, 12)
    True
    """
    b = check_real(ratio, "ratio", "gavish_donoho_lambda", low=0, high=1, low_open=True)
    return math.sqrt(2.0 * (b + 1.0) + 8.0 * b / ((b + 1.0) + math.sqrt(b * b + 14.0 * b + 1.0)))


@lru_cache(maxsize=256)
def _mp_median(ratio: float) -> float:
    return float(marchenko_pastur.ppf(0.5, ratio))


def gavish_donoho_omega(ratio: float, *, approximate: bool = False) -> float:
    """Unknown-noise coefficient ``ω(β)``: the threshold is ``ω(β) · median(s)``.

    Parameters
    ----------
    ratio : float
        ``β = min(m, n) / max(m, n)`` in ``(0, 1]``.
    approximate : bool
        Use Gavish & Donoho's cubic ``0.56β³ − 0.95β² + 1.82β + 1.43`` instead of the
        exact ``λ*(β) / sqrt(μ_β)``.

    Examples
    --------
    >>> round(gavish_donoho_omega(1.0, approximate=True), 2)
    2.86
    """
    b = check_real(ratio, "ratio", "gavish_donoho_omega", low=0, high=1, low_open=True)
    if approximate:
        return 0.56 * b**3 - 0.95 * b**2 + 1.82 * b + 1.43
    return gavish_donoho_lambda(b) / math.sqrt(_mp_median(b))


class GavishDonoho:
    """Optimal hard threshold of Gavish & Donoho (2014) as an edge estimator.

    Parameters
    ----------
    sigma2 : float, optional
        Known noise variance (per entry).  ``None`` (default) estimates it from the
        median singular value (the unknown-noise rule).
    approximate : bool, default False
        With unknown noise, use the cubic approximation of ``ω(β)``.

    Attributes
    ----------
    shape_, ratio_, eigenvalues_, singular_values_ :
        As for :class:`rmtprune.rmt.BEMA`.
    sigma2_ : float
        Noise variance: the given ``sigma2`` or ``median(s)² / (N μ_β)``.
    threshold_ : float
        Singular-value cutoff ``τ``.
    lambda_plus_ : float
        The same cutoff on the eigenvalue scale, ``τ² / N``.
    n_spikes_ : int
        Number of singular values above ``τ``.
    coefficient_ : float
        ``ω(β)`` (unknown noise) or ``λ*(β)`` (known noise).

    Notes
    -----
    This threshold is meant for denoising (it keeps a component only when keeping it
    lowers the error), so it sits above the bulk edge: ``λ*(1) = 2.309`` versus the edge
    ``2`` in units of ``σ sqrt(N)``.  Weak spikes that BEMA detects may be dropped here.
    Rank-deficient spectra are not supported (the median would fall on the zeros).

    Examples
    --------
    >>> import numpy as np
    >>> W = 2.0 * np.random.default_rng(0).standard_normal((500, 500))
    >>> gd = GavishDonoho().fit(W)
    >>> round(gd.sigma2_, 1), gd.n_spikes_
    (4.0, 0)
    """

    def __init__(self, sigma2: float | None = None, approximate: bool = False) -> None:
        self.sigma2 = sigma2
        self.approximate = approximate

    def __repr__(self) -> str:
        return f"GavishDonoho(sigma2={self.sigma2!r}, approximate={self.approximate!r})"

    def _check_params(self) -> tuple[float | None, bool]:
        sigma2 = None
        if self.sigma2 is not None:
            sigma2 = check_real(self.sigma2, "sigma2", "GavishDonoho", low=0, low_open=True)
        if not isinstance(self.approximate, (bool, np.bool_)):
            raise TypeError(
                "The 'approximate' parameter of GavishDonoho must be a bool. "
                f"Got {self.approximate!r} instead."
            )
        return sigma2, bool(self.approximate)

    def fit(self, W: Any) -> GavishDonoho:
        """Fit to a weight matrix (numpy array or torch tensor); returns ``self``."""
        self._check_params()
        A = as_matrix(W)
        return self._fit(eigenvalues(A), (A.shape[0], A.shape[1]))

    def fit_eigenvalues(self, eigenvalues: ArrayLike, shape: tuple[int, int]) -> GavishDonoho:
        """Fit to all ``p`` precomputed eigenvalues ``λ = s²/N`` (any order); returns ``self``.

        Examples
        --------
        >>> from rmtprune.rmt.goodness_of_fit import gaussian_eigenvalues
        >>> lam = gaussian_eigenvalues((400, 400), random_state=0)
        >>> round(GavishDonoho().fit_eigenvalues(lam, (400, 400)).sigma2_, 1)
        1.0
        """
        self._check_params()
        m, n = check_shape(shape, "GavishDonoho")
        p = min(m, n)
        lam = check_eigenvalues(eigenvalues, p, "GavishDonoho")
        if lam.shape[0] != p:
            raise ValueError(
                f"The 'eigenvalues' parameter of GavishDonoho must hold all min(m, n) = {p} "
                f"eigenvalues. Got {lam.shape[0]} instead."
            )
        return self._fit(lam, (m, n))

    def _fit(self, lam: FloatArray, shape: tuple[int, int]) -> GavishDonoho:
        sigma2, approximate = self._check_params()
        m, n = shape
        p, N = min(m, n), max(m, n)
        ratio = p / N
        s = np.sqrt(lam[::-1] * N)
        if sigma2 is None:
            s_med = float(np.median(s))
            if not s_med > 0.0:
                raise ValueError(
                    "The 'W' parameter of GavishDonoho must have a positive median singular "
                    f"value (the noise level is estimated from it). Got {s_med!r} instead."
                )
            coefficient = gavish_donoho_omega(ratio, approximate=approximate)
            threshold = coefficient * s_med
            sigma2 = s_med**2 / (N * _mp_median(ratio))
        else:
            coefficient = gavish_donoho_lambda(ratio)
            threshold = coefficient * math.sqrt(N * sigma2)
        self.shape_ = (m, n)
        self.ratio_ = ratio
        self.eigenvalues_ = lam
        self.singular_values_ = s
        self.sigma2_ = float(sigma2)
        self.threshold_ = float(threshold)
        self.lambda_plus_ = float(threshold**2 / N)
        self.n_spikes_ = int(np.count_nonzero(s > threshold))
        self.coefficient_ = float(coefficient)
        return self
