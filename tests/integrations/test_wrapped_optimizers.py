"""Optimizers wrapped by accelerate and Lightning are edited in place through the wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune import update_optimizer


def _pruned_pair() -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40))
    return model, dict(model.named_parameters())


def _prune(model: nn.Module) -> None:
    _, report = rmtprune.prune(
        model,
        inplace=True,
        criterion=rmtprune.MPCriterion(min_rank=8),
        select=rmtprune.Select(include="0"),
        split=True,
    )
    assert report.changed


def test_accelerate_optimizer_is_edited_in_place() -> None:
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model, _ = _pruned_pair()
    model, wrapped = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    assert type(wrapped).__name__ == "AcceleratedOptimizer"
    before = dict(model.named_parameters())
    _prune(model)
    assert update_optimizer(wrapped, model, before) is wrapped  # the old code: TypeError 'lr'
    ids = [id(p) for p in model.parameters()]
    assert [id(p) for p in wrapped.param_groups[0]["params"]] == ids
    assert [id(p) for p in wrapped.optimizer.param_groups[0]["params"]] == ids
    model(torch.ones(2, 64)).sum().backward()
    wrapped.step()
    assert model[0].first.weight in wrapped.optimizer.state


def test_lightning_optimizer_is_edited_in_place() -> None:
    core = pytest.importorskip("lightning.pytorch.core.optimizer")
    model, before = _pruned_pair()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = core.LightningOptimizer(inner)
    _prune(model)
    assert update_optimizer(wrapped, model, before) is wrapped
    assert [id(p) for p in inner.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
