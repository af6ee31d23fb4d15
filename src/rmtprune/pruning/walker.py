"""The model walker: find a model's weight layers, ask a criterion for ranks, prune.

Three roles are kept apart (after Torch-Pruning): the rank criterion
(:mod:`rmtprune.pruning.criteria`; default the paper's :class:`MPCriterion`), the
surgery per layer type (adapters in :mod:`rmtprune.factorize.registry`), and this
walker, which visits the layers a :class:`rmtprune.Select` picks, asks the other
two, and writes the report.  A criterion with ``decide_model`` sees all candidate
layers at once; one with ``decide`` is asked layer by layer.

Rank-deficient layers
---------------------
A layer that is already factorised at rank ``r`` (a ``LowRankLinear`` /
``LowRankConv2d``), or a dense layer truncated earlier, has ``p − r`` exact
zero eigenvalues that are not noise.  Fitting them as bulk would underestimate
``sigma2`` and make every kept value a spike, so the layer would never prune
again.  The walker therefore passes the layer's rank to
:meth:`rmtprune.BEMA.fit_eigenvalues`, which treats the ``r`` non-zero values as
the top ``r`` order statistics of an MP sample of size ``p`` (quantile levels
keep their meaning ``k/p``).  The rank of a factorised layer is its factor
rank; for a dense layer it is the numerical rank: singular values above
``s_max · max(N · eps(dtype), 1e-6)`` (the second term is the precision of the
float64 Gram-matrix eigenvalues used for the spectrum).  The kept rank of a
later pruning step is ``k + ⌊f · (p − k)⌋`` with ``p = min(m, n)`` of the layer,
so ``f`` is always the fraction of the original bulk and never compounds, and a
layer never grows back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from rmtprune._util.progress import track
from rmtprune._util.validation import param_error
from rmtprune.factorize.masks import apply_mask, masked_layers, nonzero_count
from rmtprune.pruning._guards import apply_rank, copy_model, frozen_parametrizations
from rmtprune.pruning.calibration import (
    calibrated_from_keywords,
    held_out_probe,
    with_output_change,
)
from rmtprune.pruning.criteria import (
    Criterion,
    Decision,
    FitCutoff,
    MaskDecision,
    MPCriterion,
    SpectralFit,
    kept_rank,
)
from rmtprune.pruning.decisions import decide_ranks
from rmtprune.pruning.layers import Candidate, collect, count_parameters
from rmtprune.pruning.options import resolve_criterion, resolve_select, warn_legacy
from rmtprune.pruning.outputs import as_batches
from rmtprune.pruning.report import LayerAnalysis, LayerPruneResult, ModelReport, PruneReport
from rmtprune.pruning.selection import DEFAULT_MIN_DIM, DEFAULT_MIN_PARAMS, Select, weight_layers
from rmtprune.pruning.sparsity import weight_mask

__all__ = [
    "DEFAULT_MIN_DIM",
    "DEFAULT_MIN_PARAMS",
    "FitCutoff",
    "SplitMode",
    "analyze",
    "count_parameters",
    "decide_ranks",
    "kept_rank",
    "prune",
]

SplitMode = Literal["auto", True, False]


def _analysis_row(c: Candidate, criterion: MPCriterion) -> LayerAnalysis:
    head = (c.name, c.layer_type, c.shape, c.params, c.ratio, c.rank)
    if c.view is None:
        return LayerAnalysis(*head, "skipped", c.reason)
    fit = criterion.fit(c.view)
    if isinstance(fit, str):
        return LayerAnalysis(*head, "skipped", fit)
    reason = "" if fit.mp_like else criterion.not_mp_reason(c.view, fit)
    reason = "; ".join(part for part in (reason, c.note) if part)  # a LoRA base: fitted alone
    return LayerAnalysis(*head, "ok", reason, fit, eigenvalues=c.view.eigenvalues)


def analyze(
    model: nn.Module,
    *,
    criterion: MPCriterion | None = None,
    select: Select | None = None,
    ranks: Mapping[str, int] | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    fit_cutoff: FitCutoff | None = None,
    layers: Sequence[str] | str | None = None,
    min_dim: int | None = None,
    min_params: int | None = None,
    progress: bool | None = None,
) -> ModelReport:
    """Fit the Marchenko–Pastur law to every weight layer of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any model; it is not modified.
    criterion : MPCriterion, optional
        Its ``alpha``, ``beta`` (BEMA) and ``fit_cutoff`` (the fit test) are used;
        default ``MPCriterion()``.
    select : Select, optional
        Which layers to look at (names or patterns to include and exclude,
        ``min_dim``, ``min_params``); default ``Select()``.  Layers below a size
        floor are reported as skipped.
    ranks : mapping of layer name to int, optional
        Known ranks of layers truncated earlier.  A dense layer truncated in
        place and trained further regrows small singular values, so its
        numerical rank no longer shows the truncation; with its rank given, only
        the top ``rank`` eigenvalues are fitted and pruning never keeps more.
        :class:`rmtprune.SpectralPruner` passes its own record.
    alpha, beta, fit_cutoff, layers, min_dim, min_params
        Deprecated (each emits a ``DeprecationWarning``): the older spelling of
        ``criterion=MPCriterion(alpha=..., beta=..., fit_cutoff=...)`` and
        ``select=Select(include=layers, min_dim=..., min_params=...)``; not to be
        combined with ``criterion`` / ``select``.
    progress : bool or None
        Progress bar over the layers (default: when stderr is a terminal and tqdm is installed).

    Returns
    -------
    ModelReport
        One row per weight layer, skipped layers with their reason; fitted rows
        carry their eigenvalues for :func:`rmtprune.plot_spectrum`.

    Examples
    --------
    >>> import torch
    >>> import rmtprune
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(400, 200), torch.nn.ReLU())
    >>> report = rmtprune.analyze(model)
    >>> row = report["0"]
    >>> row.status, row.mp_like, row.n_spikes
    ('ok', True, 0)
    """
    legacy = {"alpha": alpha, "beta": beta, "fit_cutoff": fit_cutoff}
    crit = resolve_criterion(criterion, legacy, "analyze")
    if not isinstance(crit, MPCriterion):
        raise TypeError(
            "The 'criterion' parameter of analyze must be an MPCriterion (analyze reports "
            f"the MP fit). Got {type(crit).__name__} instead."
        )
    sizes = {"layers": layers, "min_dim": min_dim, "min_params": min_params}
    chosen = resolve_select(select, sizes, "analyze")
    warn_legacy("analyze", {**legacy, **sizes})
    found = collect(model, chosen, ranks, "analyze", progress)
    rows = tuple(_analysis_row(c, crit) for c in found)
    cutoff = crit.fit_cutoff if not isinstance(crit.fit_cutoff, Mapping) else math.nan
    return ModelReport(rows, crit.alpha, crit.beta, float(cutoff))


def _mask_row(
    row: dict[str, Any], c: Candidate, decision: MaskDecision, *, dry_run: bool
) -> LayerPruneResult:
    """Apply (or, in a dry run, count) a sparsity mask on layer ``c``."""
    assert decision.mask is not None
    before = nonzero_count(c.module)
    kept = weight_mask(c.module, decision.mask)
    weight = c.module.weight
    assert isinstance(weight, torch.Tensor)
    zeroed = int(((weight.detach() != 0) & ~kept.to(weight.device)).sum())
    after = before - zeroed
    if zeroed == 0:
        return _kept_row(
            {**row, "nonzero_before": before, "nonzero_after": before},
            c,
            row["rank_before"],
            "unchanged",
            decision.reason + "; no nonzero weight removed",
        )
    if not dry_run:
        apply_mask(c.module, kept)
        after = nonzero_count(c.module)
    return LayerPruneResult(
        **row,
        action="sparsified",
        rank_after=row["rank_before"],
        params_after=c.params,
        split=False,
        reason=decision.reason,
        nonzero_before=before,
        nonzero_after=after,
    )


def _kept_row(
    row: dict[str, Any], c: Candidate, rank: int, action: str, reason: str
) -> LayerPruneResult:
    """The result of a layer left as it is (``unchanged`` or ``skipped``)."""
    was_split = c.adapter is not None and c.adapter.current_rank(c.module) is not None
    return LayerPruneResult(
        **row,
        action=action,
        rank_after=rank,
        params_after=c.params,
        split=was_split,
        reason=reason,
    )


def _prune_row(
    c: Candidate,
    decision: Decision | None,
    *,
    bulk_keep: float,
    split: SplitMode,
    dry_run: bool,
    model: nn.Module,
) -> LayerPruneResult:
    m, n = c.shape
    rank = c.rank if c.rank else min(m, n)
    fit = getattr(decision, "fit", None) or SpectralFit()
    row: dict[str, Any] = {
        "name": c.name,
        "layer_type": c.layer_type,
        "shape": c.shape,
        "bulk_keep": bulk_keep,
        "params_before": c.params,
        "fit": fit,
        "rank_before": rank,
    }
    if isinstance(decision, MaskDecision) and not decision.skip and decision.mask is not None:
        return _mask_row(row, c, decision, dry_run=dry_run)
    if isinstance(decision, MaskDecision):
        action = "skipped" if decision.skip else "unchanged"
        return _kept_row(row, c, rank, action, decision.reason)
    if decision is None or decision.skip or decision.rank >= rank:
        action = "unchanged" if decision is not None and not decision.skip else "skipped"
        return _kept_row(row, c, rank, action, c.reason if decision is None else decision.reason)
    assert c.adapter is not None
    r = decision.rank
    do_split = (r * (m + n) < m * n) if split == "auto" else bool(split)
    predicted = (
        c.adapter.split_param_count(c.module, r)
        if do_split
        else c.adapter.dense_param_count(c.module, r)
    )
    if not dry_run:
        no_effect = apply_rank(c, r, do_split, model, decision.factors)
        if no_effect is not None:
            return _kept_row(row, c, rank, "skipped", no_effect)
    return LayerPruneResult(
        **row,
        action="split" if do_split else "truncated",
        rank_after=r,
        params_after=predicted,
        split=do_split,
        reason=decision.reason,
    )


def prune(
    model: nn.Module,
    *,
    criterion: Criterion | None = None,
    select: Select | None = None,
    split: SplitMode = "auto",
    inplace: bool = False,
    dry_run: bool = False,
    ranks: Mapping[str, int] | None = None,
    bulk_keep: float | None = None,
    min_rank: int | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    fit_cutoff: FitCutoff | None = None,
    layers: Sequence[str] | str | None = None,
    min_dim: int | None = None,
    min_params: int | None = None,
    progress: bool | None = None,
    calibration: Iterable[Any] | None = None,
    max_output_change: float | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Truncate every selected layer to the rank its criterion keeps (docs/method.md section 4).

    The default criterion is the paper's rule, :class:`MPCriterion`: fit BEMA, test
    the fit, and if the bulk is MP-like keep the ``k`` spikes plus
    ``⌊bulk_keep · (p − k)⌋`` of the largest bulk singular values (at least
    ``min_rank``).  With ``split="auto"`` a layer is replaced by two factors
    (``r × n`` then ``m × r``, the bias on the second) only when
    ``r (m + n) < m n``; otherwise it keeps one layer of rank ``r`` (in place, so
    optimizer state of that parameter survives).

    Parameters
    ----------
    model : torch.nn.Module
        The model.  With ``inplace=False`` (default) it is left untouched and a
        pruned copy is returned.
    criterion : optional
        How many singular values each layer keeps (:mod:`rmtprune.pruning.criteria`):
        ``MPCriterion(...)`` (default), ``GavishDonohoCriterion()``, ``Energy(0.9)``,
        ``FixedRank(r)``, ``FixedRatio(q)``, ``Calibrated(batches, δ, ...)`` (ranks from
        calibration data under a limit on the output change), or any object with
        ``decide(layer)`` or ``decide_model(model, layers)``.
    select : Select, optional
        Which layers (:class:`rmtprune.Select`); default ``Select()``.
    split : {"auto", True, False}
        Split rule; ``True`` always splits, ``False`` never does.  A criterion that zeroes
        weights (``Sparsity``) never splits: ``True`` is then refused.
    inplace : bool
        Modify ``model`` itself.
    dry_run : bool
        Change nothing (weights bitwise identical) and report exactly what a
        real run would do.
    ranks : mapping of layer name to int, optional
        Known ranks of layers truncated earlier (as in :func:`analyze`).
    bulk_keep, min_rank, alpha, beta, fit_cutoff, layers, min_dim, min_params
        Deprecated (each emits a ``DeprecationWarning``): the older spelling of
        ``criterion=MPCriterion(bulk_keep=..., min_rank=..., alpha=..., beta=...,
        fit_cutoff=...)`` and ``select=Select(include=layers, min_dim=..., min_params=...)``
        (with ``max_output_change``, ``min_rank`` is that of ``Calibrated``); not to be
        combined with ``criterion`` / ``select``.  ``max_output_change`` as well (below).
    progress : bool or None
        Progress bars over the layers (default: when stderr is a terminal and tqdm is installed).
    calibration : iterable of model inputs, optional
        Batches (tensors, tuples, or dicts passed as ``model(**batch)``) on which the
        relative change of the model's first output is measured and reported
        (``report.output_change``; ``None`` without calibration data: not measured), with
        any criterion but :class:`Calibrated`.  A ``Calibrated`` criterion measures the
        change on its own held-out batches and ``calibration`` is then ignored: to bound
        the change, pass ``criterion=Calibrated(batches, δ)`` alone (the one spelling).
    max_output_change : float, optional
        Deprecated (emits a ``DeprecationWarning``): with ``calibration``, the older
        spelling of ``criterion=Calibrated(calibration, max_output_change, base=criterion)``.

    Returns
    -------
    (model, PruneReport)
        Each row's ``reason`` says why the criterion kept that rank (or skipped the layer).

    Examples
    --------
    >>> import torch
    >>> import rmtprune
    >>> _ = torch.manual_seed(0)
    >>> dense = torch.nn.Sequential(torch.nn.Linear(300, 200))
    >>> pruned, report = rmtprune.prune(dense, criterion=rmtprune.MPCriterion(min_rank=20))
    >>> report["0"].action, report["0"].rank_after
    ('split', 20)
    >>> dense[0].weight.shape  # the input model is unchanged
    torch.Size([200, 300])

    Ranks from calibration data, with the output change on held-out batches at most 0.2
    (``report.output_change`` is the change measured on them):

    >>> batches = [torch.randn(16, 300) for _ in range(4)]
    >>> guard = rmtprune.Calibrated(batches, 0.2)
    >>> pruned, report = rmtprune.prune(dense, criterion=guard)
    >>> report.output_change <= 0.2, report.max_output_change
    (True, 0.2)
    """
    legacy = {"bulk_keep": bulk_keep, "alpha": alpha, "beta": beta, "fit_cutoff": fit_cutoff}
    if max_output_change is None:
        crit = resolve_criterion(criterion, {**legacy, "min_rank": min_rank}, "prune")
    else:
        crit = calibrated_from_keywords(criterion, legacy, min_rank, calibration, max_output_change)
    sizes = {"layers": layers, "min_dim": min_dim, "min_params": min_params}
    chosen = resolve_select(select, sizes, "prune")
    calibrated = max_output_change is not None
    older = {**legacy, "min_rank": min_rank, **sizes, "max_output_change": max_output_change}
    warn_legacy("prune", older, calibrated=calibrated)
    check_split(split, crit, "prune")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter of prune must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    if calibration is not None:
        calibration = as_batches(calibration, "prune")  # read once, used twice below
        if hasattr(crit, "with_calibration"):  # e.g. Sparsity(score="wanda")
            crit = crit.with_calibration(calibration)
    probe = held_out_probe(model, crit, calibration, dry_run)  # before any change
    target = model if (inplace or dry_run) else copy_model(model)  # legacy weight_norm too
    report = _prune_model(
        target, crit, chosen, ranks, split=split, dry_run=dry_run, progress=progress
    )
    return target, with_output_change(report, crit, probe, target)


