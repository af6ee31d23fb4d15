"""Asking a criterion: every candidate layer's decision, checked before anything changes.

:func:`decide_ranks` is the walker's call to a criterion (model-level ``decide_model`` or
per-layer ``decide``): each decision is checked — a :class:`RankDecision` keeps a rank in
``[1, layer.rank]`` with factors of the right shapes, a :class:`MaskDecision` (a criterion with
``produces_masks``, :class:`rmtprune.Sparsity`) is a bool mask of the layer's matrix view —
and a rank criterion never sees a sparse (masked) layer: it is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rmtprune.factorize.masks import mask_of
from rmtprune.pruning.criteria import (
    Criterion,
    Decision,
    LayerView,
    MaskDecision,
    ModelCriterion,
    RankDecision,
)

__all__ = ["decide_ranks"]

_MASKED = (
    "a sparse layer (masked by rmtprune.Sparsity): a low-rank factorization would fill its "
    "zeros; remove the mask first (rmtprune.factorize.masks.remove_mask)"
)


def _check_mask(decision: Any, view: LayerView, criterion: Any) -> MaskDecision:
    mask = decision.mask
    if decision.skip:
        return decision
    if mask is not None and (
        not isinstance(mask, torch.Tensor)
        or mask.dtype != torch.bool
        or tuple(mask.shape) != tuple(view.shape)
    ):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"The criterion {criterion!r} gave layer {view.name!r} a mask {got}; expected a "
            f"bool tensor of shape {view.shape} (the layer's matrix view)."
        )
    return decision


def _check_decision(decision: Any, view: LayerView, criterion: Any) -> Decision:
    if isinstance(decision, MaskDecision) and getattr(criterion, "produces_masks", False):
        return _check_mask(decision, view, criterion)
    if not isinstance(decision, RankDecision):
        raise TypeError(
            f"The criterion {criterion!r} must return a RankDecision for layer {view.name!r}. "
            f"Got {type(decision).__name__} instead."
        )
    if not decision.skip and not 1 <= decision.rank <= view.rank:
        raise ValueError(
            f"The criterion {criterion!r} kept rank {decision.rank!r} for layer {view.name!r}; "
            f"expected an int in [1, {view.rank}] (the layer's current rank)."
        )
    if decision.factors is not None and not decision.skip:
        u, s, vh = decision.factors
        m, n = view.shape
        if tuple(u.shape) != (m, decision.rank) or tuple(vh.shape) != (decision.rank, n):
            raise ValueError(
                f"The criterion {criterion!r} gave factors of shapes {tuple(u.shape)}, "
                f"{tuple(s.shape)}, {tuple(vh.shape)} for layer {view.name!r}; expected "
                f"({m}, {decision.rank}), ({decision.rank},), ({decision.rank}, {n})."
            )
    return decision


def decide_ranks(
    model: nn.Module, criterion: Criterion, views: Sequence[LayerView]
) -> dict[str, Decision]:
    """Ask ``criterion`` for the rank of every layer in ``views`` (model-level or per layer).

    A model-level criterion (``decide_model``) sees all layers at once; a layer it
    leaves out keeps its rank.  Every decision is checked: a rank in ``[1, layer.rank]``,
    or (a criterion with ``produces_masks``, :class:`rmtprune.Sparsity`) a mask of the
    layer's shape.  A rank criterion never sees a sparse (masked) layer: it is skipped.
    """
    if not getattr(criterion, "produces_masks", False):
        masked = {
            v.name: RankDecision(v.rank, _MASKED, skip=True)
            for v in views
            if v.module is not None and mask_of(v.module) is not None
        }
        if masked:
            rest = [v for v in views if v.name not in masked]
            return {**masked, **decide_ranks(model, criterion, rest)}
    if isinstance(criterion, ModelCriterion):
        given = dict(criterion.decide_model(model, list(views)))
        unknown = sorted(set(given) - {v.name for v in views})
        if unknown:
            raise ValueError(
                f"The criterion {criterion!r} decided ranks for {unknown}, which are not "
                f"candidate layers. Candidates: {[v.name for v in views]}"
            )
        why = "not decided by the criterion: left as it is"
        out = {v.name: given.get(v.name) or RankDecision(v.rank, why) for v in views}
    else:
        out = {v.name: criterion.decide(v) for v in views}
    return {v.name: _check_decision(out[v.name], v, criterion) for v in views}
