"""Which weight layers :func:`rmtprune.analyze` and :func:`rmtprune.prune` look at.

A :class:`Select` names layers to include and to exclude (exact names or
``fnmatch`` patterns such as ``"encoder.*"``) and sets two size floors.  Layers
left out by ``include`` / ``exclude`` do not appear in the report; layers below
a floor appear as skipped ("too small: ...").  :func:`weight_layers` lists every
weight layer of a model with the reason an unsupported one cannot be pruned.

Example
-------
>>> from torch import nn
>>> from rmtprune.pruning.selection import Select, weight_layers
>>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
>>> select = Select(exclude="2")
>>> select.choose([name for name, _, _ in weight_layers(model)])
['0']
>>> select.size_reason(64, 10)
'too small: min(m, n) = 10 < min_dim = 32'
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from rmtprune._util.validation import check_int
from rmtprune.factorize.registry import get_adapter

__all__ = [
    "DEFAULT_MIN_DIM",
    "DEFAULT_MIN_PARAMS",
    "Patterns",
    "Select",
    "matches",
    "weight_layers",
]

DEFAULT_MIN_DIM = 32
"""Smallest ``min(m, n)`` fitted by default.

The fit statistic ``D`` of a pure-noise layer fluctuates like ``0.27 / sqrt(p)`` at its 99th
percentile (measured: 0.12 for ``p = 10``, 0.038 for ``p = 50``), so below ``p ≈ 30`` the default
cutoff 0.05 would reject honest noise.  Smaller layers are reported as "too small".
"""
DEFAULT_MIN_PARAMS = 0
"""Smallest ``m · n`` fitted by default (the authors used 300,000 in one code path)."""

Patterns = str | Sequence[str] | None
"""One layer name or pattern, several, or ``None``."""


def matches(name: str, patterns: str | Iterable[str]) -> bool:
    """Whether the layer ``name`` is one of ``patterns`` or matches one (``fnmatch``, case kept).

    The one glob matcher of layer names: :class:`Select`, the checkpoint routes
    (:mod:`rmtprune.ondisk`) and ``assume_linear`` / ``assume_conv2d`` all use it.

    >>> matches("encoder.0", "encoder.*"), matches("encoder.0", ["Encoder.*", "dec*"])
    (True, False)
    """
    items = [patterns] if isinstance(patterns, str) else patterns
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in items)


def _patterns(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        items = [value]
    if not all(isinstance(v, str) for v in items):
        raise TypeError(
            f"The {name!r} parameter of Select must be a layer name or pattern, or a sequence "
            f"of them. Got {value!r} instead."
        )
    return tuple(items)


@dataclass(frozen=True)
class Select:
    """A layer selection: names or patterns to include and exclude, and size floors.

    Parameters
    ----------
    include : str or sequence of str, optional
        Layer names or ``fnmatch`` patterns to look at; ``None`` (default) means all.
        Each must match at least one weight layer.
    exclude : str or sequence of str
        Names or patterns left out (applied after ``include``); each must match a layer.
    min_dim : int
        Layers with ``min(m, n) < min_dim`` are reported as skipped ("too small").
    min_params : int
        Layers with ``m · n < min_params`` are reported as skipped.

    Examples
    --------
    >>> Select(include="encoder.*", exclude=["encoder.0.*"]).include
    ('encoder.*',)
    >>> Select(min_dim=0)
    Traceback (most recent call last):
    ...
    ValueError: The 'min_dim' parameter of Select must be an int >= 1. Got 0 instead.
    """

    include: str | Sequence[str] | None = None  # stored as a tuple (or None)
    exclude: str | Sequence[str] = ()  # stored as a tuple
    min_dim: int = DEFAULT_MIN_DIM
    min_params: int = DEFAULT_MIN_PARAMS

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", _patterns(self.include, "include"))
        object.__setattr__(self, "exclude", _patterns(self.exclude, "exclude") or ())
        object.__setattr__(self, "min_dim", check_int(self.min_dim, "min_dim", "Select", low=1))
        min_params = check_int(self.min_params, "min_params", "Select", low=0)
        object.__setattr__(self, "min_params", min_params)

    def choose(self, names: Sequence[str]) -> list[str]:
        """The names kept, in the given order.

        Raises ``ValueError`` when a pattern of ``include`` or ``exclude`` matches no
        name (a typo would otherwise silently select nothing, or everything).
        """
        chosen = list(names) if self.include is None else self._matching(names, "include")
        dropped = set(self._matching(names, "exclude", patterns=self.exclude))
        return [n for n in chosen if n not in dropped]

    def _matching(
        self, names: Sequence[str], param: str, patterns: str | Sequence[str] | None = None
    ) -> list[str]:
        found: set[str] = set()
        for pat in _patterns(self.include if patterns is None else patterns, param) or ():
            matched = [n for n in names if matches(n, pat)]
            if not matched:
                raise ValueError(
                    f"The {param!r} parameter names {pat!r}, which matches no weight layer. "
                    f"Valid names: {list(names)}"
                )
            found.update(matched)
        return [n for n in names if n in found]

    def size_reason(self, m: int, n: int) -> str:
        """``""`` when an ``m × n`` layer is large enough, else why it is skipped."""
        if min(m, n) < self.min_dim:
            return f"too small: min(m, n) = {min(m, n)} < min_dim = {self.min_dim}"
        if m * n < self.min_params:
            return f"too small: m·n = {m * n} < min_params = {self.min_params}"
        return ""


def _owners(model: nn.Module) -> dict[int, list[tuple[str, frozenset[int]]]]:
    """Every place holding each tensor: ``{id: [(module name, ids of the modules on its path)]}``.

    All names are walked, a module reachable under two names included, and a tensor counts
    whether held as a parameter or as a buffer (a tied entry of a file's shell).
    """
    owners: dict[int, list[tuple[str, frozenset[int]]]] = {}

    def walk(module: nn.Module, name: str, path: frozenset[int]) -> None:
        path = path | {id(module)}
        for held in [*module._parameters.values(), *module._buffers.values()]:
            if held is not None:
                owners.setdefault(id(held), []).append((name, path))
        for leaf, child in module._modules.items():
            if child is not None and id(child) not in path:  # a cycle is walked once
                walk(child, f"{name}.{leaf}" if name else leaf, path)

    walk(model, "", frozenset())
    return owners


def _shared_reason(module: nn.Module, owners: dict[int, list[tuple[str, frozenset[int]]]]) -> str:
    """Why ``module``'s weights cannot be pruned alone: a tensor of it is also held somewhere
    that is not reached through ``module`` itself (under any of its names)."""
    for p in module.parameters():
        others = {where for where, path in owners.get(id(p), []) if id(module) not in path}
        if others:
            return f"weight shared with {sorted(others)[0]} (tied parameters)"
    return ""


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """All weight layers: ``(name, module, reason)``, ``reason`` set when it cannot be pruned.

    A module with a registered adapter is one layer (its children are not visited);
    any other module owning a parameter of 2+ dimensions is listed as unsupported.
    """
    owners = _owners(model)
    found: list[tuple[str, nn.Module, str]] = []
    covered: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in covered):
            continue
        adapter = get_adapter(mod)
        if adapter is None:
            if any(p.dim() >= 2 for p in mod.parameters(recurse=False)):
                found.append((name, mod, f"unsupported layer type {type(mod).__name__}"))
            continue
        covered.append(name)
        # the adapter refuses e.g. MultiheadAttention's out_proj
        reason = _shared_reason(mod, owners) or adapter.unsupported_reason(mod) or ""
        found.append((name, mod, reason))
    return found
