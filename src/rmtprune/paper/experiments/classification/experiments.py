"""The paper's five classification experiments and their presets.

Each experiment is a small set of overrides of :class:`ExperimentConfig`'s
defaults (the paper's common settings), and each preset a second set of
overrides on top:

``paper``
    The paper's scale: full data, the paper's widths (FC ``[·, 3000, 3000, 3000, 10]``,
    CNN channels ``[32, 64, 128, 256, 512]`` + FC 1000).  The paper does not state the
    number of epochs; we use 40 for the fully connected networks and 20 for the CNN,
    with ``T = 0.75 × epochs`` (the authors' ``T = 300`` would keep 87 % of the bulk
    after 40 epochs; pass ``schedule_epochs=300`` to reproduce it literally).
``small``
    The same protocol on narrower networks, training subsets and fewer epochs, sized
    so that three seeds (both arms and the baselines) run in about 10–15 minutes on
    two CPU cores (timings in ``docs/experiments.md``).
``smoke``
    Tiny networks and subsets, a few epochs, for the tests (seconds).

They are entries of the one registry of all ten experiments,
:data:`rmtprune.paper.experiments.registry.EXPERIMENTS`.

Example
-------
>>> from rmtprune.paper.experiments.classification.experiments import (
...     CLASSIFICATION_EXPERIMENTS, get_config)
>>> tuple(CLASSIFICATION_EXPERIMENTS)
('fc-mnist', 'fc-fashion', 'cnn-mnist', 'cnn-fashion', 'fc-cifar10')
>>> get_config("fc-fashion", "paper").widths
(784, 3000, 3000, 3000, 10)
>>> get_config("cnn-mnist", "paper").conv_fit_cutoff
0.6
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from rmtprune._util.validation import param_error
from rmtprune.paper.experiments.classification.run import run_experiment
from rmtprune.paper.experiments.config import PRESETS, ExperimentConfig
from rmtprune.paper.experiments.results import RunResult
from rmtprune.paper.experiments.seeds import seed_tuple
from rmtprune.paper.training.config import check_device

__all__ = ["CLASSIFICATION_EXPERIMENTS", "ClassificationExperiment", "get_config"]


def _frozen(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class ClassificationExperiment:
    """One classification experiment of the paper: its overrides and those of each preset.

    It follows :class:`rmtprune.paper.experiments.protocol.Experiment`.

    Attributes
    ----------
    id : str
        Identifier used on the command line.
    section : str
        Section of the paper (docs/method.md).
    title : str
        One-line description.
    overrides : mapping
        Fields of :class:`ExperimentConfig` that differ from the defaults.
    presets : mapping of preset name to mapping
        Further overrides per preset.
    """

    id: str
    section: str
    title: str
    overrides: Mapping[str, Any]
    presets: Mapping[str, Mapping[str, Any]]

    def config(self, preset: str = "small") -> ExperimentConfig:
        """The resolved configuration of ``preset``.

        Examples
        --------
        >>> CLASSIFICATION_EXPERIMENTS["fc-mnist"].config("smoke").preset
        'smoke'
        """
        if preset not in self.presets:
            expected = f"one of {list(self.presets)}"
            raise param_error("preset", "Experiment.config", expected, preset)
        values = {**self.overrides, **self.presets[preset]}
        return ExperimentConfig(experiment=self.id, preset=preset, **values)

    @property
    def description(self) -> str:
        """The line ``rmtprune reproduce --list`` prints.

        >>> CLASSIFICATION_EXPERIMENTS["cnn-mnist"].description[:10]
        'SPEC 3.2.2'
        """
        return f"SPEC {self.section}: {self.title}"

    def reproduce(
        self,
        preset: str = "small",
        *,
        seeds: int | str | Sequence[int] | None = None,
        out: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        download: bool = False,
        progress: bool = True,
        resume: bool = True,
        device: str = "cpu",
        import_seeds: Sequence[str | os.PathLike[str]] = (),
    ) -> RunResult:
        """Run the experiment at ``preset`` (see :func:`rmtprune.paper.experiments.reproduce`).

        ``seeds`` (a count, a sequence or a string such as ``"0,1,2"``) replaces the preset's;
        the other arguments are those of :func:`run_experiment`.
        """
        config = self.config(preset).replace(device=check_device(device))
        if seeds is not None:
            config = config.replace(seeds=seed_tuple(seeds))
        return run_experiment(
            config,
            out=out,
            data_dir=data_dir,
            download=download,
            progress=progress,
            resume=resume,
            import_seeds=import_seeds,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the definition."""
        return {
            "id": self.id,
            "section": self.section,
            "title": self.title,
            "overrides": dict(self.overrides),
            "presets": {k: dict(v) for k, v in self.presets.items()},
        }


