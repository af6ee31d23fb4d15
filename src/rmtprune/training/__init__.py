"""Training of the paper's networks: loss, deterministic trainer, resumable checkpoints.

Example
-------
>>> from rmtprune.training import TrainConfig
>>> TrainConfig(epochs=3).lr
0.02
"""

from __future__ import annotations

from rmtprune.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rmtprune.training.config import DEVICES, TrainConfig, check_device, device_unavailable
from rmtprune.training.history import EpochRecord, History
from rmtprune.training.loss import (
    Evaluation,
    add_regularization_grad,
    data_loss,
    evaluate,
    paper_loss,
    regularization,
)
from rmtprune.training.trainer import Trainer

__all__ = [
    "DEVICES",
    "Checkpoint",
    "EpochRecord",
    "Evaluation",
    "History",
    "TrainConfig",
    "Trainer",
    "add_regularization_grad",
    "check_device",
    "data_loss",
    "device_unavailable",
    "evaluate",
    "load_checkpoint",
    "paper_loss",
    "regularization",
    "save_checkpoint",
]
