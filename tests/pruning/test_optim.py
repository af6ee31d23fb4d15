"""rebuild_optimizer keeps hyperparameters and the state of surviving parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rmtprune.pruning.optim import rebuild_optimizer


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    loss = model(torch.ones(3, 6)).square().sum()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.Adam])
def test_surviving_state_is_kept_and_new_parameters_start_fresh(cls: type) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 2))
    kwargs = {"lr": 0.05, "momentum": 0.9} if cls is torch.optim.SGD else {"lr": 0.01}
    opt = cls(model.parameters(), **kwargs)
    _step(model, opt)
    opt.param_groups[0]["lr"] = 0.123  # as an LR scheduler would have done
    kept = model[1].weight
    kept_state = {k: v.clone() for k, v in opt.state[kept].items()}
    model[0] = nn.Linear(6, 5)  # a structural change: new parameters
    new = rebuild_optimizer(opt, model)
    assert type(new) is cls
    assert new.param_groups[0]["lr"] == 0.123
    ids = {id(p) for g in new.param_groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}
    for k, v in kept_state.items():
        assert torch.equal(new.state[kept][k], v)
    assert model[0].weight not in new.state
    _step(model, new)  # training carries on


def test_bad_types() -> None:
    with pytest.raises(TypeError, match="'optimizer' parameter of rebuild_optimizer"):
        rebuild_optimizer(object(), nn.Linear(2, 2))  # type: ignore[arg-type]
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TypeError, match="'model' parameter of rebuild_optimizer"):
        rebuild_optimizer(opt, object())  # type: ignore[arg-type]