# Fully connected networks on 28×28 images.
_FC_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "hidden": (128, 128),
        "epochs": 3,
        "batch_size": 32,
        "train_subset": 1000,
        "test_subset": 500,
        "seeds": (0, 1),
        "finetune_epochs": 1,
    },
    "small": {
        "hidden": (1000, 1000, 1000),
        "epochs": 12,
        "finetune_epochs": 2,
    },
    "paper": {},
}

_CNN_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "channels": (8, 16, 16, 32, 32),
        "fc_width": 64,
        "min_dim": 16,
        "epochs": 3,
        "batch_size": 32,
        "train_subset": 500,
        "test_subset": 300,
        "seeds": (0,),
        "finetune_epochs": 1,
    },
    "small": {
        "channels": (8, 16, 32, 64, 128),
        "fc_width": 500,
        "epochs": 6,
        "train_subset": 10000,
        "test_subset": 5000,
        "finetune_epochs": 1,
    },
    "paper": {"epochs": 20, "finetune_epochs": 2},
}

_CIFAR_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {**_FC_PRESETS["smoke"]},
    "small": {**_FC_PRESETS["small"], "train_subset": 20000},
    "paper": {},
}


def _experiment(
    id_: str, section: str, title: str, overrides: dict[str, Any], presets: dict[str, Any]
) -> ClassificationExperiment:
    if set(presets) != set(PRESETS):
        raise RuntimeError(f"experiment {id_} must define the presets {PRESETS}")
    return ClassificationExperiment(
        id_,
        section,
        title,
        _frozen(overrides),
        _frozen({k: _frozen(v) for k, v in presets.items()}),
    )


CLASSIFICATION_EXPERIMENTS: Mapping[str, ClassificationExperiment] = MappingProxyType(
    {
        e.id: e
        for e in (
            _experiment(
                "fc-mnist",
                "3.2.1",
                "Fully connected [784, 3000, 3000, 3000, 10] on MNIST, normal vs pruned",
                {"dataset": "mnist"},
                _FC_PRESETS,
            ),
            _experiment(
                "fc-fashion",
                "3.2.1",
                "Fully connected [784, 3000, 3000, 3000, 10] on Fashion-MNIST, normal vs pruned",
                {"dataset": "fashion-mnist"},
                _FC_PRESETS,
            ),
            _experiment(
                "cnn-mnist",
                "3.2.2",
                "The paper's CNN on MNIST (conv fit cutoff 0.6), normal vs pruned",
                {"dataset": "mnist", "architecture": "cnn"},
                _CNN_PRESETS,
            ),
            _experiment(
                "cnn-fashion",
                "3.2.2",
                "The paper's CNN on Fashion-MNIST (conv fit cutoff 0.6), normal vs pruned",
                {"dataset": "fashion-mnist", "architecture": "cnn"},
                _CNN_PRESETS,
            ),
            _experiment(
                "fc-cifar10",
                "3.2.3",
                "Fully connected [3072, 3000, 3000, 3000, 10] on CIFAR-10, normal vs pruned",
                {"dataset": "cifar10"},
                _CIFAR_PRESETS,
            ),
        )
    }
)


def get_config(experiment_id: str, preset: str = "small") -> ExperimentConfig:
    """Resolved configuration of the classification experiment ``experiment_id`` at ``preset``.

    Examples
    --------
    >>> get_config("fc-cifar10", "small").widths[0]
    3072
    """
    if experiment_id not in CLASSIFICATION_EXPERIMENTS:
        expected = f"one of {list(CLASSIFICATION_EXPERIMENTS)}"
        raise param_error("experiment_id", "get_config", expected, experiment_id)
    return CLASSIFICATION_EXPERIMENTS[experiment_id].config(preset)
