"""Experiment ``landscape``: is the loss landscape of pruned networks simpler?

Fully connected networks (``FullyConnected(widths)``, ReLU, ``log_softmax``, weights
``N(0, 1/n)``, biases 0) are trained on Fashion-MNIST, a normal and a pruned arm per seed
from the same initial weights and mini-batches (the pruned arm runs
:class:`rmtprune.SpectralPruner` with ``Linear(schedule_epochs)`` every ``every``
epochs, ``min_rank`` 10).  Every landscape measure is taken in the space of **dense weight
matrices**: factorized layers are multiplied out (:func:`dense_copy`), so all solutions have
the architecture of the unpruned network.  Losses are the mean NLL (data term only) on a
fixed evaluation subset of ``n_eval`` test images.

* **Seed-to-seed spread**: standard deviation (``ddof = 1``) and range of the final test loss
  and accuracy over seeds.
* **Linear interpolation** between two seeds' solutions ``θ_a``, ``θ_b`` of the same arm:
  ``L(t) = L((1 − t) θ_a + t θ_b)`` on ``line_points`` values of ``t ∈ [0, 1]`` (biases
  included).  The **barrier** is ``max_t [L(t) − ((1 − t) L(0) + t L(1))]`` (height above the
  chord; 0 for a convex path) and ``barrier_max = max_t L(t) − max(L(0), L(1))``.
* **Surface** along two random filter-normalised directions (Li et al., 2018):
  ``L(θ + a·d₁ + b·d₂)`` on a ``grid × grid`` lattice of ``(a, b) ∈ [−radius, radius]²``.
  Each direction is Gaussian, with every row of every weight matrix (the incoming weights of
  one unit, a "filter") rescaled to the norm of the same row of ``θ``; bias entries are 0.
  **Sharpness** is the mean of ``L − L(θ)`` over the lattice; **convexity** is the fraction of
  interior lattice points whose second differences along both axes are ``>= 0``.

Example
-------
>>> import torch
>>> from rmtprune.paper.experiments.analysis.landscape import barrier_height
>>> barrier_height(torch.tensor([1.0, 2.0, 1.0]))
(1.0, 1.0)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune._util.validation import check_int, check_real, param_error
from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.experiments.analysis.landscape_math import (
    barrier_height,
    convexity,
    filter_normalized_direction,
    interpolation_losses,
    loss,
    surface_losses,
)
from rmtprune.paper.experiments.analysis.landscape_report import (
    ARMS,
    LandscapeResult,
    LineRecord,
    SolutionRecord,
    SurfaceRecord,
    make_verdicts,
    summarize,
    write_outputs,
)
from rmtprune.paper.experiments.rundir import UnitStore
from rmtprune.paper.models import FullyConnected, initialize
from rmtprune.paper.training import TrainConfig, Trainer
from rmtprune.pruning.criteria import MPCriterion
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.schedules import Linear

__all__ = [
    "PRESETS",
    "LandscapeConfig",
    "LandscapeResult",
    "LineRecord",
    "SolutionRecord",
    "SurfaceRecord",
    "barrier_height",
    "filter_normalized_direction",
    "interpolation_losses",
    "run",
    "surface_losses",
]

_OWNER = "landscape.run"


@dataclass(frozen=True)
class LandscapeConfig:
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

    def __post_init__(self) -> None:
        owner = "LandscapeConfig"
        for name in ("seeds", "epochs", "n_eval", "surface_seeds", "every", "min_rank"):
            check_int(getattr(self, name), name, owner, low=1)
        check_int(self.grid, "grid", owner, low=3)
        check_int(self.line_points, "line_points", owner, low=2)
        check_real(self.radius, "radius", owner, low=0.0, low_open=True)
        check_real(self.schedule_epochs, "schedule_epochs", owner, low=0.0, low_open=True)

    @classmethod
    def from_preset(cls, preset: str, seeds: int | None = None) -> LandscapeConfig:
        """The configuration of ``preset``, optionally with another number of seeds (>= 2).

        >>> LandscapeConfig.from_preset("small").widths
        (784, 1000, 1000, 10)
        """
        config = PRESETS[common.check_preset(preset, "LandscapeConfig.from_preset")]
        seeds = common.check_seeds(seeds, "LandscapeConfig.from_preset")
        return config if seeds is None else replace(config, seeds=seeds)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields."""
        return asdict(self)


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


