"""Overhead of a pruning step inside each training stack, relative to one training epoch.

Each stack trains a small model on random data for a few epochs and prunes on a schedule.  The
figures are rank 0's mean wall seconds of a training epoch and of a pruning step that changed the
model (everything the integration does in it: deciding, broadcasting, factorizing, rewrapping or
resharding, editing the optimizer), both timed inside the training processes in the same run (so
process start-up and imports are not counted, and the ratio survives a noisy shared machine).
Besides one process (a plain loop, Lightning, the Hugging Face Trainer) the stacks run 2 CPU ranks
(gloo, 127.0.0.1, free ports): DDP by hand (``rmtprune.integrations.ddp.prune_step``), Lightning
``strategy="ddp"`` and ``"ddp_spawn"``, the HF Trainer under ``torchrun --nproc_per_node 2`` (their
callbacks) and FSDP2 ``fully_shard`` (``rmtprune.integrations.fsdp.prune_step``).  Under Lightning
and the HF Trainer each rank's epoch is the single-process row's epoch; the DDP and FSDP2 loops are
one loop, 32 batches of 16 per rank.  Run with::

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python bench/bench_integrations.py [--threads 1]

Prints a Markdown table on standard output (the stacks' own output goes to standard error);
docs/integrations.md records a run.  ``--stack NAME --out DIR`` runs one stack's training script:
what the bench starts as a subprocess (Lightning's "ddp" re-runs it for rank 1; torchrun runs it
on each rank).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import rmtprune

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
EPOCHS = 5  # the stacks built here prune after epochs 2 and 4 (Linear(6), every=2)
TIMES = "times.json"
Times = tuple[float, float]  # mean seconds of an epoch, of a pruning step that changed the model
Stack = Callable[[Path, int], Times]  # (out, threads) -> rank 0's times


def _example(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(EXAMPLES))  # also for spawned workers: they unpickle its classes
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- the record of one run: rank 0's epochs and pruning steps ----------------------------------


def _mean(seconds: Sequence[float]) -> float:
    return sum(seconds) / len(seconds)


def _save(out: str | Path, epochs: Sequence[float], steps: Sequence[float]) -> None:
    """Rank 0 writes its mean seconds of an epoch and of a pruning step that changed the model."""
    Path(out, TIMES).write_text(json.dumps({"epoch": _mean(epochs), "step": _mean(steps)}))
    print(f"{out}: epochs {[round(t, 3) for t in epochs]}, pruning steps "
          f"{[round(t, 3) for t in steps]}", file=sys.stderr)  # fmt: skip


def _load(out: Path) -> Times:
    record = json.loads((out / TIMES).read_text())
    return record["epoch"], record["step"]


def _warm_up(threads: int) -> None:
    """Every process, before its timing: the thread count, and the one-off imports and SciPy
    set-up that a process's first pruning pays (about 1 s), so that no step is charged them."""
    torch.set_num_threads(threads)
    rmtprune.prune(nn.Sequential(nn.Linear(64, 64)), criterion=rmtprune.MPCriterion(min_rank=8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launched(stack: str, ranks: int = 2) -> Stack:
    """Run ``--stack stack`` of this script in a subprocess (under torchrun for "hf-torchrun")."""

    def run(out: Path, threads: int) -> Times:
        port = str(_free_port())
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = port
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        launcher = []
        if stack == "hf-torchrun":
            launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                        "--master_addr", "127.0.0.1", "--master_port", port]  # fmt: skip
        script = [__file__, "--stack", stack, "--out", str(out), "--threads", str(threads)]
        done = subprocess.run([sys.executable, *launcher, *script], env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        sys.stderr.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"stack {stack!r} failed (exit {done.returncode}): see above")
        return _load(out)

    return run


# --- the stacks ---------------------------------------------------------------------------------


def plain(out: Path, threads: int) -> Times:
    result = _example("plain_loop_example").main(width=512, epochs=4, batches=32)
    s = result["seconds"]
    return s["train"] / 4, s["prune"] / (len(result["params"]) - 1)


def lightning_timer(out: str, threads: int) -> Any:
    """A Lightning callback timing each training epoch (after the pruning callback acted, at the
    epoch's start); rank 0 saves the times.  Built on use: importing Lightning takes ~15 s,
    which the workers of the other stacks (they import this module too) need not pay."""
    import lightning.pytorch as pl

    from rmtprune.integrations.lightning import SpectralPruningCallback

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def __reduce__(self) -> Any:  # "ddp_spawn" pickles the callbacks for its workers
            return lightning_timer, (out, threads)

        def setup(self, trainer: Any, module: Any, stage: str) -> None:
            _warm_up(threads)

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)

        def on_train_end(self, trainer: Any, module: Any) -> None:
            if trainer.global_rank == 0:
                cb = next(c for c in trainer.callbacks if isinstance(c, SpectralPruningCallback))
                _save(out, self.seconds, cb.seconds)

    return Timer()


