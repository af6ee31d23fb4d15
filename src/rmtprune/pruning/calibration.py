"""Rank choice with an output guarantee: pruning measured on held-out calibration data.

:class:`Calibrated` is a *model-level* rank criterion: it sees the model and all candidate
layers at once and returns one :class:`RankDecision` per layer.  Given calibration batches
and a limit ``δ`` (``max_output_change``) on the relative change of the model's first output
(:mod:`rmtprune.pruning.outputs`), it

1. splits the batches into a *fit* part and a *held-out* part (``holdout``, interleaved);
2. on the fit part, records each layer's input Gram matrix and factors the layer by plain or
   activation-whitened SVD (:mod:`rmtprune.pruning.whitening`), which gives the layer's own
   output error at every rank in closed form;
3. measures each layer's end-to-end sensitivity once (truncate that layer alone, run the
   model on the first two fit batches) to turn its own error into an estimated output change;
4. orders all rank reductions into one Lagrangian path from "every layer at its lowest rank"
   to "nothing changed" (:mod:`rmtprune.pruning.rank_search`) and bisects it on the
   *measured* output change of the whole combination on the fit part (≤ ``δ``);
5. checks that combination on the held-out part and, if it exceeds ``δ`` there, backs off
   along the same path (raising ranks) until the held-out change is ≤ ``δ``.

The held-out value reached is the guarantee (``output_change_``); ``δ = 0`` returns the
model unchanged.  Only ranks whose square-root split saves parameters (``r (m + n) < m n``)
are considered.  A layer whose truncation does not move the measured output at all (a
pooler outside the first output) is left as it is rather than cut to rank 1.

Example
-------
>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8))
>>> low_rank = torch.randn(64, 4) @ torch.randn(4, 64) / 8  # a layer with 4 strong directions
>>> _ = model[0].weight.data.copy_(low_rank + 0.01 * torch.randn(64, 64))
>>> batches = [torch.randn(32, 64) for _ in range(4)]
>>> from rmtprune import prune
>>> pruned, report = prune(model, criterion=Calibrated(batches, 0.2))
>>> report.output_change <= 0.2, report.params_after < report.params_before
(True, True)

The walker (:func:`rmtprune.prune`) applies each decision's ``factors`` (the plain or
whitened triplets evaluated here), so the pruned model is the one that was measured.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune._util.validation import check_int, check_real, param_error
from rmtprune.factorize.registry import LayerAdapter, get_adapter, set_submodule
from rmtprune.pruning.calibrated_sparsity import decide_masks
from rmtprune.pruning.criteria import LayerView, RankDecision
from rmtprune.pruning.options import resolve_criterion
from rmtprune.pruning.outputs import OutputProbe, as_batches, split_batches
from rmtprune.pruning.rank_search import first_passing, hull_moves, lower_hull
from rmtprune.pruning.report import PruneReport
from rmtprune.pruning.whitening import LayerFactors, input_grams

__all__ = ["Calibrated", "calibrated_from_keywords", "held_out_probe", "with_output_change"]

_PROBE_LEVEL = 0.1  # own relative error at which each layer's sensitivity is measured
_PROBE_BATCHES = 2  # fit batches used to measure it (one model run per layer)


@dataclass
class _Layer:
    """One candidate layer during the search."""

    name: str
    module: nn.Module
    adapter: LayerAdapter
    current: int
    lowest: int
    highest: int
    factors: LayerFactors | None = None
    sensitivity: float = math.nan
    ranks: tuple[int, ...] = ()

    def params(self, rank: int) -> int:
        if rank >= self.current:
            return self.adapter.param_count(self.module)
        return self.adapter.split_param_count(self.module, rank)


class Calibrated:
    """Model-level rank criterion: the smallest model whose held-out output change is ≤ δ.

    The one way to prune with calibration data:
    ``rmtprune.prune(model, criterion=Calibrated(batches, δ), select=Select(...))``.  The
    report's ``output_change`` is measured on this criterion's held-out batches (do not also
    pass ``calibration=`` to ``prune``: it would be ignored).

    Parameters
    ----------
    batches : iterable
        Calibration inputs: tensors (``model(x)``), tuples (``model(*x)``) or dicts
        (``model(**x)``); at least two batches.  Consumed once and kept.  Floating-point
        tensors must be finite (NaN or Inf raises ``ValueError`` naming the batch and key;
        integer token ids are not checked); a batch the model cannot run, or on which the
        unchanged model's output is not finite, raises ``ValueError`` naming the batch
        before the model is changed.
    max_output_change : float
        ``δ`` in [0, 1]: the largest relative change of the model's first output tensor,
        ``‖f'(X) − f(X)‖_F / ‖f(X)‖_F``, allowed on the held-out batches.
    base : mapping of layer name to int, criterion, or None
        The most any layer may be cut: its rank never goes below ``base``'s rank (e.g. the
        spectral rule's ranks, ``MPCriterion()``, making this a guard on them); layers
        ``base`` does not name or skips stay unchanged.  A criterion may be layer-level
        (``decide``) or model-level (``decide_model``).  ``None`` (default): any rank down
        to ``min_rank``.
    whiten : bool
        Factor each layer by activation-whitened SVD (SVD-LLM) instead of plain SVD:
        every layer type in the metric of its own inputs (an embedding weighted by how often
        each row is looked up, a convolution by its unfolded inputs;
        :mod:`rmtprune.pruning.whitening`).
    holdout : float
        Fraction of the batches held out from everything fitted, in (0, 1).
    ridge : float
        Regularisation of the whitening, ``λ = ridge · tr(XᵀX) / n``.
    min_rank : int
        Floor on every kept rank.

    ``fit_batches`` and ``held_batches`` are the two parts; ``fit_numbers`` and
    ``held_numbers`` their batches' numbers in ``batches`` (as error messages name them).

    After :meth:`decide_model`: ``output_change_`` (held out), ``output_change_fit_``,
    ``factors_`` (per layer: the kept triplets ``(U_r, s_r, Vh_r)``, also on each changed
    layer's decision as ``factors``, which the walker applies) and ``n_evaluations_``; with a
    :class:`rmtprune.Sparsity` base (:mod:`rmtprune.pruning.calibrated_sparsity`), ``level_``:
    the sparsity level chosen.
    """

    level_: float

    def __init__(
        self,
        batches: Iterable[Any],
        max_output_change: float,
        *,
        base: Any = None,
        whiten: bool = False,
        holdout: float = 0.5,
        ridge: float = 1e-2,
        min_rank: int = 1,
    ) -> None:
        owner = "Calibrated"
        self.batches = as_batches(batches, owner, minimum=2, param="batches")
        self.max_output_change = check_real(
            max_output_change, "max_output_change", owner, low=0.0, high=1.0
        )
        self.fit_batches, self.held_batches = split_batches(self.batches, holdout, owner)
        numbers = split_batches(range(len(self.batches)), holdout, owner)
        self.fit_numbers, self.held_numbers = numbers  # the batches' numbers in ``batches``
        self.holdout = float(holdout)
        if not isinstance(whiten, bool):
            raise param_error("whiten", owner, "a bool", whiten)
        self.whiten = whiten
        self.ridge = check_real(ridge, "ridge", owner, low=0.0)
        self.min_rank = check_int(min_rank, "min_rank", owner, low=1)
        if not (
            base is None
            or isinstance(base, Mapping)
            or hasattr(base, "decide_model")
            or hasattr(base, "decide")
        ):
            raise TypeError(
                f"The 'base' parameter of {owner} must be None, a mapping of layer name to "
                f"rank, or a criterion. Got {type(base).__name__} instead."
            )
        self.base = base

    @property
    def produces_masks(self) -> bool:
        """Whether the decisions are masks (a :class:`rmtprune.Sparsity` base)."""
        return bool(getattr(self.base, "produces_masks", False))

    def _floors(self, model: nn.Module, views: Sequence[LayerView]) -> dict[str, int]:
        names = {v.name for v in views}
        if self.base is None:
            return {name: self.min_rank for name in names}
        if isinstance(self.base, Mapping):
            chosen = dict(self.base)
        else:
            if hasattr(self.base, "decide_model"):
                given = dict(self.base.decide_model(model, list(views)))
            else:
                given = {v.name: self.base.decide(v) for v in views}
            chosen = {k: d.rank for k, d in given.items() if d is not None and not d.skip}
        return {k: max(int(v), self.min_rank) for k, v in chosen.items() if k in names}

    def _prepare(
        self, model: nn.Module, views: Sequence[LayerView]
    ) -> tuple[list[_Layer], dict[str, RankDecision]]:
        floors = self._floors(model, views)
        out: dict[str, RankDecision] = {}
        found: list[_Layer] = []
        for view in views:
            name = view.name
            module = view.module if view.module is not None else model.get_submodule(name)
            adapter = get_adapter(module)
            if adapter is None:
                why = f"unsupported layer type {type(module).__name__}"
                out[name] = RankDecision(0, why, skip=True)
                continue
            m, n = adapter.matrix_shape(module)
            current = min(view.rank, adapter.current_rank(module) or min(m, n))
            highest = min(current - 1, (m * n - 1) // (m + n))
            lowest = floors.get(name)
            if lowest is None or lowest >= current:
                out[name] = RankDecision(current, "base criterion keeps this layer")
            elif lowest > highest:
                out[name] = RankDecision(current, f"rank {lowest} would save no parameters")
            else:
                found.append(_Layer(name, module, adapter, current, lowest, highest))
        return found, out

    def decide_model(
        self, model: nn.Module, layers: Sequence[LayerView] | Mapping[str, nn.Module]
    ) -> dict[str, RankDecision]:
        """Ranks for ``layers`` of ``model``; the model is left as it was.

        ``layers`` are the walker's :class:`LayerView` objects (the
        :class:`~rmtprune.pruning.criteria.ModelCriterion` protocol) or ``{name: module}``.
        Each changed layer's decision carries the ``factors`` measured here (plain or
        whitened SVD), for the walker to apply.
        """
        views = _views(model, layers)
        if getattr(self.base, "produces_masks", False):
            return decide_masks(self, model, views)
        cands, decisions = self._prepare(model, views)
        self.factors_: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.n_evaluations_ = 0
        fit = OutputProbe(model, self.fit_batches, numbers=self.fit_numbers)
        held = OutputProbe(model, self.held_batches, numbers=self.held_numbers)
        self._factor(model, cands)
        first = _PROBE_BATCHES
        probe = OutputProbe(model, self.fit_batches[:first], numbers=self.fit_numbers[:first])
        self._measure_sensitivity(model, cands, probe, decisions)
        cands = [c for c in cands if c.name not in decisions]
        path = _path(cands)
        cache: dict[tuple[int, int], float] = {}

        def change(j: int, probe: OutputProbe, which: int) -> float:
            if (j, which) not in cache:
                cache[(j, which)] = self._evaluate(model, cands, path[j], probe)
            return cache[(j, which)]

        delta, last = self.max_output_change, len(path) - 1
        j = first_passing(0, last, lambda k: change(k, fit, 0) <= delta)
        if change(j, held, 1) > delta:
            j = first_passing(j + 1, last, lambda k: change(k, held, 1) <= delta)
        self.output_change_ = change(j, held, 1) if j < last else 0.0
        self.output_change_fit_ = change(j, fit, 0) if j < last else 0.0
        decisions.update(self._decisions(cands, path[j]))
        return {v.name: decisions[v.name] for v in views}

    def _decisions(self, cands: list[_Layer], config: Sequence[int]) -> dict[str, RankDecision]:
        """The chosen configuration as decisions (with the factors to apply)."""
        out: dict[str, RankDecision] = {}
        for c, rank in zip(cands, config, strict=True):
            kept = f"rank {rank} of {c.current}" if rank < c.current else "all values"
            how = "whitened SVD" if c.factors is not None and c.factors.whitened else "plain SVD"
            if self.whiten and how == "plain SVD":
                how += ": its inputs could not be read for whitening"
            reason = (
                f"calibrated ({how}): keeps {kept}; "
                f"output change {self.output_change_:.3g} held out ≤ {self.max_output_change:g}"
            )
            factors = None
            if rank < c.current and c.factors is not None:
                factors = self.factors_[c.name] = c.factors.truncate(rank)
            out[c.name] = RankDecision(rank, reason, factors=factors)
        return out

    def _factor(self, model: nn.Module, cands: list[_Layer]) -> None:
        shapes = {c.name: (c.module, c.adapter.matrix_shape(c.module)[1]) for c in cands}
        grams = input_grams(model, shapes, self.fit_batches, numbers=self.fit_numbers)
        for c in cands:
            with torch.no_grad():
                matrix = c.adapter.weight_matrix(c.module)
            c.factors = LayerFactors.fit(
                matrix, grams[c.name], whiten=self.whiten, ridge=self.ridge
            )

    def _measure_sensitivity(
        self,
        model: nn.Module,
        cands: list[_Layer],
        fit: OutputProbe,
        decisions: dict[str, RankDecision],
    ) -> None:
        """End-to-end output change per unit of the layer's own error, one run per layer."""
        for c in cands:
            assert c.factors is not None
            tail = c.factors.tail_error2
            total = float(tail[0])
            ranks = range(c.lowest, c.highest + 1)
            probe_rank = (
                min(ranks, key=lambda r: abs(math.sqrt(float(tail[r]) / total) - _PROBE_LEVEL))
                if total > 0
                else c.lowest
            )
            config = tuple(probe_rank if d is c else d.current for d in cands)
            measured = self._evaluate(model, cands, config, fit)
            own = math.sqrt(float(tail[probe_rank]))
            if measured == 0.0:
                decisions[c.name] = RankDecision(
                    c.current,
                    "truncating it does not change the measured output (e.g. a pooler outside "
                    "the first output tensor): left as it is",
                )
            c.sensitivity = measured / own if own > 0 else math.inf

    def _evaluate(
        self, model: nn.Module, cands: list[_Layer], config: Sequence[int], probe: OutputProbe
    ) -> float:
        """Measured output change with every layer at its rank in ``config``."""
        originals = _swap_in(model, cands, config)
        try:
            self.n_evaluations_ += 1
            return probe.change(model)
        finally:
            for name, module in originals.items():
                set_submodule(model, name, module)


