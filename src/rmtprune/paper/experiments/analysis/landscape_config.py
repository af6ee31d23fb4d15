"""Configuration and presets of the ``landscape`` experiment.

They live apart from :mod:`rmtprune.paper.experiments.analysis.landscape` so that its report
(:mod:`rmtprune.paper.experiments.analysis.landscape_report`) reads them without importing the
experiment back.

Example
-------
>>> from rmtprune.paper.experiments.analysis.landscape_config import PRESETS
>>> PRESETS["smoke"].grid
11
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rmtprune._util.validation import check_int, check_real
from rmtprune.paper.presets import PresetConfig

__all__ = ["PRESETS", "LandscapeConfig"]


@dataclass(frozen=True)
class LandscapeConfig(PresetConfig):
    """Settings of the landscape experiment (see the module docstring).

    ``surface_seeds`` is how many seeds per arm get a loss surface (each costs ``grid²``
    evaluations on the evaluation subset); ``num_threads`` is passed to the trainer (None:
    torch's default).
    """

    widths: tuple[int, ...]
    seeds: int
    epochs: int
    n_train: int | None
    n_test: int | None
    n_eval: int
    grid: int
    line_points: int
    surface_seeds: int
    every: int
    schedule_epochs: float
    radius: float = 1.0
    min_rank: int = 10
    batch_size: int = 128
    lr: float = 0.02
    seed: int = 0
    num_threads: int | None = None

    def check(self, owner: str) -> None:
        """Validate the fields (see :class:`rmtprune.paper.presets.PresetConfig`)."""
        for name in ("seeds", "epochs", "n_eval", "surface_seeds", "every", "min_rank"):
            check_int(getattr(self, name), name, owner, low=1)
        check_int(self.grid, "grid", owner, low=3)
        check_int(self.line_points, "line_points", owner, low=2)
        check_real(self.radius, "radius", owner, low=0.0, low_open=True)
        check_real(self.schedule_epochs, "schedule_epochs", owner, low=0.0, low_open=True)

    @classmethod
    def preset_table(cls) -> Mapping[str, LandscapeConfig]:
        """:data:`PRESETS`.

        >>> LandscapeConfig.from_preset("small").widths
        (784, 1000, 1000, 10)
        """
        return PRESETS


PRESETS: Mapping[str, LandscapeConfig] = {
    "smoke": LandscapeConfig(
        widths=(784, 128, 128, 10),
        seeds=2,
        epochs=2,
        n_train=1000,
        n_test=500,
        n_eval=200,
        grid=11,
        line_points=11,
        surface_seeds=1,
        every=1,
        schedule_epochs=1.5,
    ),
    "small": LandscapeConfig(
        widths=(784, 1000, 1000, 10),
        seeds=4,
        epochs=10,
        n_train=10000,
        n_test=None,
        n_eval=1000,
        grid=21,
        line_points=21,
        surface_seeds=2,
        every=1,
        schedule_epochs=7.5,
    ),
    "paper": LandscapeConfig(
        widths=(784, 3000, 3000, 3000, 10),
        seeds=5,
        epochs=40,
        n_train=None,
        n_test=None,
        n_eval=2000,
        grid=31,
        line_points=31,
        surface_seeds=5,
        every=2,
        schedule_epochs=30.0,
    ),
}
"""The three presets: smoke (seconds), small (minutes on 2 cores), paper (paper scale)."""
