"""DistributedDataParallel: prune on one rank, give every rank the same model, re-wrap DDP.

DDP's reducer is built for a fixed list of parameters, so after a layer is split the wrapper
must be rebuilt; and the factors must be bitwise equal on every rank, which independent SVDs
do not guarantee (ranks with different thread counts compute slightly different factors).
:func:`prune_step` is the one call per epoch, in place of ``pruner.step(epoch)``::

    pruner = rmtprune.SpectralPruner(ddp_model.module, schedule=..., every=2)
    for epoch in range(1, epochs + 1):
        train_one_epoch(ddp_model, optimizer)
        ddp_model, report = prune_step(pruner, epoch, ddp_model, optimizer=optimizer)

At a pruning epoch, rank ``src`` (0) alone fits and prunes; it broadcasts the report, the pruned
structure, the masks of its sparse layers (:class:`rmtprune.Sparsity`) and the pruner's state;
the other ranks rebuild that structure and apply those masks; then every parameter and buffer
is broadcast from ``src``, every rank edits its optimizer in place
(:func:`rmtprune.update_optimizer`) and the module is wrapped in a new DDP with the old one's
options.  At other epochs nothing is communicated and the same DDP object is returned.  The
pruner's decision to act depends only on the epoch and its state, which all ranks share.

The Lightning and Hugging Face callbacks use the two halves: :func:`synced_step` (decide on rank
0, copy to every rank, edit the optimizers) and ``rewrap(wrapper, in_place=True)``, which
re-initialises the stack's own wrapper object so that every reference to it stays valid.

A sharded model is not a DDP model: FSDP2 (``fully_shard``) has its own
:func:`rmtprune.integrations.fsdp.prune_step`, which gathers the full weights, prunes on rank 0
and shards a rebuilt model; the older FSDP1 wrapper (flat parameters) is not supported.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rmtprune.factorize.masks import apply_mask, mask_of, masked_layers
from rmtprune.pruning.optim import optimizer_list, update_optimizer
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.report import PruneReport
from rmtprune.storage.format import apply_structure, describe_structure

__all__ = ["prune_step", "rewrap", "synced_step"]


def rewrap(model: DistributedDataParallel, *, in_place: bool = False) -> DistributedDataParallel:
    """A ``DistributedDataParallel`` over ``model.module``'s parameters with ``model``'s options.

    Parameters
    ----------
    model : DistributedDataParallel
        The wrapper built before the module's parameters changed.
    in_place : bool
        ``False``: return a new wrapper (drop the old one).  ``True``: re-initialise ``model``
        itself and return it, for stacks that hold the wrapper where no callback can replace it
        (the Hugging Face ``Trainer``'s training loop keeps it in a local variable; Lightning's
        strategy, ``trainer.model_wrapped``): every reference stays valid.  Like the
        constructor, this is a collective call: every rank of the group makes it.

    Communication hooks (``register_comm_hook``) and ``mixed_precision`` are not carried over
    (their state is tied to the old gradient buckets): a wrapper with either is refused.
    """
    if not isinstance(model, DistributedDataParallel):
        raise TypeError(
            "The 'model' parameter of rewrap must be a DistributedDataParallel. "
            f"Got {type(model).__name__} instead."
        )
    # _comm_hooks: DDP's own record of register_comm_hook calls (torch internal, read only).
    if getattr(model, "_comm_hooks", None) or getattr(model, "mixed_precision", None) is not None:
        raise ValueError(
            "The 'model' parameter of rewrap must be a DistributedDataParallel without "
            "communication hooks or mixed_precision: their state belongs to the old gradient "
            "buckets and cannot be carried to the pruned parameters."
        )
    options: dict[str, Any] = {}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        options["forward_sync_buffers"] = model.forward_sync_buffers  # torch >= 2.13
    else:
        options["broadcast_buffers"] = model.broadcast_buffers
    options.update(
        device_ids=model.device_ids,
        output_device=model.output_device,
        dim=model.dim,
        process_group=model.process_group,
        bucket_cap_mb=model.bucket_bytes_cap / (1024 * 1024),
        find_unused_parameters=model.find_unused_parameters,
        gradient_as_bucket_view=model.gradient_as_bucket_view,
        static_graph=model.static_graph,
    )
    if not in_place:
        return DistributedDataParallel(model.module, **options)
    DistributedDataParallel.__init__(model, model.module, **options)
    return model


def _masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """The masks of ``module``'s sparse layers by name, on the CPU (to be pickled)."""
    found = {name: mask_of(layer) for name, layer in masked_layers(module).items()}
    return {name: mask.cpu() for name, mask in found.items() if mask is not None}


