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
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rmtprune._validation import check_int, param_error
from rmtprune.experiments import baselines, claims, plots, report, rundir
from rmtprune.experiments.baselines import METHODS, EvalPoint, PostTrainingResult
from rmtprune.experiments.config import ExperimentConfig
from rmtprune.experiments.registry import get_config
from rmtprune.experiments.results import ArmResult, RunResult, SeedResult, layer_from_dict
from rmtprune.experiments.rundir import environment, write_json
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.report import LayerAnalysis
from rmtprune.pruning.walker import analyze
from rmtprune.training import EpochRecord, Trainer, evaluate
from rmtprune.training.config import check_device, device_unavailable

if TYPE_CHECKING:
    from rmtprune.experiments.analysis import AnalysisRun

__all__ = [
    "SEEDS_GRAMMAR",
    "environment",
    "parse_seeds",
    "render_run",
    "reproduce",
    "run_experiment",
    "seed_tuple",
]

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


def _log(enabled: bool, config: ExperimentConfig, message: str) -> None:
    if enabled:
        print(f"[{config.experiment}/{config.preset}] {message}", file=sys.stderr, flush=True)


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
        write_json(layers_path, entries)

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


def _after_training(
    config: ExperimentConfig,
    seed: int,
    data: tuple[Any, Any],
    seed_dir: Path,
    trained: nn.Module,
    target_params: int,
    *,
    resume: bool,
    progress: bool,
) -> tuple[PostTrainingResult, ...]:
    cache = seed_dir / "after_training.json"
    after: tuple[PostTrainingResult, ...] = ()
    if resume and cache.is_file():
        after = tuple(PostTrainingResult.from_dict(v) for v in json.loads(cache.read_text()))
    if tuple(r.method for r in after) == METHODS:
        return after
    results = []
    for method in METHODS:
        _log(progress, config, f"seed {seed}: after training, {method}")
        results.append(
            baselines.run_method(
                method,
                trained,
                config,
                seed=seed,
                target_params=target_params,
                train=data[0],
                test=data[1],
                progress=progress,
            )
        )
        write_json(cache, [r.to_dict() for r in results])
    return tuple(results)


def _spectra(
    config: ExperimentConfig,
    seed: int,
    seed_dir: Path,
    arms: dict[str, tuple[ArmResult, nn.Module]],
    *,
    resume: bool,
) -> tuple[plots.SpectrumSnapshot, ...]:
    path = seed_dir / "spectra.json"
    if resume and path.is_file():
        return tuple(plots.SpectrumSnapshot.from_dict(v) for v in json.loads(path.read_text()))
    (normal, normal_model), (pruned, pruned_model) = arms["normal"], arms["pruned"]
    names = [r.name for r in normal.layers[0] if r.status == "ok"]
    final_ranks = {r.name: r.rank for r in pruned.layers[-1]}
    snapshots: tuple[plots.SpectrumSnapshot, ...] = ()
    for stage, model, known in (
        ("init", config.build_model(seed), None),
        ("normal-final", normal_model, None),
        ("pruned-final", pruned_model, final_ranks),
    ):
        snapshots += plots.spectrum_snapshots(
            model, stage, names, ranks=known, alpha=config.alpha, beta=config.beta
        )
    write_json(path, [s.to_dict() for s in snapshots])
    return snapshots