def _replacement(c: _Layer, rank: int) -> nn.Module:
    assert c.factors is not None
    return c.adapter.rebuild(c.module, *c.factors.truncate(rank), split=True)


def _swap_in(model: nn.Module, cands: list[_Layer], config: Sequence[int]) -> dict[str, nn.Module]:
    originals: dict[str, nn.Module] = {}
    with torch.no_grad():
        for c, rank in zip(cands, config, strict=True):
            if rank < c.current:
                originals[c.name] = set_submodule(model, c.name, _replacement(c, rank))
    return originals


def _path(cands: list[_Layer]) -> list[tuple[int, ...]]:
    """Configurations from every layer at its lowest rank to every layer unchanged."""
    hulls: list[list[tuple[float, float]]] = []
    for c in cands:
        assert c.factors is not None
        ranks = [*range(c.lowest, c.highest + 1), c.current]
        scale = c.sensitivity**2 if math.isfinite(c.sensitivity) else 1e300
        tail = c.factors.tail_error2
        points = [
            (float(c.params(r)), scale * float(tail[r]) if r < c.current else 0.0) for r in ranks
        ]
        keep = lower_hull(points)
        c.ranks = tuple(ranks[i] for i in keep)
        hulls.append([points[i] for i in keep])
    config = [c.ranks[0] for c in cands]
    path = [tuple(config)]
    for _, layer, vertex in hull_moves(hulls):
        config[layer] = cands[layer].ranks[vertex]
        path.append(tuple(config))
    return path


