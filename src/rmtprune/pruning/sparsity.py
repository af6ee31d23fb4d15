"""Sparsity: a criterion that removes single weights instead of singular values.

:class:`Sparsity` plugs into the same walker as the rank criteria
(``rmtprune.prune(model, criterion=rmtprune.Sparsity(0.5), select=...)``): it is a
model-level criterion whose decisions are :class:`MaskDecision` objects — a boolean mask of
the layer's ``m × n`` matrix view (docs/method.md section 1; ``True`` = kept) — which the
walker applies with :func:`rmtprune.factorize.masks.apply_mask`.  The layer stays the same
module; its masked entries stay zero through training (every forward pass and every
``state_dict`` re-applies the mask), and :func:`rmtprune.save` stores only the kept values and
a bitmask.

Scores (the lowest are removed first):

* ``"magnitude"``: ``|W_ij|``;
* ``"wanda"`` (Sun et al., 2024): ``|W_ij| · ‖X_j‖₂``, the weight times the norm of the input
  it multiplies over the calibration tokens (for an embedding: ``|W_ij| · √count_i``, the
  row looked up ``count_i`` times).  Needs calibration batches: ``Sparsity(...,
  calibration=batches)`` or ``prune(..., calibration=batches)``.

Patterns: ``"unstructured"`` (any entries), or ``"N:M"`` (``"2:4"``: in every group of ``M``
consecutive entries of a row of the matrix view — along the input dimension, the reduction
dimension of the product — exactly ``N`` are kept; the target is then ``1 − N/M``).

Allocation of the total (unstructured): ``"uniform"`` — every layer loses exactly
``round(target · numel)`` weights; ``"global"`` — one threshold over the scores of all
selected layers, the total exactly ``round(target · Σ numel)``; a mapping of layer name to
fraction; or an allocation rule object with ``fractions(layers, target) -> {name: fraction}``
(:mod:`rmtprune.pruning.allocation`).  Counts include the zeros of an earlier mask: a layer
masked before keeps its zeros (they score lowest), so a growing schedule never revives a
weight.

Example
-------
>>> import torch
>>> import rmtprune
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
>>> sparse, report = rmtprune.prune(model, criterion=rmtprune.Sparsity(0.5))
>>> row = report["0"]
>>> row.action, row.nonzero_before - row.nonzero_after
('sparsified', 1024)
>>> int((sparse[0].weight == 0).sum())
1024
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune._util.validation import check_real, param_error
from rmtprune.factorize.masks import mask_of
from rmtprune.factorize.registry import get_adapter
from rmtprune.pruning.criteria import LayerView, MaskDecision
from rmtprune.pruning.outputs import as_batches
from rmtprune.pruning.whitening import input_grams, vocab_size

__all__ = ["MaskDecision", "Sparsity", "matrix_mask", "weight_mask", "without_lowest"]

_SCORES = ("magnitude", "wanda")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def _index_map(module: nn.Module, shape: tuple[int, int]) -> torch.Tensor:
    """For each weight entry (in the weight's shape), its flat index in the matrix view."""
    adapter = get_adapter(module)
    m, n = shape
    index = torch.arange(m * n).reshape(m, n)
    return adapter.matrix_to_weight(module, index)  # type: ignore[union-attr]


def matrix_mask(module: nn.Module, shape: tuple[int, int], mask: torch.Tensor) -> torch.Tensor:
    """A weight-shaped mask of ``module`` in the ``m × n`` matrix view."""
    index = _index_map(module, shape).reshape(-1)
    out = torch.empty(shape[0] * shape[1], dtype=torch.bool)
    out[index] = mask.detach().reshape(-1).to("cpu", torch.bool)
    return out.reshape(shape)


def weight_mask(module: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """An ``m × n`` matrix-view mask of ``module`` in the shape of its weight."""
    adapter = get_adapter(module)
    return adapter.matrix_to_weight(module, mask.to(torch.bool))  # type: ignore[union-attr]


def _parse_pattern(pattern: Any) -> tuple[int, int] | None:
    """``None`` for "unstructured", else ``(N, M)``."""
    if pattern == "unstructured":
        return None
    match = _NM.match(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise param_error("pattern", "Sparsity", "'unstructured' or 'N:M' (e.g. '2:4')", pattern)
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(
            f"The 'pattern' parameter of Sparsity must be 'N:M' with 0 < N < M. Got {pattern!r}."
        )
    return n, m


class Sparsity:
    """Model-level criterion: set a fraction ``target`` of the selected layers' weights to zero.

    Parameters
    ----------
    target : float, optional
        Fraction in [0, 1) of the weights (of the selected layers' weight matrices) removed.
        With ``pattern="N:M"`` it is ``1 − N/M`` and may be left out.
    allocation : "uniform", "global", mapping, or allocation rule
        How the total is spread over layers (module doc).  ``"global"`` compares the scores
        of different layers directly (sensible for magnitudes of similar layers).
    pattern : "unstructured" or "N:M"
        Which entries may be removed together (module doc).
    score : "magnitude" or "wanda"
        What is removed first (module doc).
    calibration : iterable of model inputs, optional
        Batches for ``score="wanda"`` (tensors, tuples or dicts, as in :func:`rmtprune.prune`).

    After :meth:`decide_model`: ``fractions_`` (the fraction of each layer removed).
    """

    produces_masks = True

    def __init__(
        self,
        target: float | None = None,
        *,
        allocation: Any = "uniform",
        pattern: str = "unstructured",
        score: str = "magnitude",
        calibration: Iterable[Any] | None = None,
    ) -> None:
        owner = "Sparsity"
        self.nm = _parse_pattern(pattern)
        self.pattern = pattern
        if self.nm is not None:
            implied = 1.0 - self.nm[0] / self.nm[1]
            if target is not None and abs(float(target) - implied) > 1e-12:
                raise ValueError(
                    f"The 'target' parameter of Sparsity is {target!r}, but pattern={pattern!r} "
                    f"removes exactly {implied:g}; leave target out or give {implied:g}."
                )
            target = implied
            if allocation != "uniform":
                raise ValueError(
                    "The 'allocation' parameter of Sparsity must be 'uniform' with an N:M "
                    f"pattern (every group keeps N of M). Got {allocation!r} instead."
                )
        if target is None:
            raise TypeError("Sparsity needs a 'target' (a fraction in [0, 1)) without N:M")
        self.target = check_real(target, "target", owner, low=0.0, high=1.0, high_open=True)
        if not (
            allocation in ("uniform", "global")
            or isinstance(allocation, Mapping)
            or hasattr(allocation, "fractions")
        ):
            raise param_error(
                "allocation",
                owner,
                "'uniform', 'global', a mapping of layer name to fraction, or an allocation "
                "rule (an object with fractions(layers, target))",
                allocation,
            )
        if isinstance(allocation, Mapping):
            allocation = {
                str(k): check_real(
                    v, f"allocation[{k!r}]", owner, low=0.0, high=1.0, high_open=True
                )
                for k, v in allocation.items()
            }
        self.allocation = allocation
        if score not in _SCORES:
            raise param_error("score", owner, "'magnitude' or 'wanda'", score)
        self.score = score
        self.calibration = None if calibration is None else as_batches(calibration, owner)

    def __repr__(self) -> str:
        alloc = self.allocation if isinstance(self.allocation, str) else type(self.allocation)
        return (
            f"Sparsity(target={self.target:g}, allocation={alloc!r}, pattern={self.pattern!r}, "
            f"score={self.score!r})"
        )

    @property
    def layerwise(self) -> bool:
        """Whether each layer's mask depends on that layer alone: magnitude scores with an
        N:M pattern, ``"uniform"`` allocation or a mapping of layer name to fraction.  Then a
        checkpoint can be sparsified one layer at a time (``rmtprune prune`` streams it) and
        the masks are those of the whole model; ``"global"``, an allocation rule and Wanda
        scores compare or measure layers together."""
        per_layer = self.nm is not None or isinstance(self.allocation, (str, Mapping))
        return self.score == "magnitude" and per_layer and self.allocation != "global"

    def with_calibration(self, calibration: Iterable[Any], *, replace: bool = False) -> Sparsity:
        """The same criterion with calibration batches (what ``prune(calibration=)`` gives);
        batches given to the criterion itself win unless ``replace``."""
        if self.calibration is not None and not replace:
            return self
        out = self._copy()
        out.calibration = as_batches(calibration, "Sparsity")
        return out

    def with_target(self, target: float) -> Sparsity:
        """The same rule at another target (unstructured patterns only)."""
        if self.nm is not None:
            raise ValueError(f"an N:M pattern ({self.pattern}) has a fixed target")
        out = self._copy()
        out.target = check_real(target, "target", "Sparsity", low=0.0, high=1.0, high_open=True)
        return out

    def with_bulk_keep(self, bulk_keep: float) -> Sparsity:
        """For :class:`rmtprune.SpectralPruner` schedules: ``bulk_keep = f`` removes
        ``(1 − f) · target`` (``f`` from 1 to 0 ramps the sparsity up to ``target``)."""
        if self.nm is not None:
            return self
        return self.with_target(self.target * (1.0 - float(bulk_keep)))

    def _copy(self) -> Sparsity:
        out = object.__new__(Sparsity)
        out.__dict__.update(self.__dict__)
        return out

    # -- scores ---------------------------------------------------------------------------

    def layer_scores(
        self, model: nn.Module, layers: Sequence[LayerView]
    ) -> dict[str, torch.Tensor | str]:
        """Each layer's ``m × n`` float64 scores (an earlier mask's zeros at ``-inf``), or why
        the layer cannot be sparsified."""
        out: dict[str, torch.Tensor | str] = {}
        norms = self._input_norms(model, layers) if self.score == "wanda" else {}
        for view in layers:
            module = view.module if view.module is not None else model.get_submodule(view.name)
            why = _unsupported(module, view)
            if why is not None:
                out[view.name] = why
                continue
            assert view.matrix is not None
            scores = view.matrix.detach().to("cpu", torch.float64).abs()
            if self.score == "wanda":
                norm = norms.get(view.name)
                if norm is None:
                    out[view.name] = "its inputs could not be read for Wanda scores"
                    continue
                if vocab_size(module) is not None:  # an embedding: rows looked up
                    scores = scores * norm.sqrt().reshape(-1, 1)
                else:
                    scores = scores * norm.sqrt().reshape(1, -1)
            old = mask_of(module)
            if old is not None:
                kept = matrix_mask(module, view.shape, old)
                scores = scores.masked_fill(~kept, -math.inf)
            out[view.name] = scores
        return out

    def _input_norms(
        self, model: nn.Module, layers: Sequence[LayerView]
    ) -> dict[str, torch.Tensor | None]:
        if self.calibration is None:
            raise ValueError(
                "Sparsity(score='wanda') needs calibration data: pass calibration=batches "
                "to Sparsity or to prune."
            )
        named = {}
        for view in layers:
            module = view.module if view.module is not None else model.get_submodule(view.name)
            named[view.name] = (module, view.shape[1])
        return input_grams(model, named, self.calibration, diagonal=True)

    # -- decisions ------------------------------------------------------------------------

    def fractions(self, layers: Sequence[LayerView]) -> dict[str, float]:
        """The fraction of each layer removed under a per-layer allocation."""
        if isinstance(self.allocation, Mapping):
            return {v.name: self.allocation[v.name] for v in layers if v.name in self.allocation}
        if self.allocation == "uniform":
            return {v.name: self.target for v in layers}
        given = dict(self.allocation.fractions(list(layers), self.target))
        return {
            k: check_real(v, f"fraction of {k!r}", "the allocation rule", low=0.0, high=1.0)
            for k, v in given.items()
        }

    def decide_model(
        self, model: nn.Module, layers: Sequence[LayerView]
    ) -> dict[str, MaskDecision]:
        """The mask of every candidate layer (a layer the allocation leaves out is unchanged)."""
        views = list(layers)
        return self.decide_scores(views, self.layer_scores(model, views))

    def decide_scores(
        self, views: Sequence[LayerView], scores: Mapping[str, torch.Tensor | str]
    ) -> dict[str, MaskDecision]:
        """:meth:`decide_model` from scores computed before (:meth:`layer_scores`): a search
        over the level scores the layers once."""
        out: dict[str, MaskDecision] = {
            name: MaskDecision(None, why, skip=True)
            for name, why in scores.items()
            if isinstance(why, str)
        }
        usable = [v for v in views if isinstance(scores[v.name], torch.Tensor)]
        if self.nm is not None:
            for v in usable:
                out[v.name] = self._nm_decision(scores[v.name], v)  # type: ignore[arg-type]
        elif self.allocation == "global":
            out.update(self._global(usable, scores))  # type: ignore[arg-type]
        else:
            fractions = self.fractions(usable)
            sizes = {v.name: v.shape[0] * v.shape[1] for v in usable if v.name in fractions}
            counts = {k: _count(f, sizes[k]) for k, f in fractions.items() if k in sizes}
            if hasattr(self.allocation, "fractions"):  # a rule: the total is exact
                counts = _apportion(fractions, sizes, _count(self.target, sum(sizes.values())))
            for v in usable:
                if v.name not in counts:
                    out[v.name] = MaskDecision(None, "not in the allocation: left as it is")
                    continue
                s = scores[v.name]
                assert isinstance(s, torch.Tensor)
                out[v.name] = _lowest_removed(s, counts[v.name], self)
        self.fractions_ = {
            name: 1.0 - float(d.mask.float().mean())
            for name, d in out.items()
            if d.mask is not None
        }
        return out

    def _global(
        self, views: Sequence[LayerView], scores: Mapping[str, torch.Tensor]
    ) -> dict[str, MaskDecision]:
        flat = torch.cat([scores[v.name].reshape(-1) for v in views]) if views else None
        if flat is None:
            return {}
        keep = without_lowest(flat, _count(self.target, flat.numel()))
        out, start = {}, 0
        for v in views:
            size = scores[v.name].numel()
            mask = keep[start : start + size].reshape(scores[v.name].shape)
            start += size
            removed = size - int(mask.sum())
            why = (
                f"global {self.score} threshold: {removed:,} of {size:,} weights removed "
                f"({100 * removed / size:.1f} %; {100 * self.target:g} % of all selected)"
            )
            out[v.name] = MaskDecision(mask, why)
        return out

    def _nm_decision(self, scores: torch.Tensor, view: LayerView) -> MaskDecision:
        assert self.nm is not None
        n_keep, m_group = self.nm
        rows, cols = scores.shape
        if cols % m_group:
            why = f"{self.pattern}: the layer's {cols} inputs are not a multiple of {m_group}"
            return MaskDecision(None, why, skip=True)
        groups = scores.reshape(rows, cols // m_group, m_group)
        order = torch.argsort(groups, dim=-1, descending=True, stable=True)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, order[..., :n_keep], True)
        keep &= torch.isfinite(groups)  # an earlier mask's zeros stay zeros
        why = f"{self.pattern} by {self.score}: {n_keep} of every {m_group} inputs kept"
        return MaskDecision(keep.reshape(rows, cols), why)


def _count(fraction: float, size: int) -> int:
    return min(size, math.floor(fraction * size + 0.5))


def _apportion(
    fractions: Mapping[str, float], sizes: Mapping[str, int], total: int
) -> dict[str, int]:
    """Integer counts near ``fraction · size`` adding up to ``total`` (largest remainders)."""
    exact = {k: min(1.0, max(0.0, fractions[k])) * sizes[k] for k in sizes}
    counts = {k: math.floor(x) for k, x in exact.items()}
    order = sorted(sizes, key=lambda k: counts[k] - exact[k])  # largest remainder first
    left = total - sum(counts.values())
    step = 1 if left > 0 else -1
    i = 0
    while left and i < 4 * len(order) + 4:
        k = order[i % len(order)] if step > 0 else order[::-1][i % len(order)]
        if 0 <= counts[k] + step <= sizes[k]:
            counts[k] += step
            left -= step
        i += 1
    return counts


def without_lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of ``flat``'s entries, all kept but the ``k`` lowest (ties in index order).

    The entries a stable ascending sort puts first, found without sorting: the ``k``-th
    smallest value ``t`` (``numpy.partition``, linear time), every entry below ``t``, and the first
    entries equal to ``t`` in index order up to ``k``.  With a NaN the sort itself decides.

    >>> without_lowest(torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0]), 2).tolist()
    [True, False, True, False, True]
    """
    n = flat.numel()
    k = max(0, min(int(k), n))
    if k == 0 or bool(torch.isnan(flat).any()):  # the partition's order of NaN: not the sort's
        keep = torch.ones(n, dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[:k]] = False
        return keep
    values = flat.detach().cpu().numpy()
    t = np.partition(values, k - 1)[k - 1]
    keep = torch.from_numpy(values > t)  # every entry at or below t removed ...
    equal = np.flatnonzero(values == t)
    below = n - int(keep.sum()) - len(equal)
    keep[torch.from_numpy(equal[k - below :])] = True  # ... but the ties past the k-th
    return keep


def _lowest_removed(scores: torch.Tensor, k: int, crit: Sparsity) -> MaskDecision:
    """Remove the ``k`` lowest scores (an earlier mask's zeros first: they are ``-inf``)."""
    flat = scores.reshape(-1)
    k = max(k, int(torch.isinf(flat).sum()))  # never revive a removed weight
    keep = without_lowest(flat, k)
    why = (
        f"{crit.score}: {k:,} of {flat.numel():,} weights removed ({100 * k / flat.numel():.1f} %)"
    )
    return MaskDecision(keep.reshape(scores.shape), why)


def _unsupported(module: nn.Module, view: LayerView) -> str | None:
    adapter = get_adapter(module)
    dense = adapter is not None and hasattr(adapter, "matrix_to_weight")
    if not dense or adapter.current_rank(module) is not None:  # type: ignore[union-attr]
        return "a factorized layer: sparsity applies to dense weight layers"
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.numel() != view.shape[0] * view.shape[1]:
        return "its weight is not a parameter holding the matrix (computed from other tensors)"
    if view.matrix is None:
        return "its weight matrix could not be read"
    return None
