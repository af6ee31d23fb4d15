"""Pruning while training (docs/method.md section 5).

Example
-------
>>> import torch
>>> import rmtprune
>>> model = torch.nn.Sequential(torch.nn.Linear(200, 100))
>>> pruner = rmtprune.SpectralPruner(model, schedule=rmtprune.schedules.Linear(10), every=5)
>>> pruner.step(3).changed   # not a pruning epoch: no-op
False
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from rmtprune._util.progress import progress_enabled
from rmtprune._util.validation import check_int, param_error
from rmtprune.pruning._guards import frozen_parametrizations
from rmtprune.pruning.criteria import Criterion, FitCutoff
from rmtprune.pruning.layers import count_parameters
from rmtprune.pruning.optim import (
    optimizer_list,
    remember_snapshot,
    unwrap_optimizer,
    update_optimizer,
)
from rmtprune.pruning.options import resolve_criterion, resolve_select, warn_legacy
from rmtprune.pruning.report import PruneReport
from rmtprune.pruning.schedules import Schedule, schedule_from_dict, schedule_to_dict
from rmtprune.pruning.selection import Select, weight_layers
from rmtprune.pruning.walker import SplitMode, prune

__all__ = ["SpectralPruner"]


class SpectralPruner:
    """Prune a model on a schedule while it trains.

    Every ``every`` epochs (never at epoch 0) :meth:`step` prunes the selected
    layers in place with ``criterion.with_bulk_keep(schedule(epoch))`` (the
    paper's rule: fit BEMA, test the fit, keep the spikes and that fraction of
    the bulk).  After a step whose report says ``changed``, the optimizer passed
    as ``step(epoch, optimizer=opt)`` has been edited in place (see
    :func:`rmtprune.update_optimizer`).

    Decisions depend only on the model's weights and the epoch, so a run
    resumed from :meth:`state_dict` (together with the model and optimizer)
    makes the same decisions as one never interrupted.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained; it is modified in place at pruning epochs.
    criterion : optional
        The rank criterion (default ``MPCriterion()``).  With a ``schedule`` it must
        have ``with_bulk_keep(fraction)``, as :class:`rmtprune.MPCriterion` has.
    select : Select, optional
        Which layers (default ``Select()``).
    schedule : callable, optional
        ``epoch -> bulk fraction kept`` (see :mod:`rmtprune.schedules`); ``None``
        applies ``criterion`` as it is at every pruning epoch.
    every : int
        Prune at epochs ``every, 2·every, ...``.
    split : {"auto", True, False}
        As in :func:`rmtprune.prune`.
    alpha, beta, fit_cutoff, min_rank, layers, min_dim, min_params
        Deprecated (each emits a ``DeprecationWarning``): the older spelling of
        ``criterion=MPCriterion(...)`` and ``select=Select(include=layers, ...)``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        criterion: Criterion | None = None,
        select: Select | None = None,
        schedule: Schedule | None = None,
        every: int,
        split: SplitMode = "auto",
        alpha: float | None = None,
        beta: float | None = None,
        fit_cutoff: FitCutoff | None = None,
        min_rank: int | None = None,
        layers: Sequence[str] | str | None = None,
        min_dim: int | None = None,
        min_params: int | None = None,
    ) -> None:
        owner = "SpectralPruner"
        if not isinstance(model, nn.Module):
            raise TypeError(
                "The 'model' parameter of SpectralPruner must be a torch.nn.Module. "
                f"Got {type(model).__name__} instead."
            )
        if schedule is not None and not callable(schedule):
            raise TypeError(
                "The 'schedule' parameter of SpectralPruner must be callable "
                f"(epoch -> fraction). Got {type(schedule).__name__} instead."
            )
        legacy = {"alpha": alpha, "beta": beta, "fit_cutoff": fit_cutoff, "min_rank": min_rank}
        self.criterion = resolve_criterion(criterion, legacy, owner)
        if schedule is not None and not callable(getattr(self.criterion, "with_bulk_keep", None)):
            raise TypeError(
                "The 'criterion' parameter of SpectralPruner must have a with_bulk_keep(fraction) "
                f"method when a schedule is given. Got {type(self.criterion).__name__} instead."
            )
        sizes = {"layers": layers, "min_dim": min_dim, "min_params": min_params}
        self.select = resolve_select(select, sizes, owner)
        warn_legacy(owner, {**legacy, **sizes})
        self.model = model
        self.schedule = schedule
        self.every = check_int(every, "every", owner, low=1)
        if split not in ("auto", True, False):
            raise param_error("split", owner, "one of 'auto', True, False", split)
        self.split = split
        self.last_epoch: int | None = None
        self.history: list[dict[str, Any]] = []

    def criterion_at(self, epoch: int) -> Criterion:
        """The criterion applied at ``epoch``: ``criterion.with_bulk_keep(schedule(epoch))``."""
        if self.schedule is None:
            return self.criterion
        bulk_keep = float(self.schedule(epoch))
        if not 0.0 <= bulk_keep <= 1.0 or math.isnan(bulk_keep):
            raise ValueError(
                f"The schedule returned {bulk_keep!r} at epoch {epoch}; "
                "expected a fraction in [0, 1]."
            )
        return self.criterion.with_bulk_keep(bulk_keep)  # type: ignore[union-attr]

    def is_pruning_epoch(self, epoch: int) -> bool:
        """Whether :meth:`step` acts at ``epoch``."""
        return epoch > 0 and epoch % self.every == 0

    def _run(self, epoch: int, *, dry_run: bool) -> PruneReport:
        _, report = prune(
            self.model,
            criterion=self.criterion_at(epoch),
            select=self.select,
            split=self.split,
            inplace=True,
            dry_run=dry_run,
            ranks=self._current_ranks(),
        )
        return PruneReport(
            report.layers,
            report.params_before,
            report.params_after,
            report.dry_run,
            report.changed,
            epoch,
        )

    def _current_ranks(self) -> dict[str, int]:
        """:attr:`ranks` of the layers the model still has (prune refuses unknown names)."""
        with frozen_parametrizations(self.model):
            present = {name for name, _, _ in weight_layers(self.model)}
        return {name: r for name, r in self.ranks.items() if name in present}

    @property
    def ranks(self) -> dict[str, int]:
        """The rank each layer was left at by the last step that touched it."""
        known: dict[str, int] = {}
        for entry in self.history:
            known.update(entry["ranks"])
        return known

    def dry_run(self, epoch: int) -> PruneReport:
        """What :meth:`step` would do at ``epoch`` if it were a pruning epoch; changes nothing."""
        epoch = check_int(epoch, "epoch", "SpectralPruner.dry_run", low=0)
        return self._run(epoch, dry_run=True)

    def step(
        self, epoch: int, *, optimizer: Any = None, progress: bool | None = None
    ) -> PruneReport:
        """Prune at a scheduled epoch; at any other epoch return an empty report.

        Parameters
        ----------
        epoch : int
            The epoch (or step) just completed.
        optimizer : torch.optim.Optimizer (or a wrapper of one), or a sequence of them
            Edited in place after a change (:func:`rmtprune.update_optimizer`): new factors
            join the group of the parameter they replace, parameters it did not hold stay
            out, and schedulers holding it stay valid.
        progress : bool or None
            Show a progress bar over the layers (default: when stderr is a terminal and
            ``tqdm`` is installed).
        """
        epoch = check_int(epoch, "epoch", "SpectralPruner.step", low=0)
        optimizers = [] if optimizer is None else optimizer_list(optimizer)
        for opt in optimizers:
            unwrap_optimizer(opt, "SpectralPruner.step")
        if not self.is_pruning_epoch(epoch) or (
            self.last_epoch is not None and epoch <= self.last_epoch
        ):
            n = count_parameters(self.model)
            return PruneReport((), n, n, False, False, epoch)
        before = dict(self.model.named_parameters())
        with progress_enabled(progress):
            report = self._run(epoch, dry_run=False)
        self.last_epoch = epoch
        self.history.append(
            {
                "epoch": epoch,
                "bulk_keep": None if self.schedule is None else float(self.schedule(epoch)),
                "params_after": report.params_after,
                "ranks": {
                    r.name: r.rank_after
                    for r in report.layers
                    if r.action in ("split", "truncated")
                },
            }
        )
        if report.changed:
            for opt in optimizers:
                update_optimizer(opt, self.model, before)
            if not optimizers:
                remember_snapshot(self.model, before)
        return report

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: last pruning epoch, history and the settings."""
        schedule: dict[str, Any] | None = None
        if self.schedule is not None:
            try:
                schedule = schedule_to_dict(self.schedule)
            except TypeError:
                schedule = None
        return {
            "last_epoch": self.last_epoch,
            "history": [dict(h) for h in self.history],
            "every": self.every,
            "schedule": schedule,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the model must be restored separately)."""
        if "last_epoch" not in state or "history" not in state:
            raise ValueError(
                "The 'state' parameter of SpectralPruner.load_state_dict must come "
                f"from state_dict(). Got keys {sorted(state)} instead."
            )
        self.last_epoch = state["last_epoch"]
        self.history = [dict(h) for h in state["history"]]
        self.every = int(state.get("every", self.every))
        if state.get("schedule") is not None:
            self.schedule = schedule_from_dict(state["schedule"])
