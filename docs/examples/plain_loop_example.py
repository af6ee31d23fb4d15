"""Pruning in a hand-written loop: AdamW with decay / no-decay groups and a OneCycleLR schedule.

Run: ``python docs/examples/plain_loop_example.py``.  The optimizer object is edited in place by
``pruner.step(epoch, optimizer=optimizer)``, so the scheduler keeps driving it.
tests/integrations/test_examples.py runs ``main``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

import rmtprune


def main(width: int = 64, epochs: int = 4, batches: int = 4) -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 4))  # fmt: skip
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in named if not n.endswith("bias")], "weight_decay": 0.01},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ], lr=1e-3)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1e-2, total_steps=epochs * batches
    )
    pruner = rmtprune.SpectralPruner(
        model,
        schedule=rmtprune.schedules.Linear(total_epochs=epochs),
        every=2,
        criterion=rmtprune.MPCriterion(min_rank=8),
    )
    data = torch.Generator().manual_seed(1)
    params, seconds = [rmtprune.prune(model, dry_run=True)[1].params_before], {"train": 0.0}
    seconds["prune"] = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        for _ in range(batches):
            x, y = torch.randn(64, 64, generator=data), torch.randint(0, 4, (64,), generator=data)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            scheduler.step()  # keeps working: the optimizer object never changes
        seconds["train"] += time.perf_counter() - start
        start = time.perf_counter()
        report = pruner.step(epoch, optimizer=optimizer)  # edits the optimizer in place
        if report.changed:
            seconds["prune"] += time.perf_counter() - start
            params.append(report.params_after)
    return {"params": params, "seconds": seconds, "epochs": epochs, "model": model,
            "optimizer": optimizer, "scheduler": scheduler}  # fmt: skip


if __name__ == "__main__":
    result = main()
    print("parameters after each pruning step:", result["params"])
