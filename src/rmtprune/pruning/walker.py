"""The model walker: find a model's weight layers, fit each spectrum, prune.

Three roles are kept apart (STYLE.md): the rank criterion (BEMA and SPEC
section 4's rule, :func:`kept_rank`), the surgery per layer type (adapters in
:mod:`rmtprune.factorize.registry`), and this walker, which visits the model,
asks the other two, and writes the report.

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

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from rmtprune._validation import check_int, check_real, param_error
from rmtprune.estimators.bema import BEMA
from rmtprune.factorize.registry import LayerAdapter, get_adapter, set_submodule
from rmtprune.factorize.svd import truncated_svd
from rmtprune.pruning import _guards
from rmtprune.pruning.report import LayerAnalysis, LayerPruneResult, ModelReport, PruneReport
from rmtprune.spectrum import eigenvalues

__all__ = ["DEFAULT_MIN_DIM", "DEFAULT_MIN_PARAMS", "analyze", "kept_rank", "prune"]

DEFAULT_MIN_DIM = 32
"""Smallest ``min(m, n)`` fitted by default.

The fit statistic ``D`` of a pure-noise layer fluctuates like ``0.27 / sqrt(p)`` at its 99th
percentile (measured: 0.12 for ``p = 10``, 0.038 for ``p = 50``), so below ``p ≈ 30`` the default
cutoff 0.05 would reject honest noise.  Smaller layers are reported as "too small".
"""
DEFAULT_MIN_PARAMS = 0
"""Smallest ``m · n`` fitted by default (the authors used 300,000 in one code path)."""

FitCutoff = float | Mapping[type, float]
SplitMode = Literal["auto", True, False]


@dataclass(frozen=True)
class _Fit:
    """Everything known about one layer after fitting (or deciding to skip) it."""

    row: LayerAnalysis
    module: nn.Module
    adapter: LayerAdapter | None
    matrix: torch.Tensor | None
    rank: int


def kept_rank(
    n_spikes: int, p: int, bulk_keep: float, *, current_rank: int, min_rank: int | None = None
) -> int:
    """SPEC section 4: ``r = k + ⌊f (p − k)⌋``, floored at ``min_rank``, capped at the current rank.

    >>> kept_rank(3, 100, 0.5, current_rank=100)
    51
    >>> kept_rank(3, 100, 0.0, current_rank=100, min_rank=10)
    10
    """
    r = n_spikes + math.floor(bulk_keep * (p - n_spikes) + 1e-12)
    if min_rank is not None:
        r = max(r, min_rank)
    return max(1, min(r, current_rank))


def _numerical_rank(spectrum: np.ndarray, n_rows: int, dtype: torch.dtype) -> int:
    """Count the eigenvalues whose singular values exceed the rank tolerance."""
    if spectrum.size == 0 or spectrum[-1] <= 0:
        return 0
    s = np.sqrt(np.maximum(spectrum, 0.0))
    rel = max(n_rows * float(torch.finfo(dtype).eps), 1e-6)
    return int(np.count_nonzero(s > rel * s[-1]))


def _cutoff_for(module: nn.Module, fit_cutoff: FitCutoff) -> float:
    if isinstance(fit_cutoff, Mapping):
        for cls in type(module).__mro__:
            if cls in fit_cutoff:
                return float(fit_cutoff[cls])
        return float(fit_cutoff.get(object, 0.05))
    return float(fit_cutoff)


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """All weight layers: ``(name, module, reason)`` with ``reason`` set for unsupported ones."""
    owners: dict[int, set[str]] = {}
    for name, mod in model.named_modules():
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(name)

    found: list[tuple[str, nn.Module, str]] = []
    covered: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in covered):
            continue
        adapter = get_adapter(mod)
        direct_matrices = [p for p in mod.parameters(recurse=False) if p.dim() >= 2]
        if adapter is None:
            if direct_matrices:
                found.append((name, mod, f"unsupported layer type {type(mod).__name__}"))
            continue
        covered.append(name)
        reason = ""
        for p in mod.parameters():
            others = {
                o for o in owners.get(id(p), set()) if o != name and not o.startswith(name + ".")
            }
            if others:
                reason = f"weight shared with {sorted(others)[0]} (tied parameters)"
                break
        if not reason:  # includes MultiheadAttention's out_proj (the adapter refuses it)
            reason = adapter.unsupported_reason(mod) or ""
        found.append((name, mod, reason))
    return found


def _select(
    found: list[tuple[str, nn.Module, str]], layers: Sequence[str] | str | None
) -> list[tuple[str, nn.Module, str]]:
    if layers is None:
        return found
    patterns = [layers] if isinstance(layers, str) else list(layers)
    names = [n for n, _, _ in found]
    chosen: set[str] = set()
    for pat in patterns:
        matched = [n for n in names if n == pat or fnmatch.fnmatchcase(n, pat)]
        if not matched:
            raise ValueError(
                f"The 'layers' parameter names {pat!r}, which matches no weight layer. "
                f"Valid names: {names}"
            )
        chosen.update(matched)
    return [c for c in found if c[0] in chosen]


def _shape_or_none(module: nn.Module) -> tuple[int, int]:
    """The ``(m, n)`` of SPEC section 1 for any module with a weight of 2+ dims, else (0, 0)."""
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


def _fit_layer(
    name: str,
    module: nn.Module,
    reason: str,
    *,
    alpha: float,
    beta: float,
    fit_cutoff: FitCutoff,
    min_dim: int,
    min_params: int,
    known_rank: int | None = None,
) -> _Fit:
    adapter = get_adapter(module)
    layer_type = type(module).__name__
    params = sum(p.numel() for p in module.parameters())
    if adapter is None or reason:
        row = LayerAnalysis(
            name, layer_type, _shape_or_none(module), params, math.nan, 0, "skipped", reason
        )
        return _Fit(row, module, adapter, None, 0)
    m, n = adapter.matrix_shape(module)
    p = min(m, n)
    ratio = p / max(m, n)
    base: dict[str, Any] = {
        "name": name,
        "layer_type": layer_type,
        "shape": (m, n),
        "params": params,
    }

    def skipped(why: str, rank: int = p) -> _Fit:
        return _Fit(
            LayerAnalysis(**base, ratio=ratio, rank=rank, status="skipped", reason=why),
            module,
            adapter,
            None,
            rank,
        )

    if p < min_dim:
        return skipped(f"too small: min(m, n) = {p} < min_dim = {min_dim}")
    if m * n < min_params:
        return skipped(f"too small: m·n = {m * n} < min_params = {min_params}")
    unusable = _guards.weight_skip_reason(module)
    if unusable:
        return skipped(unusable)
    matrix = adapter.weight_matrix(module)
    if not bool(torch.isfinite(matrix).all()):
        return skipped("non-finite weights (NaN or Inf)")
    spectrum = eigenvalues(matrix)
    numerical = _numerical_rank(spectrum, max(m, n), matrix.dtype)
    factor_rank = adapter.current_rank(module)
    rank = numerical if factor_rank is None else min(factor_rank, numerical)
    if known_rank is not None:
        rank = min(rank, known_rank)
    if rank == 0:
        return skipped("all-zero weight", 0)
    try:
        bema = BEMA(alpha=alpha, beta=beta).fit_eigenvalues(
            spectrum, (m, n), rank=rank if rank < p else None
        )
    except ValueError as exc:
        return skipped(f"cannot fit the bulk: {exc}", rank)
    cutoff = _cutoff_for(module, fit_cutoff)
    mp_like = bool(bema.fit_error_ <= cutoff)
    row = LayerAnalysis(
        **base,
        ratio=ratio,
        rank=rank,
        status="ok",
        reason="" if mp_like else f"bulk is not MP-like: D = {bema.fit_error_:.3g} > {cutoff:g}",
        sigma2=float(bema.sigma2_),
        lambda_plus=float(bema.lambda_plus_),
        threshold=float(bema.threshold_),
        n_spikes=int(bema.n_spikes_),
        fit_error=float(bema.fit_error_),
        mp_like=mp_like,
    )
    return _Fit(row, module, adapter, matrix, rank)


def _check_common(
    alpha: float, beta: float, fit_cutoff: FitCutoff, min_dim: int, min_params: int, owner: str
) -> tuple[float, float, int, int]:
    alpha = check_real(alpha, "alpha", owner, low=0.0, high=0.5, low_open=True, high_open=True)
    beta = check_real(beta, "beta", owner, low=0.0, high=1.0, low_open=True, high_open=True)
    if isinstance(fit_cutoff, Mapping):
        for value in fit_cutoff.values():
            check_real(value, "fit_cutoff", owner, low=0.0, low_open=True)
    else:
        check_real(fit_cutoff, "fit_cutoff", owner, low=0.0, low_open=True)
    min_dim = check_int(min_dim, "min_dim", owner, low=1)
    min_params = check_int(min_params, "min_params", owner, low=0)
    return alpha, beta, min_dim, min_params


def _fit_model(
    model: nn.Module,
    owner: str,
    layers: Sequence[str] | str | None,
    ranks: Mapping[str, int] | None,
    **kw: Any,
) -> list[_Fit]:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter of {owner} must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    with torch.no_grad(), _guards.frozen_parametrizations(model):
        found = _candidates(model)
        chosen = _select(found, _guards.check_layer_names(layers, "layers", owner))
        _guards.check_layer_names(ranks, "ranks", owner, [n for n, _, _ in found])
        known = dict(ranks or {})
        for name, value in known.items():
            check_int(value, f"ranks[{name!r}]", owner, low=1)
        return [
            _fit_layer(name, mod, reason, known_rank=known.get(name), **kw)
            for name, mod, reason in chosen
        ]


def analyze(
    model: nn.Module,
    *,
    alpha: float = 0.25,
    beta: float = 0.1,
    fit_cutoff: FitCutoff = 0.05,
    layers: Sequence[str] | str | None = None,
    min_dim: int = DEFAULT_MIN_DIM,
    min_params: int = DEFAULT_MIN_PARAMS,
    ranks: Mapping[str, int] | None = None,
) -> ModelReport:
    """Fit the Marchenko–Pastur law to every weight layer of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any model; it is not modified.
    alpha, beta : float
        BEMA trimming and tail level (:class:`rmtprune.BEMA`).
    fit_cutoff : float or mapping of layer type to float
        A layer is MP-like when its fit statistic ``D`` is at most this (the
        authors used 0.05 for fully connected and 0.6 for conv layers:
        ``{nn.Linear: 0.05, nn.Conv2d: 0.6}``).
    layers : str or sequence of str, optional
        Names (or ``fnmatch`` patterns) of the layers to look at; default all.
    min_dim, min_params : int
        Layers with ``min(m, n) < min_dim`` or ``m·n < min_params`` are
        reported as skipped.
    ranks : mapping of layer name to int, optional
        Known ranks of layers truncated earlier.  A dense layer truncated in
        place and trained further regrows small singular values, so its
        numerical rank no longer shows the truncation; with its rank given, only
        the top ``rank`` eigenvalues are fitted and pruning never keeps more.
        :class:`rmtprune.SpectralPruner` passes its own record.

    Returns
    -------
    ModelReport
        One row per weight layer, skipped layers with their reason.

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
    alpha, beta, min_dim, min_params = _check_common(
        alpha, beta, fit_cutoff, min_dim, min_params, "analyze"
    )
    fits = _fit_model(
        model,
        "analyze",
        layers,
        ranks,
        alpha=alpha,
        beta=beta,
        fit_cutoff=fit_cutoff,
        min_dim=min_dim,
        min_params=min_params,
    )
    cutoff = fit_cutoff if not isinstance(fit_cutoff, Mapping) else math.nan
    return ModelReport(tuple(f.row for f in fits), alpha, beta, float(cutoff))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _prune_layer(
    fit: _Fit,
    *,
    bulk_keep: float,
    min_rank: int | None,
    split: SplitMode,
    dry_run: bool,
    model: nn.Module,
) -> LayerPruneResult:
    row = fit.row
    adapter = fit.adapter
    m, n = row.shape
    p = min(m, n)
    common: dict[str, Any] = {
        "name": row.name,
        "layer_type": row.layer_type,
        "shape": row.shape,
        "bulk_keep": bulk_keep,
        "params_before": row.params,
        "sigma2": row.sigma2,
        "lambda_plus": row.lambda_plus,
        "fit_error": row.fit_error,
    }
    rank = fit.rank if fit.rank else p

    def unchanged(action: str, why: str) -> LayerPruneResult:
        return LayerPruneResult(
            **common,
            action=action,
            rank_before=rank,
            rank_after=rank,
            n_spikes=row.n_spikes,
            params_after=row.params,
            split=adapter is not None and adapter.current_rank(fit.module) is not None,
            reason=why,
        )

    if row.status != "ok":
        return unchanged("skipped", row.reason)
    if not row.mp_like:
        return unchanged("skipped", row.reason)
    assert adapter is not None and fit.matrix is not None and row.n_spikes is not None
    r = kept_rank(row.n_spikes, p, bulk_keep, current_rank=rank, min_rank=min_rank)
    if r >= rank:
        return unchanged(
            "unchanged",
            f"nothing to remove: keeps all {rank} values "
            f"({row.n_spikes} spikes, bulk_keep={bulk_keep:g})",
        )
    parametrized = _guards.parametrization_reason(fit.module)
    if parametrized:
        return unchanged("skipped", parametrized)
    do_split = (r * (m + n) < m * n) if split == "auto" else bool(split)
    predicted = (
        adapter.split_param_count(fit.module, r)
        if do_split
        else adapter.dense_param_count(fit.module, r)
    )
    action = "split" if do_split else "truncated"
    result = LayerPruneResult(
        **common,
        action=action,
        rank_before=rank,
        rank_after=r,
        n_spikes=row.n_spikes,
        params_after=predicted,
        split=do_split,
    )
    if dry_run:
        return result
    u, s, vh = truncated_svd(fit.matrix, r)
    before = float(fit.matrix.to(torch.float64).square().sum())
    if not do_split and adapter.current_rank(fit.module) is None:
        adapter.truncate(fit.module, u, s, vh)  # same Parameter objects: optimizer state survives
    else:
        set_submodule(model, row.name, adapter.rebuild(fit.module, u, s, vh, split=do_split))
    no_effect = _guards.check_effect(model, row.name, fit.module, before, s)
    return result if no_effect is None else unchanged("skipped", no_effect)


