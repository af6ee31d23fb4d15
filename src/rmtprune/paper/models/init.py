"""Weight initialisations of the paper's experiments (docs/method.md section 6; paper appendix E.2).

Weights of Linear and convolution layers are drawn from a seeded
``torch.Generator``; biases are set to 0; normalisation layers are reset
(weight 1, bias 0, running statistics cleared).  With ``n`` the fan-in
(``in/groups · kh · kw`` for a convolution) and ``m`` the fan-out
(``out · kh · kw``):

============== =================================== ==================
scheme          law                                 variance
============== =================================== ==================
normal          ``N(0, 1/n)`` (the paper's default)  ``1/n``
normal_n2       ``N(0, 1/n²)``                       ``1/n²``
xavier          ``N(0, 2/(n + m))`` (Glorot normal)  ``2/(n + m)``
kaiming         ``N(0, 2/n)`` (He normal, ReLU)      ``2/n``
xavier_uniform  ``U(-a, a)``, ``a = √(6/(n + m))``   ``2/(n + m)``
kaiming_uniform ``U(-a, a)``, ``a = √(6/n)``         ``2/n``
============== =================================== ==================

Example
-------
>>> import torch
>>> from rmtprune.paper.models import FullyConnected, initialize
>>> net = initialize(FullyConnected([784, 100, 10]), "normal",
...                  generator=torch.Generator().manual_seed(0))
>>> float(net.layers[0].bias.detach().abs().max())
0.0
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from rmtprune._util.validation import param_error

__all__ = ["SCHEMES", "initialize", "weight_variance"]

SCHEMES = ("normal", "normal_n2", "xavier", "kaiming", "xavier_uniform", "kaiming_uniform")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def weight_variance(scheme: str, fan_in: int, fan_out: int) -> float:
    """Variance of one weight entry under ``scheme`` (table in the module docstring).

    Examples
    --------
    >>> weight_variance("normal", 100, 10)
    0.01
    >>> weight_variance("xavier", 100, 300)
    0.005
    """
    if scheme in ("normal",):
        return 1.0 / fan_in
    if scheme == "normal_n2":
        return 1.0 / fan_in**2
    if scheme in ("xavier", "xavier_uniform"):
        return 2.0 / (fan_in + fan_out)
    if scheme in ("kaiming", "kaiming_uniform"):
        return 2.0 / fan_in
    raise param_error("scheme", "weight_variance", f"one of {list(SCHEMES)}", scheme)


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(weight.shape[2:])
    return int(weight.shape[1]) * receptive, int(weight.shape[0]) * receptive


def initialize(
    model: nn.Module, scheme: str = "normal", *, generator: torch.Generator | int
) -> nn.Module:
    """Initialise ``model`` **in place** and return it.

    Layers are visited in ``model.modules()`` order and each weight takes its
    draws from ``generator`` in turn, so the same generator state always gives
    the same weights.

    Parameters
    ----------
    model : torch.nn.Module
        Model whose parametrised leaves are Linear, convolution or
        normalisation layers (anything else with parameters raises).
    scheme : str
        One of :data:`SCHEMES`.
    generator : torch.Generator or int
        CPU generator, or a seed for a fresh one.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    Examples
    --------
    >>> layer = initialize(torch.nn.Linear(400, 300), "kaiming", generator=1)
    >>> round(float(layer.weight.detach().var()) * 400 / 2, 1)
    1.0
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "The 'model' parameter of initialize must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    if scheme not in SCHEMES:
        raise param_error("scheme", "initialize", f"one of {list(SCHEMES)}", scheme)
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(
            "The 'generator' parameter of initialize must be a CPU torch.Generator or an int "
            f"seed. Got {generator!r} instead."
        )
    unknown = [
        name
        for name, module in model.named_modules()
        if not isinstance(module, (nn.Linear, _ConvNd, *_NORMS))
        and any(True for _ in module.parameters(recurse=False))
    ]
    if unknown:
        raise ValueError(
            f"initialize can only set Linear, convolution and normalisation layers; "
            f"the modules {unknown} have other parameters."
        )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _NORMS):
                module.reset_parameters()
            elif isinstance(module, (nn.Linear, _ConvNd)):
                weight = module.weight
                fan_in, fan_out = _fans(weight)
                std = math.sqrt(weight_variance(scheme, fan_in, fan_out))
                if scheme.endswith("_uniform"):
                    draw = torch.rand(weight.shape, generator=generator, dtype=torch.float64)
                    values = (2.0 * draw - 1.0) * (math.sqrt(3.0) * std)
                else:
                    values = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
                    values = values * std
                weight.copy_(values.to(dtype=weight.dtype, device=weight.device))
                if module.bias is not None:
                    module.bias.zero_()
    return model
