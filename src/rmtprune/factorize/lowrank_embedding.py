"""The factorized replacement of ``nn.Embedding``: a small table followed by a projection.

An embedding table ``E`` (``vocab × d``; its matrix view has ``m = vocab`` rows and
``n = d`` columns) of rank ``r`` is stored as ``E ≈ T P`` with ``T`` the ``vocab × r`` table
of an ``nn.Embedding(vocab, r)`` (``first``, looked up first) and ``P`` (``r × d``) the
weight of an ``nn.Linear(r, d, bias=False)`` (``second``, weight ``Pᵀ``).  Looking up a
token gives row ``T[i] P = E[i]``: the same function, with ``r (vocab + d)`` parameters
instead of ``vocab · d``.

In the matrix terms of :class:`~rmtprune.factorize.LowRankModule` (``W ≈ W₂ W₁``,
``W₁`` of shape ``r × n``, ``W₂`` of shape ``m × r``), ``W₂ = T`` and ``W₁ = P``.
``padding_idx``, ``scale_grad_by_freq`` and ``sparse`` are kept on the inner embedding, so
the padding row of ``T`` stays fixed in training (it is zero when the original padding row
was zero, and then the padding token still maps to zero).

Example
-------
>>> import torch
>>> from rmtprune.factorize import LowRankEmbedding
>>> layer = LowRankEmbedding(100, 16, rank=4, padding_idx=0)
>>> layer(torch.tensor([[0, 5]])).shape, tuple(layer.weight.shape)
(torch.Size([1, 2, 16]), (100, 16))
>>> layer.num_embeddings, layer.embedding_dim, layer.padding_idx
(100, 16, 0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rmtprune._util.validation import check_int
from rmtprune.factorize._lowrank_base import LowRankModule, check_factors

__all__ = ["LowRankEmbedding"]


class LowRankEmbedding(LowRankModule):
    """An embedding ``vocab × d`` stored as ``Embedding(vocab, r)`` then ``Linear(r, d)``.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        ``vocab`` and ``d`` of the replaced ``nn.Embedding``.
    rank : int
        Inner dimension ``r >= 1``.
    padding_idx : int or None
        As in ``nn.Embedding`` (set on the inner embedding).
    scale_grad_by_freq, sparse : bool
        As in ``nn.Embedding`` (set on the inner embedding).
    device, dtype
        Passed to both factors.

    Examples
    --------
    >>> layer = LowRankEmbedding(10, 6, rank=2)
    >>> layer.first.weight.shape, layer.second.weight.shape
    (torch.Size([10, 2]), torch.Size([6, 2]))
    """

    if TYPE_CHECKING:  # not at run time, for TorchScript (see _lowrank_base)
        first: nn.Embedding
        second: nn.Linear

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        padding_idx: int | None = None,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = "LowRankEmbedding"
        num_embeddings = check_int(num_embeddings, "num_embeddings", owner, low=1)
        embedding_dim = check_int(embedding_dim, "embedding_dim", owner, low=1)
        rank = check_int(rank, "rank", owner, low=1)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.first = nn.Embedding(
            num_embeddings,
            rank,
            padding_idx=padding_idx,
            scale_grad_by_freq=scale_grad_by_freq,
            sparse=sparse,
            **kw,
        )
        self.second = nn.Linear(rank, embedding_dim, bias=False, **kw)

    @property
    def rank(self) -> int:
        """Inner dimension ``r``."""
        return self.first.embedding_dim

    @property
    def num_embeddings(self) -> int:
        """Vocabulary size (rows ``m`` of the matrix view)."""
        return self.first.num_embeddings

    @property
    def embedding_dim(self) -> int:
        """Embedding size ``d`` (columns ``n`` of the matrix view)."""
        return self.second.out_features

    @property
    def padding_idx(self) -> int | None:
        """The padding index of the inner embedding, or ``None``."""
        return self.first.padding_idx

    @property
    def in_features(self) -> int:
        """Columns ``n = embedding_dim`` of the matrix view."""
        return self.embedding_dim

    @property
    def out_features(self) -> int:
        """Rows ``m = num_embeddings`` of the matrix view."""
        return self.num_embeddings

    def _w1(self) -> torch.Tensor:
        """``W₁ = P`` (``r × d``): the transposed projection weight."""
        return self.second.weight.t()

    def _w2(self) -> torch.Tensor:
        """``W₂ = T`` (``vocab × r``): the inner table."""
        return self.first.weight

    def extra_repr(self) -> str:
        """Shown by ``repr``: the table shape and the rank."""
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}{pad}"

    @classmethod
    def from_factors(
        cls, first_weight: torch.Tensor, second_weight: torch.Tensor, like: nn.Embedding
    ) -> LowRankEmbedding:
        """Build from ``W₁ = P`` (``r × d``) and ``W₂ = T`` (``vocab × r``), both copied.

        ``like`` gives ``padding_idx``, ``scale_grad_by_freq`` and ``sparse`` (its tensors
        are not used).  The new layer takes the dtype and device of ``first_weight``.

        Examples
        --------
        >>> import torch
        >>> like = torch.nn.Embedding(4, 3)
        >>> layer = LowRankEmbedding.from_factors(torch.ones(1, 3), torch.ones(4, 1), like)
        >>> layer.weight.tolist()[0]
        [1.0, 1.0, 1.0]
        """
        owner = "LowRankEmbedding.from_factors"
        if not isinstance(like, nn.Embedding):
            raise TypeError(
                f"The 'like' parameter of {owner} must be an nn.Embedding. "
                f"Got {type(like).__name__} instead."
            )
        check_factors(first_weight, second_weight, None, owner)
        rank, d = first_weight.shape
        vocab = second_weight.shape[0]
        src = first_weight.detach()
        layer = cls(
            vocab,
            d,
            rank,
            padding_idx=like.padding_idx,
            scale_grad_by_freq=like.scale_grad_by_freq,
            sparse=like.sparse,
            device=src.device,
            dtype=src.dtype,
        )
        with torch.no_grad():
            layer.first.weight.copy_(second_weight)
            layer.second.weight.copy_(first_weight.t())
        return layer

    def to_dense(self) -> nn.Embedding:
        """The equivalent ``nn.Embedding`` with table ``T P`` (a new module).

        Examples
        --------
        >>> layer = LowRankEmbedding(5, 3, rank=1, padding_idx=2)
        >>> dense = layer.to_dense()
        >>> tuple(dense.weight.shape), dense.padding_idx
        ((5, 3), 2)
        """
        inner = self.first
        dense = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            padding_idx=inner.padding_idx,
            scale_grad_by_freq=inner.scale_grad_by_freq,
            sparse=inner.sparse,
            device=inner.weight.device,
            dtype=inner.weight.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.weight)
        return dense
