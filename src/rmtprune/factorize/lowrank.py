"""Factorized (low-rank) replacements for ``nn.Linear``, Hugging Face ``Conv1D`` and ``nn.Conv2d``.

A layer with ``m × n`` weight matrix ``W`` (docs/method.md section 1) and rank-``r`` approximation
``W ≈ W₂ W₁`` becomes two layers applied one after the other with no activation between
them: ``first`` computes ``W₁ x`` (``r × n``, no bias) and ``second`` computes
``W₂ (W₁ x) + b`` (``m × r``, carrying the original bias).  This costs ``r (m + n)``
weights instead of ``m n``.

For a convolution the matrix view is ``(out, in · kh · kw)``.  ``first`` is a convolution
``in → r`` with the original kernel size, stride, padding (including string padding such as
``'same'``), dilation and padding mode; ``second`` is a ``1 × 1`` convolution ``r → out``
without padding that carries the bias.  Since a ``1 × 1`` convolution acts on each output
position separately, the pair computes exactly the convolution with kernel ``W₂ W₁``
(reshaped to ``(out, in, kh, kw)``), whatever the padding mode.

Each factorized layer looks like the layer it replaces where other code reads it: a
read-only ``weight`` (the dense product, see :class:`LowRankModule`), ``in_features`` /
``out_features``, for :class:`LowRankConv2d` the channels, ``kernel_size``, ``stride``,
``padding``, ``dilation`` and ``groups``, for :class:`LowRankConv1D` ``nf`` / ``nx`` and the
transposed weight layout.  ``nn.Embedding`` has its own split,
:class:`~rmtprune.factorize.lowrank_embedding.LowRankEmbedding` (re-exported here).

Example
-------
>>> import torch
>>> from rmtprune.factorize import LowRankLinear
>>> layer = LowRankLinear.from_factors(torch.ones(2, 5), torch.ones(3, 2), torch.zeros(3))
>>> layer
LowRankLinear(
  in_features=5, out_features=3, rank=2
  (first): Linear(in_features=5, out_features=2, bias=False)
  (second): Linear(in_features=2, out_features=3, bias=True)
)
>>> layer(torch.ones(1, 5)).tolist()
[[10.0, 10.0, 10.0]]
>>> layer.to_dense().weight.tolist()[0]
[2.0, 2.0, 2.0, 2.0, 2.0]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import torch
from torch import nn

from rmtprune._util.validation import check_int
from rmtprune.factorize._lowrank_base import LowRankModule, check_factors, tensor_attr
from rmtprune.factorize.lowrank_embedding import LowRankEmbedding

__all__ = ["LowRankConv1D", "LowRankConv2d", "LowRankEmbedding", "LowRankLinear", "LowRankModule"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    return int(value[0]), int(value[1])


def _padding(value: str | tuple[int, ...]) -> str | tuple[int, int]:
    return value if isinstance(value, str) else _pair(value)


class LowRankLinear(LowRankModule):
    """A linear layer ``x ↦ W₂ W₁ x + b`` stored as two factors.

    Parameters
    ----------
    in_features, out_features : int
        ``n`` and ``m``.
    rank : int
        Inner dimension ``r >= 1``.
    bias : bool
        Whether ``second`` has a bias.
    device, dtype
        Passed to the two ``nn.Linear`` factors.

    Examples
    --------
    >>> import torch
    >>> layer = LowRankLinear(6, 4, rank=2)
    >>> layer.first.weight.shape, layer.second.weight.shape
    (torch.Size([2, 6]), torch.Size([4, 2]))
    >>> layer(torch.zeros(3, 6)).shape
    torch.Size([3, 4])
    """

    if TYPE_CHECKING:  # not at run time, for TorchScript (see _lowrank_base)
        first: nn.Linear
        second: nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_features = check_int(in_features, "in_features", "LowRankLinear", low=1)
        out_features = check_int(out_features, "out_features", "LowRankLinear", low=1)
        rank = check_int(rank, "rank", "LowRankLinear", low=1)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.first = nn.Linear(in_features, rank, bias=False, **kw)
        self.second = nn.Linear(rank, out_features, bias=bool(bias), **kw)

    @property
    def rank(self) -> int:
        """Inner dimension ``r`` of the factorization."""
        return self.first.out_features

    @property
    def in_features(self) -> int:
        """Input features ``n``."""
        return self.first.in_features

    @property
    def out_features(self) -> int:
        """Output features ``m``."""
        return self.second.out_features

    def extra_repr(self) -> str:
        """Shown by ``repr``: the matrix shape and the rank."""
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @classmethod
    def from_factors(
        cls,
        first_weight: torch.Tensor,
        second_weight: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> LowRankLinear:
        """Build a layer from ``W₁`` (``r × n``), ``W₂`` (``m × r``) and a bias (copied).

        The new layer takes the dtype and device of ``first_weight``.

        Examples
        --------
        >>> import torch
        >>> layer = LowRankLinear.from_factors(torch.eye(2, 3), torch.ones(4, 2))
        >>> layer.rank, layer.in_features, layer.out_features, layer.bias
        (2, 3, 4, None)
        """
        check_factors(first_weight, second_weight, bias, "LowRankLinear.from_factors")
        rank, n = first_weight.shape
        m = second_weight.shape[0]
        like = first_weight.detach()
        layer = cls(n, m, rank, bias=bias is not None, device=like.device, dtype=like.dtype)
        with torch.no_grad():
            layer.first.weight.copy_(first_weight)
            layer.second.weight.copy_(second_weight)
            if bias is not None:
                tensor_attr(layer.second.bias).copy_(bias)
        return layer

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` with weight ``W₂ W₁`` and the same bias (a copy).

        Examples
        --------
        >>> import torch
        >>> layer = LowRankLinear.from_factors(torch.ones(1, 2), torch.ones(3, 1))
        >>> layer.to_dense().weight.tolist()
        [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
        """
        w1 = self.first.weight.detach()
        dense = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=w1.device,
            dtype=w1.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.weight)
            if self.bias is not None:
                tensor_attr(dense.bias).copy_(self.bias)
        return dense


