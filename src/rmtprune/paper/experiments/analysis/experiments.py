"""The analysis experiments behind ``rmtprune reproduce``: theory, init, regression, landscape.

Each is a module with ``run(preset, *, seeds, out, data_dir, progress, resume)`` that
owns its run directory by the rules of the classification runs
(:func:`rmtprune.paper.experiments.rundir.prepare_analysis_dir`: ``config.json``,
``environment.json``, resume on the same configuration, refusal otherwise), stores each
finished unit under ``units/`` and writes ``metrics.json``, figures and a
``report_section.md``.  This module adds a ``report.md`` plus a self-contained
``report.html`` around the section.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rmtprune._util.validation import param_error
from rmtprune.paper.data.download import download_dataset
from rmtprune.paper.experiments.analysis import init_compare, landscape, regression, theory
from rmtprune.paper.experiments.config import PRESETS
from rmtprune.paper.experiments.formats import markdown_to_html, write_text
from rmtprune.paper.experiments.rundir import UnitStore

__all__ = [
    "ANALYSIS_EXPERIMENTS",
    "AnalysisExperiment",
    "AnalysisRun",
    "markdown_to_html",
    "reproduce_analysis",
]


@dataclass(frozen=True)
class AnalysisExperiment:
    """One analysis experiment: its id, a one-line description and its ``run`` function.

    ``run(preset, *, seeds, out, data_dir, progress, resume)`` writes ``config.json``,
    ``environment.json``, its finished units, ``metrics.json``, figures and
    ``report_section.md`` into ``out`` (continuing the run there when ``resume``) and
    returns the experiment's typed result.
    """

    id: str
    title: str
    run: Callable[..., Any]
    needs_data: bool = True


ANALYSIS_EXPERIMENTS: Mapping[str, AnalysisExperiment] = MappingProxyType(
    {
        e.id: e
        for e in (
            AnalysisExperiment(
                "theory",
                "Section 4 / B.1: W = R + S as N grows, and the bound of section 7",
                theory.run,
            ),
            AnalysisExperiment(
                "init",
                "Appendix E.2: normal vs pruned under four initialisations (Fashion-MNIST, FC)",
                init_compare.run,
            ),
            AnalysisExperiment(
                "regression",
                "Appendix E.3: MLP regression of a noisy sum of sines, normal vs pruned",
                regression.run,
                needs_data=False,
            ),
            AnalysisExperiment(
                "landscape",
                "Section 3.2.1: seed spread, loss barrier and loss surface, normal vs pruned",
                landscape.run,
            ),
        )
    }
)


@dataclass(frozen=True)
class AnalysisRun:
    """Where an analysis experiment wrote its files, and what it returned."""

    experiment: str
    preset: str
    run_dir: Path
    result: Any
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (the experiment's own result under ``result``)."""
        return {
            "experiment": self.experiment,
            "preset": self.preset,
            "run_dir": str(self.run_dir),
            "result": self.result.to_dict(),
            "wall_time": self.wall_time,
        }


def _default_dir(experiment_id: str, preset: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{experiment_id}-{preset}-{stamp}"


def reproduce_analysis(
    experiment_id: str,
    *,
    preset: str = "small",
    seeds: int | None = None,
    out: str | os.PathLike[str] | None = None,
    data_dir: Any = None,
    download: bool = False,
    progress: bool = True,
    resume: bool = True,
) -> AnalysisRun:
    """Run one analysis experiment into its own run directory and write its report.

    Parameters
    ----------
    experiment_id : {"theory", "init", "regression", "landscape"}
    preset : {"smoke", "small", "paper"}
    seeds : int, optional
        Number of seeds (the preset's default otherwise).
    out : path, optional
        Run directory; default ``runs/<experiment>-<preset>-<timestamp>``.  One holding a
        run of the same experiment and configuration is continued: its finished units are
        loaded, not computed again, and the report is written anew.
    resume : bool
        False refuses a directory that already holds a run.
    """
    if experiment_id not in ANALYSIS_EXPERIMENTS:
        raise param_error(
            "experiment_id",
            "reproduce_analysis",
            f"one of {list(ANALYSIS_EXPERIMENTS)}",
            experiment_id,
        )
    if preset not in PRESETS:
        raise param_error("preset", "reproduce_analysis", f"one of {list(PRESETS)}", preset)
    run_dir = _default_dir(experiment_id, preset) if out is None else Path(out)
    entry = ANALYSIS_EXPERIMENTS[experiment_id]
    if download and entry.needs_data:
        download_dataset("fashion-mnist", data_dir)
    start = time.perf_counter()
    result = entry.run(
        preset, seeds=seeds, out=run_dir, data_dir=data_dir, progress=progress, resume=resume
    )
    wall = time.perf_counter() - start
    section = (run_dir / "report_section.md").read_text(encoding="utf-8")
    title = f"rmtprune reproduction: {experiment_id} ({preset} preset)"
    seconds, units, untimed = UnitStore(run_dir).compute_seconds()
    older = f"; {untimed} stored without a time" if untimed else ""
    markdown = (
        f"# {title}\n\n{entry.title}. Compute time {seconds:.0f} s over its {units} units, "
        f"summed over every call{older}; this call took {wall:.0f} s. "
        f"Command: `rmtprune reproduce {experiment_id} --preset {preset}"
        f"{'' if seeds is None else f' --seeds {seeds}'}`.\n\n{section}"
    )
    write_text(run_dir / "report.md", markdown)
    write_text(run_dir / "report.html", markdown_to_html(markdown, run_dir, title))
    return AnalysisRun(experiment_id, preset, run_dir, result, wall)
