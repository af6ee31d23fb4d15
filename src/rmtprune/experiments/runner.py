"""Run an experiment: config → data → build → train both arms → baselines → write.

For each seed the *normal* and the *pruned* arm are built and initialised with
the same generator seed (identical weights, checked by a digest stored with the
metrics), trained with the same :class:`~rmtprune.training.TrainConfig` (same
data order, dropout draws and learning rates) and differ only by the
:class:`~rmtprune.SpectralPruner` steps.  After every epoch each large layer of
each arm is analysed (rank, spikes, fit error).  Then the trained normal network
is pruned after training (MP one-shot, global magnitude and SVD-energy at the
pruned arm's final parameter count; :mod:`rmtprune.experiments.baselines`).

Everything lands in one run directory::

    <run>/config.json            resolved ExperimentConfig (+ derived values)
    <run>/environment.json       Python / package versions, git commit, threads (of the
                                 first process; each resume is appended under "resumed")
    <run>/seed-<s>/{normal,pruned}/  trainer checkpoint, history.{json,csv}, layers.json
    <run>/seed-<s>/after_training.json, spectra.json
    <run>/metrics.json, metrics.csv, after_training.csv
    <run>/figures/*.png, report.md, report.html

A run killed at any point continues with ``resume=True`` (the default) and ends
with the same metrics as an uninterrupted one.

Example
-------
>>> from rmtprune.experiments import reproduce
>>> result = reproduce("fc-fashion", preset="smoke", out="/tmp/run")  # doctest: +SKIP
>>> result.summary[1].reduction > 0  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rmtprune._fileio import atomic_write_bytes
from rmtprune._validation import check_int, param_error
from rmtprune.experiments import baselines, claims, plots, report
from rmtprune.experiments.baselines import METHODS, EvalPoint, PostTrainingResult
from rmtprune.experiments.config import ExperimentConfig
from rmtprune.experiments.registry import get_config
from rmtprune.experiments.results import ArmResult, RunResult, SeedResult, layer_from_dict
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.report import LayerAnalysis, _json_safe
from rmtprune.pruning.walker import analyze
from rmtprune.training import EpochRecord, Trainer, evaluate

if TYPE_CHECKING:
    from rmtprune.experiments.analysis import AnalysisRun

__all__ = ["environment", "reproduce", "run_experiment"]

EpochHook = Callable[[int, str, EpochRecord], None]
ARMS = ("normal", "pruned")


# ------------------------------------------------------------------------ building blocks
def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _analyze(
    config: ExperimentConfig, model: nn.Module, ranks: dict[str, int] | None
) -> tuple[LayerAnalysis, ...]:
    rep = analyze(
        model,
        alpha=config.alpha,
        beta=config.beta,
        fit_cutoff=config.fit_cutoffs(),
        min_dim=config.min_dim,
        min_params=config.min_params,
        ranks=ranks,
    )
    return tuple(r for r in rep.layers if not r.reason.startswith("too small"))


def _write_json(path: Path, content: Any) -> None:
    text = json.dumps(_json_safe(content), indent=1, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def _log(enabled: bool, config: ExperimentConfig, message: str) -> None:
    if enabled:
        print(f"[{config.experiment}/{config.preset}] {message}", file=sys.stderr, flush=True)


def _git(*args: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = Path(__file__).resolve().parent
        run = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        return run.stdout.strip() if run.returncode == 0 else None
    return None


def environment() -> dict[str, Any]:
    """Versions, platform (no host name), git commit of the source tree, torch threads.

    Examples
    --------
    >>> sorted(environment())[:3]
    ['cpu_count', 'git_commit', 'git_dirty']
    """
    import matplotlib
    import scipy

    import rmtprune

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    return {
        "python": platform.python_version(),
        "system": platform.system(),
        "machine": platform.machine(),
        **{m.__name__: m.__version__ for m in (rmtprune, torch, np, scipy, matplotlib)},
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _environment_record(path: Path) -> dict[str, Any]:
    """This process's environment; when resuming, the first one with this appended."""
    now = environment()
    if not path.is_file():
        return now
    first = json.loads(path.read_text())
    return {**first, "resumed": [*first.get("resumed", []), now]}


