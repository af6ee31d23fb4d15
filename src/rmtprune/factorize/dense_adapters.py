"""Adapters for dense layers: ``nn.Linear``, HF ``Conv1D``, ``nn.Conv2d`` and ``nn.Embedding``.

Each reads its layer as an ``m × n`` matrix (docs/method.md section 1) and rebuilds it from kept
singular triplets, either as one dense layer of the same type or as the factorized layer that
looks like it (:class:`LowRankLinear`, :class:`LowRankConv1D`, :class:`LowRankConv2d`,
:class:`LowRankEmbedding`).

Example
-------
>>> import torch
>>> from rmtprune.factorize import EmbeddingAdapter, truncated_svd
>>> table = torch.nn.Embedding(50, 8)
>>> adapter = EmbeddingAdapter()
>>> adapter.matrix_shape(table)
(50, 8)
>>> U, s, Vh = truncated_svd(adapter.weight_matrix(table), rank=2)
>>> type(adapter.rebuild(table, U, s, Vh, split=True)).__name__
'LowRankEmbedding'
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from rmtprune.factorize._adapter_base import LayerAdapter, as_kind, weight_of
from rmtprune.factorize._lowrank_base import LowRankModule
from rmtprune.factorize.lowrank import LowRankConv1D, LowRankConv2d, LowRankLinear
from rmtprune.factorize.lowrank_embedding import LowRankEmbedding

__all__ = ["Conv2dAdapter", "EmbeddingAdapter", "LinearAdapter", "TransposedLinearAdapter"]

# nn.MultiheadAttention passes out_proj.weight to a functional kernel instead of calling it.
_MHA_PROJECTION = nn.modules.linear.NonDynamicallyQuantizableLinear


class _DenseAdapter(LayerAdapter):
    """Shared code of adapters for layers with a ``weight`` and an optional ``bias``."""

    @abstractmethod
    def matrix_to_weight(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """Lay an ``m × n`` matrix out as the module's ``weight`` tensor."""

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        """The ``bias`` attribute, detached, or ``None``."""
        bias = getattr(module, "bias", None)
        return bias.detach() if isinstance(bias, torch.Tensor) else None

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Refuse uninitialized (lazy) weights."""
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            return "layer has no weight tensor"
        if isinstance(weight, nn.parameter.UninitializedParameter):
            return "weight is not initialized (lazy module)"
        return None

    def _cast_weight(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        weight = weight_of(module)
        return self.matrix_to_weight(module, matrix).to(weight.dtype).to(weight.device)

    def build_dense(self, module: nn.Module, matrix: torch.Tensor) -> nn.Module:
        """A deep copy of ``module`` whose weight is ``matrix`` (the old weight is not copied)."""
        weight = weight_of(module)
        new_weight = nn.Parameter(
            self._cast_weight(module, matrix).contiguous(), requires_grad=weight.requires_grad
        )
        return copy.deepcopy(module, memo={id(weight): new_weight})

    def truncate(self, module: nn.Module, U_r: Any, s_r: Any, Vh_r: Any) -> None:
        """Set the layer's weight to ``U_r diag(s_r) Vh_r`` in place; the bias is untouched."""
        U, s, Vh = self._check_triplets(module, U_r, s_r, Vh_r)
        with torch.no_grad():
            weight_of(module).copy_(self._cast_weight(module, (U * s[None, :]) @ Vh))


class _MatrixWeightAdapter(_DenseAdapter):
    """Layers whose 2-D ``weight`` is the matrix itself (``Linear``: ``out × in``;
    ``Embedding``: ``num_embeddings × embedding_dim``)."""

    def matrix_shape(self, module: nn.Module) -> tuple[int, int]:
        """The weight's ``(rows, columns)``."""
        m, n = weight_of(module).shape
        return int(m), int(n)

    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The weight, detached."""
        return weight_of(module).detach()

    def matrix_to_weight(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """The matrix itself."""
        return matrix


class LinearAdapter(_MatrixWeightAdapter):
    """``nn.Linear``: the weight is already the ``m × n`` matrix."""

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Refuse lazy modules and weights that are not 2-D."""
        reason = super().unsupported_reason(module)
        if reason is None and weight_of(module).ndim != 2:
            reason = f"weight is not 2-D (shape {tuple(weight_of(module).shape)})"
        if reason is None and isinstance(module, _MHA_PROJECTION):
            reason = "projection of nn.MultiheadAttention, which reads its weight directly"
        return reason

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A :class:`LowRankLinear` in the weight's dtype and device."""
        return LowRankLinear.from_factors(
            *self._factor_args(module, weight_of(module), first, second)
        )


