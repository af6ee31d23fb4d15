"""A second family: the paper's CNN (cnn-fashion, preset small) compressed after training.

The trained *normal* (unpruned) network of seed 0 comes from the run directory ``--run`` of
``rmtprune reproduce cnn-fashion --preset small --seeds 1`` (a count: seed 0 only); a directory
without it is filled by that run (resumable, about 9 min on one loaded core), a finished one is
reused.  Each method prunes a copy once, with no fine-tuning unless ``--finetune-epochs`` asks
for some (the preset's SGD at the run's last learning rate): the spectral rule
(``rmtprune.prune(model)``; the run's ``min_rank`` and conv cutoff, also with ``bulk_keep``),
the calibrated guard on whitened SVD, magnitude and Wanda sparsity, Wanda 2:4, and the guard
over Wanda.  Every method sees the default ``Select()`` (layers with ``min(m, n) ≥ 32``: the
last three convolutions and the hidden Linear layer, 672,768 of the 681,246 parameters).

Calibration batches come from the preset's training subset; accuracy is measured on the
preset's test subset (5,000 of the 10,000 test images, the set the run itself reports).
"stored" counts the values ``rmtprune.save`` writes (masked zeros are not stored; the file
holds a bitmask instead).  Latency: the median of ``--repeats`` forward passes of one test
batch of 128 on one CPU thread, timed in alternation with the unpruned model (the ratio).
Unstructured and 2:4 zeros are still multiplied by dense kernels, so sparsity does not make
it faster; only the smaller factorized layers can.

Run (about 5 min on one loaded core, once the run directory holds the trained network)::

    OMP_NUM_THREADS=1 RMTPRUNE_DATA=/work/shared/data PYTHONPATH=src .venv/bin/python \\
        bench/bench_cnn.py --run /work/runs/cnn-fashion-small --out bench_cnn.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

import rmtprune
from rmtprune.factorize.masks import stored_parameters
from rmtprune.paper.experiments import ExperimentConfig, get_config, reproduce
from rmtprune.paper.training import Trainer, evaluate, load_state

EXPERIMENT, PRESET, SEED = "cnn-fashion", "small", 0


def trained_model(run: Path, data_dir: str | None) -> tuple[nn.Module, ExperimentConfig]:
    """The trained normal network of seed 0 in ``run`` (trained there first if need be)."""
    config = get_config(EXPERIMENT, PRESET).replace(seeds=(SEED,))
    checkpoint = run / f"seed-{SEED}" / "normal" / "checkpoint.pt"
    if not checkpoint.is_file() or load_state(checkpoint).epoch < config.epochs:
        reproduce(EXPERIMENT, preset=PRESET, seeds=[SEED], out=run, data_dir=data_dir)
    model = config.build_model(SEED)
    model.load_state_dict(load_state(checkpoint).model_state)
    return model.eval(), config


def methods(args: argparse.Namespace, calib: list[torch.Tensor], config: ExperimentConfig) -> list:
    """(label, criterion factory) pairs; a factory so that each row gets a fresh criterion."""
    paper = rmtprune.MPCriterion(min_rank=config.min_rank_resolved, fit_cutoff=config.fit_cutoffs())
    rows: list[tuple[str, Callable[[], Any]]] = [
        ("spectral rule, defaults: `prune(model)`", lambda: None),
        ("spectral rule, the run's settings (min_rank 10)", lambda: paper),
    ]
    for keep in args.bulk_keep:
        label = f"spectral rule, the run's settings, bulk_keep={keep:g}"
        rows.append((label, partial(paper.with_bulk_keep, keep)))
    for delta in args.deltas:
        guard = partial(rmtprune.Calibrated, calib, delta, whiten=True)
        rows.append((f"calibrated δ={delta:g}, whitened SVD", guard))
    for level in args.levels:
        for score in ("magnitude", "wanda"):
            sparsity = partial(rmtprune.Sparsity, level, score=score, calibration=calib)
            rows.append((f"{score} {100 * level:g} %", sparsity))
    two_four = partial(rmtprune.Sparsity, pattern="2:4", score="wanda", calibration=calib)
    rows.append(("wanda 2:4", two_four))

    def over_wanda(delta: float) -> rmtprune.Calibrated:
        base = rmtprune.Sparsity(args.ceiling, score="wanda", calibration=calib)
        return rmtprune.Calibrated(calib, delta, base=base)

    for delta in args.deltas:
        label = f"wanda ≤ {100 * args.ceiling:g} %, calibrated δ={delta:g}"
        rows.append((label, partial(over_wanda, delta)))
    return rows


def file_mb(model: nn.Module) -> float:
    """Size in MB of ``rmtprune.save(model)``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        rmtprune.save(model, path)
        return os.path.getsize(path) / 1e6


