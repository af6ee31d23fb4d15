"""Training of the paper's networks: loss, deterministic trainer, a resumable training state.

Example
-------
>>> from rmtprune.paper.training import TrainConfig
>>> TrainConfig(epochs=3).lr
0.02
"""

from __future__ import annotations

from rmtprune.paper.training.config import DEVICES, TrainConfig, check_device, device_unavailable
from rmtprune.paper.training.history import EpochRecord, History
from rmtprune.paper.training.loss import (
    Evaluation,
    add_regularization_grad,
    data_loss,
    evaluate,
    paper_loss,
    regularization,
)
from rmtprune.paper.training.state import TrainingState, load_state, save_state
from rmtprune.paper.training.trainer import Trainer

__all__ = [
    "DEVICES",
    "EpochRecord",
    "Evaluation",
    "History",
    "TrainConfig",
    "Trainer",
    "TrainingState",
    "add_regularization_grad",
    "check_device",
    "data_loss",
    "device_unavailable",
    "evaluate",
    "load_state",
    "paper_loss",
    "regularization",
    "save_state",
]
