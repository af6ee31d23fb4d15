"""Rank criteria: how many singular values a layer keeps, and why.

Three roles are kept apart (after Torch-Pruning): a **criterion** looks at a
layer's spectrum and decides the rank it keeps; an **adapter** per layer type
(:mod:`rmtprune.factorize.registry`) does the surgery; the **walker**
(:func:`rmtprune.prune`) visits the model, asks the other two and writes the
report.  A criterion changes nothing.

The protocol
------------
A *layer criterion* has ``decide(layer: LayerView) -> RankDecision``.  The
:class:`LayerView` holds what the walker already computed for one eligible layer:
name, module, ``(m, n)``, the ascending eigenvalues ``λ = s²/N`` (float64, all
``p`` of them, zeros included for a rank-deficient layer), the layer's current
rank and its effective weight matrix.  The :class:`RankDecision` holds the kept
rank (in ``[1, layer.rank]``), a human-readable ``reason`` that reaches the
report row, ``skip=True`` when the criterion refuses the layer (for example a
bulk that is not MP-like), and optionally the fit it made
(:class:`rmtprune.rmt.fit.SpectralFit`, the one record of a fit, which the report rows hold).

A *model-level criterion* has instead
``decide_model(model, layers: Sequence[LayerView]) -> Mapping[str, RankDecision]``
and sees all candidate layers at once: the extension point for rank choices that
trade layers against each other (a parameter budget, or calibration data: choose
the ranks so that the model's output on held-out inputs moves by at most δ,
greedily over per-layer sensitivities).  The walker calls ``decide_model`` when a
criterion has it, else ``decide`` per layer; a layer missing from the mapping is
left unchanged.  Either kind is passed as ``prune(model, criterion=...)``.

Criteria here: :class:`MPCriterion` (the paper's rule, docs/method.md section 4: BEMA
spikes plus a fraction ``bulk_keep`` of the bulk, after the fit test),
:class:`GavishDonohoCriterion`, :class:`Energy`, :class:`FixedRank`,
:class:`FixedRatio`.  :class:`SpectralPruner` schedules the ``bulk_keep`` of a
criterion through its ``with_bulk_keep(fraction)`` method.

Example
-------
>>> import numpy as np, torch
>>> from rmtprune.pruning.criteria import Energy, FixedRatio, LayerView
>>> w = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64))
>>> layer = LayerView.from_matrix("fc", w)
>>> Energy(0.9).decide(layer)
RankDecision(rank=2, reason='2 of 4 values hold 90.9 % of the energy (energy=0.9)')
>>> FixedRatio(0.5).decide(layer).rank
2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from rmtprune._util.validation import check_int, check_real
from rmtprune.rmt.bema import BEMA
from rmtprune.rmt.fit import SpectralFit
from rmtprune.rmt.spectrum import eigenvalues as spectrum_eigenvalues
from rmtprune.rmt.thresholds import GavishDonoho

__all__ = [
    "Criterion",
    "Decision",
    "Energy",
    "FitCutoff",
    "FixedRank",
    "FixedRatio",
    "GavishDonohoCriterion",
    "LayerCriterion",
    "LayerView",
    "MPCriterion",
    "MaskDecision",
    "ModelCriterion",
    "RankDecision",
    "SpectralFit",
    "cumulative_energy",
    "energy_rank",
    "kept_rank",
    "layerwise",
]

FloatArray = NDArray[np.float64]
FitCutoff = float | Mapping[type, float]


@dataclass(frozen=True, eq=False)
class LayerView:
    """What a criterion sees of one eligible layer (built by the walker; read-only).

    ``eigenvalues`` are ascending ``λ = s²/N``, all ``p = min(m, n)`` of them;
    ``rank`` is the layer's current rank (factor rank, numerical rank or a known
    rank), so ``eigenvalues[p - rank:]`` are the real ones.
    """

    name: str
    module: nn.Module | None
    shape: tuple[int, int]
    eigenvalues: FloatArray = field(repr=False)
    rank: int
    matrix: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_matrix(cls, name: str, matrix: torch.Tensor, rank: int | None = None) -> LayerView:
        """A view of a bare weight matrix (for tests and notebooks)."""
        lam = spectrum_eigenvalues(matrix)
        m, n = int(matrix.shape[0]), int(matrix.shape[1])
        return cls(name, None, (m, n), lam, min(m, n) if rank is None else rank, matrix)

    @property
    def p(self) -> int:
        """``min(m, n)``."""
        return min(self.shape)

    @property
    def ratio(self) -> float:
        """``γ = p / N``."""
        return self.p / max(self.shape)

    @property
    def singular_values(self) -> FloatArray:
        """``sqrt(N λ)``, descending."""
        return np.sqrt(self.eigenvalues[::-1] * max(self.shape))


@dataclass(frozen=True)
class RankDecision:
    """The rank a criterion keeps for one layer, and why.

    ``rank`` is in ``[1, layer.rank]``; ``rank == layer.rank`` means nothing is
    removed.  ``skip=True``: the criterion refuses the layer (it stays as it is,
    reported as skipped with ``reason``).  ``factors``: the rank-``rank`` triplets
    ``(U, s, Vh)`` the walker must apply instead of the plain truncated SVD of the
    weight (a model-level criterion that factors layers itself, e.g. whitened SVD).
    """

    rank: int
    reason: str
    skip: bool = field(default=False, repr=False)
    fit: SpectralFit | None = field(default=None, repr=False)
    factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(
        default=None, repr=False, compare=False
    )


@dataclass(frozen=True, eq=False)
class MaskDecision:
    """The weights a sparsity criterion keeps in one layer, and why.

    ``mask`` is a boolean ``m × n`` tensor of the layer's matrix view (``True`` = kept);
    ``skip=True``: the criterion refuses the layer (left as it is, reported as skipped).
    """

    mask: torch.Tensor | None
    reason: str
    skip: bool = field(default=False)


Decision = RankDecision | MaskDecision


@runtime_checkable
class LayerCriterion(Protocol):
    """Decides each layer's rank on its own."""

    def decide(self, layer: LayerView) -> RankDecision:
        """The rank ``layer`` keeps."""
        ...


