"""After pruning, learning-rate schedulers give the unpruned run's sequence (issue 13, item 2).

The reference is the same schedule stepped on an optimizer whose model is never pruned; the
pruned run prunes twice on the way (a split, then a re-split).  Both paths are checked: the
optimizer passed to ``pruner.step``, and ``update_optimizer_after_step`` after ``pruner.step``
(formerly ``rebuild_optimizer``, which returned a new optimizer, so the scheduler kept driving
the old one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sch

from rmtprune import MPCriterion, SpectralPruner, schedules
from rmtprune.pruning.optim import update_optimizer_after_step

STEPS = 12


def _hf(name: str) -> Callable[[torch.optim.Optimizer], Any]:
    def make(opt: torch.optim.Optimizer) -> Any:
        optimization = pytest.importorskip("transformers.optimization")
        return getattr(optimization, name)(opt, num_warmup_steps=3, num_training_steps=STEPS)

    return make


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: sch.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: sch.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3),
    "LambdaLR": lambda o: sch.LambdaLR(o, [lambda e: 1 / (1 + e), lambda e: 0.9**e]),
    "CosineAnnealingLR": lambda o: sch.CosineAnnealingLR(o, T_max=STEPS),
    "OneCycleLR": lambda o: sch.OneCycleLR(o, max_lr=[0.1, 0.05], total_steps=STEPS + 1),
    "LinearLR": lambda o: sch.LinearLR(o, start_factor=0.2, total_iters=6),
    "hf-linear-warmup": _hf("get_linear_schedule_with_warmup"),
    "hf-cosine-warmup": _hf("get_cosine_schedule_with_warmup"),
}


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40))


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    named = list(model.named_parameters())
    return torch.optim.SGD(
        [
            {"params": [p for n, p in named if not n.endswith("bias")], "lr": 0.1},
            {"params": [p for n, p in named if n.endswith("bias")], "lr": 0.05},
        ],
        momentum=0.9,
    )


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.ones(4, 64)).square().mean().backward()
    opt.step()


def _run(make: Callable[[torch.optim.Optimizer], Any], mode: str) -> list[list[float]]:
    model = _model()
    opt = _optimizer(model)
    scheduler = make(opt)
    pruner = SpectralPruner(
        model,
        schedule=schedules.Linear(STEPS),
        every=4,
        criterion=MPCriterion(min_rank=8),
        split=True,
    )
    seen = []
    for step in range(1, STEPS + 1):
        _train_step(model, opt)
        scheduler.step()
        if mode == "step":
            changed = pruner.step(step, optimizer=opt).changed
        elif mode == "after_step":
            changed = pruner.step(step).changed
            if changed:
                opt = update_optimizer_after_step(opt, model)
        else:
            changed = False
        assert changed == (mode != "none" and step in (4, 8, 12))
        seen.append([g["lr"] for g in opt.param_groups])
    if mode != "none":
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {
            id(p) for p in model.parameters()
        }
    return seen


@pytest.mark.parametrize("mode", ["step", "after_step"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_learning_rates_equal_the_unpruned_sequence(name: str, mode: str) -> None:
    reference = _run(SCHEDULERS[name], "none")
    assert len({tuple(r) for r in reference}) > 1  # the schedule does change the rate
    assert all(math.isfinite(v) for row in reference for v in row)
    assert _run(SCHEDULERS[name], mode) == reference
