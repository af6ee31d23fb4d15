"""Guards of the model walker: layers it must not touch, arguments it must refuse, and a check
that every change it reports really changed the layer.

* **Parametrized weights** (``torch.nn.utils.parametrize``, ``parametrizations.spectral_norm``
  and ``weight_norm``, legacy ``nn.utils.weight_norm``).  The weight such a layer uses is
  recomputed from other tensors at every forward pass, so writing a truncated matrix into it
  changes nothing, and replacing the layer silently drops the constraint.  Such layers are
  analysed through their effective weight (read with the parametrizations in eval mode, so
  spectral norm's power-iteration buffers are not advanced) and skipped by pruning with the
  reason; :func:`remove_parametrizations` is the explicit opt-in that bakes the effective
  weights in, after which the layers prune like any other.
* **Weights recomputed by a hook** (``torch.nn.utils.prune`` masks: ``weight_orig`` times
  ``weight_mask`` at every forward pass; legacy ``weight_norm`` and ``spectral_norm``).  Read
  as the weight the next forward pass computes; such layers are skipped by pruning with the
  reason (a low-rank weight cannot stay masked: call ``torch.nn.utils.prune.remove`` first),
  and :func:`copy_model` copies them.
* **What is attached to a layer** (hooks, frozen weights, mode; see
  :mod:`rmtprune.factorize.carry`) follows it to its replacement; a layer whose attachments
  cannot follow (a legacy backward hook, hooks on a factor) is skipped with the reason.
* **Weights that cannot be analysed** (meta device, integer or complex dtypes, NaN/Inf) skip
  that layer with a reason instead of aborting the whole model.
* **The effect check**: after a real truncation or split the walker compares the layer's
  effective weight with the kept singular values, and checks that the replacement carries
  the layer's hooks, ``requires_grad`` flags and mode; a layer whose function did not change
  (or that lost what was attached to it) is restored and reported as skipped, never as
  pruned.

Example
-------
>>> import torch
>>> layer = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 3))
>>> parametrization_reason(layer)[:38]
'weight is parametrized (spectral_norm)'
>>> remove_parametrizations(layer)
['']
>>> parametrization_reason(layer) is None
True
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from rmtprune.factorize.carry import carried_reason, carry_reason, weight_hooks
from rmtprune.factorize.peft_guard import guard_peft
from rmtprune.factorize.registry import get_adapter, set_submodule
from rmtprune.factorize.svd import truncated_svd
from rmtprune.pruning.candidate import Candidate

__all__ = [
    "apply_rank",
    "check_effect",
    "check_layer_names",
    "copy_model",
    "frozen_parametrizations",
    "parametrization_reason",
    "prune_reason",
    "remove_parametrizations",
    "weight_skip_reason",
]

_KNOWN = {"_SpectralNorm": "spectral_norm", "_WeightNorm": "weight_norm"}


def _plists(module: nn.Module) -> list[Any]:
    """The ``ParametrizationList`` of each parametrized tensor of ``module``."""
    plists: Any = module.parametrizations
    return list(plists.values())


def parametrization_reason(module: nn.Module) -> str | None:
    """Why pruning ``module`` would be undone by a parametrization, or ``None``."""
    kinds: list[str] = []
    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            for plist in _plists(sub):
                kinds += [_KNOWN.get(type(p).__name__, type(p).__name__) for p in plist]
        kinds += [kind for kind, _, _ in weight_hooks(sub) if kind.startswith("legacy")]
    if not kinds:
        return None
    return (
        f"weight is parametrized ({', '.join(dict.fromkeys(kinds))}): pruning would be undone "
        "by the parametrization; call rmtprune.remove_parametrizations(model) first to prune "
        "the effective weight"
    )


def prune_reason(module: nn.Module) -> str | None:
    """Why pruning must leave ``module`` as it is (parametrized, masked, or with attachments
    that cannot follow it to a replacement), or ``None``."""
    return parametrization_reason(module) or carry_reason(module)


def _recompute(hook: Any, module: nn.Module) -> torch.Tensor:
    """The tensor a weight-recomputing forward-pre hook would set (no power iteration)."""
    if isinstance(hook, WeightNorm):
        return hook.compute_weight(module)
    if isinstance(hook, SpectralNorm):
        return hook.compute_weight(module, do_power_iteration=False)
    return hook.apply_mask(module)  # torch.nn.utils.prune


@contextlib.contextmanager
def frozen_parametrizations(model: nn.Module) -> Iterator[None]:
    """Put every parametrization module in eval mode for the duration (restored after).

    Tensors recomputed by a forward-pre hook (``torch.nn.utils.prune`` masks, legacy
    ``weight_norm`` / ``spectral_norm``) are set to the value the next forward pass computes
    (a stale one, e.g. after an optimizer step, would be read otherwise) and set back after.
    """
    changed: list[nn.Module] = []
    for sub in model.modules():
        if parametrize.is_parametrized(sub):
            for plist in _plists(sub):
                changed += [p for p in plist if p.training]
    stale = [(sub, name, hook) for sub in model.modules() for _, name, hook in weight_hooks(sub)]
    previous = [getattr(sub, name) for sub, name, _ in stale]
    for p in changed:
        p.train(False)
    try:
        with torch.no_grad():
            for sub, name, hook in stale:
                setattr(sub, name, _recompute(hook, sub))
        yield
    finally:
        for p in changed:
            p.train(True)
        for (sub, name, hook), value in zip(stale, previous, strict=True):
            if any(h is hook for h in sub._forward_pre_hooks.values()):  # not removed meanwhile
                setattr(sub, name, value)


def remove_parametrizations(model: nn.Module) -> list[str]:
    """Bake every weight parametrization of ``model`` into a plain parameter, in place.

    Uses ``torch.nn.utils.parametrize.remove_parametrizations(..., leave_parametrized=True)``,
    ``torch.nn.utils.remove_weight_norm`` and ``torch.nn.utils.remove_spectral_norm``, so each
    layer keeps computing what it computed (its effective weight) but can now be pruned.
    Spectral norm's estimate is read in eval mode (its power iteration is not advanced).
    ``torch.nn.utils.prune`` masks are not removed (that is a decision about the mask: call
    ``torch.nn.utils.prune.remove``).  Returns the names of the modules changed.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> _ = torch.nn.utils.parametrizations.weight_norm(model[0])
    >>> remove_parametrizations(model), type(model[0]).__name__
    (['0'], 'Linear')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "The 'model' parameter of remove_parametrizations must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    changed: list[str] = []
    with frozen_parametrizations(model):  # no no_grad: torch needs requires_grad to decide
        for name, sub in list(model.named_modules()):
            if parametrize.is_parametrized(sub):
                for tensor_name in list(sub.parametrizations):
                    parametrize.remove_parametrizations(sub, tensor_name, leave_parametrized=True)
                changed.append(name)
            for kind, tensor_name, _ in weight_hooks(sub):
                if kind == "legacy weight_norm":
                    torch.nn.utils.remove_weight_norm(sub, tensor_name)
                elif kind == "legacy spectral_norm":
                    torch.nn.utils.remove_spectral_norm(sub, tensor_name)
                else:
                    continue
                changed.append(name)
    return list(dict.fromkeys(changed))