def lightning(out: Path, threads: int, strategy: str = "auto", ranks: int = 1) -> Times:
    """docs/examples/lightning_example.py's module and callback; 32 batches of 64 per rank."""
    import lightning.pytorch as pl

    ex = _example("lightning_example")
    callbacks = [ex.callback(), lightning_timer(str(out), threads)]  # pruning first
    pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=ranks, strategy=strategy,
               logger=False, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=out,
               callbacks=callbacks).fit(ex.Classifier(512), ex.data(2048 * ranks))  # fmt: skip
    return _load(out) if ranks == 1 else (0.0, 0.0)  # other ranks: rank 0 saved


def hf(out: Path, threads: int) -> Times:
    """docs/examples/transformers_example.py's BERT; 4 steps of 16 per rank an epoch, no saving.
    One process, or one rank under torchrun (``WORLD_SIZE`` ranks, the Trainer's DDP)."""
    import transformers

    from rmtprune.integrations.transformers import SpectralPruningCallback

    class Timer(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)  # before the pruning callback

    _warm_up(threads)
    ex = _example("transformers_example")
    timer, ranks = Timer(), int(os.environ.get("WORLD_SIZE", "1"))
    pruning = SpectralPruningCallback(
        interval="epoch", schedule=rmtprune.schedules.Linear(6), every=2,
        criterion=rmtprune.MPCriterion(min_rank=8),
        select=rmtprune.Select(include="bert.encoder.*"),
    )  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(out), num_train_epochs=EPOCHS, per_device_train_batch_size=16,
        save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
        learning_rate=1e-3, weight_decay=0.01, warmup_steps=2, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    transformers.Trainer(model=ex.build(256), args=args, train_dataset=ex.Tokens(64 * ranks),
                         callbacks=[timer, pruning]).train()  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        _save(out, timer.seconds, pruning.seconds)
    return _load(out) if ranks == 1 else (0.0, 0.0)


