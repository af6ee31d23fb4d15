"""plot_spectrum draws what the fit says: histogram area, MP density, edge, spikes, kept rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import rmtprune
from rmtprune.rmt.marchenko_pastur import marchenko_pastur


def _model() -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(150, 300, generator=g, dtype=torch.float64) / 300**0.5
    u, _ = torch.linalg.qr(torch.randn(150, 2, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(300, 2, generator=g, dtype=torch.float64))
    w += u @ torch.diag(torch.tensor([3.0, 5.0], dtype=torch.float64)) @ v.T  # two spikes
    layer = nn.Linear(300, 150, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
    return nn.Sequential(layer)


def _histogram_area(ax) -> float:  # type: ignore[no-untyped-def]
    return float(sum(p.get_width() * p.get_height() for p in ax.patches))


def test_plot_from_a_model_matches_the_fit() -> None:
    model = _model()
    row = rmtprune.analyze(model)["0"]
    ax = rmtprune.plot_spectrum(model, "0", criterion=rmtprune.MPCriterion(bulk_keep=0.5))
    assert isinstance(ax.figure, Figure)
    lam = np.sort(torch.linalg.svdvals(model[0].weight.detach()).numpy() ** 2 / 300)
    right = 1.6 * row.lambda_plus
    # bars are a density over all p eigenvalues: their area is the share shown
    assert _histogram_area(ax) == pytest.approx(np.count_nonzero(lam <= right) / 150, rel=1e-9)
    curve = ax.lines[0]
    x, y = curve.get_data()
    np.testing.assert_allclose(y, marchenko_pastur.pdf(x, 0.5, scale=row.sigma2), rtol=1e-12)
    edge = ax.lines[1]
    assert edge.get_xdata()[0] == pytest.approx(row.lambda_plus)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert row.n_spikes == 2 and any(label.startswith("2 spike(s)") for label in labels)
    kept = 2 + (150 - 2) // 2  # spikes + half of the bulk
    assert f"kept rank {kept}" in labels
    kept_line = [ln for ln in ax.lines if ln.get_color() == "tab:green" and len(ln.get_xdata())]
    assert kept_line[0].get_xdata()[0] == pytest.approx(lam[150 - kept], rel=1e-9)


def test_plot_from_a_report_and_errors() -> None:
    model = _model()
    report = rmtprune.analyze(model)
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    out = rmtprune.plot_spectrum(report, "0", ax, kept_rank=7, xmax=2.0)
    assert out is ax and ax.get_xlim() == (0.0, 2.0)
    assert "kept rank 7" in [t.get_text() for t in ax.get_legend().get_texts()]
    restored = rmtprune.ModelReport(
        tuple(rmtprune.LayerAnalysis.from_dict(r.to_dict()) for r in report),
        report.alpha,
        report.beta,
        report.fit_cutoff,
    )
    assert restored["0"] == report["0"] and restored["0"].eigenvalues is None
    with pytest.raises(ValueError, match="holds no eigenvalues"):
        rmtprune.plot_spectrum(restored, "0")
    with pytest.raises(ValueError, match="needs a model, not a report"):
        rmtprune.plot_spectrum(report, "0", criterion=rmtprune.Energy())
    with pytest.raises(TypeError, match="'model_or_report' parameter of plot_spectrum"):
        rmtprune.plot_spectrum(np.eye(3), "0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="matches no weight layer"):
        rmtprune.plot_spectrum(model, "1")
