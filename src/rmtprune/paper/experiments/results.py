"""What a classification run produced: per-arm, per-seed and whole-run results.

The data types of the reporting layer live here (spectra, summary rows and
:class:`ClaimVerdict`, the one verdict type of every experiment, the analysis ones
included) so that :mod:`~rmtprune.paper.experiments.classification.claims`, which computes them, and
:mod:`~rmtprune.paper.experiments.classification.plots`, which draws them, depend on this module and
not on each other.

:class:`ArmResult` holds one arm of one seed (epoch-0 evaluation, per-epoch
history and layer analyses), :class:`SeedResult` both arms and the
after-training methods, :class:`RunResult` the whole run with its summary and
claim verdicts.  Each has ``to_dict()``; ``metrics.json`` is ``RunResult``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmtprune.paper.experiments.classification.baselines import EvalPoint, PostTrainingResult
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.training import History
from rmtprune.plotting import SpectrumPlotData
from rmtprune.pruning.report import LayerAnalysis
from rmtprune.rmt.fit import FitAttributes, SpectralFit

__all__ = [
    "ArmResult",
    "ClaimVerdict",
    "RunResult",
    "SeedResult",
    "SpectrumSnapshot",
    "SummaryRow",
    "accuracy_text",
    "layer_from_dict",
    "percent",
    "summary_table",
]


_STORED_FIT = ("sigma2", "lambda_plus", "n_spikes", "fit_error")
"""What a run's ``spectra.json`` keeps of a layer's fit."""


@dataclass(frozen=True)
class SpectrumSnapshot(FitAttributes):
    """Eigenvalues of one layer at one moment, with the BEMA fit.

    ``eigenvalues`` holds the ``rank`` non-zero eigenvalues (ascending) of the
    ``m × n`` weight; the layer has ``p = min(m, n)`` in all, the others being the
    zeros left by pruning.  It is :class:`rmtprune.plotting.SpectrumPlotData` with a
    stage, stored in a run's ``spectra.json`` (:meth:`of`, :meth:`plot_data`); ``fit``
    holds the values stored (``sigma2``, ``lambda_plus``, ``n_spikes``, ``fit_error``).
    """

    stage: str
    layer: str
    shape: tuple[int, int]
    ratio: float
    rank: int
    fit: SpectralFit
    eigenvalues: tuple[float, ...]

    @classmethod
    def of(cls, stage: str, data: SpectrumPlotData) -> SpectrumSnapshot:
        """The spectrum ``data`` (its kept rank is not stored) taken at ``stage``."""
        return cls(
            stage,
            data.layer,
            data.shape,
            data.ratio,
            data.rank,
            SpectralFit(**{k: getattr(data.fit, k) for k in _STORED_FIT}),
            tuple(float(x) for x in data.eigenvalues),
        )

    def plot_data(self) -> SpectrumPlotData:
        """What :func:`rmtprune.plotting.draw_spectrum` draws of this snapshot."""
        lam = np.asarray(self.eigenvalues, dtype=np.float64)
        return SpectrumPlotData(self.layer, self.shape, self.ratio, self.rank, self.fit, lam)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN as None)."""
        out: dict[str, Any] = {"stage": self.stage, "layer": self.layer}
        out |= {"shape": list(self.shape), "ratio": self.ratio, "rank": self.rank}
        out |= {k: getattr(self.fit, k) for k in _STORED_FIT}
        out["eigenvalues"] = list(self.eigenvalues)
        for key in ("sigma2", "lambda_plus", "fit_error", "ratio"):
            if isinstance(out[key], float) and not math.isfinite(out[key]):
                out[key] = None
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SpectrumSnapshot:
        """Inverse of :meth:`to_dict`."""
        ratio = values["ratio"]
        return cls(
            values["stage"],
            values["layer"],
            tuple(values["shape"]),
            math.nan if ratio is None else float(ratio),
            values["rank"],
            SpectralFit.from_dict({k: values[k] for k in _STORED_FIT}),
            tuple(float(x) for x in values["eigenvalues"]),
        )


