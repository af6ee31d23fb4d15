"""The older keywords of ``prune`` / ``analyze`` / ``SpectralPruner``, mapped onto objects.

``prune(model, bulk_keep=0.3, min_dim=64)`` means
``prune(model, criterion=MPCriterion(bulk_keep=0.3), select=Select(min_dim=64))``, and
``prune(model, calibration=batches, max_output_change=0.1)`` means
``prune(model, criterion=Calibrated(batches, 0.1))``.
The keywords are deprecated: they still work, and each one given emits a
``DeprecationWarning`` (:func:`warn_deprecated`) naming the object to pass instead.
Giving one of them together with ``criterion=`` or ``select=`` is an error.
The project itself never uses them (its tests turn these warnings into errors).

Example
-------
>>> resolve_criterion(None, {"bulk_keep": 0.5}, "prune")
MPCriterion(bulk_keep=0.5, min_rank=None, alpha=0.25, beta=0.1, fit_cutoff=0.05)
>>> resolve_select(None, {"min_dim": 8}, "prune").min_dim
8
>>> replacement("layers")
'select=rmtprune.Select(include=...)'
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any

from rmtprune._util.validation import check_int, check_real
from rmtprune.pruning.criteria import Criterion, LayerCriterion, ModelCriterion, MPCriterion
from rmtprune.pruning.selection import Select

__all__ = [
    "MP_KEYWORDS",
    "SELECT_KEYWORDS",
    "check_criterion",
    "replacement",
    "resolve_criterion",
    "resolve_select",
    "warn_deprecated",
    "warn_legacy",
]

MP_KEYWORDS = ("bulk_keep", "min_rank", "alpha", "beta", "fit_cutoff")
"""Older keywords that are parameters of :class:`MPCriterion`."""
SELECT_KEYWORDS = ("layers", "min_dim", "min_params")
"""Older keywords that are parameters of :class:`Select` (``layers`` is ``include``)."""


def warn_deprecated(message: str) -> None:
    """Emit ``DeprecationWarning(message)`` attributed to the first caller outside rmtprune.

    The warning points at the user's line however deep inside the package it is raised
    (a callback's options reach :class:`SpectralPruner` through two frames of its own).
    """
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("rmtprune."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def replacement(name: str, *, calibrated: bool = False) -> str:
    """What to pass instead of the older keyword ``name`` (``calibrated``: ``min_rank`` of a
    prune with ``max_output_change``, which bounds the :class:`Calibrated` criterion).

    ``max_output_change`` of :func:`rmtprune.prune` (with ``calibration=``) is the older
    spelling of ``criterion=Calibrated(calibration, max_output_change, base=criterion)``.
    """
    if name == "layers":
        return "select=rmtprune.Select(include=...)"
    if name in SELECT_KEYWORDS:
        return f"select=rmtprune.Select({name}=...)"
    if name == "min_rank" and calibrated:
        return (
            "criterion=rmtprune.Calibrated(calibration, max_output_change, min_rank=...) "
            "in place of calibration= and max_output_change="
        )
    if name == "max_output_change":
        return (
            "criterion=rmtprune.Calibrated(calibration, max_output_change) in place of "
            "calibration= and max_output_change= (a criterion= given becomes its base=)"
        )
    return f"criterion=rmtprune.MPCriterion({name}=...)"


def warn_legacy(owner: str, legacy: Mapping[str, Any], *, calibrated: bool = False) -> None:
    """One ``DeprecationWarning`` per older keyword of ``owner`` given (not ``None``)."""
    for name, value in legacy.items():
        if value is not None:
            instead = replacement(name, calibrated=calibrated)
            warn_deprecated(f"{owner}({name}=...) is deprecated; pass {instead}.")


def _conflict(name: str, kind: str, owner: str, hint: str) -> ValueError:
    return ValueError(
        f"The {name!r} parameter of {owner} cannot be combined with {kind!r}; "
        f"pass it to the {kind} object instead ({hint})."
    )


def check_criterion(criterion: Any, owner: str) -> Criterion:
    """``criterion`` if it has ``decide`` or ``decide_model``, else ``TypeError``."""
    if isinstance(criterion, (LayerCriterion, ModelCriterion)):
        return criterion
    raise TypeError(
        f"The 'criterion' parameter of {owner} must have a decide(layer) or a "
        f"decide_model(model, layers) method (see rmtprune.pruning.criteria). "
        f"Got {criterion!r} of type {type(criterion).__name__} instead."
    )


def _check_mp(given: Mapping[str, Any], owner: str) -> None:
    """Check the older keywords with ``owner`` named in the message."""
    if "bulk_keep" in given:
        check_real(given["bulk_keep"], "bulk_keep", owner, low=0.0, high=1.0)
    if "min_rank" in given:
        check_int(given["min_rank"], "min_rank", owner, low=1)
    if "alpha" in given:
        check_real(given["alpha"], "alpha", owner, low=0.0, high=0.5, low_open=True, high_open=True)
    if "beta" in given:
        check_real(given["beta"], "beta", owner, low=0.0, high=1.0, low_open=True, high_open=True)
    if "fit_cutoff" in given:
        cutoff = given["fit_cutoff"]
        for value in cutoff.values() if isinstance(cutoff, Mapping) else [cutoff]:
            check_real(value, "fit_cutoff", owner, low=0.0, low_open=True)


def resolve_criterion(criterion: Any, legacy: Mapping[str, Any], owner: str) -> Criterion:
    """``criterion``, or an :class:`MPCriterion` built from the older keywords given."""
    given = {k: v for k, v in legacy.items() if v is not None}
    if criterion is not None:
        for name in given:
            raise _conflict(name, "criterion", owner, f"MPCriterion({name}=...)")
        return check_criterion(criterion, owner)
    _check_mp(given, owner)
    return MPCriterion(**given)


def resolve_select(select: Any, legacy: Mapping[str, Any], owner: str) -> Select:
    """``select``, or a :class:`Select` built from ``layers``, ``min_dim``, ``min_params``."""
    given = {k: v for k, v in legacy.items() if v is not None}
    if select is not None:
        for name in given:
            hint = "Select(include=...)" if name == "layers" else f"Select({name}=...)"
            raise _conflict(name, "select", owner, hint)
        if not isinstance(select, Select):
            raise TypeError(
                f"The 'select' parameter of {owner} must be a rmtprune.Select. "
                f"Got {type(select).__name__} instead."
            )
        return select
    if "min_dim" in given:
        check_int(given["min_dim"], "min_dim", owner, low=1)
    if "min_params" in given:
        check_int(given["min_params"], "min_params", owner, low=0)
    if "layers" in given:
        given["include"] = _check_layers(given.pop("layers"), owner)
    return Select(**given)


def _check_layers(value: Any, owner: str) -> tuple[str, ...]:
    """``layers=``: one layer name or pattern, or a collection of them (``TypeError`` else)."""
    items: Any = [value] if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        items = None
    if items is None or isinstance(value, Mapping) or not all(isinstance(v, str) for v in items):
        raise TypeError(
            f"The 'layers' parameter of {owner} must be a layer name or a sequence of layer "
            f"names. Got {value!r} of type {type(value).__name__} instead."
        )
    return tuple(items)