def _views(
    model: nn.Module, layers: Sequence[LayerView] | Mapping[str, nn.Module]
) -> list[LayerView]:
    """Layer views of ``{name: module}`` (spectrum of the adapted weight), or ``layers``."""
    if not isinstance(layers, Mapping):
        return list(layers)
    views = []
    for name, module in layers.items():
        adapter = get_adapter(module)
        if adapter is None:
            views.append(LayerView(name, module, (0, 0), np.zeros(0), 1))
            continue
        with torch.no_grad():
            matrix = adapter.weight_matrix(module)
        rank = adapter.current_rank(module)
        view = LayerView.from_matrix(name, matrix, rank)
        views.append(dataclasses.replace(view, module=module))
    return views


def calibrated_from_keywords(
    criterion: Any,
    legacy: Mapping[str, Any],
    min_rank: int | None,
    calibration: Iterable[Any] | None,
    max_output_change: float,
) -> Calibrated:
    """``prune(calibration=, max_output_change=)`` (deprecated): a :class:`Calibrated`."""
    if calibration is None:
        raise ValueError(
            "The 'max_output_change' parameter of prune needs calibration data to be "
            "measured on: pass calibration=batches (an iterable of model inputs). "
            "Got calibration=None instead."
        )
    if isinstance(criterion, Calibrated):
        raise TypeError(
            "The 'criterion' parameter of prune is a Calibrated criterion already; do not "
            "also pass max_output_change (and calibration) to prune."
        )
    given = criterion is not None or any(v is not None for v in legacy.values())
    base = resolve_criterion(criterion, legacy, "prune") if given else None
    batches = as_batches(calibration, "prune", minimum=2)
    return Calibrated(
        batches, max_output_change, base=base, min_rank=1 if min_rank is None else min_rank
    )