def check_split(split: object, criterion: object, owner: str) -> None:
    """Refuse a ``split`` that is not ``"auto"``, ``True`` or ``False``, and ``True`` with a
    criterion that zeroes weights under a mask (``produces_masks``): it never splits a layer."""
    if split not in ("auto", True, False):
        raise param_error("split", owner, "one of 'auto', True, False", split)
    if split is True and getattr(criterion, "produces_masks", False):
        raise ValueError(
            f"The 'split' parameter of {owner} is True, but the criterion ({criterion!r}) zeroes "
            "weights under a mask and never splits a layer; leave split at 'auto' (or False)."
        )


def _prune_model(
    target: nn.Module,
    crit: Criterion,
    chosen: Select,
    ranks: Mapping[str, int] | None,
    *,
    split: SplitMode,
    dry_run: bool,
    progress: bool | None = None,
) -> PruneReport:
    before = count_parameters(target)
    sparse = bool(masked_layers(target)) or getattr(crit, "produces_masks", False)
    # before: masks are counted too
    nonzero_start = nonzero_count(target, recurse=True) if sparse else 0
    found = collect(target, chosen, ranks, "prune", progress, pruning=True)
    with torch.no_grad(), frozen_parametrizations(target):
        views = [c.view for c in found if c.view is not None]
        decisions = decide_ranks(target, crit, views)
        bulk_keep = float(getattr(crit, "bulk_keep", math.nan))
        rows = tuple(
            _prune_row(
                c,
                decisions.get(c.name),
                bulk_keep=bulk_keep,
                split=split,
                dry_run=dry_run,
                model=target,
            )
            for c in track(found, desc="prune: surgery", progress=progress)
        )
    changed = any(r.action in ("split", "truncated", "sparsified") for r in rows)
    after = before - sum(r.params_before - r.params_after for r in rows)
    if not dry_run:
        measured = count_parameters(target)
        if measured != after:  # pragma: no cover - internal consistency guard
            raise RuntimeError(f"parameter count {measured} differs from the prediction {after}")
    note = "" if found else _nothing_selected(target, chosen)
    nonzero: dict[str, int | None] = {"nonzero_before": None, "nonzero_after": None}
    if sparse:
        zeroed = sum(
            r.nonzero_before - r.nonzero_after
            for r in rows
            if r.nonzero_before is not None and r.nonzero_after is not None
        )
        after_nz = nonzero_count(target, recurse=True) if not dry_run else None
        nonzero = {
            "nonzero_before": nonzero_start,
            "nonzero_after": nonzero_start - zeroed if after_nz is None else after_nz,
        }
    return PruneReport(rows, before, after, dry_run, changed and not dry_run, note=note, **nonzero)


def _nothing_selected(model: nn.Module, select: Select) -> str:
    """Why a model gave no layer to prune: it has no weight layers, or ``select`` left none."""
    with frozen_parametrizations(model):
        n = len(weight_layers(model))
    if n == 0:
        return (
            "No layer to prune: the model has no weight layers (no module with a weight of "
            "2 or more dimensions)."
        )
    return f"No layer to prune: {select!r} leaves none of the model's {n} weight layers."
