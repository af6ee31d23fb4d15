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
>>> from rmtprune.experiments.landscape import barrier_height
>>> barrier_height(torch.tensor([1.0, 2.0, 1.0]))
(1.0, 1.0)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune._validation import check_int, check_real, param_error
from rmtprune.experiments import _analysis_common as common
from rmtprune.experiments._landscape_report import (
    ARMS,
    LandscapeResult,
    LineRecord,
    SolutionRecord,
    SurfaceRecord,
    make_verdicts,
    summarize,
    write_outputs,
)
from rmtprune.models import FullyConnected, initialize
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.schedules import Linear
from rmtprune.training import TrainConfig, Trainer, evaluate

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


def _loss(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    return evaluate(model, data, batch_size=len(data[1])).loss


def _set_params(model: nn.Module, values: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), values, strict=True):
            p.copy_(v)


def interpolation_losses(
    model_a: nn.Module, model_b: nn.Module, data: Any, ts: Sequence[float]
) -> np.ndarray:
    """``L((1 − t) θ_a + t θ_b)`` for each ``t`` (two models of the same architecture).

    The mixture is computed as ``(1 − t)·θ_a + t·θ_b`` entry by entry, so ``t = 0`` and
    ``t = 1`` give ``θ_a`` and ``θ_b`` bit for bit.  Neither model is modified.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        Models returning log-probabilities, with parameters of the same shapes (pass
        :func:`~rmtprune.experiments._analysis_common.dense_copy` of pruned networks).
    data : TensorDataset or (inputs, labels)
        Evaluation data; the loss is the mean NLL over it.
    ts : sequence of float
        Positions on the line.

    Returns
    -------
    numpy.ndarray
        One loss per ``t``.

    Examples
    --------
    >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> net_a, net_b = (torch.nn.Sequential(m, torch.nn.LogSoftmax(1)) for m in (a, b))
    >>> data = (torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    >>> losses = interpolation_losses(net_a, net_b, data, [0.0, 1.0])
    >>> bool(losses[0] == evaluate(net_a, data, batch_size=8).loss)
    True
    """
    x, y = getattr(data, "tensors", data)
    scratch = common.dense_copy(model_a)
    pa = [p.detach().clone() for p in model_a.parameters()]
    pb = [p.detach().clone() for p in model_b.parameters()]
    if [p.shape for p in pa] != [p.shape for p in pb]:
        raise ValueError(
            "The 'model_a' and 'model_b' parameters of interpolation_losses must have the same "
            "parameter shapes (convert factorized layers with dense_copy first)."
        )
    losses = []
    for t in ts:
        _set_params(scratch, [(1.0 - t) * a + t * b for a, b in zip(pa, pb, strict=True)])
        losses.append(_loss(scratch, (x, y)))
    return np.array(losses)


def barrier_height(losses: Any) -> tuple[float, float]:
    """``(barrier, barrier_max)`` of losses on evenly spaced ``t`` from 0 to 1.

    ``barrier = max_t [L(t) − ((1 − t) L(0) + t L(1))]``;
    ``barrier_max = max_t L(t) − max(L(0), L(1))``.  Both are ``>= 0``.

    >>> barrier_height([3.0, 1.0, 2.0])
    (0.0, 0.0)
    """
    values = np.asarray(losses, dtype=np.float64)
    t = np.linspace(0.0, 1.0, values.size)
    chord = (1.0 - t) * values[0] + t * values[-1]
    return float(np.max(values - chord)), float(values.max() - max(values[0], values[-1]))


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """A random direction in parameter space, filter-normalised (Li et al., 2018).

    One tensor per parameter of ``model``: Gaussian for weights with two or more
    dimensions, each row (output unit) rescaled to the norm of the same row of the weight;
    zeros for biases and other 1-D parameters.

    >>> layer = torch.nn.Linear(3, 2)
    >>> d = filter_normalized_direction(layer, torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(d[0].norm(dim=1), layer.weight.detach().norm(dim=1)))
    True
    """
    out = []
    for p in model.parameters():
        w = p.detach()
        if w.dim() < 2:
            out.append(torch.zeros_like(w))
            continue
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype)
        rows_w = w.reshape(w.shape[0], -1).norm(dim=1)
        rows_d = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-30)
        scale = (rows_w / rows_d).reshape(-1, *([1] * (w.dim() - 1)))
        out.append(d * scale)
    return out


