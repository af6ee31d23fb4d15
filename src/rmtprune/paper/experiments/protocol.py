"""The one protocol every experiment of the paper follows, and the one its results follow.

An experiment (:class:`Experiment`) has an ``id`` (what ``rmtprune reproduce`` takes), the
``section`` of the paper it reproduces, a one-line ``title``, its ``presets`` (the scales
``smoke``, ``small``, ``paper`` and what each changes) and ``reproduce(...)``, which writes
one run directory and returns an :class:`ExperimentResult`: the directory and a plain
dictionary of what was found.  The five classification experiments
(:class:`rmtprune.paper.experiments.classification.experiments.ClassificationExperiment`) and
the four analysis experiments
(:class:`rmtprune.paper.experiments.analysis.experiments.AnalysisExperiment`) both satisfy it;
:data:`rmtprune.paper.experiments.registry.EXPERIMENTS` holds all nine, and the ablation
(:class:`rmtprune.paper.experiments.ablation.experiment.AblationExperiment`).

Example
-------
>>> from rmtprune.paper.experiments.protocol import Experiment
>>> from rmtprune.paper.experiments.registry import EXPERIMENTS
>>> all(isinstance(e, Experiment) for e in EXPERIMENTS.values())
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Experiment", "ExperimentResult"]


@runtime_checkable
class ExperimentResult(Protocol):
    """What ``reproduce`` returns: where the run was written, and its content as a dict."""

    @property
    def run_dir(self) -> Path:
        """The run directory."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of the result."""


@runtime_checkable
class Experiment(Protocol):
    """One experiment of the paper: id, section, title, presets and ``reproduce``."""

    @property
    def id(self) -> str:
        """Identifier used on the command line."""

    @property
    def section(self) -> str:
        """Section of the paper (or of docs/method.md) it reproduces."""

    @property
    def title(self) -> str:
        """One-line description."""

    @property
    def presets(self) -> Mapping[str, Any]:
        """What each preset (``smoke``, ``small``, ``paper``) sets."""

    @property
    def description(self) -> str:
        """The line ``rmtprune reproduce --list`` prints (section and title)."""

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
    ) -> ExperimentResult:
        """Run the experiment at ``preset`` into the run directory ``out``."""
