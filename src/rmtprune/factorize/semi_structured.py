"""2:4-sparse Linear layers in PyTorch's semi-structured format, for GPUs that accelerate it.

:func:`to_semi_structured` turns the weight of every ``nn.Linear`` whose mask
(:mod:`rmtprune.factorize.masks`, made by ``rmtprune.Sparsity(pattern="2:4")``) keeps exactly
two of every four consecutive inputs into ``torch.sparse.to_sparse_semi_structured(weight)``: the
format NVIDIA GPUs of compute capability 8.0 and later (Ampere, Hopper) multiply with sparse
tensor cores.  The mask is removed (the format itself holds the pattern).

**Untested on a GPU**: this project's machines have none.  What is tested is everything that
happens before the conversion — a layer that is not an ``nn.Linear``, a mask that is not 2:4, a
weight that is not on such a GPU or not in float16 / bfloat16 is refused with the layer's name and
the reason, and the model is left as it was.  Check the converted model's outputs against the
masked one on your GPU before relying on it.

Example
-------
>>> import torch, rmtprune
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 32))
>>> sparse, _ = rmtprune.prune(model, criterion=rmtprune.Sparsity(pattern="2:4"))
>>> try:
...     to_semi_structured(sparse)
... except RuntimeError as exc:
...     print(str(exc)[:60])
layer '0': semi-structured sparsity needs a CUDA GPU of comp
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from rmtprune.factorize.masks import enforce_masks, mask_of, masked_layers, remove_mask

__all__ = ["to_semi_structured"]

_DTYPES = (torch.float16, torch.bfloat16)


def _reason(name: str, module: nn.Module) -> tuple[type[Exception], str] | None:
    """Why layer ``name`` cannot be converted (the exception type and message), or ``None``."""
    if not isinstance(module, nn.Linear):
        return ValueError, f"layer {name!r} is a {type(module).__name__}: only nn.Linear converts"
    mask = mask_of(module)
    assert mask is not None
    rows, cols = mask.shape
    if cols % 4 or not bool((mask.reshape(rows, -1, 4).sum(-1) == 2).all()):
        return ValueError, (
            f"layer {name!r}: its mask is not 2:4 (two kept in every four consecutive inputs); "
            "prune it with rmtprune.Sparsity(pattern='2:4')"
        )
    weight = module.weight
    if weight.device.type != "cuda" or torch.cuda.get_device_capability(weight.device) < (8, 0):
        return RuntimeError, (
            f"layer {name!r}: semi-structured sparsity needs a CUDA GPU of compute capability "
            f"8.0 or later; the weight is on {weight.device}"
        )
    if weight.dtype not in _DTYPES:
        return ValueError, (
            f"layer {name!r}: its weight is {weight.dtype}; convert the model to float16 or "
            "bfloat16 first (model.half())"
        )
    return None


def to_semi_structured(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Convert the 2:4-masked ``nn.Linear`` layers of ``model`` (all, or those in ``names``) in
    place; return their names.  Every layer is checked before any is converted (module doc)."""
    from torch.sparse import to_sparse_semi_structured

    layers = masked_layers(model)
    chosen = list(layers) if names is None else list(names)
    missing = [n for n in chosen if n not in layers]
    if missing:
        raise ValueError(f"layers {missing} of the 'names' parameter have no sparsity mask")
    for name in chosen:
        problem = _reason(name, layers[name])
        if problem is not None:
            raise problem[0](problem[1])
    enforce_masks(model)
    for name in chosen:  # pragma: no cover - needs an Ampere-or-later GPU
        module = layers[name]
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        remove_mask(module)
        sparse = to_sparse_semi_structured(weight.detach())
        module.weight = nn.Parameter(sparse, requires_grad=weight.requires_grad)
    return chosen
