"""What the integrations share: the pruner options and the checkpoint record of a pruned model.

A record is ``{"format_version": 1, "structure": describe_structure(model), "pruner":
pruner.state_dict()}``: enough to rebuild the pruned layers on a freshly built model (then the
stack loads its weights) and to continue the schedule where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from torch import nn

from rmtprune.factorize.masks import kept_zeros, masked_layers
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.report import PruneReport
from rmtprune.storage.format import apply_structure, describe_structure

__all__ = [
    "RECORD_VERSION",
    "PruningCallbackCore",
    "apply_record",
    "make_pruner",
    "make_record",
    "step_index",
]

RECORD_VERSION = 1


def make_pruner(model: nn.Module, options: Mapping[str, Any], owner: str) -> SpectralPruner:
    """A :class:`SpectralPruner` over ``model`` with the callback's options."""
    try:
        return SpectralPruner(model, **dict(options))
    except TypeError as exc:
        raise TypeError(f"{owner}: bad pruner options {sorted(options)}: {exc}") from None


def make_record(model: nn.Module, pruner: SpectralPruner) -> dict[str, Any]:
    """The JSON-able record of ``model``'s pruned structure, ``pruner``'s state, the names of
    its sparse layers (``"masked"``, :mod:`rmtprune.factorize.masks`) and, where a kept weight
    is exactly 0.0, its position (``"kept_zeros"``, so the masks come back as they were)."""
    return {
        "format_version": RECORD_VERSION,
        "structure": describe_structure(model),
        "pruner": pruner.state_dict(),
        "masked": list(masked_layers(model)),
        "kept_zeros": kept_zeros(model),
    }


def apply_record(model: nn.Module, record: Mapping[str, Any], source: str) -> None:
    """Rebuild the pruned layers of ``record`` on ``model`` (placeholders: load weights next)."""
    version = record.get("format_version") if isinstance(record, Mapping) else None
    if version != RECORD_VERSION:
        raise ValueError(
            f"{source} holds no rmtprune record of format {RECORD_VERSION}. "
            f"Got format {version!r} instead."
        )
    try:
        apply_structure(model, record["structure"])
    except ValueError as exc:
        raise ValueError(f"{source}: the pruned structure does not fit this model: {exc}") from None


def step_index(interval: str, owner: str) -> str:
    """Check the ``interval`` option: prune by ``"epoch"`` or by optimizer ``"step"``."""
    if interval not in ("epoch", "step"):
        raise ValueError(
            f"The 'interval' parameter of {owner} must be 'epoch' or 'step'. "
            f"Got {interval!r} instead."
        )
    return interval


class PruningCallbackCore:
    """What every framework callback holds: options, the pruner and the record of its steps.

    The Lightning and Hugging Face callbacks inherit from their framework's base class and
    from this; each only decides *when* to call :meth:`timed_step` and with which optimizers.
    """

    def __init__(self, interval: str, progress: bool, pruner_options: Mapping[str, Any]) -> None:
        owner = "SpectralPruningCallback"
        self.interval = step_index(interval, owner)
        self.progress = bool(progress)
        self.options = dict(pruner_options)
        make_pruner(nn.Linear(1, 1), self.options, owner)  # bad options fail at construction
        self.pruner: SpectralPruner | None = None
        self.reports: list[PruneReport] = []
        self.seconds: list[float] = []

    def timed_step(self, index: int, optimizer: Any, wrapper: Any = None) -> None:
        """``pruner.step(index, optimizer=...)``; a step that changed the model is recorded.

        With ``wrapper`` (the stack's ``DistributedDataParallel``, every rank calling), rank 0
        decides and every rank receives its structure and weights
        (:func:`rmtprune.integrations.ddp.synced_step`), then ``wrapper`` is re-initialised in
        place over the new parameters.
        """
        assert self.pruner is not None
        start = time.perf_counter()
        if wrapper is None:
            report = self.pruner.step(index, optimizer=optimizer, progress=self.progress)
        else:
            from rmtprune.integrations.ddp import rewrap, synced_step

            report = synced_step(
                self.pruner,
                index,
                wrapper.module,
                optimizer=optimizer,
                group=wrapper.process_group,
                progress=self.progress,
            )
            if report.changed:
                rewrap(wrapper, in_place=True)
        if report.changed:
            self.reports.append(report)
            self.seconds.append(time.perf_counter() - start)