def prune(
    model: nn.Module,
    *,
    bulk_keep: float = 0.0,
    min_rank: int | None = None,
    alpha: float = 0.25,
    beta: float = 0.1,
    fit_cutoff: FitCutoff = 0.05,
    split: SplitMode = "auto",
    layers: Sequence[str] | str | None = None,
    inplace: bool = False,
    dry_run: bool = False,
    min_dim: int = DEFAULT_MIN_DIM,
    min_params: int = DEFAULT_MIN_PARAMS,
    ranks: Mapping[str, int] | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Remove the noise part of every MP-like weight layer (SPEC section 4).

    For each eligible layer: fit BEMA, test the fit, and if the bulk is MP-like
    keep the ``k`` spikes plus ``⌊bulk_keep · (p − k)⌋`` of the largest bulk
    singular values (at least ``min_rank``).  With ``split="auto"`` the layer is
    replaced by two factors (``r × n`` then ``m × r``, the bias on the second)
    only when ``r (m + n) < m n``; otherwise it keeps one layer of rank ``r``
    (in place, so optimizer state of that parameter survives).

    Parameters
    ----------
    model : torch.nn.Module
        The model.  With ``inplace=False`` (default) it is left untouched and a
        pruned copy is returned.
    bulk_keep : float
        Fraction ``f`` in [0, 1] of the bulk kept; 0 removes the whole random part.
    min_rank : int, optional
        Floor on the kept rank (the authors never went below the output dimension).
    alpha, beta, fit_cutoff, layers, min_dim, min_params, ranks
        As in :func:`analyze`.
    split : {"auto", True, False}
        Split rule; ``True`` always splits, ``False`` never does.
    inplace : bool
        Modify ``model`` itself.
    dry_run : bool
        Change nothing (weights bitwise identical) and report exactly what a
        real run would do.

    Returns
    -------
    (model, PruneReport)

    Examples
    --------
    >>> import torch
    >>> import rmtprune
    >>> _ = torch.manual_seed(0)
    >>> dense = torch.nn.Sequential(torch.nn.Linear(300, 200))
    >>> pruned, report = rmtprune.prune(dense, bulk_keep=0.0, min_rank=20)
    >>> report["0"].action, report["0"].rank_after
    ('split', 20)
    >>> dense[0].weight.shape  # the input model is unchanged
    torch.Size([200, 300])
    """
    bulk_keep = check_real(bulk_keep, "bulk_keep", "prune", low=0.0, high=1.0)
    if min_rank is not None:
        min_rank = check_int(min_rank, "min_rank", "prune", low=1)
    if split not in ("auto", True, False):
        raise param_error("split", "prune", "one of 'auto', True, False", split)
    alpha, beta, min_dim, min_params = _check_common(
        alpha, beta, fit_cutoff, min_dim, min_params, "prune"
    )
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter of prune must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    target = model if (inplace or dry_run) else _guards.copy_model(model)
    before = _count(target)
    fits = _fit_model(
        target,
        "prune",
        layers,
        ranks,
        alpha=alpha,
        beta=beta,
        fit_cutoff=fit_cutoff,
        min_dim=min_dim,
        min_params=min_params,
    )
    with torch.no_grad(), _guards.frozen_parametrizations(target):
        rows = tuple(
            _prune_layer(
                f,
                bulk_keep=bulk_keep,
                min_rank=min_rank,
                split=split,
                dry_run=dry_run,
                model=target,
            )
            for f in fits
        )
    changed = any(r.action in ("split", "truncated") for r in rows)
    after = before - sum(r.params_before - r.params_after for r in rows)
    if not dry_run:
        measured = _count(target)
        if measured != after:  # pragma: no cover - internal consistency guard
            raise RuntimeError(f"parameter count {measured} differs from the prediction {after}")
    report = PruneReport(rows, before, after, dry_run, changed and not dry_run)
    return target, report
