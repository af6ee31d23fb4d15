"""The four arms of the ablation.

Each arm is the run's :class:`~rmtprune.paper.experiments.config.ExperimentConfig` with the
L1/L2 weights kept or set to zero, trained with or without the spectral pruner:

============  =====================  ===========
arm           L1 / L2                MP pruning
============  =====================  ===========
``neither``   0 / 0                  no
``l1l2``      the preset's           no
``mp``        0 / 0                  yes
``both``      the preset's           yes
============  =====================  ===========

All four start from ``config.build_model(seed)`` and get the same training configuration
otherwise (learning rates, data order, pruning schedule of the pruned ones).

Example
-------
>>> from rmtprune.paper.experiments.ablation.arms import ARMS
>>> [(a.name, a.regularised, a.pruned) for a in ARMS]  # doctest: +NORMALIZE_WHITESPACE
[('neither', False, False), ('l1l2', True, False), ('mp', False, True), ('both', True, True)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rmtprune.paper.experiments.config import ExperimentConfig

__all__ = ["ARMS", "ARM_NAMES", "Arm", "arm"]


@dataclass(frozen=True)
class Arm:
    """One arm of the ablation: its name, label, and whether it is regularised and pruned."""

    name: str
    label: str
    regularised: bool
    pruned: bool

    def config(self, config: ExperimentConfig) -> ExperimentConfig:
        """``config`` for this arm: L1 = L2 = 0 unless the arm is regularised."""
        return config if self.regularised else config.replace(l1=0.0, l2=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


ARMS: tuple[Arm, ...] = (
    Arm("neither", "neither (no L1/L2, no pruning)", False, False),
    Arm("l1l2", "L1+L2 only", True, False),
    Arm("mp", "MP pruning only", False, True),
    Arm("both", "MP pruning + L1+L2", True, True),
)
"""The four arms, in report order."""

ARM_NAMES = tuple(a.name for a in ARMS)


def arm(name: str) -> Arm:
    """The arm called ``name``."""
    return ARMS[ARM_NAMES.index(name)]
