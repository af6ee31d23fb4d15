"""Counting the parameters of a model: the one counter used by training and experiments.

Example
-------
>>> import torch
>>> from rmtprune.paper.models import count_parameters
>>> count_parameters(torch.nn.Linear(3, 2))
8
"""

from __future__ import annotations

from torch import nn

__all__ = ["count_parameters"]


def count_parameters(model: nn.Module) -> int:
    """Number of parameter entries of ``model`` (a tensor shared by two layers counted once).

    Examples
    --------
    >>> import torch
    >>> shared = torch.nn.Linear(4, 4, bias=False)
    >>> count_parameters(torch.nn.Sequential(shared, shared))
    16
    """
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
