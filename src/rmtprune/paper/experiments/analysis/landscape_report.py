"""Records, summary, verdicts, figures and Markdown section of the ``landscape`` experiment.

The result types of :mod:`rmtprune.paper.experiments.analysis.landscape` (re-exported there:
:class:`SolutionRecord`, :class:`LineRecord`, :class:`SurfaceRecord`,
:class:`LandscapeResult`) and everything that turns them into files without measuring
anything new: the per-arm summary over seeds (:func:`summarize`), the verdict lines, the
PNG figures, the CSV tables and the text of ``report_section.md``.

Example
-------
>>> from types import SimpleNamespace as R
>>> from rmtprune.paper.experiments.analysis.landscape_report import summarize
>>> sols = [R(arm=a, test_loss=x, test_accuracy=1 - x, n_params=9) for a in ("normal", "pruned")
...         for x in (0.4, 0.6)]
>>> lines = [R(arm=a, barrier=0.1, barrier_max=0.0) for a in ("normal", "pruned")]
>>> surfs = [R(arm=a, sharpness=0.5, convexity=1.0) for a in ("normal", "pruned")]
>>> round(summarize(sols, lines, surfs)["pruned"]["test_loss_range"], 6)
0.2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.experiments.analysis.landscape_config import LandscapeConfig
from rmtprune.paper.experiments.results import ClaimVerdict

__all__ = [
    "ARMS",
    "LandscapeResult",
    "LineRecord",
    "SolutionRecord",
    "SurfaceRecord",
    "make_verdicts",
    "summarize",
    "write_outputs",
]

ARMS = ("normal", "pruned")
"""The two arms, in the order of every loop, table and figure."""


# ----------------------------------------------------------------------------- records


def _nan(value: Any) -> Any:
    """A value read back from strict JSON: ``None`` → NaN, lists → tuples (element-wise)."""
    if isinstance(value, list):
        return tuple(_nan(v) for v in value)
    return math.nan if value is None else value


@dataclass(frozen=True)
class SolutionRecord:
    """One trained network: its final test metrics and its loss on the evaluation subset."""

    arm: str
    seed: int
    test_loss: float
    test_accuracy: float
    eval_loss: float
    n_params: int

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SolutionRecord:
        """Inverse of :meth:`to_dict` (as read back from JSON: ``None`` → NaN)."""
        return cls(**{k: _nan(v) for k, v in values.items()})


@dataclass(frozen=True)
class LineRecord:
    """The loss along the straight line between the solutions of two seeds of one arm."""

    arm: str
    seed_a: int
    seed_b: int
    t: tuple[float, ...]
    losses: tuple[float, ...]
    barrier: float
    barrier_max: float

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LineRecord:
        """Inverse of :meth:`to_dict` (as read back from JSON: ``None`` → NaN)."""
        return cls(**{k: _nan(v) for k, v in values.items()})


@dataclass(frozen=True)
class SurfaceRecord:
    """The loss on a lattice around one solution; ``losses[i, j]`` at ``(coords[i], coords[j])``."""

    arm: str
    seed: int
    coords: tuple[float, ...]
    center_loss: float
    sharpness: float
    convexity: float
    losses: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields (the lattice as nested lists)."""
        out = asdict(self)
        out["losses"] = self.losses.tolist()
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SurfaceRecord:
        """Inverse of :meth:`to_dict` (as read back from JSON: ``None`` → NaN)."""
        v = {k: _nan(x) for k, x in values.items() if k != "losses"}
        return cls(**v, losses=np.array(values["losses"], dtype=np.float64))


