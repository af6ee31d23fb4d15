"""The base class of the per-layer-type adapters, :class:`LayerAdapter`, and shared helpers.

An adapter knows, for one layer type, how to read the layer's ``m × n`` weight matrix
(docs/method.md section 1), how many parameters the layer and its replacements have, and how to
build the replacement of the layer from the kept singular triplets ``U_r diag(s_r) Vh_r``:
either one dense layer, or the square-root split of docs/method.md section 4,
``W₁ = diag(√s_r) Vh_r`` (no bias) followed by ``W₂ = U_r diag(√s_r)`` (with the bias).
The adapters themselves are in :mod:`rmtprune.factorize.dense_adapters` and
:mod:`rmtprune.factorize.lowrank_adapters`; the registry that maps layer types to them is
:mod:`rmtprune.factorize.registry`.

Example
-------
>>> import torch
>>> from rmtprune.factorize import LayerAdapter, get_adapter
>>> isinstance(get_adapter(torch.nn.Linear(2, 2)), LayerAdapter)
True
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypeVar

import torch
from torch import nn

from rmtprune.factorize._lowrank_base import LowRankModule

__all__ = ["LayerAdapter", "as_float64", "as_kind", "as_lowrank", "weight_of"]


def as_float64(value: Any, name: str, owner: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"The {name!r} parameter of {owner} must be a tensor. "
                f"Got {type(value).__name__} instead."
            ) from None
    if value.is_complex():
        raise TypeError(
            f"The {name!r} parameter of {owner} must be a real tensor. Got {value.dtype} instead."
        )
    return value.detach().to(device="cpu", dtype=torch.float64)


class LayerAdapter(ABC):
    """Surgery on one layer type, reading it as an ``m × n`` matrix plus an optional bias.

    Subclasses implement :meth:`matrix_shape`, :meth:`weight_matrix`, :meth:`bias`,
    :meth:`build_dense` and :meth:`build_split`; the parameter counts and :meth:`rebuild`
    follow from these.  All methods leave the module they are given unchanged, except
    :meth:`truncate`, which exists to change it in place.
    """

    @abstractmethod
    def matrix_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(m, n)``: output features and input features of the matrix view."""

    @abstractmethod
    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The ``m × n`` weight matrix, detached, in the module's dtype and device.

        The result may be a view of the parameter: do not modify it in place.
        """

    @abstractmethod
    def bias(self, module: nn.Module) -> torch.Tensor | None:
        """The bias vector (length ``m``), detached, or ``None``."""

    @abstractmethod
    def build_dense(self, module: nn.Module, matrix: torch.Tensor) -> nn.Module:
        """A new dense layer like ``module`` with weight ``matrix`` (``m × n``) and its bias."""

    @abstractmethod
    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A new factorized layer ``W₂ W₁`` (``first = W₁``, ``second = W₂``) with the bias."""

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Why this layer cannot be factorized, or ``None`` when it can."""
        return None

    def current_rank(self, module: nn.Module) -> int | None:
        """The factor rank of a factorized layer; ``None`` for a dense layer."""
        return None

    def _bias_count(self, module: nn.Module) -> int:
        bias = self.bias(module)
        return 0 if bias is None else int(bias.numel())

    def param_count(self, module: nn.Module) -> int:
        """Number of weights and bias entries the layer holds now."""
        m, n = self.matrix_shape(module)
        return m * n + self._bias_count(module)

    def dense_param_count(self, module: nn.Module, rank: int) -> int:
        """Parameters of the dense replacement, ``m n + len(bias)`` (whatever ``rank``)."""
        m, n = self.matrix_shape(module)
        return m * n + self._bias_count(module)

    def split_param_count(self, module: nn.Module, rank: int) -> int:
        """Parameters of the square-root split at ``rank``, ``rank (m + n) + len(bias)``."""
        m, n = self.matrix_shape(module)
        return int(rank) * (m + n) + self._bias_count(module)

    def _check_triplets(
        self, module: nn.Module, U_r: Any, s_r: Any, Vh_r: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        owner = f"{type(self).__name__}.rebuild"
        U = as_float64(U_r, "U_r", owner)
        s = as_float64(s_r, "s_r", owner)
        Vh = as_float64(Vh_r, "Vh_r", owner)
        m, n = self.matrix_shape(module)
        if s.ndim != 1:
            raise ValueError(
                f"The 's_r' parameter of {owner} must be 1-D. Got shape {tuple(s.shape)} instead."
            )
        r = s.shape[0]
        if tuple(U.shape) != (m, r):
            raise ValueError(
                f"The 'U_r' parameter of {owner} must have shape {(m, r)} for this layer. "
                f"Got {tuple(U.shape)} instead."
            )
        if tuple(Vh.shape) != (r, n):
            raise ValueError(
                f"The 'Vh_r' parameter of {owner} must have shape {(r, n)} for this layer. "
                f"Got {tuple(Vh.shape)} instead."
            )
        if r and not bool((s >= 0).all()):
            raise ValueError(
                f"The 's_r' parameter of {owner} must hold non-negative singular values. "
                f"Got minimum {float(s.min())} instead."
            )
        return U, s, Vh

    def rebuild(
        self, module: nn.Module, U_r: Any, s_r: Any, Vh_r: Any, *, split: bool
    ) -> nn.Module:
        """A new layer computing ``x ↦ U_r diag(s_r) Vh_r x + b``; ``module`` is unchanged.

        Parameters
        ----------
        module : nn.Module
            The layer to replace (its bias is copied into the result).
        U_r, s_r, Vh_r : torch.Tensor
            Kept singular triplets: ``m × r``, ``(r,)`` and ``r × n`` (any float dtype and
            device; the products are formed in float64 on the CPU, then cast to the
            module's dtype and device).
        split : bool
            ``True``: the square-root split ``W₁ = diag(√s_r) Vh_r``,
            ``W₂ = U_r diag(√s_r)`` as a :class:`LowRankModule` (needs ``r >= 1``).
            ``False``: one dense layer with weight ``U_r diag(s_r) Vh_r`` (the original
            type, or for a factorized layer the type of its ``to_dense()``).

        Returns
        -------
        nn.Module
            The replacement; swap it into the parent, e.g. with :func:`set_submodule`.

        Examples
        --------
        >>> import torch
        >>> from rmtprune.factorize import get_adapter
        >>> layer = torch.nn.Linear(3, 2)
        >>> U, s, Vh = torch.eye(2, 1), torch.tensor([4.0]), torch.eye(1, 3)
        >>> new = get_adapter(layer).rebuild(layer, U, s, Vh, split=True)
        >>> new.first.weight.tolist(), new.second.weight.tolist()
        ([[2.0, 0.0, 0.0]], [[2.0], [0.0]])
        """
        U, s, Vh = self._check_triplets(module, U_r, s_r, Vh_r)
        if split:
            if s.shape[0] < 1:
                raise ValueError(
                    f"The 's_r' parameter of {type(self).__name__}.rebuild must keep at least "
                    "one singular value when split=True. Got 0 instead (use split=False for a "
                    "zero weight that keeps only the bias)."
                )
            root = s.sqrt()
            new: nn.Module = self.build_split(module, root[:, None] * Vh, U * root[None, :])
        else:
            new = self.build_dense(module, (U * s[None, :]) @ Vh)
        return new.train(module.training)

    def truncate(self, module: nn.Module, U_r: Any, s_r: Any, Vh_r: Any) -> None:
        """Set the layer's weight to ``U_r diag(s_r) Vh_r`` in place; the bias is untouched.

        Examples
        --------
        >>> import torch
        >>> from rmtprune.factorize import get_adapter
        >>> layer = torch.nn.Linear(2, 2)
        >>> get_adapter(layer).truncate(layer, torch.eye(2, 1), torch.ones(1), torch.eye(1, 2))
        >>> layer.weight.tolist()
        [[1.0, 0.0], [0.0, 0.0]]
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot truncate in place; use rebuild() instead."
        )

    def _factor_args(
        self, module: nn.Module, like: torch.Tensor, first: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``first``, ``second`` in the dtype and device of ``like``, and a copy of the bias."""
        bias = self.bias(module)
        first = first.to(like.dtype).to(like.device)
        second = second.to(like.dtype).to(like.device)
        return first, second, None if bias is None else bias.clone()


def weight_of(module: nn.Module) -> torch.Tensor:
    """The ``weight`` attribute of ``module``, typed as a tensor."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor.")
    return weight


_M = TypeVar("_M", bound=nn.Module)


def as_kind(module: nn.Module, kind: type[_M]) -> _M:
    """``module`` typed as ``kind`` (adapters are looked up by type, so this holds)."""
    if not isinstance(module, kind):
        raise TypeError(f"Expected a {kind.__name__}. Got {type(module).__name__} instead.")
    return module


def as_lowrank(module: nn.Module) -> LowRankModule:
    return as_kind(module, LowRankModule)
