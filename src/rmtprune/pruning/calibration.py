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
>>> pruned, report = calibrated_prune(model, batches, 0.2)
>>> report.output_change <= 0.2, report.params_after < report.params_before
(True, True)
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rmtprune._validation import check_int, check_real, param_error
from rmtprune.factorize.registry import LayerAdapter, get_adapter, set_submodule
from rmtprune.pruning.candidates import candidate_layers
from rmtprune.pruning.outputs import OutputProbe, as_batches, split_batches
from rmtprune.pruning.rank_search import first_passing, hull_moves, lower_hull
from rmtprune.pruning.report import LayerPruneResult, PruneReport
from rmtprune.pruning.whitening import LayerFactors, input_grams

__all__ = ["Calibrated", "RankDecision", "calibrated_prune"]

_PROBE_LEVEL = 0.1  # own relative error at which each layer's sensitivity is measured
_PROBE_BATCHES = 2  # fit batches used to measure it (one model run per layer)


@dataclass(frozen=True)
class RankDecision:
    """How many singular values a layer keeps, and why (``rank`` = current rank: unchanged)."""

    rank: int
    reason: str


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


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Calibrated:
    """Model-level rank criterion: the smallest model whose held-out output change is ≤ δ.

    Parameters
    ----------
    batches : iterable
        Calibration inputs: tensors (``model(x)``), tuples (``model(*x)``) or dicts
        (``model(**x)``); at least two batches.  Consumed once and kept.
    max_output_change : float
        ``δ`` in [0, 1]: the largest relative change of the model's first output tensor,
        ``‖f'(X) − f(X)‖_F / ‖f(X)‖_F``, allowed on the held-out batches.
    base : mapping of layer name to int, model-level criterion, or None
        The most any layer may be cut: its rank never goes below ``base``'s rank (e.g. the
        spectral rule's ranks, making this a guard on them); layers ``base`` does not name
        stay unchanged.  ``None`` (default): any rank down to ``min_rank``.
    whiten : bool
        Factor each layer by activation-whitened SVD (SVD-LLM) instead of plain SVD.
    holdout : float
        Fraction of the batches held out from everything fitted, in (0, 1).
    ridge : float
        Regularisation of the whitening, ``λ = ridge · tr(XᵀX) / n``.
    min_rank : int
        Floor on every kept rank.

    After :meth:`decide_model`: ``output_change_`` (held out), ``output_change_fit_``,
    ``factors_`` (per layer: the kept triplets ``(U_r, s_r, Vh_r)``) and ``n_evaluations_``.
    """

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
        self.batches = as_batches(batches, owner, minimum=2)
        self.max_output_change = check_real(
            max_output_change, "max_output_change", owner, low=0.0, high=1.0
        )
        self.fit_batches, self.held_batches = split_batches(self.batches, holdout, owner)
        self.holdout = float(holdout)
        if not isinstance(whiten, bool):
            raise param_error("whiten", owner, "a bool", whiten)
        self.whiten = whiten
        self.ridge = check_real(ridge, "ridge", owner, low=0.0)
        self.min_rank = check_int(min_rank, "min_rank", owner, low=1)
        if not (base is None or isinstance(base, Mapping) or hasattr(base, "decide_model")):
            raise TypeError(
                f"The 'base' parameter of {owner} must be None, a mapping of layer name to "
                f"rank, or a model-level criterion. Got {type(base).__name__} instead."
            )
        self.base = base

    def _floors(self, model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, int]:
        if self.base is None:
            return {name: self.min_rank for name in layers}
        if isinstance(self.base, Mapping):
            chosen = dict(self.base)
        else:
            chosen = {k: d.rank for k, d in self.base.decide_model(model, layers).items()}
        return {k: max(int(v), self.min_rank) for k, v in chosen.items() if k in layers}

    def _prepare(
        self, model: nn.Module, layers: Mapping[str, nn.Module]
    ) -> tuple[list[_Layer], dict[str, RankDecision]]:
        floors = self._floors(model, layers)
        out: dict[str, RankDecision] = {}
        found: list[_Layer] = []
        for name, module in layers.items():
            adapter = get_adapter(module)
            if adapter is None:
                out[name] = RankDecision(0, f"unsupported layer type {type(module).__name__}")
                continue
            m, n = adapter.matrix_shape(module)
            current = adapter.current_rank(module) or min(m, n)
            highest = min(current - 1, (m * n - 1) // (m + n))
            lowest = floors.get(name)
            if lowest is None:
                out[name] = RankDecision(current, "base criterion keeps this layer")
            elif lowest > highest:
                out[name] = RankDecision(current, f"rank {lowest} would save no parameters")
            else:
                found.append(_Layer(name, module, adapter, current, lowest, highest))
        return found, out

    def decide_model(
        self, model: nn.Module, layers: Mapping[str, nn.Module] | Sequence[Any]
    ) -> dict[str, RankDecision]:
        """Ranks for ``layers`` of ``model``; the model is left as it was.

        ``layers`` is ``{name: module}`` or a sequence of objects with a ``name`` attribute
        (the walker's layer views), looked up in ``model``.
        """
        if not isinstance(layers, Mapping):
            layers = {view.name: model.get_submodule(view.name) for view in layers}
        cands, decisions = self._prepare(model, layers)
        self.factors_: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.n_evaluations_ = 0
        fit = OutputProbe(model, self.fit_batches)
        held = OutputProbe(model, self.held_batches)
        self._factor(model, cands)
        probe = OutputProbe(model, self.fit_batches[:_PROBE_BATCHES])
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
        for c, rank in zip(cands, path[j], strict=True):
            kept = f"rank {rank} of {c.current}" if rank < c.current else "all values"
            decisions[c.name] = RankDecision(
                rank,
                f"calibrated ({'whitened' if self.whiten else 'plain'} SVD): keeps {kept}; "
                f"output change {self.output_change_:.3g} held out ≤ {delta:g}",
            )
            if rank < c.current and c.factors is not None:
                self.factors_[c.name] = c.factors.truncate(rank)
        return decisions

    def _factor(self, model: nn.Module, cands: list[_Layer]) -> None:
        shapes = {c.name: (c.module, c.adapter.matrix_shape(c.module)[1]) for c in cands}
        grams = input_grams(model, shapes, self.fit_batches)
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


def _row(name: str, module: nn.Module, reason: str, action: str = "skipped") -> LayerPruneResult:
    adapter = get_adapter(module)
    shape = adapter.matrix_shape(module) if adapter is not None else (0, 0)
    rank = (adapter.current_rank(module) if adapter is not None else None) or min(shape)
    params = _own_params(module)
    split = adapter is not None and adapter.current_rank(module) is not None
    return LayerPruneResult(
        name,
        type(module).__name__,
        shape,
        action,
        rank,
        rank,
        None,
        math.nan,
        params,
        params,
        split,
        reason,
    )


def _apply(
    model: nn.Module,
    name: str,
    module: nn.Module,
    decision: RankDecision,
    criterion: Calibrated,
    dry_run: bool,
) -> LayerPruneResult:
    """Split one layer at its decided rank (or report it unchanged)."""
    adapter = get_adapter(module)
    triplets = criterion.factors_.get(name)
    row = _row(name, module, decision.reason, "unchanged")
    if adapter is None or triplets is None:
        return row
    if not dry_run:
        with torch.no_grad():
            set_submodule(model, name, adapter.rebuild(module, *triplets, split=True))
    return dataclasses.replace(
        row,
        action="split",
        rank_after=decision.rank,
        params_after=adapter.split_param_count(module, decision.rank),
        split=True,
    )


def calibrated_prune(
    model: nn.Module,
    calibration: Iterable[Any] | None,
    max_output_change: float,
    *,
    whiten: bool = False,
    holdout: float = 0.5,
    base: Any = None,
    min_rank: int | None = None,
    layers: Sequence[str] | str | None = None,
    min_dim: int = 32,
    min_params: int = 0,
    inplace: bool = False,
    dry_run: bool = False,
) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` as far as its held-out output change stays ≤ ``max_output_change``.

    What ``rmtprune.prune(model, calibration=..., max_output_change=...)`` runs: the ranks
    come from :class:`Calibrated` (see the module docstring); every changed layer is replaced
    by its square-root split.  ``report.output_change`` is the relative change of the first
    output measured on the held-out batches (``≤ max_output_change``), ``report.
    output_change_fit`` the same on the batches used for fitting.

    Parameters
    ----------
    model : torch.nn.Module
        Left untouched unless ``inplace`` (a dry run never changes it).
    calibration, max_output_change, whiten, holdout, base
        As in :class:`Calibrated`.
    min_rank : int, optional
        Floor on every kept rank (default 1).
    layers, min_dim, min_params
        Which layers are candidates (as in :func:`rmtprune.prune`).
    inplace, dry_run : bool
        As in :func:`rmtprune.prune`.

    Returns
    -------
    (model, PruneReport)
    """
    owner = "prune"
    if not isinstance(model, nn.Module):
        raise param_error("model", owner, "a torch.nn.Module", type(model).__name__)
    if calibration is None:
        raise ValueError(
            f"The 'max_output_change' parameter of {owner} needs calibration data to be "
            "measured on: pass calibration=batches (an iterable of model inputs). "
            "Got calibration=None instead."
        )
    criterion = Calibrated(
        as_batches(calibration, owner, minimum=2),
        max_output_change,
        base=base,
        whiten=whiten,
        holdout=holdout,
        min_rank=1 if min_rank is None else min_rank,
    )
    min_dim = check_int(min_dim, "min_dim", owner, low=1)
    min_params = check_int(min_params, "min_params", owner, low=0)
    target = model if (inplace or dry_run) else copy.deepcopy(model)
    before = sum(p.numel() for p in {id(p): p for p in target.parameters()}.values())
    chosen, skipped = candidate_layers(target, layers, min_dim=min_dim, min_params=min_params)
    decisions = criterion.decide_model(target, chosen)
    rows = [_row(name, mod, why) for name, (mod, why) in skipped.items()]
    rows += [
        _apply(target, name, mod, decisions[name], criterion, dry_run)
        for name, mod in chosen.items()
    ]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    rows.sort(key=lambda r: order.get(r.name, len(order)))
    after = before - sum(r.params_before - r.params_after for r in rows)
    changed = any(r.action == "split" for r in rows) and not dry_run
    report = PruneReport(
        tuple(rows),
        before,
        after,
        dry_run,
        changed,
        output_change=criterion.output_change_,
        output_change_fit=criterion.output_change_fit_,
        max_output_change=criterion.max_output_change,
    )
    return target, report
