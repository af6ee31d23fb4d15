"""Adapters for the factorized layers themselves, which are pruned again through ``W₂ W₁``.

A factorized layer (:class:`LowRankLinear`, :class:`LowRankConv1D`, :class:`LowRankConv2d`,
:class:`LowRankEmbedding`) is read as the product of its factors; rebuilding it gives a new
factorized layer of the same type at the new rank, or its dense equivalent (``to_dense()``).

Example
-------
>>> import torch
>>> from rmtprune.factorize import LowRankLinear, get_adapter
>>> layer = LowRankLinear(6, 4, rank=3)
>>> adapter = get_adapter(layer)
>>> adapter.matrix_shape(layer), adapter.current_rank(layer), adapter.param_count(layer)
((4, 6), 3, 34)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rmtprune.factorize._adapter_base import LayerAdapter, as_kind, as_lowrank, weight_of
from rmtprune.factorize._lowrank_base import LowRankModule, compute_dtype
from rmtprune.factorize.lowrank import LowRankConv2d, LowRankLinear
from rmtprune.factorize.lowrank_embedding import LowRankEmbedding

__all__ = ["LowRankConv2dAdapter", "LowRankEmbeddingAdapter", "LowRankLinearAdapter"]


class _LowRankAdapter(LayerAdapter):
    """Shared code of the adapters for :class:`LowRankModule` layers (read as ``W₂ W₁``)."""

    def matrix_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return as_lowrank(module).out_features, as_lowrank(module).in_features

    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The product ``W₂ W₁`` as a new ``m × n`` tensor (float32 for 16-bit factors)."""
        layer = as_lowrank(module)
        first, second = layer.first_matrix(), layer.second_matrix()
        dtype = compute_dtype(first.dtype)
        return second.to(dtype) @ first.to(dtype)

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        """The bias of the second factor, detached, or ``None``."""
        bias = as_lowrank(module).bias
        return bias.detach() if isinstance(bias, torch.Tensor) else None

    def current_rank(self, module: nn.Module) -> int | None:
        """The factor rank ``r``."""
        return as_lowrank(module).rank

    def param_count(self, module: nn.Module) -> int:
        """``r (m + n)`` plus the bias."""
        return self.split_param_count(module, as_lowrank(module).rank)

    def build_dense(self, module: nn.Module, matrix: torch.Tensor) -> nn.Module:
        """The module's ``to_dense()`` layer, with weight ``matrix``."""
        dense = as_lowrank(module).to_dense()
        weight = weight_of(dense)
        with torch.no_grad():
            weight.copy_(matrix.reshape(weight.shape))
        return dense

    def truncate(self, module: nn.Module, U_r: Any, s_r: Any, Vh_r: Any) -> None:
        """Re-factorize in place: new ``first``/``second`` factors of rank ``len(s_r)``."""
        new = self.rebuild(module, U_r, s_r, Vh_r, split=True)
        module.first = new.first
        module.second = new.second


class LowRankLinearAdapter(_LowRankAdapter):
    """:class:`LowRankLinear`, pruned again through the product ``W₂ W₁``."""

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A new layer of the same type (e.g. :class:`LowRankConv1D`), dtype and device."""
        layer = as_kind(module, LowRankLinear)
        args = self._factor_args(module, weight_of(layer.first), first, second)
        return type(layer).from_factors(*args)


class LowRankConv2dAdapter(_LowRankAdapter):
    """:class:`LowRankConv2d`, pruned again through the product ``W₂ W₁``."""

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A new :class:`LowRankConv2d` with the hyperparameters of ``module.first``."""
        conv = as_kind(as_lowrank(module).first, nn.Conv2d)
        args = self._factor_args(module, weight_of(conv), first, second)
        return LowRankConv2d.from_factors(*args, like=conv)


class LowRankEmbeddingAdapter(_LowRankAdapter):
    """:class:`LowRankEmbedding`, pruned again through the product (the ``vocab × d`` table)."""

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A new :class:`LowRankEmbedding` with the padding index of ``module``."""
        layer = as_kind(module, LowRankEmbedding)
        first, second, _ = self._factor_args(module, layer.first.weight, first, second)
        pad = layer.padding_idx
        if pad is not None and not bool(layer.first.weight[pad].any()):
            second = second.clone()
            second[pad] = 0
        return LowRankEmbedding.from_factors(first, second, like=layer.first)
