"""Figures of an experiment run, written as PNG with Matplotlib's Agg canvas.

No ``pyplot`` and no global backend switch: each figure is a
:class:`matplotlib.figure.Figure` drawn by a :class:`FigureCanvasAgg`, so the
user's Matplotlib setup is left alone and nothing needs a display.

The spectral figures need the eigenvalues of each large layer at a few
moments; :func:`spectrum_snapshots` takes them (with the BEMA fit) from a
model, and :class:`SpectrumSnapshot` stores them with the run.

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> from rmtprune.paper.experiments.classification.plots import Curve, plot_curves
>>> path = pathlib.Path(tempfile.mkdtemp()) / "acc.png"
>>> curve = Curve("normal", np.array([[0.1, 0.8, 0.9], [0.1, 0.7, 0.9]]))
>>> plot_curves([curve], ylabel="test accuracy", title="demo", path=path).read_bytes()[:4]
b'\\x89PNG'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray
from torch import nn

from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.results import SeedResult, SpectrumSnapshot, SummaryRow
from rmtprune.plotting import SpectrumPlotData, draw_spectrum
from rmtprune.pruning.criteria import MPCriterion
from rmtprune.pruning.selection import Select
from rmtprune.pruning.walker import analyze

__all__ = [
    "ACCURACY_COLORS",
    "FIXED_FIGURES",
    "Curve",
    "ParamPoint",
    "SpectrumSnapshot",
    "existing_figures",
    "make_figures",
    "plot_accuracy_vs_params",
    "plot_curves",
    "plot_spectra",
    "spectra_figure",
    "spectrum_snapshots",
]

ACCURACY_COLORS = {"normal": "tab:blue", "pruned": "tab:orange"}
_DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, format="png", metadata={"Software": None})
    return path


@dataclass(frozen=True)
class Curve:
    """One labelled series over epochs: ``values`` has shape ``(n_seeds, n_epochs)``."""

    label: str
    values: NDArray[np.float64]
    color: str | None = None


def plot_curves(
    curves: Sequence[Curve],
    *,
    ylabel: str,
    title: str,
    path: Path,
    first_epoch: int = 0,
    percent: bool = False,
) -> Path:
    """Mean over seeds with a ± one standard deviation band, one line per curve.

    With one seed the band is omitted.  ``percent`` multiplies by 100.
    """
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for curve in curves:
        values = np.asarray(curve.values, dtype=float) * (100.0 if percent else 1.0)
        epochs = np.arange(first_epoch, first_epoch + values.shape[1])
        mean = values.mean(axis=0)
        n = values.shape[0]
        label = f"{curve.label} (mean ± std, {n} seed{'s' if n != 1 else ''})"
        (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=label, color=curve.color)
        if n > 1:
            std = values.std(axis=0, ddof=1)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.25, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


@dataclass(frozen=True)
class ParamPoint:
    """A method's size and accuracy over seeds (``n_params`` and ``accuracies`` per seed)."""

    label: str
    n_params: tuple[float, ...]
    accuracies: tuple[float, ...]
    marker: str = "o"
    filled: bool = True
    color: str | None = None


def plot_accuracy_vs_params(points: Sequence[ParamPoint], *, title: str, path: Path) -> Path:
    """Test accuracy (mean ± std over seeds) against the parameter count, one marker per method."""
    fig = Figure(figsize=(7.2, 4.6))
    ax = fig.add_subplot()
    for p in points:
        x = float(np.mean(p.n_params))
        acc = 100.0 * np.asarray(p.accuracies, dtype=float)
        err = float(acc.std(ddof=1)) if acc.size > 1 else 0.0
        ax.errorbar(
            x,
            float(acc.mean()),
            yerr=err,
            fmt=p.marker,
            ms=8,
            capsize=3,
            color=p.color,
            mfc=p.color if p.filled else "white",
            label=p.label,
        )
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def spectrum_snapshots(
    model: nn.Module,
    stage: str,
    layers: Sequence[str],
    *,
    ranks: Mapping[str, int] | None = None,
    alpha: float = 0.25,
    beta: float = 0.1,
) -> tuple[SpectrumSnapshot, ...]:
    """Eigenvalues and BEMA fit of each named layer of ``model`` (unfitted layers skipped)."""
    if not layers:
        return ()
    rule, chosen = MPCriterion(alpha=alpha, beta=beta), Select(include=list(layers), min_dim=1)
    report = analyze(model, criterion=rule, select=chosen, ranks=ranks)
    return tuple(
        SpectrumSnapshot.of(stage, SpectrumPlotData.from_row(row))
        for row in report.layers
        if row.status == "ok"
    )


_STAGE_TITLES = {
    "init": "at initialisation",
    "normal-final": "normal arm, end",
    "pruned-final": "pruned arm, end",
}