@runtime_checkable
class ModelCriterion(Protocol):
    """Decides all ranks at once, seeing the model and every candidate layer."""

    def decide_model(self, model: nn.Module, layers: Sequence[LayerView]) -> Mapping[str, Decision]:
        """The rank (or, with ``produces_masks``, the mask) of each layer, by name (a missing
        layer is left unchanged)."""
        ...


Criterion = LayerCriterion | ModelCriterion


def layerwise(criterion: Criterion) -> bool:
    """Whether ``criterion`` decides each layer from that layer alone, so a checkpoint can be
    pruned one layer at a time: a :class:`LayerCriterion`, or a model-level one that says so
    (``layerwise``, e.g. :class:`rmtprune.Sparsity` by magnitude, uniform or N:M).

    >>> from rmtprune import Sparsity
    >>> layerwise(MPCriterion()), layerwise(Sparsity(0.5))
    (True, True)
    >>> layerwise(Sparsity(0.5, allocation="global"))
    False
    """
    return not isinstance(criterion, ModelCriterion) or bool(getattr(criterion, "layerwise", False))


def kept_rank(
    n_spikes: int, p: int, bulk_keep: float, *, current_rank: int, min_rank: int | None = None
) -> int:
    """``r = k + ⌊f (p − k)⌋`` (docs/method.md section 4), floored at ``min_rank``, capped at the
    current rank.

    >>> kept_rank(3, 100, 0.5, current_rank=100)
    51
    >>> kept_rank(3, 100, 0.0, current_rank=100, min_rank=10)
    10
    """
    r = n_spikes + math.floor(bulk_keep * (p - n_spikes) + 1e-12)
    if min_rank is not None:
        r = max(r, min_rank)
    return max(1, min(r, current_rank))