def _broadcast_module(module: nn.Module, src: int, group: Any) -> None:
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src, group=group)


def synced_step(
    pruner: SpectralPruner,
    epoch: int,
    module: nn.Module,
    *,
    optimizer: Any = None,
    src: int = 0,
    group: Any = None,
    progress: bool | None = None,
) -> PruneReport:
    """``pruner.step(epoch)`` decided on rank ``src`` and copied to every rank of ``group``.

    The module is left unwrapped: after a change, rebuild its DDP wrapper (:func:`rewrap`).
    Every rank must make this call with the same ``epoch`` (a collective at pruning epochs).

    Parameters
    ----------
    pruner : SpectralPruner
        Built over ``module`` on every rank with the same options.
    epoch : int
        As in :meth:`SpectralPruner.step`.
    module : torch.nn.Module
        The module under the DDP wrapper.
    optimizer : optimizer or sequence of optimizers, optional
        Edited in place on every rank after a change.
    src : int
        The rank that computes the decision and the factors.
    group : ProcessGroup or None
        The wrapper's ``process_group`` (``None``: the default group).
    progress : bool or None
        Progress bars on rank ``src``.

    Returns
    -------
    PruneReport
        The report of rank ``src``, on every rank.
    """
    if not isinstance(pruner, SpectralPruner) or pruner.model is not module:
        raise ValueError(
            "The 'pruner' parameter of synced_step must be a SpectralPruner over 'module'."
        )
    if pruner.idle_reason(epoch) is not None:  # the same on every rank; it also checks epoch
        return pruner.step(epoch, progress=progress)  # changes nothing: says why
    before = dict(module.named_parameters())
    payload: list[Any] = [None, None, None, None]
    if dist.get_rank() == src:
        report = pruner.step(epoch, progress=progress)
        payload = [report, describe_structure(module), pruner.state_dict(), _masks(module)]
    dist.broadcast_object_list(payload, src=src, group=group)
    report, structure, state, masks = payload
    if dist.get_rank() != src:
        apply_structure(module, structure)
        pruner.load_state_dict(state)
        for name, mask in masks.items():  # the hooks that keep the zeros, on every rank
            apply_mask(module.get_submodule(name), mask)
    _broadcast_module(module, src, group)
    if report.changed:
        for opt in [] if optimizer is None else optimizer_list(optimizer):
            update_optimizer(opt, module, before)
    return report


def prune_step(
    pruner: SpectralPruner,
    epoch: int,
    model: DistributedDataParallel,
    *,
    optimizer: Any = None,
    src: int = 0,
    progress: bool | None = None,
) -> tuple[DistributedDataParallel, PruneReport]:
    """``pruner.step(epoch)`` under DDP: identical on every rank; returns the DDP to use next.

    Parameters
    ----------
    pruner : SpectralPruner
        Built over ``model.module`` on every rank with the same options.
    epoch : int
        As in :meth:`SpectralPruner.step`.
    model : DistributedDataParallel
        The wrapped model.
    optimizer : optimizer or sequence of optimizers, optional
        Edited in place on every rank after a change.
    src : int
        The rank that computes the decision and the factors.
    progress : bool or None
        Progress bars on rank ``src``.

    Returns
    -------
    (DistributedDataParallel, PruneReport)
        After a change a new wrapper (drop the old one), else ``model`` itself; the report of
        rank ``src`` on every rank.
    """
    if not isinstance(model, DistributedDataParallel):
        raise TypeError(
            "The 'model' parameter of prune_step must be a DistributedDataParallel. "
            f"Got {type(model).__name__} instead."
        )
    if not isinstance(pruner, SpectralPruner) or pruner.model is not model.module:
        raise ValueError(
            "The 'pruner' parameter of prune_step must be a SpectralPruner over model.module."
        )
    report = synced_step(
        pruner,
        epoch,
        model.module,
        optimizer=optimizer,
        src=src,
        group=model.process_group,
        progress=progress,
    )
    return (rewrap(model) if report.changed else model), report
