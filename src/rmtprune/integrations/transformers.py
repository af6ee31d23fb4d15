"""Hugging Face ``Trainer``: prune on a schedule, keep the optimizer valid, resume a checkpoint.

``pip install rmtprune[hf]``.  Add one callback::

    trainer = Trainer(model, args, train_dataset=data, callbacks=[SpectralPruningCallback(
        interval="step", schedule=rmtprune.schedules.Constant(0.5), every=500,
        criterion=rmtprune.MPCriterion(min_rank=16))])

* Pruning happens at the end of an optimizer step (``interval="step"``: after
  ``state.global_step`` steps) or of an epoch (``interval="epoch"``), before the Trainer decides
  to save, so ``checkpoint-N`` holds the model as pruned at step ``N``.
* The Trainer's optimizer (accelerate's ``AcceleratedOptimizer`` around ``AdamW``) is edited in
  place: new factors go to the weight-decay group of the weight they replace and the new bias to
  the no-decay group of the old bias — the groups a Trainer would build over the pruned model, so
  its optimizer checkpoint loads on resume.  The learning-rate scheduler is untouched.
* ``checkpoint-N/rmtprune.json`` holds the pruned structure and the pruner's state.
* Sparse layers (:class:`rmtprune.Sparsity` as the criterion, or a model sparsified before
  training) keep their zeros in every checkpoint (the ``state_dict`` re-applies the masks);
  ``rmtprune.json`` names them (``"masked"``) with the positions of kept weights that are exactly
  0.0 (``"kept_zeros"``), and a resumed run re-creates their masks from the zeros of the loaded
  weights and those positions — the saved masks exactly — so training keeps them zero.
* Under ``torchrun`` (DDP) rank 0 decides, every rank receives its structure and weights and edits
  its optimizer, and the Trainer's ``DistributedDataParallel`` (noted at its first forward) is
  re-initialised in place (:mod:`rmtprune.integrations.ddp`).  FSDP and DeepSpeed are refused.

Resuming
--------
The Trainer loads the weights and the optimizer state of ``checkpoint-N`` before any callback
event, so the structure must be rebuilt before the Trainer is created — one call::

    model = build_model()                                  # as for the first run
    restore_structure(model, "out/checkpoint-500")         # rebuild the pruned layers
    trainer = Trainer(model, args, ..., callbacks=[SpectralPruningCallback(...)])
    trainer.train(resume_from_checkpoint="out/checkpoint-500")

The callback then continues the schedule from the recorded state.  Resuming without the call
fails loudly (the callback checks the model against the checkpoint's record at the start of
training).
"""

from __future__ import annotations

import json
import os
import weakref
from typing import Any

from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback

from rmtprune._util.fileio import atomic_write_bytes
from rmtprune.factorize.masks import restore_masks
from rmtprune.integrations._common import (
    RECORD_VERSION,
    PruningCallbackCore,
    apply_record,
    make_pruner,
    make_record,
)
from rmtprune.storage.format import describe_structure

__all__ = ["RECORD_FILE", "SpectralPruningCallback", "restore_structure"]

RECORD_FILE = "rmtprune.json"
"""Name of the record written into each ``checkpoint-N`` directory."""

