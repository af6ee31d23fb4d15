"""The layers a model-level criterion may change: every adapted layer not tied or too small.

Example
-------
>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
>>> chosen, skipped = candidate_layers(model)
>>> list(chosen), skipped["1"][1]
(['0'], 'too small: min(m, n) = 8 < min_dim = 32')
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from rmtprune.factorize.registry import get_adapter

__all__ = ["candidate_layers"]


def candidate_layers(
    model: nn.Module,
    layers: Sequence[str] | str | None = None,
    *,
    min_dim: int = 32,
    min_params: int = 0,
) -> tuple[dict[str, nn.Module], dict[str, tuple[nn.Module, str]]]:
    """Candidate layers ``{name: module}`` and skipped ones ``{name: (module, reason)}``.

    Every module with a registered adapter (not inside another such module) is a candidate
    unless it is unsupported, shares a parameter with another module, is smaller than
    ``min_dim`` / ``min_params``, or does not match ``layers`` (names or ``fnmatch``
    patterns).
    """
    owners: dict[int, set[str]] = {}
    for name, mod in model.named_modules():
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(name)
    patterns = [layers] if isinstance(layers, str) else None if layers is None else list(layers)
    chosen: dict[str, nn.Module] = {}
    skipped: dict[str, tuple[nn.Module, str]] = {}
    covered: list[str] = []
    for name, mod in model.named_modules():
        adapter = get_adapter(mod)
        if adapter is None or any(name.startswith(c + ".") for c in covered):
            continue
        covered.append(name)
        if patterns is not None and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        reason = adapter.unsupported_reason(mod) or ""
        tied = [o for p in mod.parameters() for o in owners[id(p)] if not _inside(o, name)]
        if tied:
            reason = f"weight shared with {sorted(tied)[0]} (tied parameters)"
        elif not reason:
            m, n = adapter.matrix_shape(mod)
            if min(m, n) < min_dim:
                reason = f"too small: min(m, n) = {min(m, n)} < min_dim = {min_dim}"
            elif m * n < min_params:
                reason = f"too small: m·n = {m * n} < min_params = {min_params}"
        if reason:
            skipped[name] = (mod, reason)
        else:
            chosen[name] = mod
    if patterns is not None:
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(n, pat) for n in [*chosen, *skipped]):
                raise ValueError(
                    f"The 'layers' parameter names {pat!r}, which matches no weight layer. "
                    f"Valid names: {covered}"
                )
    return chosen, skipped


def _inside(other: str, name: str) -> bool:
    return other == name or other.startswith(name + ".")
