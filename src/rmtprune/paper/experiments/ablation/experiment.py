"""The ablation's presets, and its entry in the registry of experiments.

The four arms are those of :mod:`rmtprune.paper.experiments.ablation.arms`.  The
configuration of a data set at a preset is that of the classification experiment
(``fc-mnist``, ``fc-fashion``) at the preset named in :data:`PRESETS`, with the preset's
changes on top:

``smoke``
    ``fc-*`` smoke (``[784, 128, 128, 10]``, 1000 / 500 images, 2 seeds) with 2 epochs.
``small``, ``paper``
    ``fc-*`` at that preset unchanged (L1 = L2 = 5e-6, lr 0.02 × 0.96 per pruning epoch,
    pruning every epoch with ``T = 0.75 × epochs``).
``manuscript-small``
    The authors' longer manuscript's protocol (SGD momentum 0.9, lr 0.01 × 0.96 every 4
    epochs, kept bulk ``max(0, 1 − e/200)`` applied every 4 epochs, L1 = L2 = 1e-6) on the
    manuscript's depth at the small width, ``[784, 1000, 1000, 1000, 1000, 500, 10]``, for
    40 epochs (the manuscript: 100), Fashion-MNIST only (the manuscript's table).
``manuscript``
    The same protocol on the manuscript's network ``[784, 3000, 3000, 3000, 3000, 500, 10]``
    for 100 epochs (hours per arm on two CPU cores).

Example
-------
>>> from rmtprune.paper.experiments.ablation.experiment import ABLATION
>>> cfg = ABLATION.configs("manuscript-small")["fc-fashion"]
>>> cfg.widths, cfg.lr, cfg.every, cfg.schedule_epochs, cfg.l1
((784, 1000, 1000, 1000, 1000, 500, 10), 0.01, 4, 200.0, 1e-06)
>>> cfg.train_config(0).learning_rate(5)  # 0.01 × 0.96 after epoch 4
0.0096
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from rmtprune._util.validation import param_error
from rmtprune.paper.experiments.ablation.run import AblationRun, run_ablation
from rmtprune.paper.experiments.classification.experiments import get_config
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.seeds import seed_tuple
from rmtprune.paper.presets import PRESETS as SCALES
from rmtprune.paper.training.config import check_device

__all__ = ["ABLATION", "ABLATION_EXPERIMENTS", "MANUSCRIPT", "PRESETS", "AblationExperiment"]


MANUSCRIPT: Mapping[str, Any] = MappingProxyType(
    {
        "momentum": 0.9,
        "lr": 0.01,
        "lr_decay": 0.96,
        "every": 4,
        "schedule_epochs": 200.0,
        "l1": 1e-6,
        "l2": 1e-6,
    }
)
"""The longer manuscript's training protocol (its table "full_connected_acc_results")."""

BOTH = ("fc-mnist", "fc-fashion")


@dataclass(frozen=True)
class AblationPreset:
    """A preset: the classification preset it starts from, the data sets, the changes."""

    base: str
    experiments: tuple[str, ...]
    changes: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (what ``rmtprune reproduce --list`` and the docs describe)."""
        return {"base": self.base, "experiments": list(self.experiments), **dict(self.changes)}


def _preset(base: str, experiments: tuple[str, ...], **changes: Any) -> AblationPreset:
    return AblationPreset(base, experiments, MappingProxyType(changes))


PRESETS: Mapping[str, AblationPreset] = MappingProxyType(
    {
        "smoke": _preset("smoke", BOTH, epochs=2),
        "small": _preset("small", BOTH),
        "paper": _preset("paper", BOTH),
        "manuscript-small": _preset(
            "small",
            ("fc-fashion",),
            **MANUSCRIPT,
            hidden=(1000, 1000, 1000, 1000, 500),
            epochs=40,
        ),
        "manuscript": _preset(
            "paper",
            ("fc-fashion",),
            **MANUSCRIPT,
            hidden=(3000, 3000, 3000, 3000, 500),
            epochs=100,
        ),
    }
)
"""The ablation's presets: the three scales of every experiment and the manuscript's two."""


@dataclass(frozen=True)
class AblationExperiment:
    """The ablation as an entry of the registry (it follows
    :class:`rmtprune.paper.experiments.protocol.Experiment`)."""

    id: str
    section: str
    title: str
    presets: Mapping[str, AblationPreset]

    @property
    def description(self) -> str:
        """The line ``rmtprune reproduce --list`` prints."""
        return f"{self.section}: {self.title}"

    def configs(
        self, preset: str = "small", seeds: int | str | Sequence[int] | None = None
    ) -> dict[str, ExperimentConfig]:
        """The configuration of each data set (by classification experiment id) at ``preset``.

        ``seeds`` (a count, a sequence or a string such as ``"0,1,2"``) replaces the preset's.
        """
        if preset not in self.presets:
            raise param_error("preset", "reproduce", f"one of {list(self.presets)}", preset)
        entry = self.presets[preset]
        out = {}
        for name in entry.experiments:
            config = get_config(name, entry.base).replace(
                experiment=self.id, preset=preset, **entry.changes
            )
            out[name] = config if seeds is None else config.replace(seeds=seed_tuple(seeds))
        return out

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
    ) -> AblationRun:
        """Run the ablation at ``preset`` (see :func:`rmtprune.paper.experiments.reproduce`).

        Seeds of other runs cannot be imported: a non-empty ``import_seeds`` is refused.
        """
        if import_seeds:
            raise param_error(
                "import_seeds", "reproduce", "empty for the ablation experiment", import_seeds
            )
        configs = {
            name: config.replace(device=check_device(device))
            for name, config in self.configs(preset, seeds).items()
        }
        return run_ablation(
            configs,
            preset,
            out=out,
            data_dir=data_dir,
            download=download,
            progress=progress,
            resume=resume,
        )


ABLATION = AblationExperiment(
    "ablation",
    "Section 3.2.1",
    "regularisation × pruning: neither, L1+L2 only, MP only, both, from the same weights "
    "(fc-mnist, fc-fashion)",
    PRESETS,
)

ABLATION_EXPERIMENTS: Mapping[str, AblationExperiment] = MappingProxyType({ABLATION.id: ABLATION})

if set(SCALES) - set(PRESETS):  # every experiment has the three scales
    raise RuntimeError(f"the ablation must define the presets {SCALES}")