# ------------------------------------------------------------------------ one arm, one seed
def _run_arm(
    config: ExperimentConfig,
    seed: int,
    arm: str,
    data: tuple[Any, Any],
    arm_dir: Path,
    *,
    resume: bool,
    progress: bool,
    hook: EpochHook | None,
) -> tuple[ArmResult, nn.Module]:
    model = config.build_model(seed)
    digest = _digest(model)
    init_layers = _analyze(config, model, None)
    initial = evaluate(model, data[1])
    initial_point = EvalPoint(baselines.count_parameters(model), initial.loss, initial.accuracy)
    pruner = None
    if arm == "pruned":
        pruner = SpectralPruner(
            model,
            schedule=config.schedule(),
            every=config.every,
            alpha=config.alpha,
            beta=config.beta,
            fit_cutoff=config.fit_cutoffs(),
            min_rank=config.min_rank_resolved,
            min_dim=config.min_dim,
            min_params=config.min_params,
        )
    layers_path = arm_dir / "layers.json"
    saved: dict[int, tuple[LayerAnalysis, ...]] = {}
    if resume and layers_path.is_file():
        for entry in json.loads(layers_path.read_text()):
            saved[int(entry["epoch"])] = tuple(layer_from_dict(r) for r in entry["layers"])
    saved[0] = init_layers

    def ranks() -> dict[str, int] | None:
        return None if pruner is None else pruner.ranks

    def record_layers(epoch: int, model_now: nn.Module) -> None:
        saved[epoch] = _analyze(config, model_now, ranks())
        entries = [{"epoch": e, "layers": [r.to_dict() for r in saved[e]]} for e in sorted(saved)]
        _write_json(layers_path, entries)

    def on_epoch_end(trainer: Trainer, record: EpochRecord) -> None:
        record_layers(record.epoch, trainer.model)
        _log(
            progress,
            config,
            f"seed {seed} {arm:>6} epoch {record.epoch}/{config.epochs}: test acc "
            f"{100 * record.test_accuracy:.2f} %, params {record.n_params:,} "
            f"({record.wall_time:.1f} s)",
        )
        if hook is not None:
            hook(seed, arm, record)

    trainer = Trainer(
        model,
        data[0],
        data[1],
        config.train_config(seed),
        pruner=pruner,
        run_dir=arm_dir,
        resume=resume,
        progress=progress,
        on_epoch_end=on_epoch_end,
    )
    done = trainer.epoch
    saved = {e: v for e, v in saved.items() if e <= done}
    if done and done not in saved:  # killed between the checkpoint and the layer log
        record_layers(done, trainer.model)
    if done < config.epochs:
        _log(progress, config, f"seed {seed} {arm:>6}: training epochs {done + 1}–{config.epochs}")
    else:
        _log(progress, config, f"seed {seed} {arm:>6}: complete (resumed from {arm_dir})")
    history = trainer.fit()
    layers = tuple(saved[e] for e in range(0, len(history) + 1))
    return ArmResult(seed, arm, initial_point, digest, history, layers), trainer.model


def _run_seed(
    config: ExperimentConfig,
    seed: int,
    data: tuple[Any, Any],
    seed_dir: Path,
    *,
    resume: bool,
    progress: bool,
    hook: EpochHook | None,
    spectra: bool,
) -> SeedResult:
    arms: dict[str, tuple[ArmResult, nn.Module]] = {}
    for arm in ARMS:
        arms[arm] = _run_arm(
            config, seed, arm, data, seed_dir / arm, resume=resume, progress=progress, hook=hook
        )
    normal, normal_model = arms["normal"]
    pruned, pruned_model = arms["pruned"]

    cache = seed_dir / "after_training.json"
    after: tuple[PostTrainingResult, ...] = ()
    if resume and cache.is_file():
        after = tuple(PostTrainingResult.from_dict(v) for v in json.loads(cache.read_text()))
    if tuple(r.method for r in after) != METHODS:
        results = []
        for method in METHODS:
            _log(progress, config, f"seed {seed}: after training, {method}")
            results.append(
                baselines.run_method(
                    method,
                    normal_model,
                    config,
                    seed=seed,
                    target_params=pruned.final_params,
                    train=data[0],
                    test=data[1],
                    progress=progress,
                )
            )
            _write_json(cache, [r.to_dict() for r in results])
        after = tuple(results)

    snapshots: tuple[plots.SpectrumSnapshot, ...] = ()
    if spectra:
        path = seed_dir / "spectra.json"
        if resume and path.is_file():
            snapshots = tuple(
                plots.SpectrumSnapshot.from_dict(v) for v in json.loads(path.read_text())
            )
        else:
            names = [r.name for r in normal.layers[0] if r.status == "ok"]
            final_ranks = {r.name: r.rank for r in pruned.layers[-1]}
            for stage, model, known in (
                ("init", config.build_model(seed), None),
                ("normal-final", normal_model, None),
                ("pruned-final", pruned_model, final_ranks),
            ):
                snapshots += plots.spectrum_snapshots(
                    model, stage, names, ranks=known, alpha=config.alpha, beta=config.beta
                )
            _write_json(path, [s.to_dict() for s in snapshots])
    return SeedResult(seed, normal, pruned, after, snapshots)


