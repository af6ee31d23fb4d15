"""The registry of layer adapters: which :class:`LayerAdapter` does the surgery on which layer.

This is the middle of the three roles of the pruning engine (rank criterion → layer surgery →
model walker).  Adapters (one per layer type, in :mod:`rmtprune.factorize.dense_adapters` and
:mod:`rmtprune.factorize.lowrank_adapters`) are registered for ``nn.Linear``, ``nn.Conv2d``
(``groups = 1``), ``nn.Embedding``, the factorized layers, and, by qualified class name so
that ``transformers`` is never imported here, Hugging Face's
``transformers.pytorch_utils.Conv1D`` (a linear layer that stores its weight transposed).
Supporting one more type is one call::

    register_adapter(MyTransposedLinear, TransposedLinearAdapter())

Example
-------
>>> import torch
>>> from rmtprune.factorize import get_adapter, truncated_svd
>>> layer = torch.nn.Linear(6, 4)
>>> adapter = get_adapter(layer)
>>> adapter.matrix_shape(layer), adapter.split_param_count(layer, 1)
((4, 6), 14)
>>> U, s, Vh = truncated_svd(adapter.weight_matrix(layer), rank=1)
>>> new = adapter.rebuild(layer, U, s, Vh, split=True)
>>> type(new).__name__, new.rank
('LowRankLinear', 1)
"""

from __future__ import annotations

import sys

from torch import nn

from rmtprune.factorize._adapter_base import LayerAdapter
from rmtprune.factorize.carry import carry_over, repoint_hooks
from rmtprune.factorize.dense_adapters import (
    Conv2dAdapter,
    EmbeddingAdapter,
    LinearAdapter,
    TransposedLinearAdapter,
)
from rmtprune.factorize.hf_guard import guard_hf_save
from rmtprune.factorize.lowrank import LowRankConv2d, LowRankLinear, LowRankModule
from rmtprune.factorize.lowrank_adapters import (
    LowRankConv2dAdapter,
    LowRankEmbeddingAdapter,
    LowRankLinearAdapter,
)
from rmtprune.factorize.lowrank_embedding import LowRankEmbedding
from rmtprune.factorize.peft_guard import guard_peft

__all__ = [
    "Conv2dAdapter",
    "EmbeddingAdapter",
    "LayerAdapter",
    "LinearAdapter",
    "LowRankConv2dAdapter",
    "LowRankEmbeddingAdapter",
    "LowRankLinearAdapter",
    "TransposedLinearAdapter",
    "get_adapter",
    "register_adapter",
    "set_submodule",
    "supported_types",
]


_REGISTRY: dict[type, LayerAdapter] = {}
_BY_NAME: dict[str, LayerAdapter] = {}


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_adapter(layer_type: type | str, adapter: LayerAdapter) -> None:
    """Register ``adapter`` for ``layer_type`` (and its subclasses), replacing any previous one.

    Parameters
    ----------
    layer_type : type or str
        A subclass of ``nn.Module``, or its qualified name ``"package.module.ClassName"``
        (matched without importing the package).
    adapter : LayerAdapter
        The surgery for that type.

    Examples
    --------
    >>> import torch
    >>> class MyLinear(torch.nn.Linear):
    ...     pass
    >>> register_adapter(MyLinear, LinearAdapter())
    >>> MyLinear in supported_types()
    True
    """
    if not isinstance(adapter, LayerAdapter):
        raise TypeError(
            "The 'adapter' parameter of register_adapter must be a LayerAdapter. "
            f"Got {type(adapter).__name__} instead."
        )
    if isinstance(layer_type, str):
        if not layer_type or "." not in layer_type:
            raise ValueError(
                "The 'layer_type' parameter of register_adapter must be a module class or a "
                f"qualified class name such as 'package.module.Class'. Got {layer_type!r} instead."
            )
        _BY_NAME[layer_type] = adapter
    elif isinstance(layer_type, type) and issubclass(layer_type, nn.Module):
        _REGISTRY[layer_type] = adapter
    else:
        raise TypeError(
            "The 'layer_type' parameter of register_adapter must be a subclass of nn.Module or "
            f"a qualified class name. Got {layer_type!r} instead."
        )


def get_adapter(module: nn.Module) -> LayerAdapter | None:
    """The adapter for ``module``: exact type first, then its base classes; ``None`` if none.

    Examples
    --------
    >>> import torch
    >>> type(get_adapter(torch.nn.Conv2d(1, 2, 3))).__name__
    'Conv2dAdapter'
    >>> get_adapter(torch.nn.ReLU()) is None
    True
    """
    for cls in type(module).__mro__:
        adapter = _REGISTRY.get(cls)
        if adapter is None:
            adapter = _BY_NAME.get(_qualified_name(cls))
        if adapter is not None:
            return adapter
    return None


