"""The figures of the ``theory`` experiment: the spectrum of W = S + R, the synthetic
panels (BEMA edge, distances to S, α/β sweep) and the bound of docs/method.md section 7 per network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.experiments.analysis.theory_config import (
    SweepRecord,
    SyntheticRecord,
    TheoryConfig,
)
from rmtprune.paper.experiments.analysis.theory_network import NetworkRecord
from rmtprune.rmt.marchenko_pastur import marchenko_pastur

__all__ = ["bound_figure", "by_size", "synthetic_figures"]


_QUANTITIES: Mapping[str, Any] = {
    "distance_op": lambda r: r.distance_op,
    "distance_fro": lambda r: r.distance_fro,
    "noise_op": lambda r: r.noise_op,
    "entry_rms_pruned": lambda r: r.distance_fro / math.sqrt(r.shape[0] * r.shape[1]),
    "entry_rms_noise": lambda r: r.noise_fro / math.sqrt(r.shape[0] * r.shape[1]),
    "noise_left": lambda r: r.distance_fro / r.noise_fro,
    "edge_ratio": lambda r: r.lambda_plus / r.edge,
    "edge_tw_ratio": lambda r: r.lambda_plus / r.edge_tw,
    "sigma2_ratio": lambda r: r.sigma2_hat / r.sigma2,
    "sigma2_noise_ratio": lambda r: r.sigma2_hat_noise / r.sigma2,
}


def by_size(records: Sequence[SyntheticRecord], name: str) -> tuple[np.ndarray, ...]:
    """Sizes, means and standard deviations over seeds of one of :data:`_QUANTITIES`."""
    key, sizes = _QUANTITIES[name], sorted({r.size for r in records})
    pairs = [common.mean_std([key(r) for r in records if r.size == n]) for n in sizes]
    return np.array(sizes, dtype=np.float64), *np.array(pairs, dtype=np.float64).T


def _errorbars(
    ax: Any, records: Sequence[SyntheticRecord], name: str, label: str, **kw: Any
) -> None:
    n, mean, std = by_size(records, name)
    ax.errorbar(n, mean, std, marker="o", capsize=3, label=label, **kw)


def synthetic_figures(
    folder: Path,
    config: TheoryConfig,
    records: Sequence[SyntheticRecord],
    sweep: Sequence[SweepRecord],
    slopes: Mapping[str, common.Slope],
    limits: tuple[float, float],
    spectrum: np.ndarray,
    tw_reference: float,
) -> list[str]:
    """``theory_spectrum.png`` and ``theory_synthetic.png``; ``tw_reference`` is the edge with
    the true σ² and TW margin at ``β = 0.5``, ``N = sweep_size``."""
    files = [_spectrum_figure(folder, config, records, spectrum)]
    fig = common.new_figure(3)
    edge, dist, sw = fig.axes
    _edge_panel(edge, records)
    _distance_panel(dist, records, slopes, limits)
    _sweep_panel(sw, config, sweep, tw_reference)
    files.append(common.save_figure(fig, folder / "theory_synthetic.png").name)
    return files


def _spectrum_figure(
    folder: Path, config: TheoryConfig, records: Sequence[SyntheticRecord], spectrum: np.ndarray
) -> str:
    top = next(r for r in records if r.size == max(config.sizes))
    fig = common.new_figure()
    ax = fig.axes[0]
    x = spectrum / top.sigma2
    ax.hist(x, bins=80, density=True, color="0.7", label="eigenvalues λ/σ²")
    grid = np.linspace(1e-3, x.max(), 400)
    ax.plot(grid, marchenko_pastur.pdf(grid, config.ratio), "k-", lw=1, label="MP(γ, 1)")
    ax.axvline(top.lambda_plus / top.sigma2, color="C3", label="BEMA λ̂₊")
    ax.axvline(top.edge / top.sigma2, color="C0", ls="--", label="σ²(1+√γ)²")
    for s in top.bbp_spikes:
        ax.axvline(s**2, color="C2", ls=":")
    ax.set(
        xlabel="λ/σ² (BBP locations dotted)",
        ylabel="density",
        yscale="log",
        title=f"W = S + R, {top.shape[0]}×{top.shape[1]}",
    )
    ax.legend(fontsize=7)
    return common.save_figure(fig, folder / "theory_spectrum.png").name


def _edge_panel(edge: Any, records: Sequence[SyntheticRecord]) -> None:
    _errorbars(edge, records, "edge_ratio", "λ̂₊ / σ²(1+√γ)²")
    _errorbars(edge, records, "edge_tw_ratio", "λ̂₊ / edge with TW margin")
    _errorbars(edge, records, "sigma2_noise_ratio", "σ̂²/σ² on R alone")
    edge.axhline(1.0, color="k", lw=0.8)
    edge.set(xscale="log", xlabel="N", ylabel="ratio", title="BEMA edge")
    edge.legend(fontsize=7)


def _distance_panel(
    dist: Any,
    records: Sequence[SyntheticRecord],
    slopes: Mapping[str, common.Slope],
    limits: tuple[float, float],
) -> None:
    for name, label in (
        ("distance_op", "‖W′−S‖_op"),
        ("noise_op", "‖W−S‖_op = ‖R‖_op"),
        ("entry_rms_pruned", "‖W′−S‖_F/√(mn)"),
        ("entry_rms_noise", "‖R‖_F/√(mn)"),
    ):
        slope = f" (slope {slopes[name].slope:.2f})" if name in slopes else ""
        _errorbars(dist, records, name, label + slope)
    dist.axhline(limits[0], color="C0", ls=":", label="BBP limit of ‖W′−S‖_op")
    dist.set(
        xscale="log",
        yscale="log",
        xlabel="N",
        ylabel="distance to S",
        title="pruned W′ and unpruned W",
    )
    dist.legend(fontsize=7)


def _sweep_panel(
    sw: Any, config: TheoryConfig, sweep: Sequence[SweepRecord], tw_reference: float
) -> None:
    for parameter, style in (("alpha", "o-"), ("beta", "s-")):
        rows = [r for r in sweep if r.parameter == parameter]
        fixed = "β = 0.5" if parameter == "alpha" else "α = 0.25"
        sw.errorbar(
            [r.value for r in rows],
            [r.lambda_plus_mean / r.edge for r in rows],
            [r.lambda_plus_std / r.edge for r in rows],
            fmt=style,
            capsize=3,
            label=f"λ̂₊ vs {parameter} ({fixed})",
        )
    rows = [r for r in sweep if r.parameter == "beta"]
    sw.plot(
        [r.value for r in rows],
        [r.edge_tw / r.edge for r in rows],
        "k--",
        label="true σ² with TW margin (vs β)",
    )
    alpha_rows = [r for r in sweep if r.parameter == "alpha"]
    if alpha_rows:
        sw.axhline(
            tw_reference / alpha_rows[0].edge,
            color="C0",
            ls=":",
            label="true σ² with TW margin at β = 0.5",
        )
    sw.set(xlabel="alpha or beta", ylabel="λ̂₊ / σ²(1+√γ)²", title=f"N = {config.sweep_size}")
    sw.legend(fontsize=7)


def bound_figure(folder: Path, net: NetworkRecord) -> str:
    """``theory_bound_<activation>_N<width>.png``: change against τ(s), margins against 2τ(s)."""
    c = net.samples
    fig = common.new_figure(3)
    a, b, d = fig.axes
    a.hist(np.log10(c.change / c.tau), bins=50, color="C0")
    a.axvline(0.0, color="C3", label="change = τ")
    a.set(xlabel="log10(change / τ)", ylabel="samples", title="‖X(S₂) − X(W₂)‖_∞ / τ(s)")
    a.legend(fontsize=8)
    b.scatter(c.tau, c.change, s=3, alpha=0.4)
    lim = np.array([c.tau.min(), c.tau.max()])
    b.plot(lim, lim, "C3-", label="change = τ")
    b.set(xscale="log", yscale="log", xlabel="τ(s)", ylabel="change", title="change vs bound")
    b.legend(fontsize=8)
    band = np.abs(c.margin) / (2 * c.tau)
    bins = np.logspace(np.log10(max(band.min(), 1e-6)), np.log10(max(band.max(), 1.5)), 50)
    d.hist(band, bins=bins.tolist(), color="0.6", label="all samples")
    d.hist(band[c.flipped], bins=bins.tolist(), color="C3", label="flipped by R₂")
    d.axvline(1.0, color="k", ls="--", label="|δX| = 2τ")
    d.set(
        xscale="log",
        xlabel="|δX(s)| / 2τ(s)  (δX with S₂)",
        ylabel="samples",
        title="margins against the ±2τ band",
    )
    d.legend(fontsize=8)
    fig.suptitle(f"{net.activation}, N = {net.width}: first draw of R₂")
    return common.save_figure(fig, folder / f"theory_bound_{net.activation}_N{net.width}.png").name
