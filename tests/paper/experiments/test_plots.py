"""The experiments' spectrum figures and rmtprune.plot_spectrum draw the same spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from torch import nn

import rmtprune
from rmtprune.paper.experiments.classification.plots import spectra_figure, spectrum_snapshots
from rmtprune.paper.experiments.results import SpectrumSnapshot


def _model() -> nn.Sequential:
    """A 150 × 300 noise layer (λ₊ ≈ 0.01) with two spikes (λ ≈ 0.02, 0.08) beyond 1.6 λ₊."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(150, 300, generator=g, dtype=torch.float64) / 300**0.5
    u, _ = torch.linalg.qr(torch.randn(150, 2, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(300, 2, generator=g, dtype=torch.float64))
    w += u @ torch.diag(torch.tensor([2.5, 5.0], dtype=torch.float64)) @ v.T
    layer = nn.Linear(300, 150, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
    return nn.Sequential(layer)


def _truncated(model: nn.Sequential, rank: int) -> nn.Sequential:
    out = _model()
    w = model[0].weight.detach()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    with torch.no_grad():
        out[0].weight.copy_((u[:, :rank] * s[:rank]) @ vh[:rank])
    return out


def _bars(ax: Axes) -> np.ndarray:
    return np.array([(p.get_x(), p.get_width(), p.get_height()) for p in ax.patches])


def _mp_curve(ax: Axes) -> np.ndarray:
    (line,) = [ln for ln in ax.lines if ln.get_color() == "tab:red" and len(ln.get_xdata()) == 400]
    return np.asarray(line.get_xydata())


def _edge(ax: Axes) -> float:
    (line,) = [ln for ln in ax.lines if ln.get_color() == "k" and ln.get_linestyle() == "--"]
    return float(line.get_xdata()[0])


@pytest.mark.parametrize("rank", [None, 40])
def test_run_figure_and_plot_spectrum_draw_the_same_spectrum(rank: int | None) -> None:
    model = _model() if rank is None else _truncated(_model(), rank)
    ranks = None if rank is None else {"0": rank}
    (snap,) = spectrum_snapshots(model, "pruned-final", ["0"], ranks=ranks)
    panel = spectra_figure([snap], title="t").axes[0]
    report = rmtprune.analyze(model, ranks=ranks, select=rmtprune.Select(min_dim=1))
    ax = rmtprune.plot_spectrum(report, "0")
    data = rmtprune.plotting.spectrum_plot_data(report, "0")
    np.testing.assert_array_equal(np.asarray(snap.eigenvalues), data.eigenvalues)
    assert len(data.eigenvalues) == (rank or 150)
    assert len(ax.patches) > 0
    np.testing.assert_array_equal(_bars(panel), _bars(ax))
    np.testing.assert_array_equal(_mp_curve(panel), _mp_curve(ax))
    assert _edge(panel) == _edge(ax) == report["0"].lambda_plus
    right = 1.6 * report["0"].lambda_plus
    assert ax.get_xlim() == (0.0, right)
    labels = [t.get_text() for t in panel.get_legend().get_texts()]
    assert labels[0] == f"eigenvalues (rank {rank or 150} of 150)"
    assert np.count_nonzero(data.eigenvalues > right) == 2
    assert f"2 eigenvalue(s) > {right:.3g} not shown" in labels  # the two spikes
    if rank is not None:  # the kept eigenvalues of a pruned layer are marked one by one
        (ticks,) = [ln for ln in panel.lines if ln.get_label() == "kept eigenvalues"]
        lam = data.eigenvalues
        np.testing.assert_array_equal(ticks.get_xdata(), lam[lam <= right])


def test_a_snapshot_round_trips_through_its_plot_data() -> None:
    (snap,) = spectrum_snapshots(_model(), "init", ["0"])
    again = SpectrumSnapshot.of("init", snap.plot_data())
    assert again == snap
    assert SpectrumSnapshot.from_dict(snap.to_dict()) == snap
    assert snap.plot_data().kept_rank is None
    row = rmtprune.analyze(_model())["0"]
    assert (snap.sigma2, snap.lambda_plus, snap.n_spikes) == (row.sigma2, row.lambda_plus, 2)
    assert snap.fit.mp_like is None and row.mp_like  # spectra.json keeps the values, no verdict
    assert list(snap.to_dict()) == [
        *("stage", "layer", "shape", "ratio", "rank"),
        *("sigma2", "lambda_plus", "n_spikes", "fit_error", "eigenvalues"),
    ]
