"""Run an experiment: config → run directory → each seed → summary, claims, figures, report.

Each seed (both arms from identical weights, the after-training baselines, the spectra)
is run by :mod:`rmtprune.paper.experiments.classification.seedrun`; the run directory's rules
(configuration
check, growing by seeds, imports, environment) are in :mod:`rmtprune.paper.experiments.rundir`;
this module ties them together and renders the results.

Everything lands in one run directory::

    <run>/config.json            resolved ExperimentConfig (+ derived values)
    <run>/environment.json       Python / package versions, git commit, threads (of the
                                 first process; each resume is appended under "resumed")
    <run>/seed-<s>/{normal,pruned}/  trainer checkpoint, history.{json,csv}, layers.json
    <run>/seed-<s>/after_training.json, spectra.json, result.json (finished seed)
    <run>/metrics.json, metrics.csv, after_training.csv
    <run>/figures/*.png, report.md, report.html

A run killed at any point continues with ``resume=True`` (the default) and ends
with the same metrics as an uninterrupted one.

Example
-------
>>> from rmtprune.paper.experiments import reproduce
>>> result = reproduce("fc-fashion", preset="smoke", out="/tmp/run")  # doctest: +SKIP
>>> result.summary[1].reduction > 0  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from rmtprune.paper.experiments import rundir
from rmtprune.paper.experiments.classification import claims, plots, report
from rmtprune.paper.experiments.classification.seedrun import EpochHook, log, run_seed
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.results import RunResult, SeedResult
from rmtprune.paper.experiments.rundir import environment, write_json
from rmtprune.paper.training.config import device_unavailable

__all__ = ["environment", "render_run", "run_experiment"]


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    try:
        if n is not None:
            torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)


def _check_device(config: ExperimentConfig) -> None:
    why = device_unavailable(config.device)
    if why is not None:
        raise ValueError(
            f"The 'device' parameter (--device) names {config.device!r}, but {why}. "
            "Use device='cpu' (the default)."
        )


def _finish(
    run_dir: Path,
    config: ExperimentConfig,
    seeds: Sequence[SeedResult],
    started: float,
    *,
    figures: bool = True,
    html: bool = True,
) -> RunResult:
    """Summary, claims, figures, metrics and report of ``seeds``: the reporting step."""
    summary = claims.summarize(seeds)
    verdicts = claims.assess_claims(config, seeds)
    kept = plots.existing_figures(run_dir, [r.name for r in seeds[0].normal.layers[0]])
    if figures:
        paths = plots.make_figures(run_dir, config, seeds, summary)
        if not any(s.spectra for s in seeds):  # an archive: its spectra were not stored
            paths += tuple(p for p in kept if p.name not in plots.FIXED_FIGURES)
    else:
        paths = kept
    result = RunResult(
        run_dir, config, tuple(seeds), summary, verdicts, paths, time.perf_counter() - started
    )
    report.write_metrics(result)
    report.write_report(result, html=html)
    return result


def run_experiment(
    config: ExperimentConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
    resume: bool = True,
    on_epoch_end: EpochHook | None = None,
    import_seeds: Sequence[str | os.PathLike[str]] = (),
) -> RunResult:
    """Run ``config`` end to end and write its directory (see the module docstring).

    The run covers ``config.seeds`` and every seed the directory already holds
    (a directory grows by seeds; its configuration must otherwise be the same,
    see :mod:`rmtprune.paper.experiments.rundir`), and the report covers them all.

    Parameters
    ----------
    config : ExperimentConfig
        What to run (``config.device``: where to train).
    out : path or None
        Run directory; default ``runs/<experiment>-<preset>-<timestamp>``.
    data_dir : path or None
        Data root (default ``$RMTPRUNE_DATA``, else the user cache).
    download : bool
        Fetch missing data from the official sources.
    progress : bool
        Progress bars (on a terminal) and one log line per stage and epoch on stderr.
    resume : bool
        Continue the run already in ``out`` (same configuration required).
    on_epoch_end : callable or None
        ``on_epoch_end(seed, arm, record)`` after each epoch's checkpoint and log.
    import_seeds : sequence of paths
        ``metrics.json`` files (or run directories) of other runs of the same
        configuration whose seeds join this run (:func:`rundir.import_seeds`).

    Returns
    -------
    RunResult
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(
            "The 'config' parameter of run_experiment must be an ExperimentConfig. "
            f"Got {type(config).__name__} instead."
        )
    if isinstance(import_seeds, (str, os.PathLike)):
        import_seeds = (import_seeds,)
    _check_device(config)
    started = time.perf_counter()
    data = config.load_data(data_dir, download)  # fails before anything is written
    run_dir, config = rundir.prepare_run_dir(config, out, resume)
    config, imported = rundir.import_seeds(run_dir, config, import_seeds)
    write_json(run_dir / "config.json", {"config": config.to_dict(), "derived": config.derived()})
    rundir.update_environment(run_dir, "resumed", rundir.environment(config.device))
    for record in imported:
        rundir.update_environment(run_dir, "imported", record)
    log(
        progress,
        config,
        f"run directory {run_dir}; {len(data[0])} training and "
        f"{len(data[1])} test samples; seeds {list(config.seeds)}; device {config.device}",
    )
    seeds = []
    with _threads(config.num_threads):
        for i, seed in enumerate(config.seeds):
            log(progress, config, f"seed {seed} ({i + 1}/{len(config.seeds)})")
            seeds.append(
                run_seed(
                    config, seed, data, run_dir, resume=resume, progress=progress, hook=on_epoch_end
                )
            )
        log(progress, config, "figures and report")
        result = _finish(run_dir, config, seeds, started)
    log(progress, config, f"done in {result.wall_time:.0f} s: {run_dir / 'report.md'}")
    return result


def render_run(
    run_dir: str | os.PathLike[str], *, figures: bool = True, html: bool | None = None
) -> RunResult:
    """Render the metrics, CSV files and report of a run again from its stored results.

    Reads ``config.json`` and each seed's ``seed-<s>/result.json``; a directory
    without seed directories (an archived report such as ``docs/results/fc-mnist``)
    is read from its ``metrics.json``.  Nothing is trained; no data is needed.

    Parameters
    ----------
    run_dir : path
        The run directory.
    figures : bool
        Draw the figures again (False: keep the PNG files present, for archives whose
        spectra were not stored).
    html : bool or None
        Write ``report.html``; None: only if the directory has one already, or seed
        directories.
    """
    folder = Path(run_dir)
    values = rundir.read_config(folder, "The 'run_dir' parameter of render_run")
    if values is None:
        raise FileNotFoundError(
            f"The 'run_dir' parameter of render_run names {str(folder)!r}, which holds no "
            "config.json of a classification run."
        )
    config = ExperimentConfig.from_dict(values)
    loaded = [rundir.load_seed(folder, s) for s in config.seeds]
    if all(s is None for s in loaded) and (folder / "metrics.json").is_file():
        entries = json.loads((folder / "metrics.json").read_text())["seeds"]
        loaded = [SeedResult.from_dict(e) for e in entries]
    missing = [s for s, r in zip(config.seeds, loaded, strict=True) if r is None]
    if missing:
        raise ValueError(
            f"Cannot render {str(folder)!r}: seeds {missing} have not finished "
            "(no seed-<s>/result.json); run `rmtprune reproduce` on the directory first."
        )
    seeds = [r for r in loaded if r is not None]
    if html is None:
        html = (folder / "report.html").is_file() or any(folder.glob("seed-*"))
    return _finish(folder, config, seeds, time.perf_counter(), figures=figures, html=html)
