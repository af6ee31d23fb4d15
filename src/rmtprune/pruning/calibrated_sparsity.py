"""The calibrated guard over a sparsity level: :class:`rmtprune.Calibrated` with a
:class:`rmtprune.Sparsity` base.

The base's scores are computed once (Wanda's input norms on the fit batches); the guard then
bisects the level ``t ≤ target`` — the base's allocation scaled by ``t / target`` — on the
measured output change of the fit batches, in steps of ``target / 1024``, and backs off on the
held-out batches until their change is ≤ δ.  Masks are applied to the weights in place for each
measurement and the weights restored afterwards.  An N:M pattern has one level and is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rmtprune.pruning.criteria import LayerView
from rmtprune.pruning.outputs import OutputProbe
from rmtprune.pruning.rank_search import first_passing
from rmtprune.pruning.sparsity import weight_mask

__all__ = ["decide_masks"]


def decide_masks(guard: Any, model: nn.Module, views: Sequence[LayerView]) -> dict[str, Any]:
    """A sparsity ``base`` (:class:`rmtprune.Sparsity`): the highest level ``t ≤ target``
    (the base's allocation scaled by ``t / target``) whose output change is ≤ δ, bisected
    on the fit batches to ``target / 1024`` and backed off on the held-out ones."""
    base = guard.base
    if base.nm is not None:
        raise ValueError(
            f"Calibrated cannot search an N:M Sparsity base ({base.pattern}): the pattern "
            "has one level. Measure it with prune(model, criterion=Sparsity(pattern=...), "
            "calibration=batches) instead."
        )
    if base.score == "wanda":  # scores from the fit batches only, never the held-out ones
        base = base.with_calibration(guard.fit_batches, replace=True)
    guard.n_evaluations_ = 0
    fit = OutputProbe(model, guard.fit_batches, numbers=guard.fit_numbers)
    held = OutputProbe(model, guard.held_batches, numbers=guard.held_numbers)
    scores = base.layer_scores(model, views)
    cache: dict[tuple[int, int], float] = {}
    steps = 1024

    def decide(k: int) -> dict[str, Any]:
        return base.with_target(base.target * k / steps).decide_scores(views, scores)

    def change(k: int, probe: OutputProbe, which: int) -> float:
        if (k, which) not in cache:
            cache[(k, which)] = _evaluate(guard, model, decide(k), probe)
        return cache[(k, which)]

    delta = guard.max_output_change
    # levels from the highest (k = 0 ↔ level = target) to none (k = steps ↔ 0)
    k = first_passing(0, steps, lambda j: change(steps - j, fit, 0) <= delta)
    if change(steps - k, held, 1) > delta:
        k = first_passing(k + 1, steps, lambda j: change(steps - j, held, 1) <= delta)
    level = steps - k
    guard.output_change_ = change(level, held, 1) if level else 0.0
    guard.output_change_fit_ = change(level, fit, 0) if level else 0.0
    guard.level_ = base.target * level / steps
    out = decide(level)
    for name, d in out.items():
        if d.mask is not None:
            out[name] = dataclasses.replace(
                d,
                reason=(
                    f"calibrated: level {guard.level_:.3g} of {base.target:g}, {d.reason}; "
                    f"output change {guard.output_change_:.3g} held out "
                    f"≤ {guard.max_output_change:g}"
                ),
            )
    return out


def _evaluate(
    guard: Any, model: nn.Module, decisions: Mapping[str, Any], probe: OutputProbe
) -> float:
    """Measured output change with the masks of ``decisions`` applied (then undone)."""
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, d in decisions.items():
                if d.mask is None:
                    continue
                weight = _weight(model, name)
                saved[name] = weight.detach().clone()
                keep = weight_mask(model.get_submodule(name), d.mask).to(weight.device)
                weight.masked_fill_(~keep, 0)
        guard.n_evaluations_ += 1
        return probe.change(model)
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                _weight(model, name).copy_(value)


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    weight = model.get_submodule(name).weight
    assert isinstance(weight, torch.Tensor)
    return weight
