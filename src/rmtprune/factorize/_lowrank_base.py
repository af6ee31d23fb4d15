"""The common base of the factorized layers, :class:`LowRankModule`, and its helpers.

A factorized layer stores ``W ≈ W₂ W₁`` as two submodules applied one after the other,
``first`` (``W₁``, ``r × n`` in matrix form, no bias) and ``second`` (``W₂``, ``m × r``,
with the bias).  So that code written for the layer it replaces keeps working, it also shows
that layer's attributes: a read-only :attr:`LowRankModule.weight` (the dense product, in the
factors' dtype and on their device), ``in_features``/``out_features`` and, in the
subclasses, the convolution or embedding hyperparameters.

The layers can be compiled by ``torch.jit.script`` (tests/factorize/test_export.py).  Two
things keep it so.  The class-level annotations of ``first``/``second`` stand under
``if TYPE_CHECKING:``: with ``from __future__ import annotations`` they would be the strings
``'nn.Linear'`` etc. at run time, which TorchScript tries to resolve as the types of the
submodules and cannot ("Unknown type annotation").  And the properties TorchScript cannot
compile are named in ``__jit_unused_properties__``: a scripted model lacks them (it has the
factors' own attributes), eager mode keeps them all.

Example
-------
>>> import torch
>>> from rmtprune.factorize import LowRankLinear
>>> layer = LowRankLinear.from_factors(torch.ones(1, 3), torch.ones(2, 1))
>>> layer.weight.tolist(), isinstance(layer.weight, torch.nn.Parameter)
([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], False)
>>> "weight" in dict(layer.state_dict())
False
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

__all__ = ["LowRankModule", "check_factors", "compute_dtype", "tensor_attr"]


def tensor_attr(value: object) -> torch.Tensor:
    """``value`` typed as a tensor (submodule attributes are typed ``Tensor | Module``)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"Expected a tensor. Got {type(value).__name__} instead.")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype products of factors are formed in: float32 for 16-bit floats, else ``dtype``.

    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


class LowRankModule(nn.Module):
    """Common base of the factorized layers: ``second(first(x))``.

    Subclasses define ``first`` (the ``r × n`` factor, no bias) and ``second`` (the
    ``m × r`` factor with the bias), :meth:`to_dense` and, when the dense layer's weight is
    not the ``m × n`` matrix itself, :meth:`_weight_from_matrix`.

    Attributes
    ----------
    first : nn.Module
        The first factor, ``W₁`` of shape ``r × n`` in matrix form, no bias.
    second : nn.Module
        The second factor, ``W₂`` of shape ``m × r`` in matrix form, with the bias.
    """

    if TYPE_CHECKING:  # for the type checker only: TorchScript cannot read them (module doc)
        first: nn.Module
        second: nn.Module

    # Properties TorchScript does not compile (``weight``/``bias`` read the factors' tensors
    # through ``tensor_attr``/``getattr``); subclasses extend the list.  The others (rank,
    # in_features, ...) are compiled, so scripted code that reads them keeps working.
    __jit_unused_properties__: ClassVar[list[str]] = ["weight", "bias"]

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "weight":
            raise AttributeError(
                f"{type(self).__name__}.weight is read-only: it is the product of the factors "
                "'first' and 'second'. Assign to first.weight / second.weight, or replace the "
                "layer (for example by its to_dense())."
            )
        super().__setattr__(name, value)

    @property
    def rank(self) -> int:
        """Inner dimension ``r`` of the factorization."""
        raise NotImplementedError

    @property
    def in_features(self) -> int:
        """Columns ``n`` of the weight matrix."""
        raise NotImplementedError

    @property
    def out_features(self) -> int:
        """Rows ``m`` of the weight matrix."""
        raise NotImplementedError

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias (a parameter of ``second``), or ``None``."""
        bias = getattr(self.second, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight ``W₂ W₁`` laid out as the replaced layer's ``weight``.

        A new tensor on every access (not a parameter, not in the state dict), in the
        factors' dtype and on their device; the product is formed in float32 for 16-bit
        factors.  It is differentiable with respect to the factors.  Assigning to it raises
        ``AttributeError``.
        """
        w1, w2 = self._w1(), self._w2()
        dtype = compute_dtype(w1.dtype)
        return self._weight_from_matrix(w2.to(dtype) @ w1.to(dtype)).to(w1.dtype)

    def _w1(self) -> torch.Tensor:
        """``W₁`` (``r × n``) as a view of the first factor's parameter (not detached)."""
        weight = tensor_attr(self.first.weight)
        return weight.reshape(weight.shape[0], -1)

    def _w2(self) -> torch.Tensor:
        """``W₂`` (``m × r``) as a view of the second factor's parameter (not detached)."""
        weight = tensor_attr(self.second.weight)
        return weight.reshape(weight.shape[0], -1)

    def _weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """Lay the ``m × n`` product out as the dense layer's weight (default: itself)."""
        return matrix

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Apply ``second(first(input))`` (the argument is named as in the layer replaced, so a
        model calling its layer by keyword keeps working)."""
        return self.second(self.first(input))

    def first_matrix(self) -> torch.Tensor:
        """``W₁`` as an ``r × n`` matrix (a detached view of the parameter)."""
        return self._w1().detach()

    def second_matrix(self) -> torch.Tensor:
        """``W₂`` as an ``m × r`` matrix (a detached view of the parameter)."""
        return self._w2().detach()

    def to_dense(self) -> nn.Module:
        """Return the equivalent single dense layer (a new module)."""
        raise NotImplementedError


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{value!r} of type {type(value).__name__}"


def check_factors(
    first_weight: torch.Tensor, second_weight: torch.Tensor, bias: torch.Tensor | None, owner: str
) -> None:
    """Check ``W₁`` (``r × n``), ``W₂`` (``m × r``) and the bias; raise naming ``owner``."""
    if not isinstance(first_weight, torch.Tensor) or first_weight.ndim != 2:
        raise TypeError(
            f"The 'first_weight' parameter of {owner} must be a 2-D tensor (rank × in). "
            f"Got {_describe(first_weight)} instead."
        )
    if not isinstance(second_weight, torch.Tensor) or second_weight.ndim != 2:
        raise TypeError(
            f"The 'second_weight' parameter of {owner} must be a 2-D tensor (out × rank). "
            f"Got {_describe(second_weight)} instead."
        )
    if second_weight.shape[1] != first_weight.shape[0]:
        raise ValueError(
            f"The 'second_weight' parameter of {owner} must have {first_weight.shape[0]} columns "
            f"(the rows of 'first_weight'). Got shape {tuple(second_weight.shape)} instead."
        )
    if first_weight.shape[0] < 1:
        raise ValueError(
            f"The 'first_weight' parameter of {owner} must have at least one row (rank >= 1). "
            f"Got shape {tuple(first_weight.shape)} instead."
        )
    if bias is not None and (
        not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (second_weight.shape[0],)
    ):
        raise ValueError(
            f"The 'bias' parameter of {owner} must be None or a tensor of shape "
            f"({second_weight.shape[0]},). Got {_describe(bias)} instead."
        )
