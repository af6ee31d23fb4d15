"""The initialisation experiment (paper, appendix E.2): normal vs pruned under four schemes.

Each scheme — ``normal`` N(0, 1/n), ``normal_n2`` N(0, 1/n²), ``xavier``, ``kaiming`` —
is a full classification run of the Fashion-MNIST fully connected protocol
(:func:`rmtprune.paper.experiments.run_experiment`, both arms from identical weights per
seed, baselines included) in its own sub-directory.  This module adds the comparison
across schemes: mean ± std of both arms, the paired difference, and how many spikes
each initialisation has at the start (epoch 0, before any training).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rmtprune.paper.experiments.analysis.common import AnalysisContext, run_analysis
from rmtprune.paper.experiments.classification.experiments import get_config
from rmtprune.paper.experiments.classification.run import run_experiment
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.results import ClaimVerdict, RunResult
from rmtprune.paper.experiments.stats import paired_comparison

__all__ = ["PRESET_CHANGES", "SCHEMES", "InitResult", "SchemeRow", "run"]

SCHEMES = ("normal", "normal_n2", "xavier", "kaiming")

PRESET_CHANGES: dict[str, dict[str, Any]] = {  # on top of get_config("fc-fashion", preset)
    "smoke": {},
    # four schemes × three seeds must fit in minutes: a narrower network on a training subset
    "small": {
        "hidden": (500, 500),
        "epochs": 6,
        "train_subset": 10000,
        "test_subset": 5000,
        "finetune_epochs": 1,
    },
    "paper": {},
}


@dataclass(frozen=True)
class SchemeRow:
    """One initialisation: accuracies of both arms over seeds and spikes at the start."""

    scheme: str
    normal_mean: float
    normal_std: float
    pruned_mean: float
    pruned_std: float
    difference: float
    p_value: float
    pruned_wins: int
    n_seeds: int
    reduction: float
    spikes_at_start: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class InitResult:
    """Rows per scheme, the per-scheme run directories and the verdicts."""

    rows: tuple[SchemeRow, ...]
    runs: tuple[Path, ...]
    verdicts: tuple[ClaimVerdict, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary."""
        return {
            "rows": [r.to_dict() for r in self.rows],
            "runs": [str(p) for p in self.runs],
            "verdicts": [v.to_dict() for v in self.verdicts],
        }


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def _row(scheme: str, result: RunResult) -> SchemeRow:
    normal = [s.normal.final_accuracy for s in result.seeds]
    pruned = [s.pruned.final_accuracy for s in result.seeds]
    paired = paired_comparison(pruned, normal)
    spikes = [
        sum(r.n_spikes or 0 for r in s.normal.layers[0]) if s.normal.layers else 0
        for s in result.seeds
    ]
    reduction = statistics.mean(
        1 - s.pruned.final_params / s.normal.final_params for s in result.seeds
    )
    return SchemeRow(
        scheme=scheme,
        normal_mean=statistics.mean(normal),
        normal_std=_std(normal),
        pruned_mean=statistics.mean(pruned),
        pruned_std=_std(pruned),
        difference=paired.mean,
        p_value=paired.p_value,
        pruned_wins=paired.wins,
        n_seeds=len(normal),
        reduction=reduction,
        spikes_at_start=statistics.mean(spikes),
    )


def _verdicts(rows: tuple[SchemeRow, ...]) -> tuple[ClaimVerdict, ...]:
    """Per scheme: does pruning raise the mean test accuracy (inconclusive unless p < 0.05)?"""
    out = []
    for r in rows:
        better = r.difference > 0
        significant = r.p_value < 0.05  # NaN (one seed) is not
        out.append(
            ClaimVerdict.from_holds(
                r.scheme,
                f"{r.scheme}: pruning raises the mean test accuracy",
                better if significant else None,
                f"Pruning {'raises' if better else 'does not raise'} mean test accuracy "
                f"({100 * r.difference:+.2f} points, pruned higher on {r.pruned_wins} of "
                f"{r.n_seeds} seeds, paired t-test p = {r.p_value:.2g}; inconclusive unless "
                f"p < 0.05); std over seeds {100 * r.normal_std:.2f} → "
                f"{100 * r.pruned_std:.2f} points; {100 * r.reduction:.1f} % of parameters "
                f"removed; {r.spikes_at_start:.1f} spikes in total at initialisation.",
            )
        )
    return tuple(out)


