"""Schedules for pruning while training: the fraction of the bulk kept at an epoch.

A schedule is a frozen dataclass whose call ``schedule(epoch) -> f`` is a pure
function of the epoch with ``f`` in ``[0, 1]``: the fraction of the bulk (the
singular values under the noise edge) that a pruning step at that epoch keeps
(docs/method.md section 5).  Schedules serialise to plain dictionaries with
:func:`schedule_to_dict` and back with :func:`schedule_from_dict`, so a
:class:`~rmtprune.SpectralPruner` can be saved and resumed.

Examples
--------
>>> from rmtprune import schedules
>>> s = schedules.Linear(total_epochs=300)
>>> s(0), s(150), s(300), s(400)
(1.0, 0.5, 0.0, 0.0)
>>> schedules.Step(boundaries=(10, 20), values=(1.0, 0.5, 0.0))(15)
0.5
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rmtprune._util.validation import check_int, check_real, param_error

__all__ = [
    "AllBulkAtEnd",
    "Constant",
    "Cosine",
    "Linear",
    "Schedule",
    "Step",
    "schedule_from_dict",
    "schedule_to_dict",
]


@runtime_checkable
class Schedule(Protocol):
    """Anything that maps an epoch (int >= 0) to the kept bulk fraction in [0, 1]."""

    def __call__(self, epoch: int) -> float: ...


def _epoch(epoch: int, owner: str) -> int:
    return check_int(epoch, "epoch", owner, low=0)


@dataclass(frozen=True)
class Linear:
    """The authors' schedule ``f(e) = max(0, 1 - e / T)`` with ``T = total_epochs``.

    With ``T = 300`` (the paper) a 20-epoch run keeps over 93 % of the bulk; for
    short runs choose ``T`` near ``0.75 × epochs`` (docs/method.md section 5).
    """

    total_epochs: float = 300.0

    def __post_init__(self) -> None:
        check_real(self.total_epochs, "total_epochs", "Linear", low=0.0, low_open=True)

    def __call__(self, epoch: int) -> float:
        e = _epoch(epoch, "Linear")
        return max(0.0, 1.0 - e / float(self.total_epochs))


@dataclass(frozen=True)
class Constant:
    """Keep the same fraction ``value`` of the bulk at every pruning step."""

    value: float = 0.0

    def __post_init__(self) -> None:
        check_real(self.value, "value", "Constant", low=0.0, high=1.0)

    def __call__(self, epoch: int) -> float:
        _epoch(epoch, "Constant")
        return float(self.value)


@dataclass(frozen=True)
class Step:
    """Piecewise constant: ``values[i]`` for ``boundaries[i-1] <= epoch < boundaries[i]``.

    ``len(values) == len(boundaries) + 1``; boundaries strictly increasing.
    """

    boundaries: tuple[int, ...] = ()
    values: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "boundaries", tuple(int(b) for b in self.boundaries))
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if len(self.values) != len(self.boundaries) + 1:
            raise param_error(
                "values",
                "Step",
                f"a sequence of len(boundaries) + 1 = {len(self.boundaries) + 1} fractions",
                self.values,
            )
        if any(b2 <= b1 for b1, b2 in zip(self.boundaries, self.boundaries[1:], strict=False)):
            raise param_error("boundaries", "Step", "strictly increasing epochs", self.boundaries)
        for v in self.values:
            check_real(v, "values", "Step", low=0.0, high=1.0)

    def __call__(self, epoch: int) -> float:
        e = _epoch(epoch, "Step")
        index = sum(1 for b in self.boundaries if e >= b)
        return self.values[index]


@dataclass(frozen=True)
class Cosine:
    """Cosine decay from 1 at epoch 0 to ``final`` at ``total_epochs``, then flat."""

    total_epochs: float = 300.0
    final: float = 0.0

    def __post_init__(self) -> None:
        check_real(self.total_epochs, "total_epochs", "Cosine", low=0.0, low_open=True)
        check_real(self.final, "final", "Cosine", low=0.0, high=1.0)

    def __call__(self, epoch: int) -> float:
        e = _epoch(epoch, "Cosine")
        t = min(1.0, e / float(self.total_epochs))
        return float(self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * t)))


@dataclass(frozen=True)
class AllBulkAtEnd:
    """Keep the whole bulk until ``total_epochs``, then remove all of it (``f = 0``)."""

    total_epochs: int = 300

    def __post_init__(self) -> None:
        check_int(self.total_epochs, "total_epochs", "AllBulkAtEnd", low=1)

    def __call__(self, epoch: int) -> float:
        e = _epoch(epoch, "AllBulkAtEnd")
        return 0.0 if e >= self.total_epochs else 1.0


_REGISTRY: dict[str, type] = {
    cls.__name__: cls for cls in (Linear, Constant, Step, Cosine, AllBulkAtEnd)
}


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    """Serialise a built-in schedule to ``{"name": ..., **fields}``."""
    if not dataclasses.is_dataclass(schedule) or type(schedule).__name__ not in _REGISTRY:
        raise TypeError(
            "The 'schedule' parameter of schedule_to_dict must be one of "
            f"{sorted(_REGISTRY)}. Got {type(schedule).__name__} instead."
        )
    fields = {f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule)}
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    return {"name": type(schedule).__name__, **fields}


def schedule_from_dict(data: Mapping[str, Any]) -> Schedule:
    """Inverse of :func:`schedule_to_dict`."""
    name = data.get("name")
    if name not in _REGISTRY:
        raise param_error("name", "schedule_from_dict", f"one of {sorted(_REGISTRY)}", name)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "name"}
    schedule: Schedule = _REGISTRY[name](**kwargs)
    return schedule