def _mlp(width: int = 512) -> nn.Module:
    """The MLP of the DDP and FSDP2 rows (FSDP2's ``build``: a fresh, unsharded model)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 4))  # fmt: skip


def _shard(model: nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    for name in ("0", "2"):  # a unit per hidden layer (split or not), and the root
        fully_shard(model.get_submodule(name))
    fully_shard(model)


def loop_worker(rank: int, kind: str, port: int, out: str, threads: int) -> None:
    """One of 2 ranks of a hand-written loop (docs/examples/ddp_example.py's, one thread a rank):
    32 batches of 16 per rank, SGD with momentum, the model wrapped in DDP (``kind="ddp"``) or
    sharded with FSDP2 (``"fsdp"``) and pruned by that integration's ``prune_step``."""
    _warm_up(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model: Any = _mlp()  # then wrapped in DDP, or sharded
    step: Callable[..., tuple[Any, Any]]  # (pruner, epoch, model, optimizer=) -> model, report
    if kind == "fsdp":
        from rmtprune.integrations import fsdp

        _shard(model)
        step = functools.partial(fsdp.prune_step, build=_mlp, shard=_shard)
    else:
        from rmtprune.integrations import ddp

        step = ddp.prune_step
    pruner = rmtprune.SpectralPruner(
        model, schedule=rmtprune.schedules.Linear(6), every=2,
        criterion=rmtprune.MPCriterion(min_rank=8), split=True,
    )  # fmt: skip
    if kind == "ddp":
        model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)  # each rank sees its own batches
    epochs, steps = [], []
    for epoch in range(1, EPOCHS + 1):
        start = time.perf_counter()
        for _ in range(32):
            x, y = torch.randn(16, 64, generator=data), torch.randint(0, 4, (16,), generator=data)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        epochs.append(time.perf_counter() - start)
        start = time.perf_counter()
        model, report = step(pruner, epoch, model, optimizer=optimizer)
        if report.changed:
            steps.append(time.perf_counter() - start)
    if rank == 0:
        _save(out, epochs, steps)
    dist.destroy_process_group()


def loop(kind: str) -> Stack:
    def run(out: Path, threads: int) -> Times:
        mp.spawn(loop_worker, args=(kind, _free_port(), str(out), threads), nprocs=2, join=True)
        return _load(out)

    return run


# --- the table ----------------------------------------------------------------------------------

MLP, BERT = "MLP 64-512-512-4", "BERT hidden 256 x 2 layers"
MLP_64, MLP_16 = f"{MLP}, 32 batches of 64", f"{MLP}, 32 batches of 16 per rank"
TOKENS = "4 steps of 16 x 16 tokens"
# name given to --stack: what that process runs (Lightning's "ddp" re-runs it for rank 1)
LAUNCHED: dict[str, Stack] = {
    "lightning-ddp": lambda out, threads: lightning(out, threads, "ddp", 2),
    "lightning-ddp_spawn": lambda out, threads: lightning(out, threads, "ddp_spawn", 2),
    "hf-torchrun": hf,
}
# (stack, ranks, how the bench runs it): in this process, or in a launched subprocess
ROWS: list[tuple[str, int, Stack]] = [
    (f"plain loop, {MLP_64}", 1, plain),
    (f"Lightning, {MLP_64}", 1, lightning),
    (f"HF Trainer, {BERT}, {TOKENS}", 1, hf),
    (f"DDP (gloo, `ddp.prune_step`), {MLP_16}", 2, loop("ddp")),
    (f'Lightning `strategy="ddp"`, {MLP_64} per rank', 2, launched("lightning-ddp")),
    (f'Lightning `strategy="ddp_spawn"`, {MLP_64} per rank', 2, launched("lightning-ddp_spawn")),
    (f"HF Trainer under torchrun, {BERT}, {TOKENS} per rank", 2, launched("hf-torchrun")),
    (f"FSDP2 (`fully_shard`, `fsdp.prune_step`), {MLP_16}", 2, loop("fsdp")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads a process (1)")
    parser.add_argument("--stack", choices=sorted(LAUNCHED), help="run one stack's script only")
    parser.add_argument("--out", type=Path, help="with --stack: where rank 0 writes its times")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for every process started from here
    if args.stack is not None:
        LAUNCHED[args.stack](args.out, args.threads)
        return
    _warm_up(args.threads)
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, ranks, run) in enumerate(ROWS):
            out = Path(tmp, str(i))
            out.mkdir()
            with contextlib.redirect_stdout(sys.stderr):  # standard output: the table only
                rows.append((name, ranks, *run(out, args.threads)))
    print("| stack | ranks | epoch (s) | pruning step (s) | step / epoch |")
    print("|---|---:|---:|---:|---:|")
    for name, ranks, epoch, step in rows:
        print(f"| {name} | {ranks} | {epoch:.3f} | {step:.3f} | {step / epoch:.2f} |")
    print(f"bench: {time.perf_counter() - start:.0f} s, --threads {args.threads}", file=sys.stderr)


if __name__ == "__main__":
    main()
