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

import dataclasses
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from rmtprune._util.progress import progress_enabled
from rmtprune._util.validation import check_int
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
from rmtprune.pruning.walker import SplitMode, check_split, prune

__all__ = ["SpectralPruner"]


class _LoadWatch:
    """``load_state_dict`` post-hook of a layer whose rank a pruner recorded: tells the
    pruner the layer's weights were loaded.  A copied or pickled model gets an inert one."""

    def __init__(self, pruner: SpectralPruner | None) -> None:
        self._pruner = None if pruner is None else weakref.ref(pruner)

    def __call__(self, module: nn.Module, incompatible_keys: Any) -> None:
        pruner = None if self._pruner is None else self._pruner()
        if pruner is not None:
            pruner._weights_loaded(module)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_LoadWatch, (None,))


@dataclass
class _Held:
    """A layer as it was when its rank was recorded (or when a restored record was bound)."""

    module: weakref.ref[nn.Module]
    params: tuple[weakref.ref[nn.Parameter], ...]
    handle: RemovableHandle
    loaded: bool = False

    def changed(self, module: nn.Module) -> str | None:
        """How ``module`` differs from the recorded layer, or ``None``."""
        if self.module() is not module:
            return "the layer was replaced"
        params = tuple(module.parameters())
        if len(params) != len(self.params) or any(
            ref() is not p for ref, p in zip(self.params, params, strict=False)
        ):
            return "its parameters were replaced"
        if self.loaded:
            return "its weights were loaded (load_state_dict)"
        return None


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

    Epochs passed to :meth:`step` never go back; the same epoch twice (a resumed
    run, gradient accumulation repeating a step count) does nothing the second
    time.  The rank a step leaves a layer at is recorded (:attr:`ranks`) and
    caps what the next step sees, since a dense layer truncated in place
    regrows small singular values in training.  A record holds only for the
    layer it was made on: once that layer is replaced, its parameters are
    replaced, or its weights are loaded (``load_state_dict``), the record is
    dropped, the rank is read from the weights again and the row's reason says
    so.  Records restored by :meth:`load_state_dict` hold for the layers the
    model has at the next step (restore the model first).

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
        check_split(split, self.criterion, owner)
        self.split = split
        self.last_epoch: int | None = None
        """The last epoch at which :meth:`step` pruned (or found nothing to prune)."""
        self.last_step: int | None = None
        """The last epoch passed to :meth:`step`."""
        self.history: list[dict[str, Any]] = []
        self._held: dict[str, _Held] = {}
        self._stale: dict[str, str] = {}  # layer name -> why its record was dropped

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
        ranks, dropped = self._current_ranks(commit=not dry_run)
        _, report = prune(
            self.model,
            criterion=self.criterion_at(epoch),
            select=self.select,
            split=self.split,
            inplace=True,
            dry_run=dry_run,
            ranks=ranks,
        )
        rows = tuple(
            dataclasses.replace(r, reason="; ".join(filter(None, (r.reason, dropped[r.name]))))
            if r.name in dropped
            else r
            for r in report.layers
        )
        return dataclasses.replace(report, layers=rows, epoch=epoch)

    def _current_ranks(self, *, commit: bool) -> tuple[dict[str, int], dict[str, str]]:
        """The recorded ranks that still hold for the model's layers, and a sentence for each
        record found out of date now (dropped for good when ``commit``).

        A record restored by :meth:`load_state_dict` is bound to the layer present now.
        """
        with frozen_parametrizations(self.model):
            present = {name: module for name, module, _ in weight_layers(self.model)}
        ranks: dict[str, int] = {}
        dropped: dict[str, str] = {}
        for name, (rank, epoch) in self._records().items():
            module = present.get(name)
            if module is None:  # prune refuses unknown names
                continue
            held = self._held.get(name)
            if held is None:
                self._bind(name, module)
                ranks[name] = rank
                continue
            why = held.changed(module)
            if why is None:
                ranks[name] = rank
                continue
            dropped[name] = (
                f"rank {rank} recorded at epoch {epoch} dropped: {why} since; rank read from "
                "the weights"
            )
            if commit:
                self._stale[name] = dropped[name]
                self._held.pop(name).handle.remove()
        return ranks, dropped

    def _records(self) -> dict[str, tuple[int, int]]:
        """``{layer: (rank, epoch of the step that recorded it)}``, dropped records left out."""
        known: dict[str, tuple[int, int]] = {}
        for entry in self.history:
            for name, rank in entry["ranks"].items():
                known[name] = (rank, entry["epoch"])
        return {name: v for name, v in known.items() if name not in self._stale}

    def _bind(self, name: str, module: nn.Module) -> None:
        """Tie the record of layer ``name`` to ``module`` and its parameters as they are now."""
        old = self._held.pop(name, None)
        if old is not None:
            old.handle.remove()
        handle = module.register_load_state_dict_post_hook(_LoadWatch(self))
        params = tuple(weakref.ref(p) for p in module.parameters())
        self._held[name] = _Held(weakref.ref(module), params, handle)
        self._stale.pop(name, None)

    def _weights_loaded(self, module: nn.Module) -> None:
        for held in self._held.values():
            if held.module() is module:
                held.loaded = True

    def _unbind_all(self) -> None:
        for held in self._held.values():
            held.handle.remove()
        self._held = {}

    @property
    def ranks(self) -> dict[str, int]:
        """The rank each layer was left at by the last step that touched it (records dropped
        because the layer or its weights were replaced since are left out)."""
        return {name: rank for name, (rank, _) in self._records().items()}

    def idle_reason(self, epoch: int) -> str | None:
        """Why :meth:`step` does nothing at ``epoch``, or ``None`` when it prunes.

        Raises ``ValueError`` for an epoch before the last one stepped (steps never go back).
        """
        epoch = check_int(epoch, "epoch", "SpectralPruner.step", low=0)
        if self.last_step is not None and epoch < self.last_step:
            raise ValueError(
                f"The 'epoch' parameter of SpectralPruner.step must be >= {self.last_step} "
                f"(the last epoch stepped; steps never go back). Got {epoch} instead."
            )
        if self.last_step is not None and epoch == self.last_step:
            return f"Nothing done: epoch {epoch} was stepped already."
        if not self.is_pruning_epoch(epoch):
            return (
                f"Nothing done: epoch {epoch} is not a pruning epoch (every={self.every}: "
                f"epochs {self.every}, {2 * self.every}, ...)."
            )
        return None

    def dry_run(self, epoch: int) -> PruneReport:
        """What :meth:`step` would do at ``epoch`` if it were a pruning epoch; changes nothing."""
        epoch = check_int(epoch, "epoch", "SpectralPruner.dry_run", low=0)
        return self._run(epoch, dry_run=True)

    def step(
        self, epoch: int, *, optimizer: Any = None, progress: bool | None = None
    ) -> PruneReport:
        """Prune at a scheduled epoch; at any other epoch return an empty report whose
        ``note`` says why (:meth:`idle_reason`).

        Parameters
        ----------
        epoch : int
            The epoch (or step) just completed: never less than the last one stepped
            (``ValueError``); the same one again does nothing.
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
        idle = self.idle_reason(epoch)
        if idle is not None:
            self.last_step = epoch
            n = count_parameters(self.model)
            return PruneReport((), n, n, False, False, epoch, note=idle)
        before = dict(self.model.named_parameters())
        with progress_enabled(progress):
            report = self._run(epoch, dry_run=False)
        self.last_epoch = self.last_step = epoch
        recorded = {
            r.name: r.rank_after for r in report.layers if r.action in ("split", "truncated")
        }
        self.history.append(
            {
                "epoch": epoch,
                "bulk_keep": None if self.schedule is None else float(self.schedule(epoch)),
                "params_after": report.params_after,
                "ranks": recorded,
            }
        )
        for name in recorded:
            self._bind(name, self.model.get_submodule(name))
        if report.changed:
            for opt in optimizers:
                update_optimizer(opt, self.model, before)
            if not optimizers:
                remember_snapshot(self.model, before)
        return report

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: last pruning epoch, last epoch stepped, history,
        dropped rank records and the settings."""
        schedule: dict[str, Any] | None = None
        if self.schedule is not None:
            try:
                schedule = schedule_to_dict(self.schedule)
            except TypeError:
                schedule = None
        return {
            "last_epoch": self.last_epoch,
            "last_step": self.last_step,
            "history": [dict(h) for h in self.history],
            "dropped": dict(self._stale),
            "every": self.every,
            "schedule": schedule,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the model must be restored separately, before
        the next step: the restored rank records hold for the layers it has then)."""
        if "last_epoch" not in state or "history" not in state:
            raise ValueError(
                "The 'state' parameter of SpectralPruner.load_state_dict must come "
                f"from state_dict(). Got keys {sorted(state)} instead."
            )
        self.last_epoch = state["last_epoch"]
        self.last_step = state.get("last_step", self.last_epoch)
        self.history = [dict(h) for h in state["history"]]
        self._unbind_all()
        self._stale = dict(state.get("dropped", {}))
        self.every = int(state.get("every", self.every))
        if state.get("schedule") is not None:
            self.schedule = schedule_from_dict(state["schedule"])
