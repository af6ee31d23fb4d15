"""The walker's first half: the selected weight layers of a model, as criteria see them.

:func:`collect` lists every weight layer a :class:`~rmtprune.pruning.selection.Select`
picks, with its eigenvalues and current rank when it can be pruned, or the reason
it cannot (unsupported type, tied weights, too small, non-finite, all zero).
:func:`candidate_layers` returns only the :class:`LayerView` of the eligible ones,
for code that chooses ranks itself (the experiments' SVD-energy baseline).

The rank of a layer is its factor rank (``LowRankLinear`` / ``LowRankConv2d``), else
its numerical rank: singular values above ``s_max · max(N · eps(dtype), 1e-6)`` (the
second term is the precision of the float64 Gram-matrix eigenvalues), never more
than a known rank passed in ``ranks``.

Example
-------
>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
>>> [(v.name, v.shape, v.rank) for v in candidate_layers(model)]
[('0', (48, 64), 48)]
>>> count_parameters(model)
3610
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
from torch import nn

from rmtprune._util.progress import track
from rmtprune._util.validation import check_int
from rmtprune.factorize.params import count_parameters
from rmtprune.factorize.peft_guard import peft_roles
from rmtprune.factorize.registry import get_adapter
from rmtprune.pruning._guards import (
    check_layer_names,
    frozen_parametrizations,
    prune_reason,
    weight_skip_reason,
)
from rmtprune.pruning.candidate import Candidate
from rmtprune.pruning.criteria import LayerView
from rmtprune.pruning.selection import Select, weight_layers
from rmtprune.rmt.spectrum import eigenvalues, numerical_rank

__all__ = ["Candidate", "candidate_layers", "collect", "count_parameters"]


def _shape_or_none(module: nn.Module) -> tuple[int, int]:
    """``(m, n)`` (docs/method.md section 1) of a module with a weight of 2+ dims, else (0, 0)."""
    adapter = get_adapter(module)
    if adapter is not None:
        try:
            return adapter.matrix_shape(module)
        except (ValueError, TypeError, AttributeError):
            pass
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
        return int(weight.shape[0]), int(weight[0].numel())
    return (0, 0)


def _candidate(
    name: str,
    module: nn.Module,
    reason: str,
    select: Select,
    known_rank: int | None,
    pruning: bool = False,
) -> Candidate:
    adapter = get_adapter(module)
    params = sum(p.numel() for p in module.parameters())
    if adapter is None or reason:
        shape = _shape_or_none(module)
        known = adapter.current_rank(module) if adapter is not None else None  # a factorized one
        return Candidate(name, module, adapter, shape, params, math.nan, known or 0, reason)
    m, n = adapter.matrix_shape(module)
    p = min(m, n)

    def make(rank: int, reason: str = "", view: LayerView | None = None) -> Candidate:
        return Candidate(name, module, adapter, (m, n), params, p / max(m, n), rank, reason, view)

    size = select.size_reason(m, n)
    if size:
        return make(p, size)
    unusable = weight_skip_reason(module)  # meta device, int or complex dtype
    if not unusable and pruning:  # analysed through the effective weight, never pruned
        unusable = prune_reason(module)
    if unusable:
        return make(p, unusable)
    matrix = adapter.weight_matrix(module)
    if not bool(torch.isfinite(matrix).all()):
        return make(p, "non-finite weights (NaN or Inf)")
    spectrum = eigenvalues(matrix)
    rank = numerical_rank(spectrum, max(m, n))
    factor_rank = adapter.current_rank(module)
    if factor_rank is not None:
        rank = min(factor_rank, rank)
    if known_rank is not None:
        rank = min(rank, known_rank)
    if rank == 0:
        return make(0, "all-zero weight")
    view = LayerView(name, module, (m, n), spectrum, rank, matrix)
    return make(rank, view=view)


def collect(
    model: nn.Module,
    select: Select,
    ranks: Mapping[str, int] | None = None,
    owner: str = "collect",
    progress: bool | None = None,
    *,
    pruning: bool = False,
) -> list[Candidate]:
    """Every weight layer ``select`` picks, in module order, eligible or with its reason.

    ``ranks`` holds known ranks of layers truncated earlier (see :func:`rmtprune.analyze`);
    each name must be a weight layer of ``model``.  ``progress`` shows a bar over the layers
    (default: on a terminal with tqdm installed).  Parametrized weights are read as the
    effective weight (parametrizations in eval mode); with ``pruning=True`` such layers
    are skipped with the reason, as pruning them would be undone by the parametrization.
    The adapters of a PEFT model (``lora_A``, ``lora_B``, ...) are skipped with the reason;
    a LoRA base layer is fitted alone, with a ``note`` saying so (and, when pruning, skipped
    where its merge could not stay exact): :func:`rmtprune.factorize.peft_guard.peft_roles`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter of {owner} must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    with torch.no_grad(), frozen_parametrizations(model):  # spectral norm's u, v not advanced
        found = weight_layers(model)
        names = [name for name, _, _ in found]
        chosen = set(select.choose(names))
        check_layer_names(ranks, "ranks", owner, names)
        known = dict(ranks or {})
        for name, value in known.items():
            check_int(value, f"ranks[{name!r}]", owner, low=1)
        picked = [entry for entry in found if entry[0] in chosen]
        peft = peft_roles(model, pruning=pruning)
        out = []
        for name, module, reason in track(picked, desc=f"{owner}: fitting", progress=progress):
            why = reason or peft.skip.get(name, "")
            c = _candidate(name, module, why, select, known.get(name), pruning)
            note = peft.note.get(name, "")
            out.append(dataclasses.replace(c, note=note) if note and c.view is not None else c)
        return out


def candidate_layers(
    model: nn.Module, select: Select | None = None, ranks: Mapping[str, int] | None = None
) -> list[LayerView]:
    """The :class:`LayerView` of every eligible layer ``select`` picks (default: ``Select()``)."""
    found = collect(model, Select() if select is None else select, ranks, "candidate_layers")
    return [c.view for c in found if c.view is not None]