# Pruner state of a model rebuilt by restore_structure, for the callback to pick up.
_RESTORED: weakref.WeakKeyDictionary[nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


def _read_record(checkpoint_dir: str | os.PathLike[str], owner: str) -> dict[str, Any]:
    path = os.path.join(os.fspath(checkpoint_dir), RECORD_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The 'checkpoint_dir' parameter of {owner} must be a Trainer checkpoint written with "
            f"SpectralPruningCallback. {path!r} does not exist."
        )
    with open(path, encoding="utf-8") as fh:
        record: dict[str, Any] = json.load(fh)
    return record


def restore_structure(model: nn.Module, checkpoint_dir: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the pruned layers recorded in ``checkpoint_dir`` on ``model``, in place.

    Call it on the freshly built model before creating the resumed ``Trainer``.

    Parameters
    ----------
    model : torch.nn.Module
        The model, built as for the first run.
    checkpoint_dir : path
        A ``checkpoint-N`` directory written by a Trainer with :class:`SpectralPruningCallback`.

    Returns
    -------
    The same ``model`` (its factorized layers hold placeholders until the Trainer loads the
    checkpoint's weights).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "The 'model' parameter of restore_structure must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    record = _read_record(checkpoint_dir, "restore_structure")
    apply_record(model, record, f"{os.fspath(checkpoint_dir)!r}")
    _RESTORED[model] = dict(record)
    return model


class SpectralPruningCallback(TrainerCallback, PruningCallbackCore):
    """Prune the Trainer's model on a schedule (see the module docstring).

    Parameters
    ----------
    interval : {"step", "epoch"}
        What ``every`` counts: optimizer steps or epochs.
    progress : bool
        Progress bars during a pruning step.
    **pruner_options
        Passed to :class:`rmtprune.SpectralPruner` (``schedule``, ``every``, ``criterion``,
        ``select``, ...).

    Attributes
    ----------
    pruner : SpectralPruner or None
        Created when training begins.
    reports : list of PruneReport
        The reports of the steps that changed the model, in order.
    seconds : list of float
        Wall time of each of those steps (fit, surgery and optimizer update).
    """

    def __init__(self, *, interval: str = "step", progress: bool = False, **pruner_options: Any):
        PruningCallbackCore.__init__(self, interval, progress, pruner_options)
        self._wrapper: weakref.ref[DistributedDataParallel] | None = None
        self._spotting: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Create the pruner; on a resumed run, continue from the restored record."""
        model = kw["model"]
        self.pruner = make_pruner(model, self.options, "SpectralPruningCallback")
        self._wrapper = None
        if args.world_size > 1:
            self._spot_wrapper(model)
        record = _RESTORED.pop(model, None)
        if record is None and state.global_step > 0:
            saved = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isfile(os.path.join(saved, RECORD_FILE)):
                record = _read_record(saved, "SpectralPruningCallback")
                if record.get("structure") != describe_structure(model):
                    raise RuntimeError(
                        f"The model does not have the pruned structure of {saved!r}: call "
                        "rmtprune.integrations.transformers.restore_structure(model, "
                        f"{saved!r}) on the freshly built model before creating the Trainer."
                    )
        if record is not None and record.get("format_version") == RECORD_VERSION:
            self.pruner.load_state_dict(record["pruner"])
            # the checkpoint's weights are loaded: masks from their zeros, kept zeros kept
            restore_masks(model, record.get("masked", ()), record.get("kept_zeros"))

    def _spot_wrapper(self, model: nn.Module) -> None:
        """Find the ``DistributedDataParallel`` around ``model`` at its first forward.

        The Trainer keeps the wrapper in a local variable of its training loop and passes
        callbacks only the bare model, so a global forward pre-hook (removed as soon as it has
        seen the wrapper, at the first step) notes which DDP calls ``model``.
        """
        if self._spotting is not None:
            self._spotting.remove()

        def spot(module: nn.Module, inputs: Any) -> None:
            if isinstance(module, DistributedDataParallel) and module.module is model:
                self._wrapper = weakref.ref(module)
                if self._spotting is not None:
                    self._spotting.remove()
                    self._spotting = None

        self._spotting = register_module_forward_pre_hook(spot)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Remove the wrapper-spotting hook if no forward ran."""
        if self._spotting is not None:
            self._spotting.remove()
            self._spotting = None

    def _prune(self, index: int, args: Any, kw: dict[str, Any]) -> None:
        wrapper = None
        if args.world_size > 1:
            wrapper = None if self._wrapper is None else self._wrapper()
            if wrapper is None:
                raise RuntimeError(
                    "SpectralPruningCallback under several processes supports "
                    "DistributedDataParallel (torchrun, accelerate launch): no "
                    "DistributedDataParallel wrapping the model was called during training "
                    "(FSDP and DeepSpeed are not supported)."
                )
        self.timed_step(index, kw["optimizer"], wrapper)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Prune after ``state.global_step`` optimizer steps."""
        if self.interval == "step":
            self._prune(state.global_step, args, kw)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Prune after ``round(state.epoch)`` epochs."""
        if self.interval == "epoch":
            self._prune(round(state.epoch), args, kw)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Write ``rmtprune.json`` into the checkpoint just saved."""
        if self.pruner is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            return
        path = os.path.join(folder, RECORD_FILE)
        text = json.dumps(make_record(kw["model"], self.pruner), indent=1)
        atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))
