"""The analysis experiments behind ``rmtprune reproduce``: theory, init, regression, landscape.

Each is a module with ``run(preset, *, seeds, out, data_dir, progress, resume)`` that
owns its run directory by the rules of the classification runs
(:func:`rmtprune.paper.experiments.rundir.prepare_analysis_dir`: ``config.json``,
``environment.json``, resume on the same configuration, refusal otherwise), stores each
finished unit under ``units/`` and writes ``metrics.json``, figures and a
``report_section.md``.  This module adds a ``report.md`` plus a self-contained
``report.html`` around the section.  Each :class:`AnalysisExperiment` follows
:class:`rmtprune.paper.experiments.protocol.Experiment`, and its result, :class:`AnalysisRun`,
:class:`rmtprune.paper.experiments.protocol.ExperimentResult`; all four are entries of the one
registry :data:`rmtprune.paper.experiments.registry.EXPERIMENTS`.

Example
-------
>>> from rmtprune.paper.experiments.analysis.experiments import ANALYSIS_EXPERIMENTS
>>> ANALYSIS_EXPERIMENTS["regression"].description
'Appendix E.3: MLP regression of a noisy sum of sines, normal vs pruned'
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rmtprune._util.validation import param_error
from rmtprune.paper.data.download import download_dataset
from rmtprune.paper.experiments.analysis import (
    init_compare,
    landscape,
    landscape_config,
    regression,
    regression_config,
    theory,
    theory_config,
)
from rmtprune.paper.experiments.formats import markdown_to_html, write_text
from rmtprune.paper.experiments.rundir import UnitStore
from rmtprune.paper.presets import PRESETS

__all__ = [
    "ANALYSIS_EXPERIMENTS",
    "AnalysisExperiment",
    "AnalysisRun",
    "markdown_to_html",
    "reproduce_analysis",
]


@dataclass(frozen=True)
class AnalysisExperiment:
    """One analysis experiment: id, section, title, presets and its ``run`` function.

    ``run(preset, *, seeds, out, data_dir, progress, resume)`` writes ``config.json``,
    ``environment.json``, its finished units, ``metrics.json``, figures and
    ``report_section.md`` into ``out`` (continuing the run there when ``resume``) and
    returns the experiment's typed result; :meth:`reproduce` adds the report around it.
    """

    id: str
    section: str
    title: str
    presets: Mapping[str, Any]
    run: Callable[..., Any]
    needs_data: bool = True

    @property
    def description(self) -> str:
        """The line ``rmtprune reproduce --list`` prints (and ``report.md`` opens with)."""
        return f"{self.section}: {self.title}"

    def reproduce(
        self,
        preset: str = "small",
        *,
        seeds: int | str | Sequence[int] | None = None,
        out: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        download: bool = False,
        progress: bool = True,
        resume: bool = True,
        device: str = "cpu",
        import_seeds: Sequence[str | os.PathLike[str]] = (),
    ) -> AnalysisRun:
        """Run the experiment into its own run directory and write its report.

        As :func:`reproduce_analysis`; ``seeds`` must be an int (a number of seeds) or None.
        The analysis experiments train on the CPU and import no seeds: ``device`` and
        ``import_seeds`` are accepted for the common protocol and not used.
        """
        if seeds is not None and not isinstance(seeds, int):
            raise param_error("seeds", "reproduce", "an int for analysis experiments", seeds)
        return reproduce_analysis(
            self.id,
            preset=preset,
            seeds=seeds,
            out=out,
            data_dir=data_dir,
            download=download,
            progress=progress,
            resume=resume,
        )


ANALYSIS_EXPERIMENTS: Mapping[str, AnalysisExperiment] = MappingProxyType(
    {
        e.id: e
        for e in (
            AnalysisExperiment(
                "theory",
                "Section 4 / B.1",
                "W = R + S as N grows, and the bound of section 7",
                MappingProxyType(dict(theory_config.PRESETS)),
                theory.run,
            ),
            AnalysisExperiment(
                "init",
                "Appendix E.2",
                "normal vs pruned under four initialisations (Fashion-MNIST, FC)",
                MappingProxyType(dict(init_compare.PRESET_CHANGES)),
                init_compare.run,
            ),
            AnalysisExperiment(
                "regression",
                "Appendix E.3",
                "MLP regression of a noisy sum of sines, normal vs pruned",
                MappingProxyType(dict(regression_config.PRESETS)),
                regression.run,
                needs_data=False,
            ),
            AnalysisExperiment(
                "landscape",
                "Section 3.2.1",
                "seed spread, loss barrier and loss surface, normal vs pruned",
                MappingProxyType(dict(landscape_config.PRESETS)),
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
        f"# {title}\n\n{entry.description}. Compute time {seconds:.0f} s over its {units} units, "
        f"summed over every call{older}; this call took {wall:.0f} s. "
        f"Command: `rmtprune reproduce {experiment_id} --preset {preset}"
        f"{'' if seeds is None else f' --seeds {seeds}'}`.\n\n{section}"
    )
    write_text(run_dir / "report.md", markdown)
    write_text(run_dir / "report.html", markdown_to_html(markdown, run_dir, title))
    return AnalysisRun(experiment_id, preset, run_dir, result, wall)