def _cutoff_for(module: nn.Module | None, fit_cutoff: FitCutoff) -> float:
    if isinstance(fit_cutoff, Mapping):
        for cls in type(module).__mro__:
            if cls in fit_cutoff:
                return float(fit_cutoff[cls])
        return float(fit_cutoff.get(object, 0.05))
    return float(fit_cutoff)


def _check_cutoff(fit_cutoff: Any, owner: str) -> None:
    values = fit_cutoff.values() if isinstance(fit_cutoff, Mapping) else [fit_cutoff]
    for value in values:
        check_real(value, "fit_cutoff", owner, low=0.0, low_open=True)


def _min_rank(min_rank: Any, owner: str) -> int | None:
    return None if min_rank is None else check_int(min_rank, "min_rank", owner, low=1)


@dataclass(frozen=True)
class MPCriterion:
    """The paper's rule (docs/method.md sections 2–4): BEMA spikes plus a fraction of the bulk.

    Fit BEMA (``alpha``, ``beta``) to the layer's real eigenvalues; if the fit
    statistic ``D`` exceeds ``fit_cutoff`` the bulk is not MP-like and the layer
    is skipped; otherwise keep ``r = k + ⌊bulk_keep · (p − k)⌋`` values (``k``
    spikes), at least ``min_rank``, at most the current rank (:func:`kept_rank`).

    Parameters
    ----------
    bulk_keep : float
        Fraction ``f`` in [0, 1] of the bulk kept; 0 removes the whole random part.
    min_rank : int, optional
        Floor on the kept rank (the authors never went below the output dimension).
    alpha, beta : float
        BEMA trimming and Tracy–Widom tail level (:class:`rmtprune.BEMA`).
    fit_cutoff : float or mapping of layer type to float
        Largest ``D`` of an MP-like layer (``{nn.Linear: 0.05, nn.Conv2d: 0.6}`` as the
        authors; ``object`` is the fallback key).

    Examples
    --------
    >>> MPCriterion().with_bulk_keep(0.25)
    MPCriterion(bulk_keep=0.25, min_rank=None, alpha=0.25, beta=0.1, fit_cutoff=0.05)
    """

    bulk_keep: float = 0.0
    min_rank: int | None = None
    alpha: float = 0.25
    beta: float = 0.1
    fit_cutoff: FitCutoff = 0.05

    def __post_init__(self) -> None:
        owner = type(self).__name__
        bulk_keep = check_real(self.bulk_keep, "bulk_keep", owner, low=0.0, high=1.0)
        object.__setattr__(self, "bulk_keep", bulk_keep)
        object.__setattr__(self, "min_rank", _min_rank(self.min_rank, owner))
        alpha = check_real(
            self.alpha, "alpha", owner, low=0.0, high=0.5, low_open=True, high_open=True
        )
        beta = check_real(
            self.beta, "beta", owner, low=0.0, high=1.0, low_open=True, high_open=True
        )
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", beta)
        _check_cutoff(self.fit_cutoff, owner)

    def with_bulk_keep(self, bulk_keep: float) -> MPCriterion:
        """The same rule with another ``bulk_keep`` (what a schedule sets each epoch)."""
        return replace(self, bulk_keep=bulk_keep)

    def fit(self, layer: LayerView) -> SpectralFit | str:
        """BEMA and the fit test on the layer's real eigenvalues, or why it cannot be fitted."""
        rank = layer.rank if layer.rank < layer.p else None
        try:
            bema = BEMA(alpha=self.alpha, beta=self.beta).fit_eigenvalues(
                layer.eigenvalues, layer.shape, rank=rank
            )
        except ValueError as exc:
            return f"cannot fit the bulk: {exc}"
        cutoff = _cutoff_for(layer.module, self.fit_cutoff)
        fit = bema.summary().fit
        return replace(fit, mp_like=bool(fit.fit_error <= cutoff))

    def not_mp_reason(self, layer: LayerView, fit: SpectralFit) -> str:
        """The report's reason for a layer whose bulk fails the fit test."""
        cutoff = _cutoff_for(layer.module, self.fit_cutoff)
        return f"bulk is not MP-like: D = {fit.fit_error:.3g} > {cutoff:g}"

    def decide(self, layer: LayerView) -> RankDecision:
        """Keep the spikes and ``bulk_keep`` of the bulk of an MP-like layer."""
        fit = self.fit(layer)
        if isinstance(fit, str):
            return RankDecision(layer.rank, fit, skip=True)
        if not fit.mp_like:
            return RankDecision(layer.rank, self.not_mp_reason(layer, fit), skip=True, fit=fit)
        k, p, f = int(fit.n_spikes or 0), layer.p, self.bulk_keep
        r = kept_rank(k, p, f, current_rank=layer.rank, min_rank=self.min_rank)
        if r >= layer.rank:
            why = f"nothing to remove: keeps all {layer.rank} values ({k} spikes, bulk_keep={f:g})"
            return RankDecision(layer.rank, why, fit=fit)
        why = f"{k} spikes + {r - k} of {p - k} bulk values (bulk_keep={f:g})"
        if r > kept_rank(k, p, f, current_rank=layer.rank):
            why = f"{k} spikes, bulk_keep={f:g}, raised to min_rank={self.min_rank}"
        elif k + math.floor(f * (p - k) + 1e-12) == 0:  # the rule keeps none: 1 is the floor
            why = (
                f"no spikes and bulk_keep={f:g}: the fit sees only noise; kept rank 1 of {p}, "
                "the smallest factorization (set min_rank to keep more)"
            )
        return RankDecision(r, why, fit=fit)