def finetune(model: nn.Module, config: ExperimentConfig, data: tuple, epochs: int) -> nn.Module:
    """``epochs`` of the preset's SGD at the run's last learning rate (masks stay applied)."""
    train_config = config.train_config(SEED, epochs=epochs, lr=config.final_lr())
    trainer = Trainer(model, data[0], data[1], train_config, progress=False)
    trainer.fit()
    return trainer.model


class Judge:
    """Scores a pruned copy against the unpruned ``model`` on the ``test`` set."""

    def __init__(self, model: nn.Module, test: Any, repeats: int) -> None:
        self.model, self.test, self.repeats = model, test, repeats
        self.batch = test.tensors[0][:128]
        self.stored = stored_parameters(model)
        self.accuracy = evaluate(model, test).accuracy

    def latency(self, model: nn.Module) -> tuple[float, float]:
        """Median ms of one forward pass of the batch, and its ratio to the unpruned model's,
        timed in alternation so that both see the same load."""
        times: dict[nn.Module, list[float]] = {model: [], self.model: []}
        with torch.no_grad():
            for i in range(self.repeats + 1):
                for m in times:
                    t = time.perf_counter()
                    m(self.batch)
                    if i:  # the first round warms up
                        times[m].append(time.perf_counter() - t)
        ms, ref = (1e3 * statistics.median(times[m]) for m in (model, self.model))
        return ms, ms / ref

    def score(self, label: str, model: nn.Module, seconds: float, note: str) -> dict[str, Any]:
        stored, accuracy = stored_parameters(model), evaluate(model.eval(), self.test).accuracy
        ms, ratio = self.latency(model)
        return {
            "method": label,
            "stored": stored,
            "removed": 1 - stored / self.stored,
            "accuracy": accuracy,
            "delta_points": 100 * (accuracy - self.accuracy),
            "file_mb": file_mb(model),
            "latency_ms": ms,
            "latency_ratio": ratio,
            "seconds": seconds,
            "note": note,
        }


def markdown(rows: list[dict[str, Any]], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| method | stored parameters | removed | test accuracy | Δ (points) | file (MB) "
            "| latency, batch 128 (ms) | latency / unpruned | prune (s) | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['stored']:,} | {100 * r['removed']:.1f} % "
            f"| {100 * r['accuracy']:.2f} % | {r['delta_points']:+.2f} | {r['file_mb']:.2f} "
            f"| {r['latency_ms']:.1f} | {r['latency_ratio']:.2f} | {r['seconds']:.1f} "
            f"| {r['note']} |"
        )
    return "\n".join(lines)


def note_of(report: rmtprune.PruneReport, criterion: Any) -> str:
    """Ranks of the factorized layers, layers left as they were, and a guard's measurements."""
    parts = [f"{r.name} {r.rank_before}→{r.rank_after}" for r in report
             if r.action in ("split", "truncated")]  # fmt: skip
    kept = [r.name for r in report if r.action == "skipped" and not r.reason.startswith("too")]
    if kept and not any(r.action == "sparsified" for r in report):
        parts.append("not MP-like: " + ", ".join(kept))
    if report.output_change is not None:
        parts.append(f"held-out calibration change {report.output_change:.3f}")
    if getattr(criterion, "level_", None) is not None:
        parts.append(f"level {100 * criterion.level_:.1f} %")
    return "; ".join(parts)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_help = "run directory of `rmtprune reproduce cnn-fashion --preset small`"
    p.add_argument("--run", type=Path, default=Path("runs/cnn-fashion-small"), help=run_help)
    p.add_argument("--data-dir", default=None, help="dataset root (default: $RMTPRUNE_DATA)")
    p.add_argument("--calib-batches", type=int, default=8, help="training batches of 128")
    p.add_argument("--bulk-keep", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--deltas", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--ceiling", type=float, default=0.9, help="guarded wanda: most removed")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--repeats", type=int, default=7, help="latency: timed forward passes")
    p.add_argument("--out", default=None, help="write the rows, args and wall time as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.time()
    torch.set_num_threads(1)
    model, config = trained_model(args.run, args.data_dir)
    train, test = config.load_data(args.data_dir)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SEED))
    x = train.tensors[0][order[: 128 * args.calib_batches]]
    calib = list(x.split(128))
    judge = Judge(model, test, args.repeats)
    rows = [judge.score("unpruned (normal arm)", model, 0.0, "")]
    print(markdown(rows), flush=True)
    for label, factory in methods(args, calib, config):
        t = time.time()
        criterion = factory()
        pruned, report = rmtprune.prune(model, criterion=criterion)
        seconds, note = time.time() - t, note_of(report, criterion)
        if args.finetune_epochs:
            pruned = finetune(pruned, config, (train, test), args.finetune_epochs)
            note += f"; then {args.finetune_epochs} epochs of fine-tuning"
        rows.append(judge.score(label, pruned, seconds, note))
        print(markdown(rows[-1:], header=False), flush=True)
    wall = time.time() - start
    if args.out:
        result = {"rows": rows, "wall_seconds": wall, "args": vars(args)}
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{markdown(rows)}\n\nwall time {wall:.0f} s, torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