# ----------------------------------------------------------------------------- measures


def _train(
    config: LandscapeConfig, seed: int, arm: str, data: tuple[Any, Any], progress: bool
) -> tuple[nn.Module, Any]:
    model = FullyConnected(list(config.widths))
    initialize(model, "normal", generator=config.seed * 1000 + seed)
    pruner = None
    if arm == "pruned":
        pruner = SpectralPruner(
            model,
            schedule=Linear(config.schedule_epochs),
            every=config.every,
            criterion=MPCriterion(min_rank=config.min_rank),
        )
    train_config = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=seed,
        num_threads=config.num_threads,
    )
    trainer = Trainer(model, data[0], data[1], train_config, pruner=pruner, progress=progress)
    history = trainer.fit()
    return trainer.model, history[-1]


Models = Callable[[str, int], nn.Module]
"""The dense solution of ``(arm, seed)``, read from its stored unit."""


def _solution(
    config: LandscapeConfig,
    seed: int,
    arm: str,
    data: tuple[Any, Any],
    evaluation: Any,
    store: UnitStore,
    progress: bool,
) -> SolutionRecord:
    """Unit ``solution-<arm>-<seed>``: train one arm of one seed; store its dense weights."""
    name = f"solution-{arm}-{seed}"

    def train() -> SolutionRecord:
        common.say(progress, f"[landscape] training seed {seed} {arm}")
        model, last = _train(config, seed, arm, data, progress)
        dense = common.dense_copy(model).eval()
        store.save_tensors(name, dense.state_dict())
        return SolutionRecord(
            arm, seed, last.test_loss, last.test_accuracy, loss(dense, evaluation), last.n_params
        )

    return store.get(name, train, SolutionRecord.to_dict, SolutionRecord.from_dict)


def _stored_model(config: LandscapeConfig, store: UnitStore, arm: str, seed: int) -> nn.Module:
    model = FullyConnected(list(config.widths))
    model.load_state_dict(store.load_tensors(f"solution-{arm}-{seed}"))
    return model.eval()


def _lines(
    config: LandscapeConfig, models: Models, evaluation: Any, store: UnitStore, progress: bool
) -> list[LineRecord]:
    """Loss along the straight line between every pair of seeds of each arm (one unit each)."""
    ts = np.linspace(0.0, 1.0, config.line_points)

    def line(arm: str, a: int, b: int) -> LineRecord:
        common.say(progress, f"[landscape] line {arm} {a}-{b}")
        losses = interpolation_losses(models(arm, a), models(arm, b), evaluation, ts.tolist())
        return LineRecord(
            arm, a, b, tuple(ts.tolist()), tuple(losses.tolist()), *barrier_height(losses)
        )

    return [
        store.get(
            f"line-{arm}-{a}-{b}",
            partial(line, arm, a, b),
            LineRecord.to_dict,
            LineRecord.from_dict,
        )
        for arm in ARMS
        for a, b in itertools.combinations(range(config.seeds), 2)
    ]