def _prepare_run_dir(
    config: ExperimentConfig, out: str | os.PathLike[str] | None, resume: bool
) -> Path:
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{config.experiment}-{config.preset}-{stamp}"
    else:
        run_dir = Path(out)
    saved = run_dir / "config.json"
    if saved.is_file():
        if not resume:
            raise ValueError(
                f"The 'out' parameter names {str(run_dir)!r}, which already holds a run. "
                "Run again without --no-resume (resume=True) to continue it; to start over, "
                "delete it or choose a new --out directory."
            )
        previous = json.loads(saved.read_text())["config"]
        differing = sorted(
            k for k, v in config.to_dict().items() if k != "num_threads" and previous.get(k) != v
        )
        if differing:
            raise ValueError(
                f"Cannot resume the run in {str(run_dir)!r}: its configuration differs in "
                f"{differing}. Use a new output directory."
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(
            f"The 'out' parameter names {str(run_dir)!r}, which is not empty and holds no run. "
            "Choose a new or empty directory."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    try:
        if n is not None:
            torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)


def run_experiment(
    config: ExperimentConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
    resume: bool = True,
    on_epoch_end: EpochHook | None = None,
) -> RunResult:
    """Run ``config`` end to end and write its directory (see the module docstring).

    Parameters
    ----------
    config : ExperimentConfig
        What to run.
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

    Returns
    -------
    RunResult
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(
            "The 'config' parameter of run_experiment must be an ExperimentConfig. "
            f"Got {type(config).__name__} instead."
        )
    started = time.perf_counter()
    data = config.load_data(data_dir, download)  # fails before anything is written
    run_dir = _prepare_run_dir(config, out, resume)
    _write_json(run_dir / "config.json", {"config": config.to_dict(), "derived": config.derived()})
    _write_json(run_dir / "environment.json", _environment_record(run_dir / "environment.json"))
    _log(
        progress,
        config,
        f"run directory {run_dir}; {len(data[0])} training and "
        f"{len(data[1])} test samples; seeds {list(config.seeds)}",
    )
    seeds = []
    with _threads(config.num_threads):
        for i, seed in enumerate(config.seeds):
            _log(progress, config, f"seed {seed} ({i + 1}/{len(config.seeds)})")
            seeds.append(
                _run_seed(
                    config,
                    seed,
                    data,
                    run_dir / f"seed-{seed}",
                    resume=resume,
                    progress=progress,
                    hook=on_epoch_end,
                    spectra=i == 0,
                )
            )
        summary = claims.summarize(seeds)
        verdicts = claims.assess_claims(config, seeds)
        _log(progress, config, "figures and report")
        figures = plots.make_figures(run_dir, config, seeds, summary)
    result = RunResult(
        run_dir, config, tuple(seeds), summary, verdicts, figures, time.perf_counter() - started
    )
    report.write_metrics(result)
    report.write_report(result)
    _log(progress, config, f"done in {result.wall_time:.0f} s: {run_dir / 'report.md'}")
    return result


def _seed_tuple(seeds: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return tuple(range(check_int(seeds, "seeds", "reproduce", low=1)))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise param_error("seeds", "reproduce", "a positive int or a sequence of ints", seeds)
    return tuple(check_int(s, "seeds", "reproduce", low=0) for s in seeds)


def reproduce(
    experiment_id: str,
    *,
    preset: str = "small",
    seeds: int | Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
    resume: bool = True,
) -> RunResult | AnalysisRun:
    """Reproduce one of the paper's classification experiments.

    Parameters
    ----------
    experiment_id : str
        One of :func:`rmtprune.experiments.list_experiments`, or one of the analysis
        experiments ``theory``, ``init``, ``regression``, ``landscape``, which are run by
        :func:`rmtprune.experiments.analysis.reproduce_analysis` (its ``AnalysisRun``
        result also has ``run_dir``).
    preset : {"smoke", "small", "paper"}
        Scale (see :mod:`rmtprune.experiments.registry`).
    seeds : int, sequence of int or None
        ``K`` runs seeds ``0, …, K−1``; a sequence runs those seeds; None keeps the
        preset's seeds.
    out, data_dir, download, progress, resume
        As in :func:`run_experiment`.

    Returns
    -------
    RunResult or AnalysisRun

    Examples
    --------
    >>> result = reproduce("fc-mnist", preset="smoke", seeds=1,
    ...                    out="/tmp/fc-mnist-smoke")  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
    """
    from rmtprune.experiments.analysis import ANALYSIS_EXPERIMENTS, reproduce_analysis

    if experiment_id in ANALYSIS_EXPERIMENTS:
        if seeds is not None and not isinstance(seeds, int):
            raise param_error("seeds", "reproduce", "an int for analysis experiments", seeds)
        return reproduce_analysis(
            experiment_id,
            preset=preset,
            seeds=seeds,
            out=out,
            data_dir=data_dir,
            download=download,
            progress=progress,
        )
    config = get_config(experiment_id, preset)
    if seeds is not None:
        config = config.replace(seeds=_seed_tuple(seeds))
    return run_experiment(
        config, out=out, data_dir=data_dir, download=download, progress=progress, resume=resume
    )