def _run_seed(
    config: ExperimentConfig,
    seed: int,
    data: tuple[Any, Any],
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    hook: EpochHook | None,
) -> SeedResult:
    """The seed's stored result, else train (or resume) both arms, baselines, spectra."""
    stored = rundir.load_seed(run_dir, seed)
    if stored is not None:
        _log(progress, config, f"seed {seed}: finished earlier (seed-{seed}/result.json)")
        return stored
    folder = rundir.seed_dir(run_dir, seed)
    arms = {
        arm: _run_arm(
            config, seed, arm, data, folder / arm, resume=resume, progress=progress, hook=hook
        )
        for arm in ARMS
    }
    normal, pruned = arms["normal"][0], arms["pruned"][0]
    after = _after_training(
        config,
        seed,
        data,
        folder,
        arms["normal"][1],
        pruned.final_params,
        resume=resume,
        progress=progress,
    )
    snapshots = _spectra(config, seed, folder, arms, resume=resume)
    result = SeedResult(seed, normal, pruned, after, snapshots)
    rundir.save_seed(run_dir, result)
    return result


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
    see :mod:`rmtprune.experiments.rundir`), and the report covers them all.

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
    _log(
        progress,
        config,
        f"run directory {run_dir}; {len(data[0])} training and "
        f"{len(data[1])} test samples; seeds {list(config.seeds)}; device {config.device}",
    )
    seeds = []
    with _threads(config.num_threads):
        for i, seed in enumerate(config.seeds):
            _log(progress, config, f"seed {seed} ({i + 1}/{len(config.seeds)})")
            seeds.append(
                _run_seed(
                    config, seed, data, run_dir, resume=resume, progress=progress, hook=on_epoch_end
                )
            )
        _log(progress, config, "figures and report")
        result = _finish(run_dir, config, seeds, started)
    _log(progress, config, f"done in {result.wall_time:.0f} s: {run_dir / 'report.md'}")
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
    values = rundir.read_config(folder)
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


SEEDS_GRAMMAR = "a count K (seeds 0..K-1), a list 0,1,2, a range 1-2, or a mix such as 0,3-5"


def parse_seeds(text: str) -> int | tuple[int, ...]:
    """Parse ``--seeds``: a count (``"3"`` → 3) or seed values (``"0,2-4"`` → (0, 2, 3, 4)).

    Examples
    --------
    >>> parse_seeds("3"), parse_seeds("0,1,2"), parse_seeds("1-2"), parse_seeds("0,3-4")
    (3, (0, 1, 2), (1, 2), (0, 3, 4))
    """
    body = str(text).replace(" ", "")
    if body.isdigit():
        return int(body)
    seeds: list[int] = []
    for part in body.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)):
            raise param_error("seeds", "reproduce", SEEDS_GRAMMAR, text)
        seeds += range(int(low), int(high) + 1) if dash else [int(low)]
    if len(set(seeds)) != len(seeds):
        raise param_error("seeds", "reproduce", f"distinct seeds ({SEEDS_GRAMMAR})", text)
    return tuple(seeds)


def seed_tuple(seeds: int | str | Sequence[int], owner: str = "reproduce") -> tuple[int, ...]:
    """The seed values meant by ``seeds``: a count ``K`` → ``0..K−1``; a string as in
    :func:`parse_seeds`; a sequence of ints as given."""
    if isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return tuple(range(check_int(seeds, "seeds", owner, low=1)))
    if isinstance(seeds, bytes) or not isinstance(seeds, Sequence) or not seeds:
        raise param_error(
            "seeds", owner, f"a positive int or a sequence of ints ({SEEDS_GRAMMAR})", seeds
        )
    return tuple(check_int(s, "seeds", owner, low=0) for s in seeds)


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
) -> RunResult | AnalysisRun:
    """Reproduce one of the paper's experiments.

    Parameters
    ----------
    experiment_id : str
        One of :func:`rmtprune.experiments.list_experiments`, or one of the analysis
        experiments ``theory``, ``init``, ``regression``, ``landscape``, which are run by
        :func:`rmtprune.experiments.analysis.reproduce_analysis` (its ``AnalysisRun``
        result also has ``run_dir``).
    preset : {"smoke", "small", "paper"}
        Scale (see :mod:`rmtprune.experiments.registry`).
    seeds : int, str, sequence of int or None
        ``K`` runs seeds ``0, …, K−1``; a sequence (or a string such as ``"0,1,2"``
        or ``"1-2"``, see :func:`parse_seeds`) runs those seeds; None keeps the
        preset's seeds.  A run directory that already holds seeds keeps them: the run
        then covers both.
    device : str
        Torch device of training (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).
    out, data_dir, download, progress, resume, import_seeds
        As in :func:`run_experiment`.

    Returns
    -------
    RunResult or AnalysisRun

    Examples
    --------
    >>> result = reproduce("fc-mnist", preset="smoke", seeds="0,1",
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
    config = get_config(experiment_id, preset).replace(device=check_device(device))
    if seeds is not None:
        config = config.replace(seeds=seed_tuple(seeds))
    return run_experiment(
        config,
        out=out,
        data_dir=data_dir,
        download=download,
        progress=progress,
        resume=resume,
        import_seeds=import_seeds,
    )
