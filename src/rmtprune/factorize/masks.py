"""Sparse layers: a fixed mask of zeros that stays zero through training, saving and loading.

:func:`apply_mask` zeroes the masked entries of a layer's weight and keeps them zero: a
forward-pre hook multiplies the weight by the mask before every forward pass (so every output
is computed by the sparse layer, whatever an optimizer did in between — momentum, weight
decay, a stale Adam state), and a ``state_dict`` pre-hook does the same before the weights are
read (so every checkpoint — ``torch.save``, Lightning, the Hugging Face Trainer,
:func:`rmtprune.save` — holds the exact zeros).  The layer stays the same module: its
parameters, the optimizer's references to them, and everything the user attached are kept.

The mask is a ``bool`` tensor of the weight's shape (``True`` = kept) held as the plain
attribute ``rmtprune_mask`` of the module, moved to the weight's device when they differ.
It is not a buffer, so the ``state_dict`` keys are those of the dense model: a sparse model
loads into a freshly built one, and :func:`restore_masks` re-creates the masks from the zeros
(what :func:`rmtprune.load` does for a file that stores the mask explicitly).

The gradients of masked entries are zero too (a tensor hook on the weight, re-registered by the
forward-pre hook on a deep copy or an unpickled model), so gradient clipping sees the sparse
layer's gradient and plain SGD, Adam and AdamW leave the zeros at zero.  An optimizer state from
before the mask (momentum) can still move a masked entry between ``optimizer.step()`` and the
next forward pass or ``state_dict()``; such a value is never used.

Example
-------
>>> import torch
>>> layer = torch.nn.Linear(4, 2)
>>> keep = torch.tensor([[True, False, True, False], [False, True, False, True]])
>>> apply_mask(layer, keep)
>>> with torch.no_grad():
...     _ = layer.weight.add_(1.0)  # an optimizer step fills the zeros ...
>>> _ = layer(torch.ones(1, 4))      # ... the next forward pass empties them again
>>> int((layer.weight != 0).sum()), nonzero_count(layer)  # weights; weights and biases
(4, 6)
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch
from torch import nn

__all__ = [
    "MASK_ATTRIBUTE",
    "apply_mask",
    "enforce_masks",
    "is_mask_hook",
    "kept_zeros",
    "mask_from_zeros",
    "mask_of",
    "masked_layers",
    "nonzero_count",
    "remove_mask",
    "restore_masks",
    "stored_parameters",
]

MASK_ATTRIBUTE = "rmtprune_mask"


def mask_of(module: nn.Module) -> torch.Tensor | None:
    """The layer's mask (``True`` = kept), or ``None`` for a layer without one."""
    mask = getattr(module, MASK_ATTRIBUTE, None)
    return mask if isinstance(mask, torch.Tensor) else None


class _GradMask:
    """Tensor hook on a masked weight: the gradient of a masked entry is zero (the mask is looked
    up at call time, so a moved or replaced mask is followed).  Not serialized (a deep copy or a
    pickled model gets a new one from its next forward pass)."""

    __torch_unserializable__ = True

    def __init__(self, module: nn.Module) -> None:
        self.module = weakref.ref(module)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        module = self.module()
        mask = None if module is None else mask_of(module)
        if mask is None or tuple(mask.shape) != tuple(grad.shape):
            return grad
        return grad.masked_fill(~mask.to(grad.device), 0)


def is_mask_hook(hook: Any) -> bool:
    """Whether a tensor hook is the gradient mask of a sparse layer (not the user's)."""
    return isinstance(hook, _GradMask)


def _grad_hooks(weight: torch.Tensor) -> list[Any]:
    hooks = getattr(weight, "_backward_hooks", None) or {}
    return [k for k, v in hooks.items() if isinstance(v, _GradMask)]


def _hook_gradient(module: nn.Module, weight: torch.Tensor) -> None:
    """Register :class:`_GradMask` on ``weight`` unless one for ``module`` is there."""
    if not weight.requires_grad or not weight.is_leaf:
        return
    hooks = weight._backward_hooks or {}
    if not any(isinstance(v, _GradMask) and v.module() is module for v in hooks.values()):
        weight.register_hook(_GradMask(module))


def _enforce(module: nn.Module) -> None:
    mask = mask_of(module)
    weight = getattr(module, "weight", None)
    if mask is None or not isinstance(weight, torch.Tensor):
        return
    if _is_dtensor(weight):
        raise RuntimeError(
            f"a {type(module).__name__} with a sparsity mask holds a sharded weight (a DTensor: "
            "torch.distributed.fsdp.fully_shard or tensor parallelism); a mask cannot be kept on "
            "a shard, so sparse layers are not supported there. Train a sparse model under DDP "
            "(rmtprune.integrations.ddp), or remove the masks "
            "(rmtprune.factorize.masks.remove_mask) before sharding"
        )
    _hook_gradient(module, weight)
    if mask.device != weight.device:
        mask = mask.to(weight.device)
        object.__setattr__(module, MASK_ATTRIBUTE, mask)
    if tuple(mask.shape) != tuple(weight.shape):
        raise RuntimeError(
            f"the sparsity mask of a {type(module).__name__} has shape {tuple(mask.shape)} but "
            f"its weight now has shape {tuple(weight.shape)}; remove the mask "
            "(rmtprune.factorize.masks.remove_mask) before changing the layer's shape"
        )
    with torch.no_grad():
        weight.masked_fill_(~mask, 0)


