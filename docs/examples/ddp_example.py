"""Pruning under DistributedDataParallel: 2 CPU processes (gloo), different thread counts.

Run: ``python docs/examples/ddp_example.py [OUT_DIR]``.  Each rank saves its weights after every
pruning step and at the end (``OUT_DIR/rank{r}.pt``); ``main`` checks they are bitwise equal
across ranks and returns them.  tests/integrations/test_examples.py runs it.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import rmtprune
from rmtprune.integrations.ddp import prune_step

EPOCHS = 5


def worker(rank: int, world: int, port: int, out: str, width: int = 48, steps: int = 4) -> None:
    torch.set_num_threads(1 + rank)  # ranks deliberately differ
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                              nn.Linear(width, 4)))  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.8)
    pruner = rmtprune.SpectralPruner(
        model.module,
        schedule=rmtprune.schedules.Linear(6),
        every=2,
        criterion=rmtprune.MPCriterion(min_rank=8),
        split=True,
    )
    data = torch.Generator().manual_seed(100 + rank)  # each rank sees its own batches
    snapshots: list[dict[str, torch.Tensor]] = []
    seconds = {"train": 0.0, "prune": 0.0}
    for epoch in range(1, EPOCHS + 1):
        start = time.perf_counter()
        for _ in range(steps):
            x, y = torch.randn(16, 64, generator=data), torch.randint(0, 4, (16,), generator=data)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        scheduler.step()
        seconds["train"] += time.perf_counter() - start
        start = time.perf_counter()
        model, report = prune_step(pruner, epoch, model, optimizer=optimizer)  # the one call
        if report.changed:
            seconds["prune"] += time.perf_counter() - start
            snapshots.append({k: v.clone() for k, v in model.module.state_dict().items()})
    snapshots.append({k: v.clone() for k, v in model.module.state_dict().items()})
    torch.save({"snapshots": snapshots, "seconds": seconds}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(out: str | Path, width: int = 48, steps: int = 4) -> list[dict[str, Any]]:
    """Run 2 ranks, check their weights are equal after every pruning step, return the results."""
    Path(out).mkdir(parents=True, exist_ok=True)
    mp.spawn(worker, args=(2, _free_port(), str(out), width, steps), nprocs=2, join=True)
    results = [torch.load(Path(out) / f"rank{r}.pt") for r in range(2)]
    first, second = results[0]["snapshots"], results[1]["snapshots"]
    assert len(first) == len(second) == 3  # pruned at epochs 2 and 4, then the end
    for a, b in zip(first, second, strict=True):
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    return results


if __name__ == "__main__":
    results = main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    print("ranks equal after every pruning step; seconds:", results[0]["seconds"])