def _section(rows: tuple[SchemeRow, ...], verdicts: tuple[ClaimVerdict, ...]) -> str:
    lines = [
        "## Initialisations (appendix E.2)",
        "",
        "| init | normal | pruned | difference (points) | p | reduction | spikes at start |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scheme} | {100 * r.normal_mean:.2f} ± {100 * r.normal_std:.2f} % | "
            f"{100 * r.pruned_mean:.2f} ± {100 * r.pruned_std:.2f} % | "
            f"{100 * r.difference:+.2f} | {r.p_value:.2g} | {100 * r.reduction:.1f} % | "
            f"{r.spikes_at_start:.1f} |"
        )
    lines += ["", "**Which initialisations benefit from pruning:**", ""]
    lines += [v.line() for v in verdicts]
    lines += [
        "",
        "Each scheme's full report (curves, spectra, baselines) is in its sub-directory: "
        + ", ".join(f"[{s}]({s}/report.md)" for s in (r.scheme for r in rows))
        + ".",
    ]
    return "\n".join(lines) + "\n"


def run(
    preset: str = "small",
    *,
    seeds: int | None = None,
    out: str | Path,
    data_dir: Any = None,
    progress: bool = True,
    download: bool = False,
    resume: bool = True,
) -> InitResult:
    """Run the Fashion-MNIST FC comparison once per initialisation scheme, under ``out``.

    ``out`` is the run directory (``config.json`` holds the protocol shared by the schemes);
    each scheme is a classification run directory ``out/<scheme>``, the unit of this
    experiment: a later call with the same configuration continues each from what it
    stored (``resume``; False refuses a directory that holds a run).
    """
    return run_analysis(
        "init",
        "init_compare.run",
        (ExperimentConfig, _base_config),
        partial(_units, download=download, resume=resume),
        _report,
        preset=preset,
        seeds=seeds,
        config=None,
        out=out,
        data_dir=data_dir,
        progress=progress,
        resume=resume,
        write_metrics=_write_metrics,
    )


def _base_config(preset: str, seeds: int | None) -> ExperimentConfig:
    """The protocol the four schemes share: ``fc-fashion`` with :data:`PRESET_CHANGES`."""
    base = get_config("fc-fashion", preset).replace(**PRESET_CHANGES[preset])
    return base if seeds is None else base.replace(seeds=tuple(range(seeds)))


def _units(
    run: AnalysisContext[ExperimentConfig], *, download: bool, resume: bool
) -> list[tuple[str, RunResult]]:
    """One classification run per scheme in ``out/<scheme>`` (each continues what it stored)."""
    results = []
    for scheme in SCHEMES:
        config = run.config.replace(experiment=f"init-{scheme}", init=scheme)
        result = run_experiment(
            config,
            out=run.folder / scheme,
            data_dir=run.data_dir,
            download=download,
            progress=run.progress,
            resume=resume,
        )
        results.append((scheme, result))
    return results


def _report(
    run: AnalysisContext[ExperimentConfig], results: list[tuple[str, RunResult]]
) -> InitResult:
    """The comparison across schemes, its verdicts and ``report_section.md``; the result."""
    table = tuple(_row(scheme, result) for scheme, result in results)
    verdicts = _verdicts(table)
    (run.folder / "report_section.md").write_text(_section(table, verdicts), encoding="utf-8")
    return InitResult(table, tuple(result.run_dir for _, result in results), verdicts)


def _write_metrics(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
