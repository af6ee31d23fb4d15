"""One seed of a classification run: both arms, the after-training methods, the spectra.

For each seed the *normal* and the *pruned* arm are built and initialised with the same
generator seed (identical weights, checked by a digest stored with the metrics), trained
with the same :class:`~rmtprune.paper.training.TrainConfig` and differ only by the
:class:`~rmtprune.SpectralPruner` steps.  After every epoch each large layer of each arm is
analysed (``layers.json``).  Then the trained normal network is pruned after training
(:mod:`rmtprune.paper.experiments.classification.baselines`), and the spectra of each large layer
are taken at
initialisation and at the end of both arms.  Every step resumes from what its seed directory
holds; :func:`run_seed` stores the finished seed as ``seed-<s>/result.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from rmtprune._util.progress import say
from rmtprune.paper.experiments import rundir
from rmtprune.paper.experiments.classification import baselines, plots
from rmtprune.paper.experiments.classification.baselines import (
    METHODS,
    EvalPoint,
    PostTrainingResult,
)
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.results import ArmResult, SeedResult, layer_from_dict
from rmtprune.paper.experiments.rundir import write_json
from rmtprune.paper.training import EpochRecord, Trainer, evaluate
from rmtprune.pruning.criteria import MPCriterion
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.report import LayerAnalysis
from rmtprune.pruning.selection import Select
from rmtprune.pruning.walker import analyze

__all__ = ["ARMS", "EpochHook", "log", "run_arm", "run_seed"]

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
        criterion=MPCriterion(
            alpha=config.alpha, beta=config.beta, fit_cutoff=config.fit_cutoffs()
        ),
        select=Select(min_dim=config.min_dim, min_params=config.min_params),
        ranks=ranks,
    )
    return tuple(r for r in rep.layers if not r.reason.startswith("too small"))


def log(enabled: bool, config: ExperimentConfig, message: str) -> None:
    """One progress line ``[experiment/preset] message`` on stderr when ``enabled``."""
    say(f"[{config.experiment}/{config.preset}] {message}", enabled=enabled)


# ------------------------------------------------------------------------ one arm, one seed
def _pruner(config: ExperimentConfig, model: nn.Module) -> SpectralPruner:
    return SpectralPruner(
        model,
        schedule=config.schedule(),
        every=config.every,
        criterion=MPCriterion(
            min_rank=config.min_rank_resolved,
            alpha=config.alpha,
            beta=config.beta,
            fit_cutoff=config.fit_cutoffs(),
        ),
        select=Select(min_dim=config.min_dim, min_params=config.min_params),
    )


class _LayerLog:
    """Per-epoch layer analyses of one arm, kept in ``layers.json`` (read back on resume)."""

    def __init__(self, config: ExperimentConfig, path: Path, resume: bool) -> None:
        self.config, self.path = config, path
        self.saved: dict[int, tuple[LayerAnalysis, ...]] = {}
        if resume and path.is_file():
            for entry in json.loads(path.read_text()):
                self.saved[int(entry["epoch"])] = tuple(layer_from_dict(r) for r in entry["layers"])

    def record(self, epoch: int, model: nn.Module, ranks: dict[str, int] | None) -> None:
        self.saved[epoch] = _analyze(self.config, model, ranks)
        entries = [{"epoch": e, "layers": [r.to_dict() for r in v]} for e, v in self.sorted()]
        write_json(self.path, entries)

    def sorted(self) -> list[tuple[int, tuple[LayerAnalysis, ...]]]:
        return sorted(self.saved.items())

    def keep_until(self, epoch: int) -> None:
        self.saved = {e: v for e, v in self.saved.items() if e <= epoch}


def run_arm(
    config: ExperimentConfig,
    seed: int,
    arm: str,
    data: tuple[Any, Any],
    arm_dir: Path,
    *,
    resume: bool,
    progress: bool,
    hook: EpochHook | None,
    prune: bool | None = None,
) -> tuple[ArmResult, nn.Module]:
    """Train (or resume) one arm of ``seed`` in ``arm_dir``; its result and trained model.

    The network is ``config.build_model(seed)`` (its initial weights' SHA-256 is stored with
    the result) trained with ``config.train_config(seed)``; ``prune`` (default: ``arm ==
    "pruned"``) adds the :class:`~rmtprune.SpectralPruner` of ``config``.  The layers are
    analysed after every epoch (``layers.json``).
    """
    model = config.build_model(seed)
    digest = _digest(model)
    initial = evaluate(model, data[1])
    initial_point = EvalPoint(baselines.count_parameters(model), initial.loss, initial.accuracy)
    pruner = _pruner(config, model) if (arm == "pruned" if prune is None else prune) else None
    layers_log = _LayerLog(config, arm_dir / "layers.json", resume)
    layers_log.saved[0] = _analyze(config, model, None)

    def on_epoch_end(trainer: Trainer, record: EpochRecord) -> None:
        layers_log.record(record.epoch, trainer.model, None if pruner is None else pruner.ranks)
        log(
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
    layers_log.keep_until(done)
    if done and done not in layers_log.saved:  # killed between the checkpoint and the layer log
        layers_log.record(done, trainer.model, None if pruner is None else pruner.ranks)
    state = f"training epochs {done + 1}–{config.epochs}" if done < config.epochs else "complete"
    log(progress, config, f"seed {seed} {arm:>6}: {state} ({arm_dir})")
    history = trainer.fit()
    layers = tuple(layers_log.saved[e] for e in range(0, len(history) + 1))
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
        log(progress, config, f"seed {seed}: after training, {method}")
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


def run_seed(
    config: ExperimentConfig,
    seed: int,
    data: tuple[Any, Any],
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    hook: EpochHook | None,
) -> SeedResult:
    """The seed's stored result, else train (or resume) both arms, baselines, spectra.

    ``hook(seed, arm, record)`` is called after each epoch's checkpoint and log line.
    """
    stored = rundir.load_seed(run_dir, seed)
    if stored is not None:
        log(progress, config, f"seed {seed}: finished earlier (seed-{seed}/result.json)")
        return stored
    folder = rundir.seed_dir(run_dir, seed)
    arms = {
        arm: run_arm(
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
