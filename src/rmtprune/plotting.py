"""The spectrum of one layer with the fitted Marchenko–Pastur law: :func:`plot_spectrum`.

The figure shows the histogram of the layer's eigenvalues ``λ = s²/N`` as a
density over all ``p = min(m, n)`` of them (so a pruned layer's bars hold area
``rank / p``), the fitted density ``MP(γ, σ̂²)``, BEMA's edge ``λ₊``, the spikes
(eigenvalues above the edge, as red ticks) and, when known, the smallest kept
eigenvalue of a rank choice.  No ``pyplot`` and no backend switch: without an
``ax`` a new :class:`matplotlib.figure.Figure` with an Agg canvas is made.

Example
-------
>>> import torch
>>> import rmtprune
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(300, 200))
>>> ax = rmtprune.plot_spectrum(model, "0", criterion=rmtprune.MPCriterion(bulk_keep=0.5))
>>> ax.get_xlabel(), [t.get_text() for t in ax.get_legend().get_texts()][-1]
('eigenvalue λ = s²/N', 'kept rank 100')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray
from torch import nn

from rmtprune._util.validation import check_int
from rmtprune.pruning.criteria import Criterion, MPCriterion
from rmtprune.pruning.report import LayerAnalysis, ModelReport
from rmtprune.pruning.selection import Select
from rmtprune.pruning.walker import analyze, prune
from rmtprune.rmt.fit import FitAttributes, SpectralFit
from rmtprune.rmt.marchenko_pastur import marchenko_pastur

if TYPE_CHECKING:  # matplotlib is imported when a figure is made (``import rmtprune`` stays light)
    from matplotlib.axes import Axes

__all__ = [
    "SpectrumPlotData",
    "SpectrumStyle",
    "draw_spectrum",
    "plot_spectrum",
    "spectrum_plot_data",
]


@dataclass(frozen=True)
class SpectrumPlotData(FitAttributes):
    """What :func:`plot_spectrum` draws for one layer.

    ``eigenvalues`` are the layer's real eigenvalues (the top ``rank``), ascending;
    ``fit`` is the layer's :class:`~rmtprune.rmt.fit.SpectralFit` (its values read as
    attributes too: ``data.sigma2``).
    """

    layer: str
    shape: tuple[int, int]
    ratio: float
    rank: int
    fit: SpectralFit
    eigenvalues: NDArray[np.float64]
    kept_rank: int | None = None

    @classmethod
    def from_row(cls, row: LayerAnalysis, kept_rank: int | None = None) -> SpectrumPlotData:
        """The spectrum of a fitted row of :func:`rmtprune.analyze` (made in this session)."""
        if row.status != "ok" or row.eigenvalues is None:
            why = row.reason or "its report row holds no eigenvalues (made by analyze() here?)"
            raise ValueError(f"The layer {row.name!r} has no fitted spectrum to plot: {why}.")
        lam = np.asarray(row.eigenvalues, dtype=np.float64)
        return cls(
            row.name,
            (int(row.shape[0]), int(row.shape[1])),
            float(row.ratio),
            int(row.rank),
            row.fit,
            lam[lam.size - int(row.rank) :],
            kept_rank,
        )


def spectrum_plot_data(
    source: nn.Module | ModelReport,
    layer: str,
    *,
    criterion: Criterion | None = None,
    kept_rank: int | None = None,
) -> SpectrumPlotData:
    """Collect the eigenvalues, the MP fit and the kept rank of ``layer``.

    ``source`` is a model (fitted here; the fit uses ``criterion`` when it is an
    :class:`MPCriterion`, else the default one; ``criterion`` also gives the kept
    rank, from a dry run) or a report of :func:`rmtprune.analyze`.
    """
    if kept_rank is not None:
        kept_rank = check_int(kept_rank, "kept_rank", "plot_spectrum", low=1)
    if isinstance(source, ModelReport):
        if criterion is not None:
            raise ValueError(
                "The 'criterion' parameter of plot_spectrum needs a model, not a report; "
                "pass kept_rank= instead."
            )
        return SpectrumPlotData.from_row(source[layer], kept_rank)
    if not isinstance(source, nn.Module):
        raise TypeError(
            "The 'model_or_report' parameter of plot_spectrum must be a torch.nn.Module or a "
            f"ModelReport. Got {type(source).__name__} instead."
        )
    one = Select(include=layer, min_dim=1)
    mp = criterion if isinstance(criterion, MPCriterion) else MPCriterion()
    row = analyze(source, criterion=mp, select=one)[layer]
    if criterion is not None and kept_rank is None:
        _, report = prune(source, criterion=criterion, select=one, dry_run=True)
        kept_rank = report[layer].rank_after
    return SpectrumPlotData.from_row(row, kept_rank)


SpectrumStyle = Literal["layer", "stage"]
"""How :func:`draw_spectrum` marks a spectrum: ``"layer"`` is :func:`plot_spectrum`'s look,
``"stage"`` a panel of an experiment's spectrum figure
(``rmtprune.paper.experiments.classification.plots``)."""


def _draw_fit(ax: Axes, data: SpectrumPlotData, right: float, *, with_error: bool) -> None:
    if not data.fit.fitted:
        return
    x = np.linspace(right * 1e-3, right, 400)
    label = f"MP(γ={data.ratio:.3g}, σ²={data.sigma2:.3g})"
    ax.plot(
        x,
        marchenko_pastur.pdf(x, data.ratio, scale=data.sigma2),
        color="tab:red",
        label=f"{label}, D = {data.fit_error:.3g}" if with_error else label,
    )
    ax.axvline(data.lambda_plus, color="k", ls="--", lw=1, label=f"λ₊ = {data.lambda_plus:.3g}")


def _mark_layer(ax: Axes, data: SpectrumPlotData, right: float) -> None:
    """Spikes as red ticks (counted beyond the axis), the kept rank, the axis cut at ``right``."""
    lam = data.eigenvalues
    spikes = lam[lam > data.lambda_plus] if math.isfinite(data.lambda_plus) else lam[:0]
    shown = spikes[spikes <= right]
    if spikes.size:
        ax.plot(shown, np.zeros(shown.size), "|", color="tab:red", ms=14, mew=2)
        beyond = spikes.size - shown.size
        note = f", {beyond} beyond {right:.3g}" if beyond else ""
        ax.plot([], [], "|", color="tab:red", ms=10, label=f"{spikes.size} spike(s){note}")
    if data.kept_rank is not None:
        smallest = float(lam[max(lam.size - data.kept_rank, 0)])
        if smallest <= right:
            ax.axvline(smallest, color="tab:green", ls=":", lw=1.5)
        ax.plot([], [], ls=":", color="tab:green", label=f"kept rank {data.kept_rank}")
    ax.set_xlim(0.0, right)
    ax.set_title(f"{data.layer} ({data.shape[0]}×{data.shape[1]})", fontsize=9)


def _mark_stage(ax: Axes, data: SpectrumPlotData, right: float, heading: str) -> None:
    """A pruned layer's kept eigenvalues as black ticks, the eigenvalues beyond the axis
    counted, the fit statistic and spike count in the title; the axis fits the data."""
    lam = data.eigenvalues
    inside = lam[lam <= right]
    if data.rank < min(data.shape):  # few bars after pruning: mark each kept eigenvalue
        ax.plot(inside, np.zeros(inside.size), "|", color="k", ms=12, label="kept eigenvalues")
    ax.set_title(f"{heading}\nD = {data.fit_error:.3g}, spikes = {data.n_spikes}", fontsize=9)
    beyond = int(np.count_nonzero(lam > right))
    if beyond:
        ax.plot([], [], " ", label=f"{beyond} eigenvalue(s) > {right:.3g} not shown")


def draw_spectrum(
    ax: Axes,
    data: SpectrumPlotData,
    *,
    bins: int | None = None,
    xmax: float | None = None,
    style: SpectrumStyle = "layer",
    heading: str = "",
) -> Axes:
    """Draw one layer's spectrum on ``ax``: the one drawing of :func:`plot_spectrum` and of
    the experiments' spectrum figures.

    Every style draws the histogram of the eigenvalues as a density over all ``p`` of
    them (bins on ``[0, xmax]``, default ``xmax = 1.6 λ₊``), the fitted MP density and the
    edge ``λ₊``.  ``style="layer"`` adds the fit statistic to the MP legend entry, the
    spikes (red ticks), the kept rank, cuts the axis at ``xmax`` and titles the layer;
    ``style="stage"`` (a panel of a run's figure, the archived look) marks a pruned
    layer's kept eigenvalues, counts those beyond ``xmax`` and titles ``heading`` with
    the fit statistic and the spike count.
    """
    lam = data.eigenvalues
    p = min(data.shape)
    edge = data.lambda_plus if math.isfinite(data.lambda_plus) else float(lam.max())
    right = 1.6 * edge if xmax is None else float(xmax)
    inside = lam[lam <= right]
    n_bins = bins or max(10, min(80, int(math.sqrt(max(inside.size, 1))) * 2))
    width = right / n_bins
    ax.hist(
        inside,
        bins=np.linspace(0.0, right, n_bins + 1).tolist(),
        weights=np.full(inside.size, 1.0 / (p * width)),
        color="0.7",
        label=f"eigenvalues (rank {data.rank} of {p})",
    )
    _draw_fit(ax, data, right, with_error=style == "layer")
    if style == "layer":
        _mark_layer(ax, data, right)
    else:
        _mark_stage(ax, data, right, heading)
    ax.set_xlabel("eigenvalue λ = s²/N")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return ax


def plot_spectrum(
    model_or_report: nn.Module | ModelReport,
    layer: str,
    ax: Axes | None = None,
    *,
    criterion: Criterion | None = None,
    kept_rank: int | None = None,
    bins: int | None = None,
    xmax: float | None = None,
) -> Axes:
    """Histogram of a layer's eigenvalues with the fitted MP density, edge, spikes, kept rank.

    Parameters
    ----------
    model_or_report : torch.nn.Module or ModelReport
        A model with supported layers, or a report of :func:`rmtprune.analyze`
        (made in this session: reports read back from JSON hold no eigenvalues).
    layer : str
        The layer's name (as in the report).
    ax : matplotlib.axes.Axes, optional
        Where to draw; default a new figure (``ax.figure``).
    criterion : optional
        With a model: the rank criterion whose kept rank is marked (its dry run);
        an :class:`rmtprune.MPCriterion` also sets ``alpha``, ``beta`` of the fit.
    kept_rank : int, optional
        Mark this kept rank instead (for example ``prune_report[layer].rank_after``).
    bins : int, optional
        Number of histogram bins.
    xmax : float, optional
        Right end of the axis (default ``1.6 λ₊``; spikes beyond it are counted).

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on; ``ax.figure`` is the figure.
    """
    if bins is not None:
        bins = check_int(bins, "bins", "plot_spectrum", low=1)
    data = spectrum_plot_data(model_or_report, layer, criterion=criterion, kept_rank=kept_rank)
    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.0, 3.6))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
    return draw_spectrum(ax, data, bins=bins, xmax=xmax)