@dataclass(frozen=True)
class LandscapeResult:
    """Everything the landscape experiment measured (see ``landscape.run``).

    ``summary[arm]`` holds the spread over seeds (``test_loss_std``, ``test_loss_range``,
    ``test_accuracy_std``, ``test_accuracy_range``), the means of ``barrier``,
    ``barrier_max``, ``sharpness`` and ``convexity``, and the mean final parameter count.
    """

    preset: str
    config: LandscapeConfig
    solutions: tuple[SolutionRecord, ...]
    lines: tuple[LineRecord, ...]
    surfaces: tuple[SurfaceRecord, ...]
    summary: Mapping[str, Mapping[str, float]]
    accuracy: common.PairedComparison
    verdicts: tuple[ClaimVerdict, ...]
    files: tuple[str, ...]
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly ``dict`` (the content of ``metrics.json``)."""
        return {
            "experiment": "landscape",
            "preset": self.preset,
            "summary": {k: dict(v) for k, v in self.summary.items()},
            "accuracy": self.accuracy.to_dict(),
            "solutions": [s.to_dict() for s in self.solutions],
            "lines": [r.to_dict() for r in self.lines],
            "surfaces": [s.to_dict() for s in self.surfaces],
            "verdicts": [v.to_dict() for v in self.verdicts],
            "files": list(self.files),
            "wall_time": self.wall_time,
        }


# ----------------------------------------------------------------------------- summary, files


def summarize(
    solutions: Sequence[SolutionRecord],
    lines: Sequence[LineRecord],
    surfaces: Sequence[SurfaceRecord],
) -> dict[str, dict[str, float]]:
    """Per arm: spread over seeds, mean barrier, sharpness, convexity and parameter count."""
    out: dict[str, dict[str, float]] = {}
    for arm in ARMS:
        sol = [s for s in solutions if s.arm == arm]
        row: dict[str, float] = {}
        for key in ("test_loss", "test_accuracy"):
            values = np.array([getattr(s, key) for s in sol])
            row[f"{key}_mean"], row[f"{key}_std"] = common.mean_std(values)
            row[f"{key}_range"] = float(values.max() - values.min())
        for key in ("barrier", "barrier_max"):
            row[key] = float(np.mean([getattr(r, key) for r in lines if r.arm == arm]))
        for key in ("sharpness", "convexity"):
            row[key] = float(np.mean([getattr(s, key) for s in surfaces if s.arm == arm]))
        row["n_params"] = float(np.mean([s.n_params for s in sol]))
        out[arm] = row
    return out


def make_verdicts(summary: Mapping[str, Mapping[str, float]], n_seeds: int) -> list[ClaimVerdict]:
    """Spread, barrier and basin verdicts, and the overall "simpler landscape" verdict."""
    n, p = summary["normal"], summary["pruned"]

    def lower(key: str) -> bool:
        return p[key] < n[key]

    spread = [lower("test_accuracy_std"), lower("test_loss_std")]
    checks = [
        ClaimVerdict.from_holds(
            "spread",
            "pruning lowers the seed-to-seed variance",
            spread[0] if spread[0] == spread[1] else None,
            f"Std of test accuracy over {n_seeds} seeds: normal {n['test_accuracy_std']:.4f}, "
            f"pruned {p['test_accuracy_std']:.4f} (ranges {n['test_accuracy_range']:.4f} / "
            f"{p['test_accuracy_range']:.4f}); std of test loss {n['test_loss_std']:.4f} / "
            f"{p['test_loss_std']:.4f}. Few seeds: a standard deviation from {n_seeds} values "
            "is itself uncertain by about 1/sqrt(2(n−1)) relative.",
        ),
        ClaimVerdict.from_holds(
            "barrier",
            "pruning lowers the loss barrier between seeds",
            lower("barrier"),
            f"Mean barrier above the chord: normal {n['barrier']:.4f}, pruned "
            f"{p['barrier']:.4f}; above the higher endpoint: {n['barrier_max']:.4f} / "
            f"{p['barrier_max']:.4f}.",
        ),
        ClaimVerdict.from_holds(
            "basins",
            "pruning gives flatter, more convex basins",
            lower("sharpness")
            if lower("sharpness") == (p["convexity"] >= n["convexity"])
            else None,
            f"Mean loss increase over the filter-normalised lattice: normal "
            f"{n['sharpness']:.4f}, pruned {p['sharpness']:.4f}; convex fraction "
            f"{n['convexity']:.3f} / {p['convexity']:.3f}.",
        ),
    ]
    simpler = sum(v.holds is True for v in checks)
    worse = sum(v.holds is False for v in checks)
    checks.append(
        ClaimVerdict.from_holds(
            "simpler",
            "the pruned networks' landscape is simpler by these measures",
            True if simpler >= 2 else False if worse >= 2 else None,
            f"{simpler} of the 3 measures favour the pruned networks, {worse} the normal ones "
            "(a measure with mixed signs counts for neither).",
        )
    )
    return checks


def _figures(
    folder: Path,
    lines: Sequence[LineRecord],
    surfaces: Sequence[SurfaceRecord],
    solutions: Sequence[SolutionRecord],
) -> list[str]:
    """``landscape_interpolation.png`` and one ``landscape_contour_<arm>_seed<seed>.png`` per
    surface (shared contour levels); returns the file names."""
    fig = common.new_figure(2)
    ax, spread = fig.axes
    for r in lines:
        color = "C0" if r.arm == "normal" else "C3"
        ax.plot(r.t, r.losses, color=color, alpha=0.8, label=f"{r.arm} {r.seed_a}–{r.seed_b}")
    ax.set(xlabel="t", ylabel="NLL on the evaluation subset", title="(1−t)·θ_a + t·θ_b")
    ax.legend(fontsize=6)
    for i, arm in enumerate(ARMS):
        acc = [s.test_accuracy for s in solutions if s.arm == arm]
        spread.scatter(np.full(len(acc), i), acc, color="C0" if arm == "normal" else "C3")
    spread.set(
        xticks=[0, 1],
        xticklabels=list(ARMS),
        xlim=(-0.5, 1.5),
        ylabel="test accuracy",
        title="final accuracy of each seed",
    )
    files = [common.save_figure(fig, folder / "landscape_interpolation.png").name]
    levels = None
    for s in surfaces:
        if levels is None:
            top = max(float(np.quantile(r.losses, 0.95)) for r in surfaces)
            bottom = min(r.center_loss for r in surfaces)
            levels = np.linspace(bottom, top, 16)
        fig = common.new_figure(size=(5.0, 4.4))
        ax = fig.axes[0]
        c = np.asarray(s.coords)
        contour = ax.contourf(c, c, s.losses.T, levels=levels, extend="max", cmap="viridis")
        ax.contour(c, c, s.losses.T, levels=levels, colors="k", linewidths=0.3)
        ax.plot([0], [0], "r+", ms=10)
        fig.colorbar(contour, ax=ax, label="NLL")
        ax.set(
            xlabel="direction 1",
            ylabel="direction 2",
            title=f"{s.arm}, seed {s.seed}: sharpness {s.sharpness:.3f}",
        )
        files.append(
            common.save_figure(fig, folder / f"landscape_contour_{s.arm}_seed{s.seed}.png").name
        )
    return files


def _report_section(
    config: LandscapeConfig,
    summary: Mapping[str, Mapping[str, float]],
    accuracy: common.PairedComparison,
    verdicts: Sequence[ClaimVerdict],
    figures: Sequence[str],
) -> str:
    """The Markdown text of ``report_section.md``."""
    keys = (
        "test_accuracy_mean",
        "test_accuracy_std",
        "test_accuracy_range",
        "test_loss_std",
        "barrier",
        "barrier_max",
        "sharpness",
        "convexity",
        "n_params",
    )
    return "\n".join(
        [
            "## landscape",
            "",
            f"FullyConnected {list(config.widths)} on Fashion-MNIST ({config.n_train or 60000} "
            f"training images, {config.epochs} epochs, {config.seeds} seeds per arm; pruned arm: "
            f"SpectralPruner every {config.every} epoch(s), Linear(T = "
            f"{config.schedule_epochs:g}), min_rank {config.min_rank}). Landscape measures in the "
            f"space of dense weight matrices, NLL on {config.n_eval} fixed test images; lines with "
            f"{config.line_points} points; surfaces on a {config.grid}×{config.grid} lattice of "
            f"[−{config.radius:g}, {config.radius:g}]² along two filter-normalised directions "
            f"(biases 0), {min(config.surface_seeds, config.seeds)} seed(s) per arm. Barrier = "
            "max_t [L(t) − ((1−t)L(0) + tL(1))]; barrier_max = max_t L(t) − max(L(0), L(1)); "
            "sharpness = mean of L − L(θ) over the lattice; convexity = fraction of interior "
            "lattice points with both second differences ≥ 0.",
            "",
            common.markdown_table(
                ["arm", *keys], [[arm, *(summary[arm][k] for k in keys)] for arm in ARMS]
            ),
            "",
            f"Paired test accuracy (pruned − normal): {accuracy.mean:+.4f} ± "
            f"{accuracy.std:.4f}, pruned higher on {config.seeds - accuracy.losses}"
            f"/{config.seeds} seeds (ties count as higher), p = {accuracy.p_value:.3g}.",
            "",
            " ".join(f"![{f}]({f})" for f in figures),
            "",
            *(v.line() for v in verdicts),
            "",
        ]
    )


def write_outputs(
    folder: Path,
    config: LandscapeConfig,
    solutions: Sequence[SolutionRecord],
    lines: Sequence[LineRecord],
    surfaces: Sequence[SurfaceRecord],
    summary: Mapping[str, Mapping[str, float]],
    accuracy: common.PairedComparison,
    verdicts: Sequence[ClaimVerdict],
) -> tuple[str, ...]:
    """Write the CSV tables, the figures and ``report_section.md``.

    Returns the names of the files written, in the order of ``LandscapeResult.files``.
    """
    common.write_csv(folder / "solutions.csv", [s.to_dict() for s in solutions])
    common.write_csv(
        folder / "lines.csv",
        [
            {"arm": r.arm, "seed_a": r.seed_a, "seed_b": r.seed_b, "t": t, "loss": loss}
            for r in lines
            for t, loss in zip(r.t, r.losses, strict=True)
        ],
    )
    common.write_csv(
        folder / "surfaces.csv",
        [
            {"arm": s.arm, "seed": s.seed, "a": a, "b": b, "loss": s.losses[i, j]}
            for s in surfaces
            for i, a in enumerate(s.coords)
            for j, b in enumerate(s.coords)
        ],
    )
    figures = _figures(folder, lines, surfaces, solutions)
    text = _report_section(config, summary, accuracy, verdicts, figures)
    (folder / "report_section.md").write_text(text)
    return ("solutions.csv", "lines.csv", "surfaces.csv", *figures, "report_section.md")
