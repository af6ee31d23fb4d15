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
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune._util.validation import param_error
from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.experiments.analysis.landscape_config import PRESETS, LandscapeConfig
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
    return common.run_analysis(
        "landscape",
        _OWNER,
        (LandscapeConfig, LandscapeConfig.from_preset),
        _units,
        _report,
        preset=preset,
        seeds=seeds,
        config=config,
        out=out,
        data_dir=data_dir,
        progress=progress,
        resume=resume,
        check=_check_seeds,
    )


def _check_seeds(config: LandscapeConfig) -> None:
    if config.seeds < 2:
        raise param_error("seeds", _OWNER, "an int >= 2 (pairs of solutions)", config.seeds)


_Units = tuple[list[SolutionRecord], list[LineRecord], list[SurfaceRecord]]


def _units(run: common.AnalysisContext[LandscapeConfig]) -> _Units:
    """Every solution, interpolation line and surface (stored units, loaded when stored)."""
    config, store, progress = run.config, run.store, run.progress
    train, test = common.load_fashion_mnist(
        config.n_train, config.n_test, data_dir=run.data_dir, seed=config.seed
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
    return solutions, lines, surfaces


def _report(run: common.AnalysisContext[LandscapeConfig], measured: _Units) -> LandscapeResult:
    """Summary, verdicts, tables, figures and ``report_section.md``; the result."""
    config = run.config
    solutions, lines, surfaces = measured
    summary = summarize(solutions, lines, surfaces)
    accuracy = common.paired_comparison(
        [s.test_accuracy for s in solutions if s.arm == "pruned"],
        [s.test_accuracy for s in solutions if s.arm == "normal"],
        metric="test_accuracy",
    )
    verdicts = make_verdicts(summary, config.seeds)
    files = write_outputs(
        run.folder, config, solutions, lines, surfaces, summary, accuracy, verdicts
    )
    return LandscapeResult(
        run.preset,
        config,
        tuple(solutions),
        tuple(lines),
        tuple(surfaces),
        summary,
        accuracy,
        tuple(verdicts),
        files,
        run.elapsed(),
    )
