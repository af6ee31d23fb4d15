"""Configuration of a training run and the devices it may use.

Example
-------
>>> from rmtprune.paper.training import TrainConfig
>>> TrainConfig(epochs=3, lr_decay=0.5).learning_rate(3)
0.005
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from rmtprune._util.validation import check_int, check_real, param_error
from rmtprune.paper.presets import PresetConfig
from rmtprune.paper.training.loss import OBJECTIVES

__all__ = ["DEVICES", "RESUMABLE_CHANGES", "TrainConfig", "check_device", "device_unavailable"]

DEVICES = ("cpu", "cuda", "cuda:N", "mps")
"""Device strings accepted by :class:`TrainConfig` (``N`` a CUDA device index)."""
_DEVICE_PATTERN = re.compile(r"cpu|cuda(:[0-9]+)?|mps")


def check_device(value: Any, name: str = "device", owner: str = "TrainConfig") -> str:
    """``value`` if it is one of :data:`DEVICES`, else a ``ValueError`` naming ``name``.

    Examples
    --------
    >>> check_device("cuda:1")
    'cuda:1'
    >>> check_device("gpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: The 'device' parameter of TrainConfig must be one of cpu, ... Got 'gpu' instead.
    """
    if not isinstance(value, str) or not _DEVICE_PATTERN.fullmatch(value):
        raise param_error(name, owner, f"one of {', '.join(DEVICES)}", value)
    return value


def device_unavailable(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine, or None when it can."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "this torch build sees no CUDA device"
        if index and int(index) >= count:
            return f"this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
    if kind == "mps" and not torch.backends.mps.is_available():
        return "the MPS backend is not available on this machine"
    return None


# Fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"epochs", "device", "num_threads", "eval_batch_size"})


@dataclass(frozen=True)
class TrainConfig(PresetConfig):
    """Hyper-parameters of one training run (defaults: docs/method.md section 6).

    Parameters
    ----------
    epochs : int
        Number of epochs.
    batch_size : int
        Mini-batch size.
    lr : float
        Learning rate of epoch 1.
    momentum : float
        SGD momentum.
    l1, l2 : float
        Weights of ``Σ|θ|`` and ``Σθ²`` in the loss.
    lr_decay : float
        Multiplicative learning-rate factor in ``(0, 1]``.
    lr_decay_epochs : tuple of int or None
        Epochs at whose *end* the factor applies; None applies it after every
        epoch.  The schedule depends on the epoch only, so a pruned and a
        normal arm with the same config get the same learning rates.
    seed : int
        Seed of shuffling, dropout and the other generators.
    device : str
        Torch device.
    num_threads : int or None
        CPU threads during :meth:`Trainer.fit` (None: leave as is).
    eval_batch_size : int
        Batch size of evaluation.
    objective : {"nll", "mse"}
        Negative log-likelihood of log-probabilities (classification) or mean
        squared error (regression; accuracies are then NaN).
    deterministic : bool
        Call ``torch.use_deterministic_algorithms(True, warn_only=True)``
        during :meth:`Trainer.fit`.

    Examples
    --------
    >>> cfg = TrainConfig(epochs=10, lr_decay=0.5, lr_decay_epochs=(2, 4))
    >>> [cfg.learning_rate(e) for e in (1, 2, 3, 5)]
    [0.02, 0.02, 0.01, 0.005]
    """

    epochs: int
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    l1: float = 5e-6
    l2: float = 5e-6
    lr_decay: float = 1.0
    lr_decay_epochs: tuple[int, ...] | None = None
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    eval_batch_size: int = 1000
    objective: str = "nll"
    deterministic: bool = True

    def check(self, owner: str) -> None:
        """Validate the fields (see :class:`rmtprune.paper.presets.PresetConfig`)."""
        check_int(self.epochs, "epochs", owner, low=0)
        check_int(self.batch_size, "batch_size", owner, low=1)
        check_int(self.eval_batch_size, "eval_batch_size", owner, low=1)
        check_real(self.lr, "lr", owner, low=0.0, low_open=True)
        check_real(self.momentum, "momentum", owner, low=0.0, high=1.0, high_open=True)
        check_real(self.l1, "l1", owner, low=0.0)
        check_real(self.l2, "l2", owner, low=0.0)
        check_real(self.lr_decay, "lr_decay", owner, low=0.0, high=1.0, low_open=True)
        check_int(self.seed, "seed", owner, low=0)
        if self.num_threads is not None:
            check_int(self.num_threads, "num_threads", owner, low=1)
        if self.objective not in OBJECTIVES:
            raise param_error("objective", owner, f"one of {list(OBJECTIVES)}", self.objective)
        if self.lr_decay_epochs is not None:
            epochs = tuple(
                check_int(e, "lr_decay_epochs", owner, low=1) for e in self.lr_decay_epochs
            )
            object.__setattr__(self, "lr_decay_epochs", epochs)
        check_device(self.device, "device", owner)

    def learning_rate(self, epoch: int) -> float:
        """Learning rate used during ``epoch`` (1-based)."""
        epoch = check_int(epoch, "epoch", "TrainConfig.learning_rate", low=1)
        if self.lr_decay_epochs is None:
            decays = epoch - 1
        else:
            decays = sum(1 for d in self.lr_decay_epochs if d < epoch)
        return self.lr * self.lr_decay**decays

    # replace, to_dict (tuples as lists) and from_dict come from PresetConfig.
