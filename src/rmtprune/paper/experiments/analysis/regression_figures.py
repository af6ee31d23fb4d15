"""The figures of the ``regression`` experiment: per-epoch curves and the fitted functions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.experiments.analysis.regression_config import RegressionConfig, RunRecord

__all__ = ["draw_figures"]


def draw_figures(
    folder: Path, config: RegressionConfig, runs: Sequence[RunRecord], data: Any
) -> list[str]:
    """Draw ``regression_curves.png`` and ``regression_fit.png``; return their names."""
    epochs = np.arange(1, config.epochs + 1)
    fig = common.new_figure(3)
    for ax, key, label in zip(
        fig.axes,
        ("train_mse", "test_mse", "n_params"),
        (
            "training MSE (noisy points), geometric mean ×/÷ std",
            "test MSE (clean f), geometric mean ×/÷ std",
            "parameters, mean ± std",
        ),
        strict=True,
    ):
        for arm, color in (("normal", "C0"), ("pruned", "C3")):
            values = np.array([getattr(r, key) for r in runs if r.arm == arm], dtype=np.float64)
            if key == "n_params":  # mean ± std
                mean, std = values.mean(axis=0), values.std(axis=0)
                low, high = mean - std, mean + std
            else:  # geometric mean ×/÷ geometric std (the axis is logarithmic)
                logs = np.log(values)
                mean, std = np.exp(logs.mean(axis=0)), np.exp(logs.std(axis=0))
                low, high = mean / std, mean * std
            ax.plot(epochs, mean, color=color, label=arm)
            ax.fill_between(epochs, low, high, color=color, alpha=0.2)
        if key == "train_mse":
            ax.axhline(config.noise**2, color="k", lw=0.6, label="noise variance")
        if key != "n_params":
            ax.set_yscale("log")
        ax.set(xlabel="epoch", title=label)
        ax.legend(fontsize=8)
    files = [common.save_figure(fig, folder / "regression_curves.png").name]

    (x, y), (grid, clean) = data
    fig = common.new_figure(size=(7.0, 4.2))
    ax = fig.axes[0]
    ax.scatter(x.reshape(-1), y, s=6, color="0.5", label="training data")
    ax.plot(grid.reshape(-1), clean, "k-", lw=1.5, label="f(x)")
    for arm, color in (("normal", "C0"), ("pruned", "C3")):
        for i, r in enumerate(r for r in runs if r.arm == arm):
            ax.plot(
                grid.reshape(-1),
                r.prediction,
                color=color,
                lw=1.0,
                alpha=0.8 if i else 1.0,
                label=arm if i == 0 else None,
            )
    ax.set(xlabel="x", ylabel="y", title="fitted functions, all seeds")
    ax.legend(fontsize=8)
    files.append(common.save_figure(fig, folder / "regression_fit.png").name)
    return files