class TransposedLinearAdapter(LinearAdapter):
    """A linear layer storing its weight as ``n × m`` and computing ``x @ weight + bias``.

    This is the layout of Hugging Face GPT-2's ``Conv1D``.  Its square-root split is a
    :class:`LowRankConv1D` (a :class:`LowRankLinear` showing ``nf``, ``nx`` and the
    transposed ``weight`` layout); ``rebuild(split=False)`` keeps the original type and layout.
    """

    def matrix_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(m, n)`` read from the ``n × m`` weight."""
        n, m = weight_of(module).shape
        return int(m), int(n)

    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The transposed weight, detached (a view)."""
        return weight_of(module).detach().t()

    def matrix_to_weight(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """The transpose of the matrix."""
        return matrix.t().contiguous()

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A :class:`LowRankConv1D` in the weight's dtype and device."""
        return LowRankConv1D.from_factors(
            *self._factor_args(module, weight_of(module), first, second)
        )


class Conv2dAdapter(_DenseAdapter):
    """``nn.Conv2d`` with ``groups = 1``: the matrix is the kernel as ``(out, in · kh · kw)``."""

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Refuse lazy modules and grouped convolutions."""
        reason = super().unsupported_reason(module)
        groups = as_kind(module, nn.Conv2d).groups
        if reason is None and groups != 1:
            reason = f"grouped convolution (groups={groups}) is not supported"
        return reason

    def matrix_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(out, in · kh · kw)``."""
        weight = weight_of(module)
        return int(weight.shape[0]), int(weight[0].numel())

    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The kernel reshaped to ``(out, in · kh · kw)``, detached."""
        weight = weight_of(module).detach()
        return weight.reshape(weight.shape[0], -1)

    def matrix_to_weight(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """The matrix reshaped to the kernel's shape."""
        return matrix.reshape(weight_of(module).shape)

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A :class:`LowRankConv2d` with the convolution's hyperparameters."""
        args = self._factor_args(module, weight_of(module), first, second)
        return LowRankConv2d.from_factors(*args, like=as_kind(module, nn.Conv2d))


class EmbeddingAdapter(_MatrixWeightAdapter):
    """``nn.Embedding``: the matrix is the table, ``m = num_embeddings`` by ``n = embedding_dim``.

    The split is a :class:`LowRankEmbedding` (an ``Embedding(vocab, r)`` followed by a
    ``Linear(r, d, bias=False)``).  When the original padding row is zero, the padding row of
    the new table is set to exactly zero, so the padding token still maps to zero.
    Embeddings with ``max_norm`` (rows renormalised at lookup) and subclasses that override
    ``forward`` (e.g. scaled word embeddings) are refused: the split would not compute the
    same function.
    """

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Refuse lazy modules, ``max_norm`` and subclasses with their own ``forward``."""
        reason = super().unsupported_reason(module)
        embedding = as_kind(module, nn.Embedding)
        if reason is None and embedding.max_norm is not None:
            reason = (
                f"embedding with max_norm={embedding.max_norm} renormalises looked-up rows, "
                "which a factorized table cannot reproduce"
            )
        if reason is None and type(module).forward is not nn.Embedding.forward:
            reason = f"{type(module).__name__} overrides nn.Embedding.forward"
        return reason

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A :class:`LowRankEmbedding`; a zero padding row stays exactly zero."""
        embedding = as_kind(module, nn.Embedding)
        first, second, _ = self._factor_args(module, weight_of(module), first, second)
        pad, weight = embedding.padding_idx, weight_of(module)
        if pad is not None and not weight.is_meta and not bool(weight[pad].any()):
            second = second.clone()
            second[pad] = 0
        return LowRankEmbedding.from_factors(first, second, like=embedding)
