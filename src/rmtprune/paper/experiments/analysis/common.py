"""Plumbing shared by the analysis experiments (``theory``, ``regression``, ``landscape``).

The one run skeleton of the four analysis experiments (:func:`run_analysis`: check the preset,
resolve the configuration, open the run directory, compute the units with resume, write the
report and ``metrics.json``), argument checks for the common ``run`` signature, the run
directory and its store of finished units (:func:`open_run`), JSON/CSV writers that produce strict
JSON (non-finite floats become ``null``), least-squares slopes on log-log axes, a paired
comparison over seeds, Markdown tables, matplotlib figures drawn
without ``pyplot`` (the Agg canvas, no global state), and model helpers: a dense copy of a
pruned network and the data loader.

Example
-------
>>> from rmtprune.paper.experiments.analysis.common import loglog_slope
>>> round(loglog_slope([100, 200, 400], [1.0, 0.5, 0.25]).slope, 6)
-1.0
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from torch import nn

from rmtprune._util.progress import say as progress_line
from rmtprune._util.validation import check_int
from rmtprune.factorize.lowrank import LowRankModule
from rmtprune.factorize.registry import set_submodule
from rmtprune.paper.data import load_dataset
from rmtprune.paper.experiments import formats
from rmtprune.paper.experiments.formats import markdown_table, to_jsonable
from rmtprune.paper.experiments.rundir import UnitStore, environment, prepare_analysis_dir
from rmtprune.paper.experiments.stats import PairedComparison, paired_comparison
from rmtprune.paper.presets import PRESETS, check_preset, check_seeds

__all__ = [
    "PRESETS",
    "AnalysisContext",
    "PairedComparison",
    "Slope",
    "check_preset",
    "check_seeds",
    "dense_copy",
    "environment",
    "load_fashion_mnist",
    "loglog_slope",
    "markdown_table",
    "mean_std",
    "new_figure",
    "open_run",
    "paired_comparison",
    "resolve_config",
    "run_analysis",
    "save_figure",
    "say",
    "to_jsonable",
    "write_csv",
    "write_json",
]


ConfigT = TypeVar("ConfigT")


def resolve_config(
    kind: type[ConfigT],
    from_preset: Callable[[str, int | None], ConfigT],
    config: Any,
    preset: str,
    seeds: Any,
    owner: str,
) -> ConfigT:
    """The configuration a ``run()`` uses.

    ``config=None`` takes ``from_preset(preset, seeds)`` (``preset`` already checked
    by :func:`check_preset`); a ``kind`` instance is used
    as given, with its ``seeds`` replaced when ``seeds`` is not None; anything else
    raises ``TypeError`` naming the ``config`` parameter of ``owner``.
    """
    if config is None:
        return from_preset(preset, seeds)
    if not isinstance(config, kind):
        raise TypeError(
            f"The 'config' parameter of {owner} must be a {kind.__name__} or None. "
            f"Got {type(config).__name__} instead."
        )
    if seeds is not None:
        config = replace(config, seeds=check_int(seeds, "seeds", owner, low=1))  # type: ignore[type-var]
    return config


def open_run(
    out: Any, owner: str, experiment: str, preset: str, config: Any, resume: bool, **extra: Any
) -> tuple[Path, UnitStore]:
    """The run directory ``out`` of ``experiment`` and the store of its finished units.

    The directory is created, or continued when it holds a run of the same experiment,
    preset and configuration (see :func:`rmtprune.paper.experiments.rundir.prepare_analysis_dir`,
    which also refuses any other non-empty directory); ``config.json`` holds
    ``config.to_dict()`` and the ``extra`` fields.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(
            f"The 'out' parameter of {owner} must be a path. "
            f"Got {out!r} of type {type(out).__name__} instead."
        )
    folder = prepare_analysis_dir(out, experiment, preset, config.to_dict(), resume=resume, **extra)
    return folder, UnitStore(folder)


