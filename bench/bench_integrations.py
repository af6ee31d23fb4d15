"""Overhead of a pruning step inside each training stack, relative to one training epoch.

Each stack trains a small model on random data and prunes on a schedule; the figure reported is
``mean seconds of a pruning step that changed the model / mean seconds of a training epoch``
(both measured in the same run, so the ratio survives a noisy shared machine).  Run with::

    PYTHONPATH=src .venv/bin/python bench/bench_integrations.py [--threads 1]

Prints a Markdown table; docs/integrations.md records a run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import rmtprune

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def _example(name: str) -> ModuleType:
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def plain() -> tuple[str, float, float]:
    result = _example("plain_loop_example").main(width=512, epochs=4, batches=32)
    steps = len(result["params"]) - 1
    s = result["seconds"]
    return "plain loop, MLP 64-512-512-4, 32 batches of 64", s["train"] / 4, s["prune"] / steps


def lightning() -> tuple[str, float, float]:
    import lightning.pytorch as pl

    ex = _example("lightning_example")

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    cb, timer = ex.callback(), Timer()  # the timer starts after the pruning callback acted
    pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_progress_bar=False,
               enable_model_summary=False, enable_checkpointing=False,
               callbacks=[cb, timer]).fit(ex.Classifier(512), ex.data(2048))  # fmt: skip
    return (
        "Lightning, MLP 64-512-512-4, 32 batches of 64",
        sum(timer.seconds) / len(timer.seconds),
        sum(cb.seconds) / len(cb.seconds),
    )


def transformers_trainer(out: Path) -> tuple[str, float, float]:
    ex = _example("transformers_example")
    cb = ex.callback()
    trainer = ex.trainer(ex.build(256), out, 16, cb)  # 64 samples / 16 = 4 steps an epoch
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start - sum(cb.seconds)
    return (
        "HF Trainer, BERT hidden 256 x 2 layers, 4 steps of 16 x 16 tokens",
        total / 4,
        sum(cb.seconds) / len(cb.seconds),
    )


def ddp(out: Path) -> tuple[str, float, float]:
    results = _example("ddp_example").main(out, width=512, steps=32)
    s = results[0]["seconds"]  # rank 0 (1 thread) computes the factors
    return "DDP 2 ranks (gloo), MLP 64-512-512-4, 32 batches of 16", s["train"] / 5, s["prune"] / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm = torch.nn.Sequential(torch.nn.Linear(64, 64))  # one-off imports and SciPy set-up
    rmtprune.prune(warm, criterion=rmtprune.MPCriterion(min_rank=8))
    out = Path(tempfile.mkdtemp())
    rows = [plain(), lightning(), transformers_trainer(out / "hf"), ddp(out / "ddp")]
    print("| stack | epoch (s) | pruning step (s) | step / epoch |")
    print("|---|---:|---:|---:|")
    for name, epoch, step in rows:
        print(f"| {name} | {epoch:.3f} | {step:.3f} | {step / epoch:.2f} |")


if __name__ == "__main__":
    main()