def _surfaces(
    config: LandscapeConfig, models: Models, evaluation: Any, store: UnitStore, progress: bool
) -> list[SurfaceRecord]:
    """Loss on a plane of two filter-normalised random directions around some solutions."""
    coords = np.linspace(-config.radius, config.radius, config.grid)

    def surface(arm: str, seed: int) -> SurfaceRecord:
        common.say(progress, f"[landscape] surface {arm} seed {seed}")
        generator = torch.Generator().manual_seed(config.seed * 1000 + seed)
        model = models(arm, seed)
        directions = [filter_normalized_direction(model, generator) for _ in range(2)]
        grid = surface_losses(model, evaluation, directions, coords)
        center = loss(model, evaluation)
        mean_rise = float(np.mean(grid - center))
        return SurfaceRecord(
            arm, seed, tuple(coords.tolist()), center, mean_rise, convexity(grid), grid
        )

    return [
        store.get(
            f"surface-{arm}-{seed}",
            partial(surface, arm, seed),
            SurfaceRecord.to_dict,
            SurfaceRecord.from_dict,
        )
        for arm in ARMS
        for seed in range(min(config.surface_seeds, config.seeds))
    ]


def run(
    preset: str = "small",
    *,
    seeds: int | None = None,
    out: str | Path,
    data_dir: Any = None,
    progress: bool = True,
    config: LandscapeConfig | None = None,
    resume: bool = True,
) -> LandscapeResult:
    """Run the landscape experiment and write its files into ``out``.

    Parameters
    ----------
    preset : {"smoke", "small", "paper"}
        Scale (:data:`PRESETS`).
    seeds : int, optional
        Number of seeds per arm (at least 2), overriding the preset.
    out : path
        Run directory (created): ``config.json``, ``environment.json``, ``metrics.json``,
        ``solutions.csv``, ``lines.csv``, ``surfaces.csv``, PNG figures,
        ``report_section.md`` and, under ``units/``, each finished unit as it finishes:
        ``solution-<arm>-<seed>`` (with its dense weights, ``.pt``), ``line-<arm>-<a>-<b>``
        and ``surface-<arm>-<seed>``.  A later call with the same configuration loads them.
    data_dir : path, optional
        Data root holding Fashion-MNIST (default ``$RMTPRUNE_DATA``).
    progress : bool
        Progress lines on stderr.
    config : LandscapeConfig, optional
        Use this configuration instead of the preset's.
    resume : bool
        Continue a run of the same configuration in ``out``; False refuses it.

    Returns
    -------
    LandscapeResult

    Examples
    --------
    >>> result = run("smoke", out="/tmp/landscape-smoke", progress=False)  # doctest: +SKIP
    >>> result.summary["pruned"]["barrier"]  # doctest: +SKIP
    """
    preset = common.check_preset(preset, _OWNER)
    config = common.resolve_config(
        LandscapeConfig, LandscapeConfig.from_preset, config, preset, seeds, _OWNER
    )
    if config.seeds < 2:
        raise param_error("seeds", _OWNER, "an int >= 2 (pairs of solutions)", config.seeds)
    started = time.perf_counter()
    folder, store = common.open_run(out, _OWNER, "landscape", preset, config, resume)
    train, test = common.load_fashion_mnist(
        config.n_train, config.n_test, data_dir=data_dir, seed=config.seed
    )
    x, y = test.tensors
    evaluation = (x[: config.n_eval], y[: config.n_eval])
    solutions = [
        _solution(config, seed, arm, (train, test), evaluation, store, progress)
        for seed in range(config.seeds)
        for arm in ARMS
    ]
    models = cache(partial(_stored_model, config, store))
    lines = _lines(config, models, evaluation, store, progress)
    surfaces = _surfaces(config, models, evaluation, store, progress)
    summary = summarize(solutions, lines, surfaces)
    accuracy = common.paired_comparison(
        [s.test_accuracy for s in solutions if s.arm == "pruned"],
        [s.test_accuracy for s in solutions if s.arm == "normal"],
        metric="test_accuracy",
    )
    verdicts = make_verdicts(summary, config.seeds)
    files = write_outputs(folder, config, solutions, lines, surfaces, summary, accuracy, verdicts)
    result = LandscapeResult(
        preset,
        config,
        tuple(solutions),
        tuple(lines),
        tuple(surfaces),
        summary,
        accuracy,
        tuple(verdicts),
        files,
        time.perf_counter() - started,
    )
    common.write_json(folder / "metrics.json", result.to_dict())
    return result
