"""Per-layer-type surgery: one :class:`LayerAdapter` per supported layer type.

This is the middle of the three roles of the pruning engine (rank criterion → layer surgery →
model walker).  An adapter knows, for one layer type, how to read the layer's ``m × n``
weight matrix (SPEC section 1), how many parameters the layer and its replacements have, and
how to build the replacement of the layer from the kept singular triplets
``U_r diag(s_r) Vh_r``: either one dense layer, or the square-root split of SPEC section 4,
``W₁ = diag(√s_r) Vh_r`` (no bias) followed by ``W₂ = U_r diag(√s_r)`` (with the bias).

Adapters are registered for ``nn.Linear``, ``nn.Conv2d`` (``groups = 1``),
:class:`~rmtprune.factorize.LowRankLinear`, :class:`~rmtprune.factorize.LowRankConv2d` and,
by qualified class name so that ``transformers`` is never imported here, Hugging Face's
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

import copy
import sys
from abc import ABC, abstractmethod
from typing import Any, TypeVar

import torch
from torch import nn

from rmtprune.factorize.lowrank import LowRankConv2d, LowRankLinear, LowRankModule

__all__ = [
    "Conv2dAdapter",
    "LayerAdapter",
    "LinearAdapter",
    "LowRankConv2dAdapter",
    "LowRankLinearAdapter",
    "TransposedLinearAdapter",
    "get_adapter",
    "register_adapter",
    "set_submodule",
    "supported_types",
]


def _as_float64(value: Any, name: str, owner: str) -> torch.Tensor:
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
        U = _as_float64(U_r, "U_r", owner)
        s = _as_float64(s_r, "s_r", owner)
        Vh = _as_float64(Vh_r, "Vh_r", owner)
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


def _weight(module: nn.Module) -> torch.Tensor:
    """The ``weight`` attribute of ``module``, typed as a tensor."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor.")
    return weight


_M = TypeVar("_M", bound=nn.Module)
# nn.MultiheadAttention passes out_proj.weight to a functional kernel instead of calling it.
_MHA_PROJECTION = nn.modules.linear.NonDynamicallyQuantizableLinear


def _as(module: nn.Module, kind: type[_M]) -> _M:
    """``module`` typed as ``kind`` (adapters are looked up by type, so this holds)."""
    if not isinstance(module, kind):
        raise TypeError(f"Expected a {kind.__name__}. Got {type(module).__name__} instead.")
    return module


def _lowrank(module: nn.Module) -> LowRankModule:
    return _as(module, LowRankModule)


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
        weight = _weight(module)
        return self.matrix_to_weight(module, matrix).to(weight.dtype).to(weight.device)

    def build_dense(self, module: nn.Module, matrix: torch.Tensor) -> nn.Module:
        """A deep copy of ``module`` whose weight is ``matrix`` (the old weight is not copied)."""
        weight = _weight(module)
        new_weight = nn.Parameter(
            self._cast_weight(module, matrix).contiguous(), requires_grad=weight.requires_grad
        )
        return copy.deepcopy(module, memo={id(weight): new_weight})

    def truncate(self, module: nn.Module, U_r: Any, s_r: Any, Vh_r: Any) -> None:
        """Set the layer's weight to ``U_r diag(s_r) Vh_r`` in place; the bias is untouched."""
        U, s, Vh = self._check_triplets(module, U_r, s_r, Vh_r)
        with torch.no_grad():
            _weight(module).copy_(self._cast_weight(module, (U * s[None, :]) @ Vh))