@dataclass(frozen=True)
class GavishDonohoCriterion:
    """Keep the singular values above the Gavish–Donoho optimal hard threshold.

    With unknown noise (default) the threshold is ``ω(β) · median(s)``
    (:class:`rmtprune.GavishDonoho`, ``β`` there being the aspect ratio ``γ``).
    It sits above the bulk edge, so weak spikes that BEMA finds may be dropped.
    Rank-deficient layers are skipped: the median would fall on the zeros.

    Parameters
    ----------
    sigma2 : float, optional
        Known noise variance per entry; ``None`` estimates it from the median.
    approximate : bool
        Use Gavish & Donoho's cubic approximation of ``ω(β)``.
    min_rank : int, optional
        Floor on the kept rank (the rank is at least 1 in any case).
    """

    sigma2: float | None = None
    approximate: bool = False
    min_rank: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.sigma2 is not None:
            sigma2 = check_real(self.sigma2, "sigma2", owner, low=0.0, low_open=True)
            object.__setattr__(self, "sigma2", sigma2)
        if not isinstance(self.approximate, bool):
            raise TypeError(
                f"The 'approximate' parameter of {owner} must be a bool. "
                f"Got {self.approximate!r} instead."
            )
        object.__setattr__(self, "min_rank", _min_rank(self.min_rank, owner))

    def decide(self, layer: LayerView) -> RankDecision:
        """The number of singular values above the threshold (at least ``min_rank``, 1)."""
        if layer.rank < layer.p:
            why = f"rank-deficient layer (rank {layer.rank} of {layer.p}): Gavish–Donoho needs all"
            return RankDecision(layer.rank, why, skip=True)
        gd = GavishDonoho(self.sigma2, self.approximate).fit_eigenvalues(
            layer.eigenvalues, layer.shape
        )
        fit = SpectralFit(
            sigma2=gd.sigma2_,
            lambda_plus=gd.lambda_plus_,
            threshold=gd.threshold_,
            n_spikes=gd.n_spikes_,
        )
        k = gd.n_spikes_
        r = min(max(k, self.min_rank or 1, 1), layer.rank)
        why = f"{k} values above the Gavish–Donoho threshold {gd.threshold_:.4g}"
        if r != k:
            why += f", kept {r}"
        return RankDecision(r, why, fit=fit)


