"""FSDP2 (``torch.distributed.fsdp.fully_shard``): prune on one rank, rebuild the sharded model.

Under FSDP2 every parameter is a ``DTensor`` sharded on dim 0, so no rank holds a weight matrix
to decompose; and ``fully_shard`` fixes each group's parameter list for good (calling it again
on a module raises "can only be applied to a module once"), so a group whose layer was split
cannot take the factors in.  :func:`prune_step` — the one call per epoch, in place of
``pruner.step(epoch)`` — therefore gathers the full weights on rank 0, prunes a plain copy
there, and builds the sharded model anew with the user's own two functions::

    def build():                     # a fresh, unsharded model (as for the first run)
        return Net()

    def shard(model):                # the same fully_shard calls as for the first run
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)

    model = build(); shard(model)
    optimizer = torch.optim.Adam(model.parameters())
    pruner = rmtprune.SpectralPruner(model, schedule=..., every=2)
    for epoch in range(1, epochs + 1):
        train_one_epoch(model, optimizer)
        model, report = prune_step(pruner, epoch, model, optimizer=optimizer,
                                   build=build, shard=shard)

At a pruning epoch: every rank takes part in gathering the full state dict onto rank 0
(``get_model_state_dict(..., full_state_dict=True, cpu_offload=True)``); rank 0 builds a plain
model, gives it the current pruned structure and those weights, and steps the pruner on it;
it broadcasts the report, the new structure and the pruner's state.  When the model changed,
every rank builds a new model, applies the structure, calls ``shard`` on it, and loads rank 0's
pruned weights (``set_model_state_dict(..., broadcast_from_rank0=True)``); then every
optimizer is edited in place: each parameter pruning left in place (on rank 0) is replaced by
its new ``DTensor`` and keeps its state, the factors and the new bias of a split layer are
placed as :func:`rmtprune.update_optimizer` places them.  ``build`` runs under
``torch.random.fork_rng``, so the global random state is untouched.  At other epochs nothing
is communicated and ``model`` itself is returned.

Sparse layers (:class:`rmtprune.Sparsity`, :mod:`rmtprune.factorize.masks`) are not supported:
their mask hooks zero the weight that ``fully_shard`` gathers for the forward pass, not the
sharded parameter the optimizer updates nor the copy gathered again for the backward pass of a
unit resharded after forward (the layers before it would get the gradients of the dense
layer), and a ``state_dict`` of the sharded model is refused by the mask's own hook (a masked
weight that is a ``DTensor``).  :func:`prune_step`,
:func:`save_checkpoint` and :func:`load_checkpoint` refuse a model with a masked layer, and
:func:`prune_step` a criterion that produces masks, naming the layer or the criterion; train a
sparse model under DDP (:mod:`rmtprune.integrations.ddp`) instead.

Checkpoints: :func:`save_checkpoint` writes the model (and optimizer) with
``torch.distributed.checkpoint`` plus ``rmtprune.json`` (the pruned structure and the pruner's
state); to resume, :func:`restore_structure` on the freshly built unsharded model, then
``shard``, the optimizer and the pruner, then :func:`load_checkpoint`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rmtprune._util.fileio import atomic_write_bytes
from rmtprune.factorize import LowRankModule
from rmtprune.factorize.masks import masked_layers
from rmtprune.integrations._common import RECORD_VERSION, apply_record
from rmtprune.pruning.optim import optimizer_list, unwrap_optimizer, update_optimizer
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.report import PruneReport
from rmtprune.storage.format import apply_structure, describe_structure

__all__ = [
    "RECORD_FILE",
    "load_checkpoint",
    "prune_step",
    "restore_structure",
    "save_checkpoint",
]

RECORD_FILE = "rmtprune.json"


def _fsdp() -> Any:
    from torch.distributed import fsdp  # imported on use: `import rmtprune` stays without it

    return fsdp


def _state_dict_api() -> Any:
    from torch.distributed.checkpoint import state_dict

    return state_dict


def _structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``describe_structure`` with the class names FSDP2 gives a sharded layer
    (``FSDPLowRankLinear``) read as the rmtprune class they extend."""
    structure = describe_structure(model)
    for name, entry in structure.items():
        cls = type(model.get_submodule(name))
        base = next(
            c for c in cls.__mro__ if issubclass(c, LowRankModule) and not _is_fsdp_class(c)
        )
        entry["type"] = base.__name__
    return structure


