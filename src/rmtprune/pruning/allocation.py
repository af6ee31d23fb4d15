"""Allocation rules: one global budget spread over layers by a spectral statistic.

An allocation rule has ``fractions(layers, target) -> {name: fraction}`` and is passed as
``rmtprune.Sparsity(target, allocation=rule)``.  :class:`SpectralAllocation` computes one
statistic per layer from its spectrum, maps it linearly (min–max over the layers) onto
``[target − spread, target + spread]`` — the shape of AlphaPruning's rule — and shifts the
result so that the weights removed add up to ``target`` of all the selected weights (weighted by
each layer's size, fractions clipped to ``[0, max_fraction]``).  ``sign=+1`` removes *more*
from layers with a *larger* statistic, ``-1`` the opposite.

Statistics (docs/pretrained.md measures which one predicts a layer's tolerance):

* ``"bulk_share"``: fraction of the eigenvalues inside the Marchenko–Pastur bulk (BEMA's edge
  ``λ+``; :class:`rmtprune.MPCriterion`'s fit);
* ``"alpha"``: Hill estimate of the power-law exponent of the top 10 % of the eigenvalues
  (AlphaPruning: heavier tails, smaller α, are cut less, i.e. ``sign=+1``);
* ``"spike_energy"``: share of ``Σλ`` above the bulk edge.

Example
-------
>>> import torch
>>> from rmtprune.pruning.criteria import LayerView
>>> _ = torch.manual_seed(0)
>>> noise = LayerView.from_matrix("noise", torch.randn(64, 128))
>>> spiked = LayerView.from_matrix("spiked", torch.randn(64, 128) + 3 * torch.ones(64, 128))
>>> rule = SpectralAllocation("bulk_share", spread=0.2)
>>> f = rule.fractions([noise, spiked], 0.5)
>>> round(f["noise"], 3), round(f["spiked"], 3), round((f["noise"] + f["spiked"]) / 2, 12)
(0.7, 0.3, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rmtprune._util.validation import check_real, param_error
from rmtprune.pruning.criteria import LayerView, MPCriterion

__all__ = ["STATISTICS", "SpectralAllocation", "hill_alpha", "layer_statistic"]

STATISTICS = ("bulk_share", "alpha", "spike_energy")


def hill_alpha(eigenvalues: np.ndarray, share: float = 0.1) -> float:
    """Hill estimate of the tail exponent of the density of ``eigenvalues`` (top ``share``)."""
    top = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    top = top[top > 0]
    k = max(5, int(share * len(top)))
    if len(top) <= k:
        return float("nan")
    return float(1.0 + k / np.sum(np.log(top[:k] / top[k])))


def layer_statistic(view: LayerView, statistic: str, fit: MPCriterion | None = None) -> float:
    """One layer's ``statistic`` (module doc), NaN when it cannot be computed."""
    lam = np.asarray(view.eigenvalues, dtype=np.float64)[view.p - view.rank :]
    if statistic == "alpha":
        return hill_alpha(lam)
    result = (fit or MPCriterion()).fit(view)
    if isinstance(result, str) or not np.isfinite(result.lambda_plus):
        return float("nan")
    edge = float(result.lambda_plus)
    if statistic == "bulk_share":
        return float(np.mean(lam <= edge))
    total = float(lam.sum())
    return float(lam[lam > edge].sum() / total) if total > 0 else float("nan")


@dataclass(frozen=True)
class SpectralAllocation:
    """Spread a sparsity budget by a spectral statistic (module doc).

    Parameters
    ----------
    statistic : {"bulk_share", "alpha", "spike_energy"}
    spread : float
        Half-width of the linear map, in [0, 1).
    sign : {+1, -1}
        ``+1``: larger statistic → more removed.
    max_fraction : float
        Largest fraction any layer loses.
    """

    statistic: str = "bulk_share"
    spread: float = 0.1
    sign: int = 1
    max_fraction: float = 0.95

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.statistic not in STATISTICS:
            raise param_error("statistic", owner, f"one of {STATISTICS}", self.statistic)
        check_real(self.spread, "spread", owner, low=0.0, high=1.0, high_open=True)
        if self.sign not in (1, -1):
            raise param_error("sign", owner, "+1 or -1", self.sign)
        check_real(self.max_fraction, "max_fraction", owner, low=0.0, high=1.0, low_open=True)

    def statistics(self, layers: Sequence[LayerView]) -> dict[str, float]:
        """Each layer's statistic (NaN ones take the layers' median)."""
        values = {v.name: layer_statistic(v, self.statistic) for v in layers}
        finite = [x for x in values.values() if np.isfinite(x)]
        median = float(np.median(finite)) if finite else 0.0
        return {k: (x if np.isfinite(x) else median) for k, x in values.items()}

    def fractions(self, layers: Sequence[LayerView], target: float) -> dict[str, float]:
        """Per-layer fractions whose size-weighted mean is ``target`` (module doc)."""
        if not layers:
            return {}
        stats = self.statistics(layers)
        names = [v.name for v in layers]
        x = np.array([stats[k] for k in names])
        size = np.array([float(v.shape[0] * v.shape[1]) for v in layers])
        span = float(x.max() - x.min())
        unit = (x - x.min()) / span if span > 0 else np.full_like(x, 0.5)
        raw = target + self.sign * self.spread * (2.0 * unit - 1.0)
        return dict(zip(names, _shift_to_total(raw, size, target, self.max_fraction), strict=True))


def _shift_to_total(raw: np.ndarray, size: np.ndarray, target: float, high: float) -> list[float]:
    """``clip(raw + c, 0, high)`` with ``c`` chosen (bisection) so that the size-weighted mean
    is ``target``."""
    goal = target * float(size.sum())

    def total(c: float) -> float:
        return float((np.clip(raw + c, 0.0, high) * size).sum())

    low_c, high_c = -1.0 - float(raw.max()), 1.0 + high - float(raw.min())
    for _ in range(100):
        mid = 0.5 * (low_c + high_c)
        if total(mid) < goal:
            low_c = mid
        else:
            high_c = mid
    return [float(v) for v in np.clip(raw + 0.5 * (low_c + high_c), 0.0, high)]
