"""Lightning: prune on a schedule, keep the optimizers valid, save and resume the pruned model.

``pip install rmtprune[lightning]``.  Add one callback::

    trainer = lightning.Trainer(callbacks=[SpectralPruningCallback(
        schedule=rmtprune.schedules.Linear(30), every=2,
        criterion=rmtprune.MPCriterion(min_rank=10))])

* Pruning happens at the *start* of an epoch (``interval="epoch"``: ``pruner.step(e)`` after ``e``
  completed epochs) or of a batch (``interval="step"``: after ``global_step`` optimizer steps).
  Pruning before the work rather than after it means a checkpoint written at the end of an epoch
  or step, wherever Lightning writes it (after validation, by ``ModelCheckpoint``), never misses a
  pruning step when resumed.
* After a change, every optimizer of the trainer is edited in place
  (:func:`rmtprune.update_optimizer`); its learning-rate schedulers stay attached.
* Checkpoints hold the pruned structure and the pruner's state.  While the callback is attached,
  the module's ``state_dict()`` carries them in its metadata (``state_dict._metadata[""]``, a
  ``register_state_dict_post_hook``) and a ``load_state_dict`` pre-hook rebuilds that structure
  before the weights load, so ``Trainer.fit(model, ckpt_path=...)`` restores the factorized
  layers on the freshly built module (on every rank) right before Lightning loads its weights,
  optimizer state and schedulers.  The structure is also written as ``checkpoint["rmtprune"]``.
* Sparse layers (:class:`rmtprune.Sparsity` as the criterion, or a module sparsified before
  ``fit``) keep their zeros in every checkpoint; the record names them (``"masked"``) with the
  positions of kept weights that are exactly 0.0 (``"kept_zeros"``), and the same restore
  re-creates their masks from the zeros of the loaded weights and those positions (the saved
  masks exactly), so a resumed run keeps them zero.
* Under a DDP strategy (``"ddp"``, ``"ddp_spawn"``, ...) rank 0 decides, every rank receives its
  structure and weights, every rank's optimizers are edited and the strategy's
  ``DistributedDataParallel`` is re-initialised in place (:mod:`rmtprune.integrations.ddp`).
  Other multi-process strategies (FSDP, DeepSpeed) are refused.
* Outside a trainer (``MyModule.load_from_checkpoint`` cannot know the structure), call
  :func:`restore_structure` on the built module before loading the weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rmtprune.factorize.masks import apply_mask, mask_from_zeros
from rmtprune.integrations._common import (
    PruningCallbackCore,
    apply_record,
    make_pruner,
    make_record,
)
from rmtprune.storage.format import describe_structure
from rmtprune.storage.metadata import META_KEY as CHECKPOINT_KEY

__all__ = ["CHECKPOINT_KEY", "SpectralPruningCallback", "restore_structure"]


class SpectralPruningCallback(pl.Callback, PruningCallbackCore):
    """Prune the LightningModule on a schedule (see the module docstring).

    Parameters
    ----------
    interval : {"epoch", "step"}
        What ``every`` counts: completed epochs or optimizer steps.
    progress : bool
        Progress bars during a pruning step (off by default: Lightning has its own).
    **pruner_options
        Passed to :class:`rmtprune.SpectralPruner` (``schedule``, ``every``, ``criterion``,
        ``select``, ...); layer names are relative to the LightningModule.

    Attributes
    ----------
    pruner : SpectralPruner or None
        Created in ``setup``.
    reports : list of PruneReport
        The reports of the steps that changed the model, in order.
    seconds : list of float
        Wall time of each of those steps (fit, surgery and optimizer update).
    """

    def __init__(self, *, interval: str = "epoch", progress: bool = False, **pruner_options: Any):
        PruningCallbackCore.__init__(self, interval, progress, pruner_options)
        self._pending: dict[str, Any] | None = None
        self._hooks: list[Any] = []

    @property
    def state_key(self) -> str:
        """One callback of this kind per trainer."""
        return "rmtprune.SpectralPruningCallback"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Create the pruner; arm the structure record of saved state dicts and its restore."""
        if trainer.world_size > 1 and not isinstance(trainer.strategy, pl.strategies.DDPStrategy):
            raise RuntimeError(
                "SpectralPruningCallback supports single-process training and the DDP strategies "
                "('ddp', 'ddp_spawn', 'ddp_fork', ...); got "
                f"{type(trainer.strategy).__name__} with world_size={trainer.world_size}."
            )
        if self.pruner is None or self.pruner.model is not pl_module:
            self.pruner = make_pruner(pl_module, self.options, "SpectralPruningCallback")
        if self._pending is not None:
            self.pruner.load_state_dict(self._pending)
            self._pending = None

        def record(module: nn.Module, state: Any, prefix: str, metadata: dict[str, Any]) -> None:
            if self.pruner is not None and module is self.pruner.model:
                metadata[CHECKPOINT_KEY] = make_record(module, self.pruner)

        def restore(module: nn.Module, state: Any, prefix: str, metadata: Any, *args: Any) -> None:
            saved = metadata.get(CHECKPOINT_KEY) if isinstance(metadata, Mapping) else None
            if saved is not None and saved.get("structure") != describe_structure(module):
                apply_record(module, saved, "the state dict's metadata")
            if saved is not None:
                _restore_masks(module, saved, state, prefix)

        if not self._hooks:
            self._hooks = [
                pl_module.register_state_dict_post_hook(record),
                pl_module.register_load_state_dict_pre_hook(restore),
            ]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the state-dict hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _prune(self, trainer: pl.Trainer, index: int) -> None:
        wrapper = trainer.strategy.model  # a DDP strategy wraps even a single process
        if not isinstance(wrapper, DistributedDataParallel):
            if trainer.world_size > 1:
                raise RuntimeError(
                    "SpectralPruningCallback under a DDP strategy expects the strategy's model to "
                    f"be a DistributedDataParallel; got {type(wrapper).__name__}."
                )
            wrapper = None
        self.timed_step(index, list(trainer.optimizers), wrapper)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune after ``current_epoch`` completed epochs."""
        if self.interval == "epoch":
            self._prune(trainer, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Prune after ``global_step`` optimizer steps."""
        if self.interval == "step":
            self._prune(trainer, trainer.global_step)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Write the pruned structure next to the weights."""
        assert self.pruner is not None
        checkpoint[CHECKPOINT_KEY] = make_record(pl_module, self.pruner)

    def state_dict(self) -> dict[str, Any]:
        """The pruner's state (last pruning step, history, schedule)."""
        return {} if self.pruner is None else {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the pruner's state (now, or in ``setup`` when it does not exist yet)."""
        if "pruner" not in state_dict:
            return
        if self.pruner is None:
            self._pending = dict(state_dict["pruner"])
        else:
            self.pruner.load_state_dict(state_dict["pruner"])


def _restore_masks(
    module: nn.Module, record: Mapping[str, Any], state: Mapping[str, Any], prefix: str = ""
) -> None:
    """Mask the record's sparse layers of ``module`` where their weights in ``state`` (about
    to be loaded) are zero, except the record's kept zeros."""
    kept = record.get("kept_zeros") or {}
    for name in record.get("masked", ()):
        weight = state.get(f"{prefix}{name}.weight")
        if isinstance(weight, torch.Tensor):
            mask = mask_from_zeros(weight, kept.get(name, ()), name)
            apply_mask(module.get_submodule(name), mask)


def restore_structure(
    module: nn.Module, checkpoint: str | os.PathLike[str] | Mapping[str, Any]
) -> nn.Module:
    """Rebuild the pruned layers recorded in a Lightning checkpoint on ``module``, in place,
    and the masks of its sparse layers.

    Call it on a freshly built module before loading the checkpoint's ``state_dict``
    (``Trainer.fit(ckpt_path=...)`` with the callback does this by itself).

    Parameters
    ----------
    module : torch.nn.Module
        The freshly built LightningModule (or the same architecture).
    checkpoint : path or dict
        A ``.ckpt`` file or its loaded dictionary.

    Returns
    -------
    The same ``module``.
    """
    if isinstance(checkpoint, Mapping):
        loaded: Mapping[str, Any] = checkpoint
        source = "the checkpoint dictionary"
    elif isinstance(checkpoint, str | os.PathLike):
        loaded = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=False)
        source = f"checkpoint {os.fspath(checkpoint)!r}"
    else:
        raise TypeError(
            "The 'checkpoint' parameter of restore_structure must be a path or a checkpoint "
            f"dictionary. Got {type(checkpoint).__name__} instead."
        )
    if not isinstance(module, nn.Module):
        raise TypeError(
            "The 'module' parameter of restore_structure must be a torch.nn.Module. "
            f"Got {type(module).__name__} instead."
        )
    if CHECKPOINT_KEY not in loaded:
        raise ValueError(
            f"{source} has no {CHECKPOINT_KEY!r} entry: it was not written with "
            "SpectralPruningCallback."
        )
    apply_record(module, loaded[CHECKPOINT_KEY], source)
    _restore_masks(module, loaded[CHECKPOINT_KEY], loaded.get("state_dict", {}))
    return module
