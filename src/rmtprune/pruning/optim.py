"""Rebuild an optimizer after pruning changed a model's parameters.

Example
-------
>>> import torch
>>> from rmtprune import rebuild_optimizer
>>> model = torch.nn.Linear(4, 2)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> model.weight = torch.nn.Parameter(model.weight.detach().clone())
>>> opt = rebuild_optimizer(opt, model)
>>> len(opt.param_groups[0]["params"])
2
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["rebuild_optimizer"]


def rebuild_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """Return a new optimizer of the same class over ``model``'s current parameters.

    The hyperparameters of every parameter group are kept as they are *now*
    (including a learning rate a scheduler has already changed).  A parameter
    that survived the change (the same ``Parameter`` object) stays in its group
    and keeps its per-parameter state (momentum buffers, Adam moments).  New
    parameters (the factors of a split layer) join the first group with fresh
    state.  Parameters that are gone are dropped with their state.  Within each
    group the parameters follow ``model.parameters()`` order, so with a single
    group the result's ``state_dict()`` loads into a fresh optimizer built over
    ``model.parameters()``.

    A learning-rate scheduler holds a reference to the old optimizer; create
    it again over the returned one (``last_epoch`` carries the position).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        The optimizer in use; it is not modified.
    model : torch.nn.Module
        The model after pruning.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "The 'optimizer' parameter of rebuild_optimizer must be a torch.optim.Optimizer. "
            f"Got {type(optimizer).__name__} instead."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(
            "The 'model' parameter of rebuild_optimizer must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    current = [p for p in model.parameters() if p.requires_grad]
    group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    # Parameters keep the model's order inside each group, so that a fresh optimizer built
    # over model.parameters() can load this optimizer's state_dict (it matches by position).
    groups = [
        {
            **{k: v for k, v in group.items() if k != "params"},
            "params": [p for p in current if group_of.get(id(p), 0) == i],
        }
        for i, group in enumerate(optimizer.param_groups)
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("The model has no trainable parameters to optimise.")
    new = type(optimizer)(groups, **optimizer.defaults)
    for p in current:
        if id(p) in group_of and p in optimizer.state:
            new.state[p] = optimizer.state[p]
    return new
