"""Argument checking shared by the public API.

Messages follow one format so users always learn the parameter, what was
expected and what was given, e.g.
"The 'alpha' parameter of BEMA must be a float in (0, 0.5). Got 0.7 instead."
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_int", "check_real", "param_error"]


def param_error(name: str, owner: str, expected: str, got: Any) -> ValueError:
    """Build the standard ``ValueError`` for a bad parameter value."""
    return ValueError(f"The {name!r} parameter of {owner} must be {expected}. Got {got!r} instead.")


def check_real(
    value: Any,
    name: str,
    owner: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float after checking its type and interval.

    Raises ``TypeError`` for non-numbers (bools included) and ``ValueError``
    for values outside the interval or non-finite values.
    """
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    expected = f"a float in {interval}"
    if isinstance(value, bool) or (
        not isinstance(value, (int, float)) and not hasattr(value, "__float__")
    ):
        raise TypeError(
            f"The {name!r} parameter of {owner} must be {expected}. "
            f"Got {value!r} of type {type(value).__name__} instead."
        )
    x = float(value)
    if not math.isfinite(x):
        raise param_error(name, owner, expected, value)
    if low is not None and (x < low or (low_open and x == low)):
        raise param_error(name, owner, expected, value)
    if high is not None and (x > high or (high_open and x == high)):
        raise param_error(name, owner, expected, value)
    return x


def check_int(value: Any, name: str, owner: str, *, low: int | None = None) -> int:
    """Return ``value`` as an int after checking its type and lower bound."""
    expected = "an int" + ("" if low is None else f" >= {low}")
    if isinstance(value, bool) or (
        not isinstance(value, int) and not (hasattr(value, "__index__"))
    ):
        raise TypeError(
            f"The {name!r} parameter of {owner} must be {expected}. "
            f"Got {value!r} of type {type(value).__name__} instead."
        )
    v = int(value)
    if low is not None and v < low:
        raise param_error(name, owner, expected, value)
    return v