class LowRankConv1D(LowRankLinear):
    """The split of Hugging Face's ``Conv1D`` (GPT-2): a :class:`LowRankLinear` that looks like it.

    ``Conv1D(nf, nx)`` computes ``x @ weight + bias`` with ``weight`` stored ``nx × nf``
    (transposed).  This layer computes the same function from the two factors and shows
    ``nf`` (output features), ``nx`` (input features) and a read-only :attr:`weight` in that
    transposed layout.  ``to_dense()`` returns an ``nn.Linear`` (transformers is not
    imported here).

    Examples
    --------
    >>> import torch
    >>> layer = LowRankConv1D.from_factors(torch.ones(1, 3), torch.ones(2, 1))
    >>> layer.nx, layer.nf, tuple(layer.weight.shape)
    (3, 2, (3, 2))
    """

    @property
    def nf(self) -> int:
        """Output features (``Conv1D.nf``)."""
        return self.out_features

    @property
    def nx(self) -> int:
        """Input features (``Conv1D.nx``)."""
        return self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``second(first(x))`` (``x``: the argument's name in Hugging Face's ``Conv1D``)."""
        return self.second(self.first(x))

    def _weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """The ``nx × nf`` layout of ``Conv1D``."""
        return matrix.t()


class LowRankConv2d(LowRankModule):
    """A convolution with kernel ``W₂ W₁`` stored as a convolution and a ``1 × 1`` convolution.

    ``first`` is ``nn.Conv2d(in_channels, rank, kernel_size, stride, padding, dilation,
    groups=1, bias=False, padding_mode)``; ``second`` is ``nn.Conv2d(rank, out_channels, 1,
    bias=bias)``.  In matrix form (docs/method.md section 1) ``n = in_channels · kh · kw`` and
    ``m = out_channels``; :attr:`in_features` and :attr:`out_features` are these ``n`` and
    ``m``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the original convolution.
    rank : int
        Inner dimension ``r >= 1`` (the channels between the two convolutions).
    kernel_size, stride, padding, dilation, padding_mode
        Those of the original convolution (``padding`` may be ``'same'`` or ``'valid'``).
    bias : bool
        Whether ``second`` has a bias.
    device, dtype
        Passed to the two ``nn.Conv2d`` factors.

    Examples
    --------
    >>> import torch
    >>> layer = LowRankConv2d(3, 8, rank=2, kernel_size=3, padding=1)
    >>> layer(torch.zeros(1, 3, 5, 5)).shape
    torch.Size([1, 8, 5, 5])
    >>> layer.in_features, layer.out_features
    (27, 8)
    """

    if TYPE_CHECKING:  # not at run time, for TorchScript (see _lowrank_base)
        first: nn.Conv2d
        second: nn.Conv2d

    # TorchScript cannot compile these (``_pair`` takes a tuple of any length, ``padding`` may
    # be a string); a scripted model has them on its ``first`` convolution.
    __jit_unused_properties__: ClassVar[list[str]] = [
        *LowRankModule.__jit_unused_properties__,
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "padding_mode",
    ]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", "LowRankConv2d", low=1)
        out_channels = check_int(out_channels, "out_channels", "LowRankConv2d", low=1)
        rank = check_int(rank, "rank", "LowRankConv2d", low=1)
        if padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"The 'padding_mode' parameter of LowRankConv2d must be one of {_PADDING_MODES}. "
                f"Got {padding_mode!r} instead."
            )
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(
            in_channels,
            rank,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=1,
            bias=False,
            padding_mode=cast(_PaddingMode, padding_mode),
            **kw,
        )
        self.second = nn.Conv2d(rank, out_channels, 1, bias=bool(bias), **kw)

    @property
    def rank(self) -> int:
        """Inner dimension ``r`` (channels between the two convolutions)."""
        return self.first.out_channels

    @property
    def in_channels(self) -> int:
        """Input channels of the convolution."""
        return self.first.in_channels

    @property
    def out_channels(self) -> int:
        """Output channels of the convolution."""
        return self.second.out_channels

    @property
    def kernel_size(self) -> tuple[int, int]:
        """Kernel size of the convolution (that of ``first``)."""
        return _pair(self.first.kernel_size)

    @property
    def stride(self) -> tuple[int, int]:
        """Stride of the convolution (that of ``first``)."""
        return _pair(self.first.stride)

    @property
    def padding(self) -> str | tuple[int, int]:
        """Padding of the convolution (that of ``first``; ``second`` has none)."""
        return _padding(self.first.padding)

    @property
    def dilation(self) -> tuple[int, int]:
        """Dilation of the convolution (that of ``first``)."""
        return _pair(self.first.dilation)

    @property
    def groups(self) -> int:
        """Always 1: only ungrouped convolutions are factorized."""
        return 1

    @property
    def padding_mode(self) -> str:
        """Padding mode of the convolution (that of ``first``)."""
        return str(self.first.padding_mode)

    def _weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """The kernel layout ``(out, in, kh, kw)``."""
        return matrix.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def in_features(self) -> int:
        """Columns ``n = in_channels · kh · kw`` of the matrix view."""
        kh, kw = self.first.kernel_size
        return self.first.in_channels * kh * kw

    @property
    def out_features(self) -> int:
        """Rows ``m = out_channels`` of the matrix view."""
        return self.second.out_channels

    def extra_repr(self) -> str:
        """Shown by ``repr``: the channels, kernel, matrix shape and rank."""
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.first.kernel_size}, in_features={self.in_features}, "
            f"out_features={self.out_features}, rank={self.rank}"
        )

    @classmethod
    def from_factors(
        cls,
        first_weight: torch.Tensor,
        second_weight: torch.Tensor,
        bias: torch.Tensor | None,
        like: nn.Conv2d,
    ) -> LowRankConv2d:
        """Build a layer from matrix factors, copying the hyperparameters of ``like``.

        Parameters
        ----------
        first_weight : torch.Tensor
            ``W₁`` of shape ``r × (in · kh · kw)`` (copied).
        second_weight : torch.Tensor
            ``W₂`` of shape ``out × r`` (copied).
        bias : torch.Tensor or None
            Bias of shape ``(out,)`` (copied), or ``None``.
        like : nn.Conv2d
            Convolution (``groups = 1``) whose kernel size, stride, padding, dilation and
            padding mode are used.  Its tensors are not used.

        Examples
        --------
        >>> import torch
        >>> conv = torch.nn.Conv2d(2, 4, 3, stride=2)
        >>> layer = LowRankConv2d.from_factors(torch.ones(1, 18), torch.ones(4, 1), None, conv)
        >>> layer.first.stride, layer.rank
        ((2, 2), 1)
        """
        owner = "LowRankConv2d.from_factors"
        if not isinstance(like, nn.Conv2d):
            raise TypeError(
                f"The 'like' parameter of {owner} must be an nn.Conv2d. "
                f"Got {type(like).__name__} instead."
            )
        if like.groups != 1:
            raise ValueError(
                f"The 'like' parameter of {owner} must be a convolution with groups=1. "
                f"Got groups={like.groups} instead."
            )
        check_factors(first_weight, second_weight, bias, owner)
        kh, kw = like.kernel_size
        rank, n = first_weight.shape
        if n != like.in_channels * kh * kw:
            raise ValueError(
                f"The 'first_weight' parameter of {owner} must have in · kh · kw = "
                f"{like.in_channels * kh * kw} columns for 'like'. Got shape "
                f"{tuple(first_weight.shape)} instead."
            )
        m = second_weight.shape[0]
        src = first_weight.detach()
        layer = cls(
            like.in_channels,
            m,
            rank,
            kernel_size=_pair(like.kernel_size),
            stride=_pair(like.stride),
            padding=_padding(like.padding),
            dilation=_pair(like.dilation),
            bias=bias is not None,
            padding_mode=like.padding_mode,
            device=src.device,
            dtype=src.dtype,
        )
        with torch.no_grad():
            layer.first.weight.copy_(first_weight.reshape(layer.first.weight.shape))
            layer.second.weight.copy_(second_weight.reshape(layer.second.weight.shape))
            if bias is not None:
                tensor_attr(layer.second.bias).copy_(bias)
        return layer

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` with kernel ``W₂ W₁`` and the same bias (a copy).

        Examples
        --------
        >>> layer = LowRankConv2d(3, 5, rank=2, kernel_size=3, padding="same")
        >>> dense = layer.to_dense()
        >>> dense.weight.shape, dense.padding
        (torch.Size([5, 3, 3, 3]), 'same')
        """
        first = self.first
        w1 = first.weight.detach()
        dense = nn.Conv2d(
            first.in_channels,
            self.out_channels,
            _pair(first.kernel_size),
            stride=_pair(first.stride),
            padding=_padding(first.padding),
            dilation=_pair(first.dilation),
            groups=1,
            bias=self.bias is not None,
            padding_mode=first.padding_mode,
            device=w1.device,
            dtype=w1.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.weight)
            if self.bias is not None:
                tensor_attr(dense.bias).copy_(self.bias)
        return dense
