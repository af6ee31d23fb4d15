"""The paired comparisons of two arms over seeds, shared by every experiment.

:func:`paired_comparison` compares the means (paired t-test on the per-seed differences);
:func:`variance_comparison` compares the seed-to-seed spreads of the same two arms
(Pitman–Morgan test, the paired-sample test of equal variances).

Example
-------
>>> from rmtprune.paper.experiments.stats import paired_comparison
>>> c = paired_comparison([2.0, 3.0, 5.0], [1.0, 1.0, 2.0])
>>> c.mean, c.wins, c.losses
(2.0, 3, 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = ["PairedComparison", "VarianceComparison", "paired_comparison", "variance_comparison"]


@dataclass(frozen=True)
class PairedComparison:
    """Per-seed differences ``d = a − b``: mean, std, 95 % CI, t-test p-value, wins / losses.

    ``wins`` counts the seeds with ``a > b``, ``losses`` those with ``a < b``;
    ``mean_a`` and ``mean_b`` are the means of the two samples and ``metric`` names
    what was compared.  The one paired-comparison type of the experiments.
    """

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    p_value: float
    wins: int
    losses: int
    metric: str = ""
    mean_a: float = math.nan
    mean_b: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def paired_comparison(a: ArrayLike, b: ArrayLike, *, metric: str = "") -> PairedComparison:
    """Paired comparison of two equally long samples (a two-sided t-test on ``a − b``).

    With one pair the spread, interval and p-value are NaN; with zero spread the
    p-value is 0 (all differences equal and non-zero) or 1 (all zero).

    Examples
    --------
    >>> c = paired_comparison([0.90, 0.91, 0.92], [0.89, 0.90, 0.90], metric="accuracy")
    >>> round(c.mean, 4), c.wins, c.n, round(c.mean_b, 4)
    (0.0133, 3, 3, 0.8967)
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape or xa.ndim != 1:
        raise ValueError(
            "The 'a' and 'b' parameters of paired_comparison must be 1-D of the same "
            f"length. Got shapes {xa.shape} and {xb.shape} instead."
        )
    d = xa - xb
    n = int(d.size)
    mean = float(d.mean()) if n else math.nan
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    means = (
        {"metric": metric, "mean_a": float(xa.mean()), "mean_b": float(xb.mean())}
        if n
        else {"metric": metric}
    )
    if n < 2:
        nan = math.nan
        return PairedComparison(n, mean, nan, nan, nan, nan, wins, losses, **means)
    std = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    if std == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = float(2.0 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))
    return PairedComparison(n, mean, std, mean - half, mean + half, p, wins, losses, **means)


@dataclass(frozen=True)
class VarianceComparison:
    """Seed-to-seed spread of two paired samples: the stds, their ratio, a Pitman–Morgan test.

    ``std_a`` and ``std_b`` are sample standard deviations (``ddof = 1``), ``ratio`` is
    ``std_a / std_b``; ``r`` is the correlation of ``a + b`` with ``a − b``, which is zero
    exactly when the two variances are equal, and ``p_value`` the two-sided test of ``r = 0``
    (``t = r·sqrt(n − 2)/sqrt(1 − r²)`` with ``n − 2`` degrees of freedom).  ``r_critical`` is
    the smallest ``|r|`` that reaches ``p < 0.05`` at this ``n``: the test's power at three
    seeds (one degree of freedom, ``|r| > 0.997``) is tiny.  Fewer than three pairs give NaN.
    """

    n: int
    std_a: float
    std_b: float
    ratio: float
    r: float
    p_value: float
    r_critical: float
    metric: str = ""
    test: str = "Pitman-Morgan"

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def variance_comparison(a: ArrayLike, b: ArrayLike, *, metric: str = "") -> VarianceComparison:
    """Do two paired samples (the same seeds in two arms) differ in variance?

    The Pitman–Morgan test: with ``u = a + b`` and ``v = a − b``,
    ``cov(u, v) = var(a) − var(b)``, so equal variances are a zero correlation of ``u``
    and ``v``, tested by the t-test of a Pearson correlation (the p-value of
    ``scipy.stats.pearsonr(a + b, a − b)``).  It respects the pairing, unlike an F-test of
    two independent samples.  When ``u`` or ``v`` is constant the variances are equal
    exactly: ``r = 0``, ``p = 1``.

    Examples
    --------
    >>> c = variance_comparison([1.0, 2.0, 3.0, 4.0], [2.0, 2.5, 2.0, 2.5])
    >>> round(c.ratio, 3), c.n, round(c.r_critical, 3)
    (4.472, 4, 0.95)
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape or xa.ndim != 1:
        raise ValueError(
            "The 'a' and 'b' parameters of variance_comparison must be 1-D of the same "
            f"length. Got shapes {xa.shape} and {xb.shape} instead."
        )
    n, nan = int(xa.size), math.nan
    std_a = float(xa.std(ddof=1)) if n > 1 else nan
    std_b = float(xb.std(ddof=1)) if n > 1 else nan
    ratio = std_a / std_b if std_b else nan
    if n < 3:
        return VarianceComparison(n, std_a, std_b, ratio, nan, nan, nan, metric)
    df = n - 2
    t_crit = float(stats.t.ppf(0.975, df))
    r_crit = t_crit / math.sqrt(t_crit**2 + df)
    u, v = xa + xb, xa - xb
    su, sv = float(u.std()), float(v.std())
    if su == 0.0 or sv == 0.0:
        return VarianceComparison(n, std_a, std_b, ratio, 0.0, 1.0, r_crit, metric)
    r = float(np.clip(np.mean((u - u.mean()) * (v - v.mean())) / (su * sv), -1.0, 1.0))
    if abs(r) == 1.0:
        p = 0.0
    else:
        p = float(2.0 * stats.t.sf(abs(r) * math.sqrt(df / (1.0 - r * r)), df))
    return VarianceComparison(n, std_a, std_b, ratio, r, p, r_crit, metric)
