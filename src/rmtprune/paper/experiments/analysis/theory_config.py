"""Configuration, presets and records of the ``theory`` experiment.

They live apart from :mod:`rmtprune.paper.experiments.analysis.theory` so that its network part,
figures and report (``theory_network``, ``theory_figures``, ``theory_report``) read them
without importing the experiment back.

Example
-------
>>> from rmtprune.paper.experiments.analysis.theory_config import PRESETS
>>> PRESETS["small"].activations
('relu', 'abs')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rmtprune._util.validation import check_int, check_real, param_error
from rmtprune.paper.presets import PresetConfig

__all__ = ["ACTIVATIONS", "PRESETS", "SweepRecord", "SyntheticRecord", "TheoryConfig"]

ACTIVATIONS = ("relu", "abs")
"""The activations ``λ`` the network of part (b) (and ``TheoryConfig.activations``) accept."""


@dataclass(frozen=True)
class TheoryConfig(PresetConfig):
    """Settings of the theory experiment (construction in the module docstring).

    ``sizes``: the ``N`` of part (a); ``seeds``: repetitions per size in (a) and draws of
    ``R₂`` in (b); ``sweep_size``: the ``N`` of the ``alpha``/``beta`` sweep; ``widths``: the
    hidden widths ``N`` of part (b) (``W₂`` is ``N × N``); ``noise_variance``: ``g``;
    ``lr_abs``: the learning rate of the ``|·|`` networks (without biases they diverge at
    ``lr = 0.02``: NaN weights were measured at ``N = 256`` and ``1024``).
    """

    sizes: tuple[int, ...]
    seeds: int
    sweep_size: int
    widths: tuple[int, ...]
    activations: tuple[str, ...]
    n_train: int | None
    n_test: int | None
    epochs: int
    ratio: float = 0.5
    strengths: tuple[float, ...] = (5.0, 3.0, 2.0, 0.6)
    alphas: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)
    betas: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    signal_rank: int = 20
    noise_variance: float = 1.0
    batch_size: int = 128
    lr: float = 0.02
    lr_abs: float = 0.005
    alpha: float = 0.25
    beta: float = 0.1
    seed: int = 0

    def check(self, owner: str) -> None:
        """Validate the fields (see :class:`rmtprune.paper.presets.PresetConfig`)."""
        for name in ("sizes", "widths"):
            values = getattr(self, name)
            if not values:
                raise param_error(name, owner, "a non-empty tuple of ints >= 32", values)
            for value in values:
                check_int(value, name, owner, low=32)
        for name in ("seeds", "epochs", "signal_rank"):
            check_int(getattr(self, name), name, owner, low=1)
        check_int(self.sweep_size, "sweep_size", owner, low=32)
        check_real(self.ratio, "ratio", owner, low=0.0, high=1.0, low_open=True)
        check_real(self.noise_variance, "noise_variance", owner, low=0.0, high=1.0, low_open=True)
        if not self.activations or not set(self.activations) <= set(ACTIVATIONS):
            raise param_error("activations", owner, f"a tuple from {ACTIVATIONS}", self.activations)
        if not self.strengths or min(self.strengths) <= 0:
            raise param_error("strengths", owner, "a tuple of positive floats", self.strengths)

    @classmethod
    def preset_table(cls) -> Mapping[str, TheoryConfig]:
        """:data:`PRESETS`.

        >>> TheoryConfig.from_preset("smoke", seeds=2).seeds
        2
        """
        return PRESETS


PRESETS: Mapping[str, TheoryConfig] = {
    "smoke": TheoryConfig(
        sizes=(100, 200, 400, 800),
        seeds=3,
        sweep_size=400,
        widths=(128,),
        activations=("relu",),
        n_train=1000,
        n_test=500,
        epochs=2,
        alphas=(0.1, 0.25, 0.4),
        betas=(0.05, 0.1, 0.5, 0.9),
    ),
    "small": TheoryConfig(
        sizes=(250, 500, 1000, 2000),
        seeds=5,
        sweep_size=1000,
        widths=(256, 512, 1024),
        activations=("relu", "abs"),
        n_train=10000,
        n_test=None,
        epochs=5,
    ),
    "paper": TheoryConfig(
        sizes=(250, 500, 1000, 2000, 4000),
        seeds=10,
        sweep_size=2000,
        widths=(500, 1000, 2000),
        activations=("relu", "abs"),
        n_train=None,
        n_test=None,
        epochs=10,
    ),
}
"""The three presets: smoke (seconds), small (minutes on 2 cores), paper (paper scale)."""


@dataclass(frozen=True)
class SyntheticRecord:
    """One matrix of part (a).  Edges on the eigenvalue scale ``λ = s²/N``; ``sigma2_hat_noise``
    is BEMA's ``σ̂²`` on ``R`` alone (the same noise without the signal)."""

    size: int
    seed: int
    shape: tuple[int, int]
    sigma2: float
    sigma2_hat: float
    sigma2_hat_noise: float
    lambda_plus: float
    edge: float
    edge_tw: float
    n_spikes: int
    n_expected: int
    spikes: tuple[float, ...]
    bbp_spikes: tuple[float, ...]
    kept_rank: int
    distance_op: float
    distance_fro: float
    noise_op: float
    noise_fro: float

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SyntheticRecord:
        """Inverse of :meth:`to_dict` (as read back from JSON)."""
        v: dict[str, Any] = {k: tuple(x) if isinstance(x, list) else x for k, x in values.items()}
        return cls(**v)


@dataclass(frozen=True)
class SweepRecord:
    """``lambda_plus`` at one ``alpha`` or ``beta`` (mean, std over seeds) and the edges."""

    parameter: str
    value: float
    lambda_plus_mean: float
    lambda_plus_std: float
    edge: float
    edge_tw: float

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields."""
        return asdict(self)
