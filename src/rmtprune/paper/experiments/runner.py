"""``reproduce``: one entry point for all ten experiments (the paper's nine and the ablation).

Every experiment of the one registry :data:`rmtprune.paper.experiments.registry.EXPERIMENTS`
runs through its own ``reproduce``: the five classification experiments through
:func:`rmtprune.paper.experiments.classification.run.run_experiment`, the four analysis
experiments through :func:`rmtprune.paper.experiments.analysis.experiments.reproduce_analysis`,
the ablation through :func:`rmtprune.paper.experiments.ablation.run.run_ablation`; each
writes one run directory with the resolved configuration, ``environment.json``, metrics,
figures and ``report.md`` / ``report.html`` by the rules of
:mod:`rmtprune.paper.experiments.rundir`: a second call on the same directory resumes the
run (finished seeds or units are loaded, not computed again), one with another
configuration is refused naming the differing fields, and so is a non-empty directory
that holds no run.  :func:`all_experiments` lists the ten ids.

Example
-------
>>> from rmtprune.paper.experiments.runner import all_experiments
>>> len(all_experiments())
10
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rmtprune._util.validation import param_error
from rmtprune.paper.experiments.classification.run import environment, render_run, run_experiment
from rmtprune.paper.experiments.protocol import ExperimentResult
from rmtprune.paper.experiments.registry import EXPERIMENTS, all_experiments

__all__ = ["all_experiments", "environment", "render_run", "reproduce", "run_experiment"]


def reproduce(
    experiment_id: str,
    *,
    preset: str = "small",
    seeds: int | str | Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
    resume: bool = True,
    device: str = "cpu",
    import_seeds: Sequence[str | os.PathLike[str]] = (),
) -> ExperimentResult:
    """Reproduce one of the paper's experiments.

    Parameters
    ----------
    experiment_id : str
        One of :func:`rmtprune.paper.experiments.list_experiments`: a classification
        experiment (its result is a :class:`rmtprune.paper.experiments.results.RunResult`) or
        one of the analysis experiments ``theory``, ``init``, ``regression``, ``landscape``
        (an :class:`rmtprune.paper.experiments.analysis.experiments.AnalysisRun`), or
        ``ablation`` (an :class:`rmtprune.paper.experiments.ablation.run.AblationRun`).
    preset : str
        Scale: ``"smoke"``, ``"small"`` or ``"paper"`` (see
        :mod:`rmtprune.paper.experiments.classification.experiments`); the ablation also
        has ``"manuscript-small"`` and ``"manuscript"``
        (:mod:`rmtprune.paper.experiments.ablation.experiment`).
    seeds : int, str, sequence of int or None
        ``K`` runs seeds ``0, …, K−1``; a sequence (or a string such as ``"0,1,2"``
        or ``"1-2"``, see :func:`parse_seeds`) runs those seeds; None keeps the
        preset's seeds.  A run directory that already holds seeds keeps them: the run
        then covers both.  The analysis experiments take an int only.
    device : str
        Torch device of training (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).
    out, data_dir, download, progress, resume, import_seeds
        As in :func:`run_experiment`.

    Returns
    -------
    ExperimentResult
        ``run_dir`` and ``to_dict()``; a ``RunResult`` or an ``AnalysisRun``.

    Examples
    --------
    >>> result = reproduce("fc-mnist", preset="smoke", seeds="0,1",
    ...                    out="/tmp/fc-mnist-smoke")  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
    """
    if experiment_id not in EXPERIMENTS:
        expected = f"one of {list(all_experiments())}"
        raise param_error("experiment_id", "reproduce", expected, experiment_id)
    presets = EXPERIMENTS[experiment_id].presets
    if preset not in presets:
        raise param_error("preset", "reproduce", f"one of {list(presets)}", preset)
    return EXPERIMENTS[experiment_id].reproduce(
        preset,
        seeds=seeds,
        out=out,
        data_dir=data_dir,
        download=download,
        progress=progress,
        resume=resume,
        device=device,
        import_seeds=import_seeds,
    )