@dataclass(frozen=True)
class SummaryRow:
    """One line of the comparison table: a method at a stage, over seeds."""

    method: str
    stage: str
    label: str
    n_params: tuple[int, ...]
    accuracies: tuple[float, ...]
    dense_params: int

    @property
    def params_mean(self) -> float:
        """Mean parameter count over seeds."""
        return float(np.mean(self.n_params))

    @property
    def reduction(self) -> float:
        """Fraction of the dense network's parameters removed (mean count)."""
        return 1.0 - self.params_mean / self.dense_params

    @property
    def accuracy_mean(self) -> float:
        """Mean test accuracy over seeds."""
        return float(np.mean(self.accuracies))

    @property
    def accuracy_std(self) -> float:
        """Standard deviation (ddof = 1) of the test accuracy over seeds; NaN for one seed."""
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Fields and derived statistics."""
        return {
            "method": self.method,
            "stage": self.stage,
            "label": self.label,
            "n_params": list(self.n_params),
            "accuracies": list(self.accuracies),
            "dense_params": self.dense_params,
            "params_mean": self.params_mean,
            "reduction": self.reduction,
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": None if math.isnan(self.accuracy_std) else self.accuracy_std,
        }


_LABELS: Mapping[bool | None, str] = {True: "HOLDS", False: "DOES NOT HOLD", None: "INCONCLUSIVE"}


@dataclass(frozen=True)
class ClaimVerdict:
    """What an experiment says about one claim: the claim, the verdict, the numbers behind it.

    The one verdict type of every experiment.  ``key`` names the claim (for example
    ``"reduction"``), ``verdict`` is the wording of the outcome and ``explanation``
    gives the numbers.  The classification claims use graded wordings ("agrees",
    "partly agrees", ...; see :mod:`rmtprune.paper.experiments.classification.claims`); a claim
    checked as
    a yes/no question is built by :meth:`from_holds` and reads ``HOLDS``,
    ``DOES NOT HOLD`` or ``INCONCLUSIVE``.

    Examples
    --------
    >>> v = ClaimVerdict.from_holds("params", "pruning removes parameters", True, "40 % removed.")
    >>> v.verdict, v.holds
    ('HOLDS', True)
    >>> v.line()
    '- **Verdict — pruning removes parameters: HOLDS.** 40 % removed.'
    """

    key: str
    claim: str
    verdict: str
    explanation: str

    @classmethod
    def from_holds(cls, key: str, claim: str, holds: bool | None, explanation: str) -> ClaimVerdict:
        """A yes/no verdict: ``holds`` True, False or None (inconclusive)."""
        return cls(key, claim, _LABELS[None if holds is None else bool(holds)], explanation)

    @property
    def holds(self) -> bool | None:
        """True or False for the verdicts ``HOLDS`` / ``DOES NOT HOLD``; None for any other."""
        return {label: holds for holds, label in _LABELS.items()}.get(self.verdict)

    def line(self) -> str:
        """The Markdown verdict line of the analysis reports' ``report_section.md``."""
        return f"- **Verdict — {self.claim}: {self.verdict}.** {self.explanation}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def summary_table(rows: Sequence[SummaryRow]) -> str:
    """The comparison table in Markdown: method, parameters, reduction, accuracy mean ± std."""
    lines = ["| method | parameters | reduction | test accuracy |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.params_mean:,.0f} | {100 * r.reduction:.1f} % | {accuracy_text(r)} |"
        )
    return "\n".join(lines)


def percent(x: float) -> str:
    """A fraction in percent with two decimals (``"nan"`` for NaN)."""
    return "nan" if math.isnan(x) else f"{100 * x:.2f}"


def accuracy_text(row: SummaryRow) -> str:
    """Mean ± std of a row's test accuracy in percent."""
    if math.isnan(row.accuracy_std):
        return f"{percent(row.accuracy_mean)} %"
    return f"{percent(row.accuracy_mean)} ± {percent(row.accuracy_std)} %"


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def layer_from_dict(values: dict[str, Any]) -> LayerAnalysis:
    """A :class:`LayerAnalysis` from its ``to_dict()`` (``None`` → NaN)."""
    return LayerAnalysis.from_dict(values)


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
        What the numbers say about each claim of docs/method.md section 6.
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
