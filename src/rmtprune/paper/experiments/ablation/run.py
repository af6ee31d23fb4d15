"""Run the ablation: per data set, per seed, the four arms from the same weights; then report.

The run directory::

    <run>/config.json, environment.json   the ablation (preset, data sets, arms; each call)
    <run>/<fc-mnist|fc-fashion>/config.json        that data set's ExperimentConfig
    <run>/<...>/seed-<s>/<arm>/           trainer checkpoint, history.{json,csv}, layers.json
    <run>/<...>/seed-<s>/ablation.json    the finished seed (four arms), read back on resume
    <run>/metrics.json, metrics.csv, final.csv, figures/*.png, report.md, report.html

The top level follows the analysis experiments' rules
(:func:`rmtprune.paper.experiments.rundir.prepare_analysis_dir`: another experiment, preset
or set of data sets is refused), each data set's directory those of a classification run
(:func:`rmtprune.paper.experiments.rundir.prepare_run_dir`: same configuration, growing by
seeds).  Each arm is trained by
:func:`rmtprune.paper.experiments.classification.seedrun.run_arm`, which resumes from its last
epoch checkpoint, so a run killed at any point continues with the same ``out`` and ends
with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rmtprune.paper.experiments import rundir
from rmtprune.paper.experiments.ablation import report
from rmtprune.paper.experiments.ablation.arms import ARMS
from rmtprune.paper.experiments.ablation.results import (
    AblationArm,
    AblationRun,
    AblationSeed,
    DatasetResult,
)
from rmtprune.paper.experiments.classification.seedrun import EpochHook, log, run_arm
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.rundir import write_json
from rmtprune.paper.training import evaluate
from rmtprune.paper.training.config import device_unavailable

__all__ = ["AblationRun", "run_ablation", "run_seed"]

SEED_FILE = "ablation.json"


def run_seed(
    config: ExperimentConfig,
    seed: int,
    data: tuple[Any, Any],
    folder: Path,
    *,
    progress: bool,
    hook: EpochHook | None = None,
) -> AblationSeed:
    """The seed's stored result (``ablation.json``), else train or resume its four arms.

    Each arm's final network is also evaluated on the whole training set.  The result is
    returned as read back from its file, so a computed and a loaded seed are identical.
    """
    path = folder / SEED_FILE
    if not path.is_file():
        arms = []
        for arm in ARMS:
            result, model = run_arm(
                arm.config(config),
                seed,
                arm.name,
                data,
                folder / arm.name,
                resume=True,
                progress=progress,
                hook=hook,
                prune=arm.pruned,
            )
            train = evaluate(model, data[0])
            arms.append(AblationArm(arm.name, result, train.loss, train.accuracy))
        write_json(path, AblationSeed(seed, tuple(arms)).to_dict())
    else:
        log(progress, config, f"seed {seed}: finished earlier ({path})")
    return AblationSeed.from_dict(json.loads(path.read_text()))


def _check(configs: Mapping[str, ExperimentConfig]) -> None:
    if not configs or not all(isinstance(c, ExperimentConfig) for c in configs.values()):
        raise TypeError(
            "The 'configs' parameter of run_ablation must map experiment ids to "
            f"ExperimentConfig objects. Got {configs!r} instead."
        )
    for config in configs.values():
        why = device_unavailable(config.device)
        if why is not None:
            raise ValueError(
                f"The 'device' parameter (--device) names {config.device!r}, but {why}. "
                "Use device='cpu' (the default)."
            )


def _default_dir(preset: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"ablation-{preset}-{stamp}"


def run_ablation(
    configs: Mapping[str, ExperimentConfig],
    preset: str,
    *,
    out: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
    resume: bool = True,
    on_epoch_end: EpochHook | None = None,
) -> AblationRun:
    """Run the ablation for each data set of ``configs`` into ``out`` and write its report.

    Parameters
    ----------
    configs : mapping of str to ExperimentConfig
        One configuration per data set, by classification experiment id (``fc-mnist``,
        ``fc-fashion``; :meth:`AblationExperiment.configs
        <rmtprune.paper.experiments.ablation.experiment.AblationExperiment.configs>`).
    preset : str
        The preset's name, recorded in ``config.json`` (a later call must give the same).
    out : path or None
        Run directory; default ``runs/ablation-<preset>-<timestamp>``.
    data_dir, download, progress, resume
        As in :func:`rmtprune.paper.experiments.run_experiment`.
    on_epoch_end : callable or None
        ``on_epoch_end(seed, arm, record)`` after each epoch's checkpoint.
    """
    _check(configs)
    started = time.perf_counter()
    data = {name: c.load_data(data_dir, download) for name, c in configs.items()}  # before writing
    run_dir = _default_dir(preset) if out is None else Path(out)
    setup = {"experiments": list(configs), "arms": [a.to_dict() for a in ARMS]}
    rundir.prepare_analysis_dir(run_dir, "ablation", preset, setup, resume=resume)
    results = []
    for name, given in configs.items():
        folder, config = rundir.prepare_run_dir(given, run_dir / name, resume)
        content = {"config": config.to_dict(), "derived": config.derived()}
        write_json(folder / "config.json", content)
        rundir.update_environment(folder, "resumed", rundir.environment(config.device))
        log(progress, config, f"{name}: {folder}; seeds {list(config.seeds)}")
        seeds = tuple(
            run_seed(
                config,
                seed,
                data[name],
                rundir.seed_dir(folder, seed),
                progress=progress,
                hook=on_epoch_end,
            )
            for seed in config.seeds
        )
        results.append(DatasetResult(name, config, seeds))
    run = report.write_run(run_dir, preset, tuple(results), time.perf_counter() - started)
    log(progress, results[0].config, f"done in {run.wall_time:.0f} s: {run_dir / 'report.md'}")
    return run
