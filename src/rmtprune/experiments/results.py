"""What a classification run produced: per-arm, per-seed and whole-run results.

:class:`ArmResult` holds one arm of one seed (epoch-0 evaluation, per-epoch
history and layer analyses), :class:`SeedResult` both arms and the
after-training methods, :class:`RunResult` the whole run with its summary and
claim verdicts.  Each has ``to_dict()``; ``metrics.json`` is ``RunResult``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmtprune.experiments.baselines import EvalPoint, PostTrainingResult
from rmtprune.experiments.claims import ClaimVerdict, SummaryRow, summary_table
from rmtprune.experiments.config import ExperimentConfig
from rmtprune.experiments.plots import SpectrumSnapshot
from rmtprune.pruning.report import LayerAnalysis
from rmtprune.training import History

__all__ = ["ArmResult", "RunResult", "SeedResult", "layer_from_dict"]


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def layer_from_dict(values: dict[str, Any]) -> LayerAnalysis:
    """A :class:`LayerAnalysis` from its ``to_dict()`` (``None`` → NaN)."""
    v = dict(values)
    v["shape"] = tuple(v["shape"])
    for key in ("ratio", "sigma2", "lambda_plus", "threshold", "fit_error"):
        v[key] = float("nan") if v[key] is None else float(v[key])
    return LayerAnalysis(**v)


@dataclass(frozen=True)
class ArmResult:
    """One arm of one seed: epoch-0 evaluation, per-epoch history and layer analyses.

    ``layers[e]`` is the analysis of the large layers after epoch ``e`` (``e = 0``:
    at initialisation).
    """

    seed: int
    arm: str
    initial: EvalPoint
    initial_weights_sha256: str
    history: History
    layers: tuple[tuple[LayerAnalysis, ...], ...]

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last epoch."""
        return self.history[-1].test_accuracy if self.history else self.initial.test_accuracy

    @property
    def final_params(self) -> int:
        """Parameter count after the last epoch."""
        return self.history[-1].n_params if self.history else self.initial.n_params

    def accuracy_curve(self) -> list[float]:
        """Test accuracy at epochs 0, 1, …"""
        return [self.initial.test_accuracy, *self.history.column("test_accuracy")]

    def params_curve(self) -> list[int]:
        """Parameter count at epochs 0, 1, …"""
        return [self.initial.n_params, *self.history.column("n_params")]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "seed": self.seed,
            "arm": self.arm,
            "initial": self.initial.to_dict(),
            "initial_weights_sha256": self.initial_weights_sha256,
            "history": self.history.to_dict(),
            "layers": [[r.to_dict() for r in epoch] for epoch in self.layers],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ArmResult:
        """Inverse of :meth:`to_dict` (as read back from JSON: ``None`` → NaN where numeric)."""
        initial = values["initial"]
        return cls(
            seed=int(values["seed"]),
            arm=str(values["arm"]),
            initial=EvalPoint(
                int(initial["n_params"]),
                _float(initial["test_loss"]),
                _float(initial["test_accuracy"]),
            ),
            initial_weights_sha256=str(values["initial_weights_sha256"]),
            history=History.from_dict(values["history"]),
            layers=tuple(tuple(layer_from_dict(r) for r in epoch) for epoch in values["layers"]),
        )


@dataclass(frozen=True)
class SeedResult:
    """Both arms of one seed and the after-training methods."""

    seed: int
    normal: ArmResult
    pruned: ArmResult
    after_training: tuple[PostTrainingResult, ...]
    spectra: tuple[SpectrumSnapshot, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (spectra are in ``seed-*/spectra.json``)."""
        return {
            "seed": self.seed,
            "normal": self.normal.to_dict(),
            "pruned": self.pruned.to_dict(),
            "after_training": [r.to_dict() for r in self.after_training],
        }

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], spectra: tuple[SpectrumSnapshot, ...] = ()
    ) -> SeedResult:
        """Inverse of :meth:`to_dict`; ``spectra`` come from ``seed-*/spectra.json``."""
        return cls(
            seed=int(values["seed"]),
            normal=ArmResult.from_dict(values["normal"]),
            pruned=ArmResult.from_dict(values["pruned"]),
            after_training=tuple(PostTrainingResult.from_dict(v) for v in values["after_training"]),
            spectra=spectra,
        )


@dataclass(frozen=True)
class RunResult:
    """Everything a run produced.

    Attributes
    ----------
    run_dir : pathlib.Path
        The run directory.
    config : ExperimentConfig
        Resolved configuration.
    seeds : tuple of SeedResult
        Per-seed, per-arm histories and after-training results.
    summary : tuple of SummaryRow
        Comparison table (dense, pruned, each method before/after fine-tuning).
    claims : tuple of ClaimVerdict
        What the numbers say about each claim of SPEC section 6.
    figures : tuple of pathlib.Path
        PNG files written.
    wall_time : float
        Seconds spent by this call.
    """

    run_dir: Path
    config: ExperimentConfig
    seeds: tuple[SeedResult, ...]
    summary: tuple[SummaryRow, ...]
    claims: tuple[ClaimVerdict, ...]
    figures: tuple[Path, ...]
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (what ``metrics.json`` holds, plus paths and time)."""
        return {
            "run_dir": str(self.run_dir),
            "config": self.config.to_dict(),
            "seeds": [s.to_dict() for s in self.seeds],
            "summary": [r.to_dict() for r in self.summary],
            "claims": [c.to_dict() for c in self.claims],
            "figures": [str(p) for p in self.figures],
            "wall_time": self.wall_time,
        }

    def table(self) -> str:
        """The comparison table as Markdown (what the demo prints)."""
        return summary_table(self.summary)
