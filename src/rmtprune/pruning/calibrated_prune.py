"""``calibrated_prune`` (deprecated): :func:`rmtprune.prune` with a :class:`Calibrated` criterion.

Every option it takes has its place in the one spelling,
``prune(model, criterion=Calibrated(batches, δ, whiten=, holdout=, base=, min_rank=),
select=Select(include=layers, min_dim=, min_params=), split=True)``, which it runs; it emits
a ``DeprecationWarning`` that says so.

Example
-------
>>> import torch
>>> from torch import nn
>>> from rmtprune import Calibrated, prune
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8))
>>> low_rank = torch.randn(64, 4) @ torch.randn(4, 64) / 8
>>> _ = model[0].weight.data.copy_(low_rank + 0.01 * torch.randn(64, 64))
>>> batches = [torch.randn(32, 64) for _ in range(4)]
>>> pruned, report = prune(model, criterion=Calibrated(batches, 0.2, whiten=True), split=True)
>>> report.output_change <= 0.2, report.params_after < report.params_before
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from rmtprune._util.validation import param_error
from rmtprune.pruning.calibration import Calibrated
from rmtprune.pruning.options import warn_deprecated
from rmtprune.pruning.outputs import as_batches
from rmtprune.pruning.report import PruneReport
from rmtprune.pruning.selection import Select
from rmtprune.pruning.walker import SplitMode, prune

__all__ = ["calibrated_prune"]


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
    split: SplitMode | None = None,
    inplace: bool = False,
    dry_run: bool = False,
    progress: bool | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` as far as its held-out output change stays ≤ ``max_output_change``.

    Deprecated (emits a ``DeprecationWarning``): pass
    ``rmtprune.prune(model, criterion=rmtprune.Calibrated(calibration, max_output_change,
    ...), select=rmtprune.Select(include=layers, ...), split=True)`` instead.

    Runs ``rmtprune.prune(model, criterion=Calibrated(...), select=Select(...))``: the
    ranks come from :class:`Calibrated`, every changed layer is replaced by the factors it
    measured (square-root split by default, ``split=True``).  ``report.output_change`` is
    the relative change of the first output of the pruned model on the held-out batches,
    ``report.output_change_fit`` the criterion's value on the batches used for fitting.

    Parameters
    ----------
    model : torch.nn.Module
        Left untouched unless ``inplace`` (a dry run never changes it).
    calibration, max_output_change, whiten, holdout, base
        As in :class:`Calibrated`.
    min_rank : int, optional
        Floor on every kept rank (default 1).
    layers, min_dim, min_params
        Which layers are candidates (``Select(include=layers, min_dim=..., min_params=...)``).
    split : {"auto", True, False}, optional
        As in :func:`rmtprune.prune`; default ``True``, or ``"auto"`` for a ``base`` that
        zeroes weights (``Sparsity``), which never splits a layer.
    inplace, dry_run, progress : optional
        As in :func:`rmtprune.prune`.

    Returns
    -------
    (model, PruneReport)
    """
    warn_deprecated(
        "calibrated_prune(model, calibration, max_output_change, ...) is deprecated; pass "
        "rmtprune.prune(model, criterion=rmtprune.Calibrated(calibration, max_output_change, "
        "whiten=..., holdout=..., base=..., min_rank=...), select=rmtprune.Select(include="
        "layers, min_dim=..., min_params=...), split=True)."
    )
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
    select = Select(include=layers, min_dim=min_dim, min_params=min_params)
    if split is None:
        split = "auto" if getattr(base, "produces_masks", False) else True
    return prune(
        model,
        criterion=criterion,
        select=select,
        split=split,
        inplace=inplace,
        dry_run=dry_run,
        progress=progress,
    )