class _Result(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


UnitsT = TypeVar("UnitsT")
ResultT = TypeVar("ResultT", bound=_Result)


@dataclass(frozen=True)
class AnalysisContext(Generic[ConfigT]):
    """What the units and the report of an analysis run work with (see :func:`run_analysis`)."""

    preset: str
    config: ConfigT
    folder: Path
    store: UnitStore
    data_dir: Any
    progress: bool
    started: float

    def elapsed(self) -> float:
        """Seconds since the run directory was opened."""
        return time.perf_counter() - self.started


def run_analysis(
    experiment: str,
    owner: str,
    resolve: tuple[type[ConfigT], Callable[[str, int | None], ConfigT]],
    units: Callable[[AnalysisContext[ConfigT]], UnitsT],
    report: Callable[[AnalysisContext[ConfigT], UnitsT], ResultT],
    *,
    preset: Any,
    seeds: Any,
    config: Any,
    out: Any,
    data_dir: Any,
    progress: bool,
    resume: bool,
    check: Callable[[ConfigT], None] | None = None,
    write_metrics: Callable[[Path, Any], Any] | None = None,
    **extra: Any,
) -> ResultT:
    """The one skeleton of an analysis experiment's ``run``.

    Checks ``preset``; resolves the configuration (``resolve`` is ``(kind, from_preset)``, see
    :func:`resolve_config`) and passes it to ``check``; opens the run directory ``out``
    (:func:`open_run`, with ``extra`` fields in ``config.json``); calls ``units(context)``,
    which computes or loads each unit through ``context.store`` (a continued run loads what
    it stored); calls ``report(context, units)``, which writes the tables, figures and
    ``report_section.md`` and returns the result; writes ``result.to_dict()`` to
    ``metrics.json`` (:func:`write_json`, or ``write_metrics``) and returns the result.
    """
    preset = check_preset(preset, owner)
    kind, from_preset = resolve
    resolved = resolve_config(kind, from_preset, config, preset, seeds, owner)
    if check is not None:
        check(resolved)
    started = time.perf_counter()
    folder, store = open_run(out, owner, experiment, preset, resolved, resume, **extra)
    context = AnalysisContext(preset, resolved, folder, store, data_dir, progress, started)
    result = report(context, units(context))
    (write_metrics or write_json)(folder / "metrics.json", result.to_dict())
    return result


def say(progress: bool, message: str) -> None:
    """Write one progress line to stderr when ``progress`` is true."""
    progress_line(message, enabled=progress)


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as strict JSON indented by 2, atomically."""
    return formats.write_json(path, data, indent=2, newline=True)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write dictionaries with the same keys as CSV rows (the first row's keys as header),
    atomically."""
    header = list(rows[0]) if rows else []
    table = [[_csv_cell(row[k]) for k in header] for row in rows]
    return formats.write_text(path, formats.csv_text(header, table) if rows else "")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    return value


@dataclass(frozen=True)
class Slope:
    """Least-squares line ``log y = slope · log x + intercept`` (natural logs)."""

    slope: float
    intercept: float
    n_points: int

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields."""
        return asdict(self)

    def predict(self, x: ArrayLike) -> np.ndarray:
        """The fitted ``y`` at ``x``."""
        return np.exp(self.intercept) * np.asarray(x, dtype=np.float64) ** self.slope


def loglog_slope(x: ArrayLike, y: ArrayLike) -> Slope:
    """Fit a power law ``y ∝ x^slope`` by least squares on log-log axes.

    Parameters
    ----------
    x, y : array-like
        Positive values of the same length (at least two points).

    Examples
    --------
    >>> round(loglog_slope([1, 10, 100], [3.0, 0.3, 0.03]).slope, 6)
    -1.0
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or xs.size < 2:
        raise ValueError(
            "The 'x' and 'y' parameters of loglog_slope must be 1-D of the same length >= 2. "
            f"Got shapes {xs.shape} and {ys.shape} instead."
        )
    if not (np.all(xs > 0) and np.all(ys > 0)):
        raise ValueError("The 'x' and 'y' parameters of loglog_slope must be positive.")
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    return Slope(float(slope), float(intercept), int(xs.size))


def mean_std(values: ArrayLike) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.8)) -> Figure:
    """A figure of ``nrows × ncols`` axes of ``size`` inches each (no ``pyplot`` state)."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    fig.subplots(nrows, ncols, squeeze=False)
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG at ``path`` with the Agg canvas."""
    fig.savefig(path, dpi=dpi, format="png")
    return path


def dense_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every factorized layer replaced by its dense equivalent.

    Two pruned networks of different ranks then have the same parameter names and
    shapes as the unpruned architecture, so they can be interpolated.

    Examples
    --------
    >>> from rmtprune.factorize import LowRankLinear
    >>> net = nn.Sequential(LowRankLinear.from_factors(torch.ones(1, 3), torch.ones(2, 1)))
    >>> type(dense_copy(net)[0]).__name__
    'Linear'
    """
    out = copy.deepcopy(model)
    names = [name for name, mod in out.named_modules() if isinstance(mod, LowRankModule)]
    for name in names:
        module = out.get_submodule(name)
        assert isinstance(module, LowRankModule)
        dense = module.to_dense()
        if not name:
            return dense
        set_submodule(out, name, dense)
    return out


def load_fashion_mnist(
    n_train: int | None, n_test: int | None, *, data_dir: Any = None, seed: int = 0
) -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    """Fashion-MNIST training and test subsets (``None``: the whole split), seeded."""
    train = load_dataset("fashion-mnist", "train", data_dir=data_dir, subset=n_train, seed=seed)
    test = load_dataset("fashion-mnist", "test", data_dir=data_dir, subset=n_test, seed=seed)
    return train, test
