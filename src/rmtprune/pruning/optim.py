"""Keep an optimizer valid after pruning changed a model's parameters, by editing it in place.

Pruning replaces parameters: a split layer's ``weight`` becomes two factors
(``first.weight``, ``second.weight``) and its ``bias`` a copy (``second.bias``); a layer
truncated in place keeps its ``Parameter`` objects.  :func:`update_optimizer` edits the
user's optimizer object itself — its ``param_groups`` lists and its per-parameter
``state`` — so that learning-rate schedulers, accelerate's ``AcceleratedOptimizer``,
Lightning's ``LightningOptimizer`` and anything else holding a reference stay valid:

* each new parameter takes the place, in its group, of the parameter it replaces
  (factors of a weight → that weight's group, a new bias → the old bias's group), so the
  group order stays the model's order when it was before;
* parameters the optimizer did not hold stay out (a frozen or separately optimised layer
  stays so), and parameters that are gone are dropped with their state;
* state: a parameter that survived (the same object, e.g. a weight truncated in place)
  keeps its state unchanged; a new parameter that is an exact copy of the one it replaces
  (same shape and values: the bias of a split layer) takes over its state, which is exact;
  the new factors start with fresh state (what the optimizer gives a parameter it has not
  stepped yet; ``Adagrad``'s accumulator is initialised as its ``__init__`` does, and
  ``LBFGS`` — one flat history over all parameters — restarts its history).

The replacement is read from a snapshot of the model's named parameters taken before
pruning (``before = dict(model.named_parameters())``): a new parameter under the module
path of removed ones replaces them (bias → bias, anything else → the non-bias ones).

Example
-------
>>> import torch
>>> import rmtprune
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(200, 100))
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> before = dict(model.named_parameters())
>>> _, report = rmtprune.prune(model, criterion=rmtprune.MPCriterion(min_rank=10), inplace=True)
>>> rmtprune.update_optimizer(opt, model, before) is opt
True
>>> [tuple(p.shape) for p in opt.param_groups[0]["params"]]
[(10, 200), (100, 10), (100,)]
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rmtprune.pruning.options import warn_deprecated

__all__ = [
    "optimizer_list",
    "rebuild_optimizer",
    "remember_snapshot",
    "replacements",
    "unwrap_optimizer",
    "update_optimizer",
    "update_optimizer_after_step",
]

# The snapshot taken by SpectralPruner.step before its last change of each model, so that
# update_optimizer_after_step(optimizer, model) (which gets no snapshot) knows what replaced
# what.
_LAST_SNAPSHOT: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Parameter]] = (
    weakref.WeakKeyDictionary()
)


def unwrap_optimizer(optimizer: Any, owner: str = "update_optimizer") -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` inside ``optimizer`` (accelerate, Lightning wrappers).

    >>> import torch
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    >>> unwrap_optimizer(opt) is opt
    True
    """
    seen = 0
    current = optimizer
    while seen < 8:
        inner = getattr(current, "optimizer", None) or getattr(current, "_optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not current:
            current, seen = inner, seen + 1
            continue
        break
    if not isinstance(current, torch.optim.Optimizer):
        raise TypeError(
            f"The 'optimizer' parameter of {owner} must be a torch.optim.Optimizer or a wrapper "
            f"of one (with an 'optimizer' attribute). Got {type(optimizer).__name__} instead."
        )
    return current


def optimizer_list(optimizer: Any) -> list[Any]:
    """One optimizer, or a list or tuple of them, as a list.

    >>> optimizer_list(None), len(optimizer_list((1, 2)))
    ([None], 2)
    """
    return list(optimizer) if isinstance(optimizer, list | tuple) else [optimizer]


def _leaf(name: str) -> str:
    return name.rpartition(".")[2]


def replacements(
    before: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[int, tuple[torch.Tensor, list[torch.Tensor]]]:
    """Which removed parameters each new parameter of ``model`` replaces.

    Returns ``{id(new): (new, [old, ...])}`` for every parameter of ``model`` that is not in
    ``before`` (a ``{name: parameter}`` snapshot taken before the change) and lies under the
    module path of removed parameters: the nearest enclosing module path that lost parameters
    gives the candidates; a ``bias`` replaces the removed biases there, anything else the
    removed non-bias parameters.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> before = dict(model.named_parameters())
    >>> model[0] = torch.nn.Linear(3, 2)
    >>> sorted(len(olds) for _, olds in replacements(before, model).values())
    [1, 1]
    """
    now = dict(model.named_parameters())
    now_ids = {id(p) for p in now.values()}
    before_ids = {id(p) for p in before.values()}
    gone = {name: p for name, p in before.items() if id(p) not in now_ids}
    found: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
    for name, param in now.items():
        if id(param) in before_ids or not gone:
            continue
        prefix, candidates = name, list[str]()
        while not candidates and prefix:
            prefix = prefix.rpartition(".")[0]
            candidates = [n for n in gone if not prefix or n.startswith(prefix + ".")]
        is_bias = _leaf(name) == "bias"
        olds = [gone[n] for n in candidates if (_leaf(n) == "bias") == is_bias]
        if olds:
            found[id(param)] = (param, olds)
    return found


def _fresh_state(opt: torch.optim.Optimizer, group: Mapping[str, Any], p: torch.Tensor) -> None:
    """Initialise state the way the optimizer's ``__init__`` does, where it does so."""
    if isinstance(opt, torch.optim.Adagrad):
        fused = bool(group.get("fused"))
        opt.state[p] = {
            "step": torch.zeros((), dtype=torch.float32, device=p.device)
            if fused
            else torch.tensor(0.0, dtype=torch.get_default_dtype()),
            "sum": torch.full_like(
                p, group["initial_accumulator_value"], memory_format=torch.preserve_format
            ),
        }


def _is_copy(new: torch.Tensor, old: torch.Tensor) -> bool:
    return new.shape == old.shape and new.dtype == old.dtype and torch.equal(new, old)


def _edit(opt: torch.optim.Optimizer, found: Mapping[int, Any], model: nn.Module) -> None:
    now_ids = {id(p) for p in model.parameters()}
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    children: dict[int, list[torch.Tensor]] = {}
    for param, olds in found.values():  # model order
        first_held = next((o for o in olds if id(o) in held), None)
        if first_held is not None and id(param) not in held:
            children.setdefault(id(first_held), []).append(param)
    for group in opt.param_groups:
        params: list[torch.Tensor] = []
        for p in group["params"]:
            if id(p) in now_ids:
                params.append(p)
                continue
            old_state = opt.state.pop(p, None)
            for new in children.get(id(p), []):
                params.append(new)
                if old_state is not None and _is_copy(new, p):
                    opt.state[new] = old_state
                else:
                    _fresh_state(opt, group, new)
        group["params"][:] = params
    if isinstance(opt, torch.optim.LBFGS):  # one flat history over all parameters
        opt._params = opt.param_groups[0]["params"]
        opt._numel_cache = None
        opt.state.clear()


def update_optimizer(optimizer: Any, model: nn.Module, before: Mapping[str, torch.Tensor]) -> Any:
    """Edit ``optimizer`` in place so that it optimises ``model``'s parameters after pruning.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer or a wrapper of one
        The optimizer in use (accelerate's ``AcceleratedOptimizer`` and Lightning's
        ``LightningOptimizer`` are unwrapped).  Its groups, hyperparameters and group count
        are kept; see the module docstring for which parameters go where and their state.
    model : torch.nn.Module
        The model after pruning.
    before : mapping of str to torch.Tensor
        ``dict(model.named_parameters())`` taken before pruning.

    Returns
    -------
    The same ``optimizer`` object.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> opt = torch.optim.Adam(model.parameters())
    >>> before = dict(model.named_parameters())
    >>> model[0] = torch.nn.Linear(3, 2)   # any surgery that replaces parameters
    >>> update_optimizer(opt, model, before).param_groups[0]["params"][0] is model[0].weight
    True
    """
    opt = unwrap_optimizer(optimizer)
    if not isinstance(model, nn.Module):
        raise TypeError(
            "The 'model' parameter of update_optimizer must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    if not isinstance(before, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in before.items()
    ):
        raise TypeError(
            "The 'before' parameter of update_optimizer must map parameter names to parameters "
            f"(dict(model.named_parameters()) taken before pruning). Got {type(before).__name__}"
            " instead."
        )
    _edit(opt, replacements(before, model), model)
    return optimizer


def remember_snapshot(model: nn.Module, before: dict[str, nn.Parameter]) -> None:
    """Record ``before`` as the snapshot of ``model``'s last pruning (for
    :func:`update_optimizer_after_step`)."""
    _LAST_SNAPSHOT[model] = before


def update_optimizer_after_step(optimizer: Any, model: nn.Module) -> Any:
    """:func:`update_optimizer` with the snapshot :meth:`SpectralPruner.step` took.

    For code that steps a pruner without passing it the optimizer (``pruner.step(epoch)``)
    and updates the optimizer afterwards.  Prefer ``pruner.step(epoch, optimizer=optimizer)``.
    After a change not made by :meth:`rmtprune.SpectralPruner.step` it cannot tell which
    parameter replaced which, warns, and drops the removed parameters without adding the
    new ones.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer or a wrapper of one
        The optimizer in use; edited in place and returned.
    model : torch.nn.Module
        The model after pruning.
    """
    return _after_step(optimizer, model, "update_optimizer_after_step")


def rebuild_optimizer(optimizer: Any, model: nn.Module) -> Any:
    """Deprecated: the older spelling of :func:`update_optimizer_after_step`.

    Emits a ``DeprecationWarning``; pass ``optimizer=`` to :meth:`SpectralPruner.step` or
    call :func:`update_optimizer` instead.  Edits ``optimizer`` in place and returns it.
    """
    warn_deprecated(
        "rebuild_optimizer(optimizer, model) is deprecated; pass "
        "pruner.step(epoch, optimizer=optimizer), or call "
        "rmtprune.update_optimizer(optimizer, model, before) with "
        "before = dict(model.named_parameters()) taken before pruning."
    )
    return _after_step(optimizer, model, "rebuild_optimizer")


def _after_step(optimizer: Any, model: nn.Module, owner: str) -> Any:
    unwrap_optimizer(optimizer, owner)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter of {owner} must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    before = _LAST_SNAPSHOT.get(model)
    if before is None:
        warnings.warn(
            f"{owner} cannot tell which parameters replaced which after a change not "
            "made by SpectralPruner.step; new parameters are not added. Take "
            "before = dict(model.named_parameters()) before pruning and call "
            "rmtprune.update_optimizer(optimizer, model, before) instead.",
            UserWarning,
            stacklevel=3,
        )
        before = {}
    return update_optimizer(optimizer, model, before)