def _is_dtensor(tensor: torch.Tensor) -> bool:
    # a DTensor exists only once its module is imported (importing it here costs a second)
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def _forward_pre_hook(module: nn.Module, args: Any) -> None:
    _enforce(module)


def _state_dict_pre_hook(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    _enforce(module)


def apply_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Zero ``module.weight`` where ``mask`` is ``False`` and keep it zero (see the module doc).

    A layer that has a mask already gets the intersection (an entry once removed stays
    removed), so a schedule of growing sparsity never revives a weight.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"a {type(module).__name__} has no weight tensor to mask")
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(
            f"the mask has shape {tuple(mask.shape)}; the weight of the "
            f"{type(module).__name__} has shape {tuple(weight.shape)}"
        )
    mask = mask.to(device=weight.device, dtype=torch.bool)
    old = mask_of(module)
    if old is not None:
        mask = mask & old.to(mask.device)
    object.__setattr__(module, MASK_ATTRIBUTE, mask)
    if _forward_pre_hook not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_forward_pre_hook)
    if _state_dict_pre_hook not in module._state_dict_pre_hooks.values():
        module.register_state_dict_pre_hook(_state_dict_pre_hook)
    _enforce(module)


def remove_mask(module: nn.Module) -> torch.Tensor | None:
    """Remove the layer's mask and its hooks (the zeros stay until trained); the old mask."""
    mask = mask_of(module)
    for store, hook in (
        (module._forward_pre_hooks, _forward_pre_hook),
        (module._state_dict_pre_hooks, _state_dict_pre_hook),
    ):  # found by identity, so a deep copy's hooks are its own
        for key in [k for k, v in store.items() if v is hook]:
            del store[key]
    weight = getattr(module, "weight", None)
    hooks = getattr(weight, "_backward_hooks", None)
    if isinstance(weight, torch.Tensor) and hooks is not None:
        for key in _grad_hooks(weight):
            del hooks[key]
    module.__dict__.pop(MASK_ATTRIBUTE, None)
    return mask


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule of ``model`` with a mask, by name."""
    return {name: m for name, m in model.named_modules() if mask_of(m) is not None}


def enforce_masks(model: nn.Module) -> None:
    """Zero every masked entry of ``model`` now (what the hooks do before forward / saving)."""
    for module in masked_layers(model).values():
        _enforce(module)


def restore_masks(model: nn.Module, names: Any, kept: Any = None) -> None:
    """Re-create the masks of the named layers from their zeros (after loading a sparse model
    into a freshly built one by ``load_state_dict`` or ``from_pretrained``).

    ``kept`` (:func:`kept_zeros` of the model when it was saved) names, per layer, the flat
    positions of weights that were kept although exactly 0.0: they stay kept, so the masks are
    those that were saved. Without it such a weight is masked (a zero cannot tell).
    """
    kept = kept or {}
    for name in names:
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"layer {name!r} has no weight tensor to mask")
        apply_mask(module, mask_from_zeros(weight.detach(), kept.get(name, ()), name))


def mask_from_zeros(weight: torch.Tensor, kept: Any = (), layer: str = "") -> torch.Tensor:
    """The mask of a sparse weight read back: its nonzeros, and the flat positions ``kept``
    (kept entries that are exactly 0.0; :func:`kept_zeros`).

    >>> mask_from_zeros(torch.tensor([[0.0, 2.0], [0.0, 0.0]]), [2]).tolist()
    [[False, True], [True, False]]
    """
    mask = weight != 0
    positions = [int(i) for i in kept]
    if positions:
        if min(positions) < 0 or max(positions) >= mask.numel():
            raise ValueError(
                f"layer {layer!r}: kept zero positions must lie in [0, {mask.numel()}). "
                f"Got {positions[:5]}"
            )
        mask.view(-1)[torch.tensor(positions, dtype=torch.long)] = True
    return mask


def kept_zeros(model: nn.Module) -> dict[str, list[int]]:
    """Per sparse layer, the flat positions of kept weights that are exactly 0.0 (what the
    zeros of a checkpoint cannot tell from masked ones); layers without any are left out.

    >>> layer = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    >>> apply_mask(layer, torch.tensor([[True, False], [True, True]]))
    >>> kept_zeros(torch.nn.Sequential(layer))
    {'0': [0]}
    """
    found = {}
    for name, module in masked_layers(model).items():
        mask = mask_of(module)
        weight = getattr(module, "weight", None)
        if mask is None or not isinstance(weight, torch.Tensor):
            continue
        zero = (weight.detach() == 0).reshape(-1) & mask.reshape(-1).to(weight.device)
        if bool(zero.any()):
            found[name] = zero.nonzero().reshape(-1).tolist()
    return found


def nonzero_count(module: nn.Module, *, recurse: bool = False) -> int:
    """Nonzero entries of the layer's own parameters (weight and bias), masks applied; with
    ``recurse=True`` of every parameter of ``module`` and its children (shared ones once)."""
    if recurse:
        enforce_masks(module)
    else:
        _enforce(module)
    return sum(int(torch.count_nonzero(p.detach())) for p in module.parameters(recurse=recurse))


def stored_parameters(model: nn.Module) -> int:
    """Parameters :func:`rmtprune.save` stores as values: every entry of the model's parameters
    (shared ones once) except the masked zeros of sparse layers (kept in a bitmask instead)."""
    total = sum(p.numel() for p in model.parameters())
    masks = [mask_of(x) for x in masked_layers(model).values()]
    return total - sum(int((~m).sum()) for m in masks if m is not None)