def held_out_probe(
    model: nn.Module, crit: Any, calibration: Iterable[Any] | None, dry_run: bool
) -> OutputProbe | None:
    """Reference outputs of the unpruned model: on the held-out batches of a calibrated
    criterion, else on ``calibration`` (measured only); none for a dry run."""
    if dry_run:
        return None
    if isinstance(crit, Calibrated):
        return OutputProbe(model, crit.held_batches, numbers=crit.held_numbers)
    if calibration is not None:
        return OutputProbe(model, as_batches(calibration, "prune"))
    return None


def with_output_change(
    report: PruneReport, crit: Any, probe: OutputProbe | None, target: nn.Module
) -> PruneReport:
    """The report with the output change the pruned ``target`` really has."""
    if not isinstance(crit, Calibrated):
        if probe is None:
            return report
        return dataclasses.replace(report, output_change=probe.change(target))
    change = crit.output_change_ if probe is None else probe.change(target)
    if change > crit.max_output_change * (1 + 1e-6) + 1e-9:
        warnings.warn(
            f"The pruned model's held-out output change is {change:.4g}, above "
            f"max_output_change={crit.max_output_change:g} (the criterion measured "
            f"{crit.output_change_:.4g} on its own surgery); check split= and the layers' "
            "adapters.",
            RuntimeWarning,
            stacklevel=3,
        )
    return dataclasses.replace(
        report,
        output_change=change,
        output_change_fit=crit.output_change_fit_,
        max_output_change=crit.max_output_change,
    )