def _is_fsdp_class(cls: type) -> bool:
    return issubclass(cls, _fsdp().FSDPModule)


def _fresh(build: Callable[[], nn.Module], structure: Mapping[str, Any]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        model = build()
    if not isinstance(model, nn.Module):
        raise TypeError(
            "The 'build' parameter of prune_step must return a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    if isinstance(model, _fsdp().FSDPModule):
        raise ValueError(
            "The 'build' parameter of prune_step must return an unsharded model "
            "(prune_step calls 'shard' on it). Got a model fully_shard was applied to."
        )
    apply_structure(model, dict(structure))
    return model


def _decide(
    pruner: SpectralPruner,
    epoch: int,
    model: nn.Module,
    build: Callable[[], nn.Module],
    full: dict[str, Any],
    progress: bool | None,
) -> tuple[list[Any], dict[str, torch.Tensor]]:
    """On rank 0: prune a plain copy of ``model`` holding the full weights ``full``."""
    plain = _fresh(build, _structure(model))
    plain.load_state_dict(full)
    pruner.model = plain
    # The rank records of the pruner stay valid: the plain copy holds the layers they were
    # made on; reloading the state binds them to the copy's layers at this step.
    pruner.load_state_dict(pruner.state_dict())
    before = dict(plain.named_parameters())
    try:
        report = pruner.step(epoch, progress=progress)
    finally:
        pruner.model = model
    # the parameters that pruning left in place (the same objects): their state is kept
    kept = [n for n, p in plain.named_parameters() if before.get(n) is p]
    return [report, _structure(plain), pruner.state_dict(), kept, None], plain.state_dict()


def _rename(opt: torch.optim.Optimizer, mapping: Mapping[int, torch.Tensor]) -> None:
    """Put each new parameter in its predecessor's place in ``opt``, with its state."""
    for group in opt.param_groups:
        params = []
        for p in group["params"]:
            new = mapping.get(id(p))
            if new is None:
                params.append(p)
                continue
            params.append(new)
            state = opt.state.pop(p, None)
            if state is not None:
                opt.state[new] = state
        group["params"][:] = params


def _update_optimizers(optimizer: Any, old: nn.Module, new: nn.Module, kept: Sequence[str]) -> None:
    before = dict(old.named_parameters())
    after = dict(new.named_parameters())
    survivors = {id(before[name]): after[name] for name in kept}
    # the survivors' new objects stand in for the old ones; the rest is what
    # update_optimizer does after a single-process pruning step
    snapshot = {n: after[n] if id(p) in survivors else p for n, p in before.items()}
    for opt in [] if optimizer is None else optimizer_list(optimizer):
        _rename(unwrap_optimizer(opt, "prune_step"), survivors)
        update_optimizer(opt, new, snapshot)


_NO_SPARSE = (
    "Sparse layers are not supported under FSDP2: {what}; a mask cannot be kept on a sharded "
    "weight. Prune with a rank criterion under FSDP2, or train the sparse model under DDP "
    "(rmtprune.integrations.ddp)."
)


def _refuse_masks(model: nn.Module, owner: str) -> None:
    """Refuse a model with a sparse layer (see the module docstring), naming the layer."""
    names = list(masked_layers(model))
    if names:
        what = f"layer {names[0]!r} of the 'model' parameter of {owner} has a sparsity mask"
        raise ValueError(_NO_SPARSE.format(what=what))


def _check_arguments(
    pruner: SpectralPruner, model: nn.Module, build: Any, shard: Any, optimizer: Any
) -> None:
    if not isinstance(model, _fsdp().FSDPModule):
        raise TypeError(
            "The 'model' parameter of prune_step must be a model fully_shard was applied to. "
            f"Got {type(model).__name__} instead."
        )
    if not isinstance(pruner, SpectralPruner) or pruner.model is not model:
        raise ValueError(
            "The 'pruner' parameter of prune_step must be a SpectralPruner over model."
        )
    _refuse_masks(model, "prune_step")
    if getattr(pruner.criterion, "produces_masks", False):
        what = f"the criterion of the 'pruner' parameter of prune_step, {pruner.criterion!r}, "
        raise ValueError(_NO_SPARSE.format(what=what + "produces masks"))
    for name, fn in (("build", build), ("shard", shard)):
        if not callable(fn):
            raise TypeError(
                f"The '{name}' parameter of prune_step must be callable. "
                f"Got {type(fn).__name__} instead."
            )
    for opt in [] if optimizer is None else optimizer_list(optimizer):
        unwrap_optimizer(opt, "prune_step")


def _sharded(
    build: Callable[[], nn.Module],
    shard: Callable[[nn.Module], Any],
    structure: Mapping[str, Any],
    pruned: dict[str, torch.Tensor],
) -> nn.Module:
    """A new sharded model of ``structure`` holding rank 0's ``pruned`` weights."""
    new = _fresh(build, structure)
    shard(new)
    if not isinstance(new, _fsdp().FSDPModule):
        raise ValueError(
            "The 'shard' parameter of prune_step must apply fully_shard to the model it is "
            "given (at least to the model itself, the root)."
        )
    api = _state_dict_api()
    api.set_model_state_dict(
        new,
        pruned,
        options=api.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    return new


def prune_step(
    pruner: SpectralPruner,
    epoch: int,
    model: nn.Module,
    *,
    build: Callable[[], nn.Module],
    shard: Callable[[nn.Module], Any],
    optimizer: Any = None,
    progress: bool | None = None,
) -> tuple[nn.Module, PruneReport]:
    """``pruner.step(epoch)`` under FSDP2: decided on rank 0; returns the model to use next.

    Call it on every rank of the default process group.

    Parameters
    ----------
    pruner : SpectralPruner
        Built over ``model`` on every rank with the same options.
    epoch : int
        As in :meth:`SpectralPruner.step`.
    model : torch.nn.Module
        The sharded model (``fully_shard`` applied).
    build : callable
        ``build()`` returns a fresh unsharded model built as for the first run (its weights
        are overwritten; the global random state is kept).
    shard : callable
        ``shard(model)`` applies ``fully_shard`` to a built model, in place, as for the
        first run; it meets the factorized layers (``LowRankLinear`` ...) where the split
        layers were.
    optimizer : optimizer or sequence of optimizers, optional
        Edited in place on every rank after a change.
    progress : bool or None
        Progress bars on rank 0.

    Returns
    -------
    (torch.nn.Module, PruneReport)
        After a change a new sharded model (drop the old one; ``pruner.model`` is it), else
        ``model`` itself; rank 0's report on every rank.
    """
    _check_arguments(pruner, model, build, shard, optimizer)
    if pruner.idle_reason(epoch) is not None:  # the same on every rank; it also checks epoch
        return model, pruner.step(epoch, progress=progress)  # changes nothing: says why
    api = _state_dict_api()
    full = api.get_model_state_dict(
        model, options=api.StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    payload: list[Any] = [None, None, None, None, None]
    pruned: dict[str, torch.Tensor] = {}
    if dist.get_rank() == 0:
        try:
            payload, pruned = _decide(pruner, epoch, model, build, full, progress)
        except Exception as exc:  # the other ranks wait on the broadcast: tell them
            payload = [None, None, None, None, f"{type(exc).__name__}: {exc}"]
            dist.broadcast_object_list(payload, src=0)
            raise
    del full
    dist.broadcast_object_list(payload, src=0)
    report, structure, state, kept, error = payload
    if error is not None:
        raise RuntimeError(f"prune_step failed on rank 0: {error}")
    if dist.get_rank() != 0:
        pruner.load_state_dict(state)
    if not report.changed:
        return model, report
    new = _sharded(build, shard, structure, pruned)
    _update_optimizers(optimizer, model, new, kept)
    pruner.model = new
    pruner.load_state_dict(pruner.state_dict())  # records bind to the new layers
    return new, report


def _record_path(checkpoint_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(checkpoint_dir), RECORD_FILE)


def _read_record(checkpoint_dir: str | os.PathLike[str], owner: str) -> dict[str, Any]:
    path = _record_path(checkpoint_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The 'checkpoint_dir' parameter of {owner} must hold {RECORD_FILE} "
            f"(written by save_checkpoint). Not found: {path!r}."
        )
    with open(path, encoding="utf-8") as fh:
        record: dict[str, Any] = json.load(fh)
    return record


def _app_state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    api = _state_dict_api()
    state: dict[str, Any] = {"model": api.get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = api.get_optimizer_state_dict(model, unwrap_optimizer(optimizer))
    return state


def save_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    model: nn.Module,
    pruner: SpectralPruner,
    optimizer: Any = None,
) -> None:
    """Save the sharded ``model`` (and ``optimizer``) with ``torch.distributed.checkpoint``
    and ``rmtprune.json`` (structure and pruner state, written by rank 0); call it on
    every rank."""
    import torch.distributed.checkpoint as dcp

    _refuse_masks(model, "save_checkpoint")
    dcp.save(_app_state(model, optimizer), checkpoint_id=os.fspath(checkpoint_dir))
    if dist.get_rank() == 0:
        record = {
            "format_version": RECORD_VERSION,
            "structure": _structure(model),
            "pruner": pruner.state_dict(),
        }
        text = json.dumps(record, indent=1)  # whole or absent, as every rmtprune output
        atomic_write_bytes(_record_path(checkpoint_dir), lambda fh: fh.write(text.encode("utf-8")))
    dist.barrier()


def restore_structure(model: nn.Module, checkpoint_dir: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the pruned layers recorded in ``checkpoint_dir`` on the freshly built,
    still unsharded ``model``, in place; returns it.  Then ``shard`` it and build the
    optimizer and the pruner before :func:`load_checkpoint`."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            "The 'model' parameter of restore_structure must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    if isinstance(model, _fsdp().FSDPModule):
        raise ValueError(
            "The 'model' parameter of restore_structure must be unsharded (call it before "
            "fully_shard: FSDP2 cannot change a sharded model's parameters)."
        )
    apply_record(model, _read_record(checkpoint_dir, "restore_structure"), repr(checkpoint_dir))
    return model


def load_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    model: nn.Module,
    pruner: SpectralPruner,
    optimizer: Any = None,
) -> None:
    """Load a checkpoint of :func:`save_checkpoint` into the sharded ``model`` (restored by
    :func:`restore_structure`, then sharded), ``optimizer`` and ``pruner``; every rank."""
    import torch.distributed.checkpoint as dcp

    _refuse_masks(model, "load_checkpoint")
    record = _read_record(checkpoint_dir, "load_checkpoint")
    if _structure(model) != record.get("structure"):
        raise ValueError(
            f"The 'model' parameter of load_checkpoint must have the pruned structure of "
            f"{os.fspath(checkpoint_dir)!r}: call restore_structure on it before sharding."
        )
    api = _state_dict_api()
    state = _app_state(model, optimizer)
    if optimizer is not None:
        # get_optimizer_state_dict gives a fresh optimizer state for every parameter (a step
        # with zero gradients); parameters saved without state (new factors not stepped yet)
        # must stay without it, so their entries are left out of the load
        saved = dcp.FileSystemReader(os.fspath(checkpoint_dir)).read_metadata()
        keys = set(saved.state_dict_metadata)
        per_param = state["optimizer"]["state"]
        unsaved = [
            fqn
            for fqn in per_param
            if not all(f"optimizer.state.{fqn}.{k}" in keys for k in per_param[fqn])
        ]
        for fqn in unsaved:
            del per_param[fqn]
    dcp.load(state, checkpoint_id=os.fspath(checkpoint_dir))
    api.set_model_state_dict(model, state["model"])
    if optimizer is not None:
        opt = unwrap_optimizer(optimizer)
        api.set_optimizer_state_dict(
            model, opt, state["optimizer"], options=api.StateDictOptions(strict=False)
        )
        params = dict(model.named_parameters())
        for fqn in unsaved:
            opt.state.pop(params[fqn], None)
    pruner.load_state_dict(record["pruner"])