class LinearAdapter(_DenseAdapter):
    """``nn.Linear``: the weight is already the ``m × n`` matrix."""

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Refuse lazy modules and weights that are not 2-D."""
        reason = super().unsupported_reason(module)
        if reason is None and _weight(module).ndim != 2:
            reason = f"weight is not 2-D (shape {tuple(_weight(module).shape)})"
        if reason is None and isinstance(module, _MHA_PROJECTION):
            reason = "projection of nn.MultiheadAttention, which reads its weight directly"
        return reason

    def matrix_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        m, n = _weight(module).shape
        return int(m), int(n)

    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The weight, detached."""
        return _weight(module).detach()

    def matrix_to_weight(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """The matrix itself."""
        return matrix

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A :class:`LowRankLinear` in the weight's dtype and device."""
        return LowRankLinear.from_factors(
            *self._factor_args(module, _weight(module), first, second)
        )


class TransposedLinearAdapter(LinearAdapter):
    """A linear layer storing its weight as ``n × m`` and computing ``x @ weight + bias``.

    This is the layout of Hugging Face GPT-2's ``Conv1D``.  Its square-root split is a
    :class:`LowRankLinear` (which stores its factors in the usual ``nn.Linear`` layout);
    ``rebuild(split=False)`` keeps the original type and layout.
    """

    def matrix_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(m, n)`` read from the ``n × m`` weight."""
        n, m = _weight(module).shape
        return int(m), int(n)

    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The transposed weight, detached (a view)."""
        return _weight(module).detach().t()

    def matrix_to_weight(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """The transpose of the matrix."""
        return matrix.t().contiguous()


class Conv2dAdapter(_DenseAdapter):
    """``nn.Conv2d`` with ``groups = 1``: the matrix is the kernel as ``(out, in · kh · kw)``."""

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Refuse lazy modules and grouped convolutions."""
        reason = super().unsupported_reason(module)
        groups = _as(module, nn.Conv2d).groups
        if reason is None and groups != 1:
            reason = f"grouped convolution (groups={groups}) is not supported"
        return reason

    def matrix_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(out, in · kh · kw)``."""
        weight = _weight(module)
        return int(weight.shape[0]), int(weight[0].numel())

    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The kernel reshaped to ``(out, in · kh · kw)``, detached."""
        weight = _weight(module).detach()
        return weight.reshape(weight.shape[0], -1)

    def matrix_to_weight(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """The matrix reshaped to the kernel's shape."""
        return matrix.reshape(_weight(module).shape)

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A :class:`LowRankConv2d` with the convolution's hyperparameters."""
        args = self._factor_args(module, _weight(module), first, second)
        return LowRankConv2d.from_factors(*args, like=_as(module, nn.Conv2d))


class _LowRankAdapter(LayerAdapter):
    """Shared code of the adapters for :class:`LowRankModule` layers (read as ``W₂ W₁``)."""

    def matrix_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return _lowrank(module).out_features, _lowrank(module).in_features

    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The product ``W₂ W₁`` as a new ``m × n`` tensor."""
        layer = _lowrank(module)
        return layer.second_matrix() @ layer.first_matrix()

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        """The bias of the second factor, detached, or ``None``."""
        bias = _lowrank(module).bias
        return bias.detach() if isinstance(bias, torch.Tensor) else None

    def current_rank(self, module: nn.Module) -> int | None:
        """The factor rank ``r``."""
        return _lowrank(module).rank

    def param_count(self, module: nn.Module) -> int:
        """``r (m + n)`` plus the bias."""
        return self.split_param_count(module, _lowrank(module).rank)

    def build_dense(self, module: nn.Module, matrix: torch.Tensor) -> nn.Module:
        """The module's ``to_dense()`` layer, with weight ``matrix``."""
        dense = _lowrank(module).to_dense()
        weight = _weight(dense)
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
        """A new :class:`LowRankLinear` in the module's dtype and device."""
        like = _weight(_lowrank(module).first)
        return LowRankLinear.from_factors(*self._factor_args(module, like, first, second))


class LowRankConv2dAdapter(_LowRankAdapter):
    """:class:`LowRankConv2d`, pruned again through the product ``W₂ W₁``."""

    def build_split(
        self, module: nn.Module, first: torch.Tensor, second: torch.Tensor
    ) -> LowRankModule:
        """A new :class:`LowRankConv2d` with the hyperparameters of ``module.first``."""
        conv = _as(_lowrank(module).first, nn.Conv2d)
        args = self._factor_args(module, _weight(conv), first, second)
        return LowRankConv2d.from_factors(*args, like=conv)


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


def set_submodule(model: nn.Module, qualified_name: str, new_module: nn.Module) -> nn.Module:
    """Replace the submodule at the dotted ``qualified_name`` by ``new_module``; return the old.

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
    setattr(parent, child, new_module)
    return old


register_adapter(nn.Linear, LinearAdapter())
register_adapter(nn.Conv2d, Conv2dAdapter())
register_adapter(LowRankLinear, LowRankLinearAdapter())
register_adapter(LowRankConv2d, LowRankConv2dAdapter())
register_adapter("transformers.pytorch_utils.Conv1D", TransposedLinearAdapter())