def surface_losses(
    model: nn.Module, data: Any, directions: Sequence[Sequence[torch.Tensor]], coords: np.ndarray
) -> np.ndarray:
    """``L(θ + a·d₁ + b·d₂)`` for ``a`` (rows) and ``b`` (columns) in ``coords``.

    Parameters
    ----------
    model : torch.nn.Module
        The solution ``θ`` (not modified), returning log-probabilities.
    data : TensorDataset or (inputs, labels)
        Evaluation data; the loss is the mean NLL over it.
    directions : pair of lists of torch.Tensor
        ``d₁`` and ``d₂``, one tensor per parameter of ``model``
        (:func:`filter_normalized_direction`).
    coords : numpy.ndarray
        Lattice coordinates used for both axes.

    Returns
    -------
    numpy.ndarray
        ``len(coords) × len(coords)`` losses.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LogSoftmax(1))
    >>> g = torch.Generator().manual_seed(0)
    >>> d = [filter_normalized_direction(net, g) for _ in range(2)]
    >>> data = (torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    >>> surface_losses(net, data, d, np.linspace(-1, 1, 3)).shape
    (3, 3)
    """
    x, y = getattr(data, "tensors", data)
    scratch = common.dense_copy(model)
    base = [p.detach().clone() for p in model.parameters()]
    d1, d2 = directions
    grid = np.empty((coords.size, coords.size))
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            _set_params(
                scratch,
                [p + float(a) * u + float(b) * v for p, u, v in zip(base, d1, d2, strict=True)],
            )
            grid[i, j] = _loss(scratch, (x, y))
    return grid


def _convexity(grid: np.ndarray) -> float:
    inner = grid[1:-1, 1:-1]
    along_a = grid[2:, 1:-1] + grid[:-2, 1:-1] - 2 * inner
    along_b = grid[1:-1, 2:] + grid[1:-1, :-2] - 2 * inner
    return float(np.mean((along_a >= 0) & (along_b >= 0)))


# ----------------------------------------------------------------------------- run


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
            min_rank=config.min_rank,
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


def run(
    preset: str = "small",
    *,
    seeds: int | None = None,
    out: str | Path,
    data_dir: Any = None,
    progress: bool = True,
    config: LandscapeConfig | None = None,
) -> LandscapeResult:
    """Run the landscape experiment and write its files into ``out``.

    Parameters
    ----------
    preset : {"smoke", "small", "paper"}
        Scale (:data:`PRESETS`).
    seeds : int, optional
        Number of seeds per arm (at least 2), overriding the preset.
    out : path
        Output folder (created): ``config.json``, ``metrics.json``, ``solutions.csv``,
        ``lines.csv``, ``surfaces.csv``, PNG figures and ``report_section.md``.
    data_dir : path, optional
        Data root holding Fashion-MNIST (default ``$RMTPRUNE_DATA``).
    progress : bool
        Progress lines on stderr.
    config : LandscapeConfig, optional
        Use this configuration instead of the preset's.

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
    folder = common.prepare_out(out, _OWNER)
    started = time.perf_counter()
    common.write_run_config(folder, "landscape", preset, config)
    train, test = common.load_fashion_mnist(
        config.n_train, config.n_test, data_dir=data_dir, seed=config.seed
    )
    x, y = test.tensors
    evaluation = (x[: config.n_eval], y[: config.n_eval])
    dense: dict[tuple[str, int], nn.Module] = {}
    solutions = []
    for seed in range(config.seeds):
        for arm in ARMS:
            common.say(progress, f"[landscape] training seed {seed} {arm}")
            model, last = _train(config, seed, arm, (train, test), progress)
            dense[arm, seed] = common.dense_copy(model).eval()
            solutions.append(
                SolutionRecord(
                    arm,
                    seed,
                    last.test_loss,
                    last.test_accuracy,
                    _loss(dense[arm, seed], evaluation),
                    last.n_params,
                )
            )
    ts = np.linspace(0.0, 1.0, config.line_points)
    lines = []
    for arm in ARMS:
        for a, b in itertools.combinations(range(config.seeds), 2):
            common.say(progress, f"[landscape] line {arm} {a}-{b}")
            losses = interpolation_losses(dense[arm, a], dense[arm, b], evaluation, ts.tolist())
            lines.append(
                LineRecord(
                    arm, a, b, tuple(ts.tolist()), tuple(losses.tolist()), *barrier_height(losses)
                )
            )
    coords = np.linspace(-config.radius, config.radius, config.grid)
    surfaces = []
    for arm in ARMS:
        for seed in range(min(config.surface_seeds, config.seeds)):
            common.say(progress, f"[landscape] surface {arm} seed {seed}")
            generator = torch.Generator().manual_seed(config.seed * 1000 + seed)
            model = dense[arm, seed]
            directions = [filter_normalized_direction(model, generator) for _ in range(2)]
            grid = surface_losses(model, evaluation, directions, coords)
            center = _loss(model, evaluation)
            surfaces.append(
                SurfaceRecord(
                    arm,
                    seed,
                    tuple(coords.tolist()),
                    center,
                    float(np.mean(grid - center)),
                    _convexity(grid),
                    grid,
                )
            )
    summary = summarize(solutions, lines, surfaces)
    accuracy = common.paired_comparison(
        "test_accuracy",
        [s.test_accuracy for s in solutions if s.arm == "normal"],
        [s.test_accuracy for s in solutions if s.arm == "pruned"],
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