_TENSOR_HOOKS = (
    ("_backward_hooks", "register_hook"),
    ("_post_accumulate_grad_hooks", "register_post_accumulate_grad_hook"),
)


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for models with tensors recomputed by a hook.

    Legacy ``nn.utils.weight_norm`` / ``spectral_norm`` and ``torch.nn.utils.prune`` masks
    hold their computed weight as a non-leaf tensor, which ``deepcopy`` refuses; it is set
    aside during the copy and recomputed in the copy (from the copied tensors).  Hooks on
    parameters (``register_hook``, ``register_post_accumulate_grad_hook``), which
    ``Parameter.__deepcopy__`` drops, are registered on the copy's parameters.
    """
    stash = [
        (sub, name, getattr(sub, name))
        for sub in model.modules()
        for _, name, _ in weight_hooks(sub)
        if name in vars(sub)
    ]
    for sub, name, _ in stash:
        delattr(sub, name)
    try:
        copied = copy.deepcopy(model)
    finally:
        for sub, name, value in stash:
            setattr(sub, name, value)
    for sub in copied.modules():
        for _, name, hook in weight_hooks(sub):
            setattr(sub, name, _recompute(hook, sub))
    for param, twin in zip(model.parameters(), copied.parameters(), strict=True):
        for attr, register in _TENSOR_HOOKS:
            hooks = getattr(param, attr, None) or {}
            if hooks and not getattr(twin, attr, None):  # deepcopy dropped them
                for hook in hooks.values():
                    getattr(twin, register)(hook)
    return copied


def weight_skip_reason(module: nn.Module) -> str | None:
    """Why the weights of ``module`` cannot be analysed (meta device, dtype), or ``None``."""
    for name, tensor in module.named_parameters():
        if tensor.is_meta:
            return f"weight {name!r} is on the meta device (not materialized); load real weights"
        if not tensor.is_floating_point():
            return (
                f"unsupported dtype {tensor.dtype} of {name!r}: only real floating-point "
                "weights are analysed"
            )
    return None


def check_layer_names(
    value: Any, name: str, owner: str, valid: Sequence[str] | None = None
) -> list[str] | None:
    """Check ``layers=``/``ranks=``: ``None``, a string or a collection of strings.

    With ``valid`` (for ``ranks=``), ``value`` must be a mapping whose every key is one of
    the ``valid`` names; a misspelled name raises as a misspelled ``layers=`` pattern does.
    """
    if value is None:
        return None
    if valid is not None and not isinstance(value, Mapping):
        raise TypeError(
            f"The {name!r} parameter of {owner} must be a mapping from layer names to ints. "
            f"Got {value!r} of type {type(value).__name__} instead."
        )
    items = [value] if isinstance(value, str) else value
    if isinstance(value, Mapping):
        items = list(value)
    if not isinstance(items, (list, tuple, set, frozenset, Mapping)) or not all(
        isinstance(v, str) for v in items
    ):
        raise TypeError(
            f"The {name!r} parameter of {owner} must be a layer name or a sequence of layer "
            f"names. Got {value!r} of type {type(value).__name__} instead."
        )
    for item in items:
        if valid is not None and item not in valid:
            raise ValueError(
                f"The {name!r} parameter of {owner} names {item!r}, which matches no weight "
                f"layer. Valid names: {list(valid)}"
            )
    return list(items)


def _energy(matrix: torch.Tensor) -> float:
    return float(matrix.detach().to("cpu", torch.float64).square().sum())


def check_effect(
    model: nn.Module, name: str, old: nn.Module, before: float, kept: torch.Tensor
) -> str | None:
    """After pruning layer ``name``: ``None`` if its effective weight changed and the layer
    kept what was attached to it; otherwise put ``old`` back and say why.

    No effect means: the squared Frobenius norm of the effective weight (the weight the next
    forward pass computes, a hook-recomputed one included) is still ``before`` (within
    rounding) instead of that of the kept singular values ``kept``.  A replacement that lost
    the hooks, ``requires_grad`` flags or mode of ``old``
    (:func:`rmtprune.factorize.carry.carried_reason`) is undone as well.

    ``before`` is the squared Frobenius norm of the effective weight before the change.
    """
    new = model.get_submodule(name)
    lost = carried_reason(old, new)
    if lost is not None:
        set_submodule(model, name, old, carry=False)
        return f"{lost}; layer left as it was"
    adapter = get_adapter(new)
    if adapter is None:
        return None
    with frozen_parametrizations(new):
        matrix = adapter.weight_matrix(new)
    after = _energy(matrix)
    expected = float(kept.detach().to("cpu", torch.float64).square().sum())
    eps = torch.finfo(matrix.dtype).eps if matrix.is_floating_point() else 0.0
    tol = max(before, expected) * max(1e-6, 50 * eps)
    if abs(after - before) > tol or abs(after - expected) <= tol:
        return None  # changed, or the change is too small to tell from rounding
    if new is not old:
        set_submodule(model, name, old, carry=False)
    return (
        "pruning had no effect on the layer's effective weight (its weight is computed from "
        "other tensors); layer left as it was"
    )


def apply_rank(
    c: Candidate, r: int, do_split: bool, model: nn.Module, factors: Any = None
) -> str | None:
    """Truncate or split layer ``c`` to rank ``r``; ``None``, or why it had no effect.

    ``factors`` (a criterion's own ``(u, s, vh)``, e.g. a whitened SVD) win over the
    plain SVD of the weight.

    A layer whose effective weight did not change (a weight computed from other tensors)
    is put back as it was (:func:`check_effect`).
    """
    assert c.adapter is not None and c.view is not None and c.view.matrix is not None
    adapter = c.adapter
    before = float(c.view.matrix.detach().to(torch.float64).square().sum())
    u, s, vh = factors if factors is not None else truncated_svd(c.view.matrix, r)
    # the kept energy: the singular values, or the product itself for non-orthonormal factors
    kept = s if factors is None else ((u * s) @ vh).flatten()
    if not do_split and adapter.current_rank(c.module) is None:
        adapter.truncate(c.module, u, s, vh)  # same Parameter objects: optimizer state survives
    else:
        set_submodule(model, c.name, adapter.rebuild(c.module, u, s, vh, split=do_split))
    no_effect = check_effect(model, c.name, c.module, before, kept)
    if no_effect is None:  # in a PEFT model: exact merges, and an adapter-only save refuses
        guard_peft(model, model.get_submodule(c.name))
    return no_effect
