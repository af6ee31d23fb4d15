"""The paired comparison of two arms over seeds, shared by every experiment.

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

__all__ = ["PairedComparison", "paired_comparison"]


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
