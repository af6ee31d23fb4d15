"""Configuration of one classification experiment (docs/method.md sections 5 and 6).

:class:`ExperimentConfig` is a frozen dataclass whose defaults are the paper's
common settings: SGD with momentum 0.9, learning rate 0.02, batch 128, the
paper's loss (``NLL + 5e-6·Σ|θ| + 5e-6·Σθ²``), weights ``N(0, 1/n)`` and
biases 0, the fully connected network ``[784, 3000, 3000, 3000, 10]``, three
seeds, pruning every epoch with the linear schedule.  An experiment is a small
set of overrides of these defaults and a preset (smoke / small / paper) a
second one (see :mod:`rmtprune.paper.experiments.registry`).

Both arms of a run get the same :meth:`ExperimentConfig.train_config`: same
seed (so the same data order and dropout draws), same learning-rate schedule.
The authors multiplied the learning rate by 0.96 at each pruning step; here
both arms get that decay, applied after every pruning epoch (docs/method.md section 5:
"in a fair comparison both arms get the same learning-rate schedule").

Example
-------
>>> from rmtprune.paper.experiments import ExperimentConfig
>>> cfg = ExperimentConfig(epochs=12)
>>> cfg.widths
(784, 3000, 3000, 3000, 10)
>>> cfg.schedule_epochs_resolved
9.0
>>> cfg.replace(hidden=(100,)).widths
(784, 100, 10)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmtprune._util.validation import check_int, check_real, param_error
from rmtprune.factorize import LowRankConv2d
from rmtprune.paper.data import DATASETS, load_dataset
from rmtprune.paper.models import SCHEMES, FullyConnected, PaperCNN, initialize
from rmtprune.paper.presets import PRESETS, PresetConfig
from rmtprune.paper.training import TrainConfig
from rmtprune.paper.training.config import check_device
from rmtprune.pruning.schedules import Linear

__all__ = ["ARCHITECTURES", "PRESETS", "ExperimentConfig"]

ARCHITECTURES = ("fc", "cnn")
RUNTIME_ONLY = frozenset({"device"})
"""Fields not written by :meth:`ExperimentConfig.to_dict` (recorded in environment.json)."""


def _tuple_of_ints(value: Any, name: str, low: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise param_error(name, "ExperimentConfig", "a sequence of ints", value)
    return tuple(check_int(v, name, "ExperimentConfig", low=low) for v in value)


@dataclass(frozen=True)
class ExperimentConfig(PresetConfig):
    """Everything that defines one run: data, network, training, pruning, baselines, seeds.

    Parameters
    ----------
    experiment : str
        Experiment id (``"fc-mnist"``, ...; ``"custom"`` for a hand-made config).
    preset : str
        Preset name recorded with the run (``"smoke"``, ``"small"``, ``"paper"`` or other).
    dataset : {"mnist", "fashion-mnist", "cifar10"}
        Data set.
    architecture : {"fc", "cnn"}
        Fully connected network or the paper's CNN.
    hidden : tuple of int
        Hidden widths of the fully connected network (input and output sizes come
        from the data set).
    channels, fc_width, dropout : tuple of int, int, float
        CNN convolution channels, hidden FC width and dropout probability.
    init : str
        Initialisation scheme (:data:`rmtprune.paper.models.SCHEMES`).
    epochs, batch_size, lr, momentum, l1, l2 : int, int, float, float, float, float
        Training hyper-parameters (docs/method.md section 6).
    lr_decay : float
        Learning-rate factor applied to both arms after every pruning epoch.
    train_subset, test_subset : int or None
        Number of training / test samples drawn (seed ``subset_seed``); None = all.
    subset_seed : int
        Seed of the subset draws (the same for every training seed).
    seeds : tuple of int
        Training seeds: each gives both arms the same initial weights and data order.
    schedule_epochs : float or None
        ``T`` of the linear schedule ``f(e) = max(0, 1 − e/T)``; None: ``0.75 × epochs``.
    every : int
        Prune every ``every`` epochs.
    alpha, beta : float
        BEMA trimming and tail level.
    fit_cutoff, conv_fit_cutoff : float
        Largest fit statistic ``D`` of an MP-like fully connected / convolution layer
        (the authors: 0.05 and 0.6).
    min_rank : int or None
        Floor of the kept rank; None = the number of classes (as the authors).
    min_dim, min_params : int
        Layers with ``min(m, n) < min_dim`` or ``m·n < min_params`` are not pruned.
    finetune_epochs : int
        Epochs of fine-tuning after the one-shot MP pruning and the baselines.
    num_threads : int or None
        CPU threads used for training (None: leave torch's setting).
    device : str
        Torch device of training and evaluation (:data:`rmtprune.paper.training.DEVICES`).
        Like ``num_threads`` it says how a run is executed, not what it computes: it
        is recorded in ``environment.json``, not in :meth:`to_dict`, and a run
        directory may be resumed on another device.
    drastic_reduction : float
        Parameter reduction from which the report calls it "drastic".
    accuracy_tolerance : float
        Accuracy drop (fraction, 0.005 = half a point) below which the report says
        accuracy is "not reduced".
    """

    experiment: str = "custom"
    preset: str = "paper"
    dataset: str = "mnist"
    architecture: str = "fc"
    hidden: tuple[int, ...] = (3000, 3000, 3000)
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    fc_width: int = 1000
    dropout: float = 0.35
    init: str = "normal"
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    l1: float = 5e-6
    l2: float = 5e-6
    lr_decay: float = 0.96
    train_subset: int | None = None
    test_subset: int | None = None
    subset_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    schedule_epochs: float | None = None
    every: int = 1
    alpha: float = 0.25
    beta: float = 0.1
    fit_cutoff: float = 0.05
    conv_fit_cutoff: float = 0.6
    min_rank: int | None = None
    min_dim: int = 32
    min_params: int = 0
    finetune_epochs: int = 4
    num_threads: int | None = None
    device: str = field(default="cpu", compare=False)
    drastic_reduction: float = 0.5
    accuracy_tolerance: float = 0.005

    runtime_only: ClassVar[frozenset[str]] = RUNTIME_ONLY

    def check(self, owner: str) -> None:
        """Validate the fields (see :class:`rmtprune.paper.presets.PresetConfig`)."""
        for name in ("experiment", "preset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise param_error(name, owner, "a non-empty string", getattr(self, name))
        if self.dataset not in DATASETS:
            raise param_error("dataset", owner, f"one of {sorted(DATASETS)}", self.dataset)
        if self.architecture not in ARCHITECTURES:
            raise param_error("architecture", owner, f"one of {ARCHITECTURES}", self.architecture)
        if self.init not in SCHEMES:
            raise param_error("init", owner, f"one of {list(SCHEMES)}", self.init)
        set_ = object.__setattr__
        set_(self, "hidden", _tuple_of_ints(self.hidden, "hidden", 1))
        set_(self, "channels", _tuple_of_ints(self.channels, "channels", 1))
        set_(self, "seeds", _tuple_of_ints(self.seeds, "seeds", 0))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise param_error("seeds", owner, "a non-empty sequence of distinct ints", self.seeds)
        if self.architecture == "fc" and not self.hidden:
            raise param_error("hidden", owner, "at least one hidden width", self.hidden)
        check_int(self.fc_width, "fc_width", owner, low=1)
        check_real(self.dropout, "dropout", owner, low=0.0, high=1.0, high_open=True)
        check_int(self.epochs, "epochs", owner, low=1)
        check_int(self.every, "every", owner, low=1)
        check_int(self.subset_seed, "subset_seed", owner, low=0)
        check_int(self.min_dim, "min_dim", owner, low=1)
        check_int(self.min_params, "min_params", owner, low=0)
        check_int(self.finetune_epochs, "finetune_epochs", owner, low=0)
        for name in ("train_subset", "test_subset", "min_rank", "num_threads"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, owner, low=1)
        if self.schedule_epochs is not None:
            check_real(self.schedule_epochs, "schedule_epochs", owner, low=0.0, low_open=True)
        check_real(self.alpha, "alpha", owner, low=0.0, high=0.5, low_open=True, high_open=True)
        check_real(self.beta, "beta", owner, low=0.0, high=1.0, low_open=True, high_open=True)
        check_real(self.fit_cutoff, "fit_cutoff", owner, low=0.0, low_open=True)
        check_real(self.conv_fit_cutoff, "conv_fit_cutoff", owner, low=0.0, low_open=True)
        check_real(self.drastic_reduction, "drastic_reduction", owner, low=0.0, high=1.0)
        check_real(self.accuracy_tolerance, "accuracy_tolerance", owner, low=0.0)
        check_device(self.device, "device", owner)
        self.train_config(self.seeds[0])  # validates the training fields

    # ----------------------------------------------------------------- derived values
    @property
    def num_classes(self) -> int:
        """Number of classes of the data set."""
        return DATASETS[self.dataset].num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return DATASETS[self.dataset].shape

    @property
    def widths(self) -> tuple[int, ...]:
        """Full widths of the fully connected network, input and output included."""
        return (math.prod(self.input_shape), *self.hidden, self.num_classes)

    @property
    def schedule_epochs_resolved(self) -> float:
        """``T`` of the linear schedule actually used."""
        if self.schedule_epochs is not None:
            return float(self.schedule_epochs)
        return 0.75 * self.epochs

    @property
    def min_rank_resolved(self) -> int:
        """Floor of the kept rank actually used."""
        return self.num_classes if self.min_rank is None else self.min_rank

    def schedule(self) -> Linear:
        """The pruning schedule ``Linear(T)``."""
        return Linear(self.schedule_epochs_resolved)

    def fit_cutoffs(self) -> float | Mapping[type, float]:
        """``fit_cutoff`` argument of the pruner: per layer type for CNNs."""
        if self.architecture == "cnn":
            return {
                nn.Conv2d: self.conv_fit_cutoff,
                LowRankConv2d: self.conv_fit_cutoff,
                object: self.fit_cutoff,
            }
        return self.fit_cutoff

    def train_config(
        self, seed: int, *, epochs: int | None = None, lr: float | None = None
    ) -> TrainConfig:
        """Training configuration of one arm for ``seed`` (identical for both arms).

        ``epochs`` and ``lr`` override the run's values (fine-tuning uses them, with
        a constant learning rate).
        """
        decays: tuple[int, ...] | None = None
        if self.every > 1:
            decays = tuple(range(self.every, self.epochs + 1, self.every))
        finetune = epochs is not None or lr is not None
        return TrainConfig(
            epochs=self.epochs if epochs is None else epochs,
            batch_size=self.batch_size,
            lr=self.lr if lr is None else lr,
            momentum=self.momentum,
            l1=self.l1,
            l2=self.l2,
            lr_decay=1.0 if finetune else self.lr_decay,
            lr_decay_epochs=None if finetune else decays,
            seed=seed,
            device=self.device,
            num_threads=self.num_threads,
        )

    def final_lr(self) -> float:
        """Learning rate after the last epoch (used for fine-tuning)."""
        cfg = self.train_config(self.seeds[0])
        return cfg.learning_rate(self.epochs + 1)

    # ----------------------------------------------------------------- building
    def build_model(self, seed: int) -> nn.Module:
        """The network, initialised with ``torch.Generator().manual_seed(seed)``.

        The same seed always gives the same weights, so both arms start equal.

        Examples
        --------
        >>> cfg = ExperimentConfig(hidden=(20,))
        >>> a, b = cfg.build_model(3), cfg.build_model(3)
        >>> bool(torch.equal(a.layers[0].weight, b.layers[0].weight))
        True
        """
        seed = check_int(seed, "seed", "ExperimentConfig.build_model", low=0)
        if self.architecture == "fc":
            model: nn.Module = FullyConnected(list(self.widths))
        else:
            c, h, _ = self.input_shape
            model = PaperCNN(
                in_channels=c,
                num_classes=self.num_classes,
                channels=self.channels,
                fc_width=self.fc_width,
                dropout=self.dropout,
                input_size=h,
            )
        return initialize(model, self.init, generator=torch.Generator().manual_seed(seed))

    def load_data(
        self, data_dir: str | os.PathLike[str] | None = None, download: bool = False
    ) -> tuple[TensorDataset, TensorDataset]:
        """Training and test sets (subsets drawn with ``subset_seed``).

        Raises :class:`rmtprune.paper.data.DatasetNotFoundError`, whose message says where
        the files must be, when the data set is missing and ``download`` is false.
        """
        kw: dict[str, Any] = {"data_dir": data_dir, "download": download, "seed": self.subset_seed}
        train = load_dataset(self.dataset, "train", subset=self.train_subset, **kw)
        test = load_dataset(self.dataset, "test", subset=self.test_subset, **kw)
        return train, test

    # ----------------------------------------------------------------- (de)serialisation
    # replace, to_dict (without ``device``) and from_dict come from PresetConfig.

    def derived(self) -> dict[str, Any]:
        """Values that follow from the fields, recorded with the run for readers."""
        return {
            "widths": list(self.widths) if self.architecture == "fc" else None,
            "num_classes": self.num_classes,
            "schedule": f"Linear(T={self.schedule_epochs_resolved:g})",
            "min_rank": self.min_rank_resolved,
            "finetune_lr": self.final_lr(),
        }