def cumulative_energy(layer: LayerView) -> FloatArray:
    """``c_r = Σ_{i≤r} s_i² / Σ s_i²`` for ``r = 1 … p`` (the last one exactly 1)."""
    lam = layer.eigenvalues[::-1]  # descending
    cum = np.cumsum(lam) / max(float(lam.sum()), np.finfo(float).tiny)
    cum[-1] = 1.0
    return cum


def energy_rank(cum: FloatArray, energy: Any) -> Any:
    """Smallest ``r`` with ``c_r >= energy`` (vectorised over ``energy``)."""
    return np.minimum(np.searchsorted(cum, energy, side="left") + 1, cum.size)


@dataclass(frozen=True)
class Energy:
    """Keep the smallest rank whose singular values hold a fraction ``energy`` of ``Σ s²``.

    Examples
    --------
    >>> Energy(1.5)
    Traceback (most recent call last):
    ...
    ValueError: The 'energy' parameter of Energy must be a float in (0.0, 1.0]. Got 1.5 instead.
    """

    energy: float = 0.9

    def __post_init__(self) -> None:
        energy = check_real(self.energy, "energy", "Energy", low=0.0, high=1.0, low_open=True)
        object.__setattr__(self, "energy", energy)

    def decide(self, layer: LayerView) -> RankDecision:
        """``min{r : c_r >= energy}`` (:func:`cumulative_energy`), at most the current rank."""
        cum = cumulative_energy(layer)
        r = min(int(energy_rank(cum, self.energy)), layer.rank)
        why = f"{r} of {layer.p} values hold {100 * cum[r - 1]:.1f} % of the energy"
        return RankDecision(r, f"{why} (energy={self.energy:g})")


@dataclass(frozen=True)
class FixedRank:
    """Keep ``rank`` singular values (never more than the layer has).

    ``rank`` is one int for every layer or a mapping of layer name to rank; layers
    missing from the mapping are left unchanged.

    >>> FixedRank({"fc1": 8}).rank
    {'fc1': 8}
    """

    rank: int | Mapping[str, int]

    def __post_init__(self) -> None:
        if isinstance(self.rank, Mapping):
            for name, value in self.rank.items():
                check_int(value, f"rank[{name!r}]", "FixedRank", low=1)
        else:
            object.__setattr__(self, "rank", check_int(self.rank, "rank", "FixedRank", low=1))

    def decide(self, layer: LayerView) -> RankDecision:
        """``min(rank, current rank)``."""
        if isinstance(self.rank, Mapping):
            if layer.name not in self.rank:
                return RankDecision(layer.rank, "not in the rank mapping: left as it is")
            wanted = int(self.rank[layer.name])
        else:
            wanted = int(self.rank)
        r = min(wanted, layer.rank)
        return RankDecision(r, f"fixed rank {wanted}" + ("" if r == wanted else f", has {r}"))


@dataclass(frozen=True)
class FixedRatio:
    """Keep ``max(1, ⌊fraction · p⌋)`` singular values, ``p = min(m, n)``.

    ``fraction`` is a share of ``p``, not the aspect ratio ``γ`` of the glossary.  The
    product is floored after adding ``1e-12``, so that a fraction written in decimal keeps
    the count it names (``0.29 · 100`` is ``28.999999999999996`` in floating point: 29 kept).

    >>> FixedRatio(0.25).fraction
    0.25
    """

    fraction: float

    def __post_init__(self) -> None:
        q = check_real(self.fraction, "fraction", "FixedRatio", low=0.0, high=1.0, low_open=True)
        object.__setattr__(self, "fraction", q)

    def decide(self, layer: LayerView) -> RankDecision:
        """``max(1, ⌊fraction · p⌋)``, at most the current rank."""
        r = min(max(1, math.floor(self.fraction * layer.p + 1e-12)), layer.rank)
        return RankDecision(r, f"{r} of {layer.p} values (fraction={self.fraction:g})")
