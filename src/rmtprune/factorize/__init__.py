"""Layer surgery: factorized layers, per-layer-type adapters and truncated SVDs.

The pruning engine has three roles (after Torch-Pruning): a rank criterion chooses how many
singular values to keep, the adapters registered here rebuild one layer from the kept singular
triplets, and the model walker (``rmtprune.pruning``) visits the layers.

Example
-------
>>> import torch
>>> from rmtprune.factorize import get_adapter, truncated_svd
>>> layer = torch.nn.Linear(8, 6)
>>> adapter = get_adapter(layer)
>>> U, s, Vh = truncated_svd(adapter.weight_matrix(layer), rank=2)
>>> type(adapter.rebuild(layer, U, s, Vh, split=True)).__name__
'LowRankLinear'
"""

from __future__ import annotations

from rmtprune.factorize.lowrank import (
    LowRankConv1D,
    LowRankConv2d,
    LowRankEmbedding,
    LowRankLinear,
    LowRankModule,
)
from rmtprune.factorize.registry import (
    Conv2dAdapter,
    EmbeddingAdapter,
    LayerAdapter,
    LinearAdapter,
    LowRankConv2dAdapter,
    LowRankEmbeddingAdapter,
    LowRankLinearAdapter,
    TransposedLinearAdapter,
    get_adapter,
    register_adapter,
    set_submodule,
    supported_types,
)
from rmtprune.factorize.svd import svd_factors, truncated_svd

__all__ = [
    "Conv2dAdapter",
    "EmbeddingAdapter",
    "LayerAdapter",
    "LinearAdapter",
    "LowRankConv1D",
    "LowRankConv2d",
    "LowRankConv2dAdapter",
    "LowRankEmbedding",
    "LowRankEmbeddingAdapter",
    "LowRankLinear",
    "LowRankLinearAdapter",
    "LowRankModule",
    "TransposedLinearAdapter",
    "get_adapter",
    "register_adapter",
    "set_submodule",
    "supported_types",
    "svd_factors",
    "truncated_svd",
]
