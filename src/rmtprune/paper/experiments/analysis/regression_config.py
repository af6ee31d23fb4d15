"""Configuration, presets and per-run records of the ``regression`` experiment.

They live apart from :mod:`rmtprune.paper.experiments.analysis.regression` so that its figures
(:mod:`rmtprune.paper.experiments.analysis.regression_figures`) read them without importing the
experiment back.

Example
-------
>>> from rmtprune.paper.experiments.analysis.regression_config import PRESETS
>>> PRESETS["paper"].widths
(1, 500, 500, 500, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rmtprune._util.validation import check_int, check_real, param_error
from rmtprune.paper.presets import PresetConfig

__all__ = ["PRESETS", "RegressionConfig", "RunRecord"]


@dataclass(frozen=True)
class RegressionConfig(PresetConfig):
    """Settings of the regression experiment (see the module docstring).

    ``schedule_epochs`` is ``T`` of the linear schedule ``f(e) = max(0, 1 − e/T)``; the
    learning rate is multiplied by ``lr_decay`` after 50 % and 75 % of the epochs (both arms).
    ``num_threads`` defaults to 1: these tiny matrix products run up to 30 times slower with
    two threads on a shared two-core machine (measured).
    """

    widths: tuple[int, ...]
    seeds: int
    epochs: int
    every: int
    schedule_epochs: float
    n_train: int = 300
    n_test: int = 1001
    noise: float = 0.2
    activation: str = "relu"
    batch_size: int = 32
    lr: float = 0.02
    lr_decay: float = 0.3
    l1: float = 5e-6
    l2: float = 5e-6
    min_rank: int | None = None
    data_seed: int = 0
    num_threads: int | None = 1

    def check(self, owner: str) -> None:
        """Validate the fields (see :class:`rmtprune.paper.presets.PresetConfig`)."""
        if len(self.widths) < 2 or self.widths[0] != 1 or self.widths[-1] != 1:
            raise param_error("widths", owner, "a tuple (1, ..., 1) of layer widths", self.widths)
        for name in ("seeds", "epochs", "every", "n_train", "batch_size"):
            check_int(getattr(self, name), name, owner, low=1)
        check_int(self.n_test, "n_test", owner, low=2)
        check_real(self.schedule_epochs, "schedule_epochs", owner, low=0.0, low_open=True)
        check_real(self.noise, "noise", owner, low=0.0)

    @classmethod
    def preset_table(cls) -> Mapping[str, RegressionConfig]:
        """:data:`PRESETS`.

        >>> RegressionConfig.from_preset("small").epochs
        1500
        """
        return PRESETS


PRESETS: Mapping[str, RegressionConfig] = {
    "smoke": RegressionConfig(
        widths=(1, 64, 64, 64, 1), seeds=2, epochs=90, every=15, schedule_epochs=66.0
    ),
    "small": RegressionConfig(
        widths=(1, 200, 200, 200, 1), seeds=5, epochs=1500, every=50, schedule_epochs=1125.0
    ),
    "paper": RegressionConfig(
        widths=(1, 500, 500, 500, 1),
        seeds=10,
        epochs=3000,
        every=50,
        schedule_epochs=2250.0,
    ),
}
"""The three presets: smoke (seconds), small (minutes on 2 cores), paper (paper scale)."""


@dataclass(frozen=True)
class RunRecord:
    """Per-epoch curves of one arm and seed, and its final predictions on the test grid."""

    arm: str
    seed: int
    train_mse: tuple[float, ...]
    test_mse: tuple[float, ...]
    n_params: tuple[int, ...]
    prediction: tuple[float, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict` (as read back from JSON)."""
        v: dict[str, Any] = {k: tuple(x) if isinstance(x, list) else x for k, x in values.items()}
        return cls(**v)