def spectra_figure(snapshots: Sequence[SpectrumSnapshot], *, title: str) -> Figure:
    """One panel per snapshot, drawn by :func:`rmtprune.plotting.draw_spectrum` (``"stage"``).

    Each panel: the eigenvalue histogram normalised by ``p`` (all eigenvalues of the
    layer, so the bars of a pruned layer hold area ``rank / p`` and compare directly with
    the MP density), the fitted MP density and ``lambda_plus``.  The horizontal axis stops
    at ``1.6 lambda_plus``; the eigenvalues beyond it (the spikes) are counted in the legend.
    """
    n = len(snapshots)
    fig = Figure(figsize=(4.2 * max(n, 1), 3.6))
    for i, snap in enumerate(snapshots, start=1):
        ax = fig.add_subplot(1, max(n, 1), i)
        heading = _STAGE_TITLES.get(snap.stage, snap.stage)
        draw_spectrum(ax, snap.plot_data(), style="stage", heading=heading)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_spectra(snapshots: Sequence[SpectrumSnapshot], *, title: str, path: Path) -> Path:
    """:func:`spectra_figure` written to ``path`` as PNG."""
    return _save(spectra_figure(snapshots, title=title), path)


_STYLES = {
    "normal": ("o", "tab:blue"),
    "pruned": ("*", "tab:orange"),
    "mp-oneshot": ("D", "tab:red"),
    "magnitude": ("s", "tab:green"),
    "svd-energy": ("^", "tab:purple"),
}


def _curve_figures(fig_dir: Path, name: str, seeds: Sequence[SeedResult]) -> list[Path]:
    accuracy = [
        Curve(
            arm,
            np.array([getattr(s, arm).accuracy_curve()[1:] for s in seeds]),
            ACCURACY_COLORS[arm],
        )
        for arm in ("normal", "pruned")
    ]
    params = [
        Curve(
            arm,
            np.array([getattr(s, arm).params_curve() for s in seeds], float),
            ACCURACY_COLORS[arm],
        )
        for arm in ("normal", "pruned")
    ]
    return [
        plot_curves(
            accuracy,
            ylabel="test accuracy (%)",
            percent=True,
            first_epoch=1,
            title=f"{name}: test accuracy",
            path=fig_dir / "accuracy_vs_epoch.png",
        ),
        plot_curves(
            params,
            ylabel="parameters",
            title=f"{name}: parameters",
            path=fig_dir / "params_vs_epoch.png",
        ),
    ]


def _spectrum_figures(fig_dir: Path, name: str, seeds: Sequence[SeedResult]) -> list[Path]:
    source = next((s for s in seeds if s.spectra), None)  # imported seeds may have none
    if source is None:
        return []
    out = []
    for layer in dict.fromkeys(s.layer for s in source.spectra):
        chosen = [s for s in source.spectra if s.layer == layer]
        safe = layer.replace(".", "_")
        out.append(
            plot_spectra(
                chosen,
                title=f"{name}: layer {layer} {chosen[0].shape[0]}×{chosen[0].shape[1]}, "
                f"seed {source.seed}",
                path=fig_dir / f"spectrum_{safe}.png",
            )
        )
    return out


def make_figures(
    run_dir: Path,
    config: ExperimentConfig,
    seeds: Sequence[SeedResult],
    summary: Sequence[SummaryRow],
) -> tuple[Path, ...]:
    """All figures of a run under ``run_dir/figures``; returns their paths.

    Test accuracy and parameters vs epoch (mean ± std over seeds, normal vs pruned),
    accuracy vs parameters for every method, and one spectral figure per large layer
    (first seed with stored spectra: at initialisation, normal arm and pruned arm at
    the end).
    """
    fig_dir = run_dir / "figures"
    name = f"{config.experiment} ({config.preset})"
    points = [
        ParamPoint(
            r.label,
            tuple(float(n) for n in r.n_params),
            r.accuracies,
            marker=_STYLES[r.method][0],
            color=_STYLES[r.method][1],
            filled=r.stage != "before-ft",
        )
        for r in summary
    ]
    scatter = plot_accuracy_vs_params(
        points, title=f"{name}: accuracy vs parameters", path=fig_dir / "accuracy_vs_params.png"
    )
    curves = _curve_figures(fig_dir, name, seeds)
    return (*curves, scatter, *_spectrum_figures(fig_dir, name, seeds))


FIXED_FIGURES = ("accuracy_vs_epoch.png", "params_vs_epoch.png", "accuracy_vs_params.png")


def existing_figures(run_dir: Path, layers: Sequence[str] = ()) -> tuple[Path, ...]:
    """The figures already in ``run_dir/figures``, in the order :func:`make_figures` writes
    them: the fixed ones, then the spectra in the order of ``layers`` (others last, by name)."""
    folder = run_dir / "figures"
    fixed = [folder / n for n in FIXED_FIGURES if (folder / n).is_file()]
    position = {f"spectrum_{name.replace('.', '_')}": i for i, name in enumerate(layers)}

    def key(path: Path) -> tuple[int, str]:
        return position.get(path.stem, len(position)), path.stem

    return (*fixed, *sorted(folder.glob("spectrum_*.png"), key=key))