def supported_types() -> tuple[type, ...]:
    """Registered layer types (name-registered ones only if their module is imported).

    Examples
    --------
    >>> import torch
    >>> torch.nn.Linear in supported_types()
    True
    """
    types = list(_REGISTRY)
    for name in _BY_NAME:
        module_name, _, cls_name = name.rpartition(".")
        cls = getattr(sys.modules.get(module_name), cls_name, None)
        if isinstance(cls, type) and cls not in types:
            types.append(cls)
    return tuple(types)


def set_submodule(
    model: nn.Module, qualified_name: str, new_module: nn.Module, *, carry: bool = True
) -> nn.Module:
    """Replace the submodule at the dotted ``qualified_name`` by ``new_module``; return the old.

    This is the one place layers are replaced.  When both the old and the new module are
    weight layers (both have an adapter, e.g. a layer and its ``adapter.rebuild(...)``),
    everything the user attached to the old one is carried over to the new one
    (:func:`rmtprune.factorize.carry.carry_over`): its hooks (the new module shares the old
    one's hook dictionaries, so a ``RemovableHandle`` returned before the replacement still
    removes its hook from the new module; the handle's module is the old one), frozen
    weights stay frozen, train/eval mode and a ``channels_last`` memory format are kept.
    What cannot be carried (a legacy backward hook, hooks on a factor, a
    ``torch.nn.utils.prune`` mask, a parametrization) raises ``ValueError`` with the reason
    and leaves the model unchanged; pruning checks the same reasons first and skips such
    layers.  Any other replacement (e.g. by ``nn.Identity``) carries nothing.  ``carry=False``
    (putting back a layer that already has its attachments) carries nothing either; hooks
    registered with their module that point at the replaced module are pointed at
    ``new_module`` in every case.

    A module reached by several names (e.g. a T5 embedding shared by ``shared`` and
    ``encoder.embed_tokens``) is replaced under every name, so the sharing is kept.  When
    ``new_module`` is factorized, every Hugging Face model in ``model`` gets a
    ``save_pretrained`` that marks its checkpoint (:mod:`rmtprune.factorize.hf_guard`), and in
    a PEFT model LoRA merges stay exact (:func:`rmtprune.factorize.peft_guard.guard_peft`).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    >>> old = set_submodule(model, "0", torch.nn.Identity())
    >>> type(old).__name__, type(model[0]).__name__
    ('Linear', 'Identity')
    """
    if not isinstance(new_module, nn.Module):
        raise TypeError(
            "The 'new_module' parameter of set_submodule must be an nn.Module. "
            f"Got {type(new_module).__name__} instead."
        )
    if not isinstance(qualified_name, str) or not qualified_name:
        raise ValueError(
            "The 'qualified_name' parameter of set_submodule must be a non-empty dotted name of "
            f"a submodule. Got {qualified_name!r} instead."
        )
    parent_name, _, child = qualified_name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
    except AttributeError:
        parent = None
    old = None if parent is None else parent._modules.get(child)
    if parent is None or old is None:
        raise ValueError(
            "The 'qualified_name' parameter of set_submodule must name a submodule of the model. "
            f"Got {qualified_name!r} instead."
        )
    weight_layers = get_adapter(old) is not None and get_adapter(new_module) is not None
    if carry and new_module is not old and weight_layers:
        try:
            carry_over(old, new_module)
        except ValueError as error:
            raise ValueError(
                f"The 'new_module' parameter of set_submodule cannot replace {qualified_name!r}. "
                f"{error}"
            ) from None
    repoint_hooks(old, new_module)
    holders = [holder for _, holder in model.named_modules(remove_duplicate=False)]
    for holder in holders:
        for key, value in list(holder._modules.items()):
            if value is old:  # the same module reached by another name stays shared
                setattr(holder, key, new_module)
    if isinstance(new_module, LowRankModule):
        guard_hf_save(model)  # HF's own save must not write a checkpoint that loads wrongly
        guard_peft(model, new_module)  # in a PEFT model: exact LoRA merges, no adapter-only save
    return old


register_adapter(nn.Linear, LinearAdapter())
register_adapter(nn.Conv2d, Conv2dAdapter())
register_adapter(LowRankLinear, LowRankLinearAdapter())
register_adapter(LowRankConv2d, LowRankConv2dAdapter())
register_adapter(nn.Embedding, EmbeddingAdapter())
register_adapter(LowRankEmbedding, LowRankEmbeddingAdapter())
register_adapter("transformers.pytorch_utils.Conv1D", TransposedLinearAdapter())
