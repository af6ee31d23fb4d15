"""Fully connected networks of the paper (docs/method.md section 6).

``FullyConnected([784, 3000, 3000, 3000, 10])`` is the network of experiments
fc-mnist and fc-fashion: the input is flattened, Linear layers alternate with
the activation, and the output is ``log_softmax`` over the classes (dim 1).
The same class gives the regression MLP of experiment E.3 (``output="identity"``)
and the bias-free ``|·|`` networks of the theory section (``bias=False``,
``activation="abs"``).

Example
-------
>>> import torch
>>> from rmtprune.paper.models import FullyConnected
>>> net = FullyConnected([784, 64, 10])
>>> net(torch.zeros(5, 1, 28, 28)).shape
torch.Size([5, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rmtprune._util.validation import check_int, param_error

__all__ = ["ACTIVATIONS", "Abs", "FullyConnected", "make_activation"]


class Abs(nn.Module):
    """Elementwise absolute value, the ``|·|`` activation of the theory section."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``|x|``."""
        return x.abs()


ACTIVATIONS = ("relu", "abs", "tanh", "identity")


def make_activation(name: str, owner: str = "make_activation") -> nn.Module:
    """Build the activation module called ``name`` (one of :data:`ACTIVATIONS`).

    Examples
    --------
    >>> make_activation("relu")
    ReLU()
    """
    if name == "relu":
        return nn.ReLU()
    if name == "abs":
        return Abs()
    if name == "tanh":
        return nn.Tanh()
    if name == "identity":
        return nn.Identity()
    raise param_error("activation", owner, f"one of {list(ACTIVATIONS)}", name)


class FullyConnected(nn.Module):
    """Multilayer perceptron ``widths[0] → widths[1] → … → widths[-1]``.

    Parameters
    ----------
    widths : sequence of int
        Layer widths, input first; at least two entries, all positive.
    activation : {"relu", "abs", "tanh", "identity"}
        Activation between consecutive Linear layers (none after the last).
    output : {"log_softmax", "identity"}
        ``log_softmax`` over dim 1 for classification, ``identity`` for
        regression.
    bias : bool
        Whether the Linear layers have biases.

    Attributes
    ----------
    widths : tuple of int
        The widths given.
    layers : torch.nn.Sequential
        ``Linear, activation, Linear, …, Linear``; the Linear layers are
        ``layers.0``, ``layers.2``, … (the names a pruner reports).

    Examples
    --------
    >>> net = FullyConnected([4, 3, 2], activation="abs", bias=False)
    >>> [tuple(m.weight.shape) for m in net.layers if isinstance(m, torch.nn.Linear)]
    [(3, 4), (2, 3)]
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str = "relu",
        output: str = "log_softmax",
        bias: bool = True,
    ) -> None:
        super().__init__()
        owner = "FullyConnected"
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise TypeError(
                f"The 'widths' parameter of {owner} must be a sequence of ints. "
                f"Got {widths!r} of type {type(widths).__name__} instead."
            )
        if len(widths) < 2:
            raise param_error("widths", owner, "a sequence of at least two ints", widths)
        self.widths = tuple(check_int(w, "widths", owner, low=1) for w in widths)
        if output not in ("log_softmax", "identity"):
            raise param_error("output", owner, "'log_softmax' or 'identity'", output)
        if not isinstance(bias, bool):
            raise TypeError(f"The 'bias' parameter of {owner} must be a bool. Got {bias!r}.")
        make_activation(activation, owner)  # validate once
        self.activation = activation
        self.output = output
        modules: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(self.widths[:-1], self.widths[1:], strict=True)):
            modules.append(nn.Linear(n_in, n_out, bias=bias))
            if i < len(self.widths) - 2:
                modules.append(make_activation(activation, owner))
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten all but the batch dimension, apply the layers and the output map."""
        out = self.layers(x.flatten(1))
        if self.output == "log_softmax":
            return torch.log_softmax(out, dim=1)
        return out

    def extra_repr(self) -> str:
        """Widths, activation and output, for ``print(model)``."""
        return f"widths={list(self.widths)}, activation={self.activation!r}, output={self.output!r}"
