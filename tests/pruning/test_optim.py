"""update_optimizer edits the user's optimizer in place after pruning (issue 13, item 1).

The independent truth for the state is a freshly built optimizer over the pruned model with the
same groups, loaded from the edited optimizer's ``state_dict()``: one further step from both must
move the parameters bitwise identically.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune import MPCriterion, SpectralPruner, schedules
from rmtprune.pruning.optim import (
    replacements,
    update_optimizer,
    update_optimizer_after_step,
)

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "SGD": lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, nesterov=True),
    "Adam": lambda g: torch.optim.Adam(g, lr=0.01),
    "Adam-decoupled": lambda g: torch.optim.Adam(g, lr=0.01, decoupled_weight_decay=True),
    "AdamW": lambda g: torch.optim.AdamW(g, lr=0.01),
    "AdamW-amsgrad": lambda g: torch.optim.AdamW(g, lr=0.01, amsgrad=True),
    "RMSprop": lambda g: torch.optim.RMSprop(g, lr=0.01, momentum=0.5, centered=True),
    "Adagrad": lambda g: torch.optim.Adagrad(g, lr=0.01, initial_accumulator_value=0.1),
    "Adamax": lambda g: torch.optim.Adamax(g, lr=0.01),
    "NAdam": lambda g: torch.optim.NAdam(g, lr=0.01),
    "RAdam": lambda g: torch.optim.RAdam(g, lr=0.01),
    "Adadelta": lambda g: torch.optim.Adadelta(g, lr=0.5),
    "ASGD": lambda g: torch.optim.ASGD(g, lr=0.01),
    "Rprop": lambda g: torch.optim.Rprop(g, lr=0.01),
}


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 10)
    )


def _groups(model: nn.Module) -> list[dict[str, Any]]:
    """Hugging Face style: weights decayed, biases not (biases are group 1)."""
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if not n.endswith("bias")], "weight_decay": 0.01},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ]


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int = 1) -> None:
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def _prune(model: nn.Module, **kw: Any) -> rmtprune.PruneReport:
    kw.setdefault("split", True)
    _, report = rmtprune.prune(
        model,
        inplace=True,
        criterion=rmtprune.MPCriterion(min_rank=8),
        select=rmtprune.Select(include=["0", "2"]),
        **kw,
    )
    assert report.changed
    return report


def _ids(params: Any) -> list[int]:
    return [id(p) for p in params]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_is_edited_in_place_and_its_state_dict_loads(name: str) -> None:
    model = _model()
    opt = OPTIMIZERS[name](_groups(model))
    _step(model, opt)
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    group_objects = [id(g) for g in opt.param_groups]
    old_bias = model[0].bias
    bias_state = {k: v.clone() for k, v in opt.state[old_bias].items()}
    kept = model[4].weight
    kept_state = {k: v.clone() for k, v in opt.state[kept].items()}
    before = dict(model.named_parameters())
    _prune(model)

    assert update_optimizer(opt, model, before) is opt
    assert [id(g) for g in opt.param_groups] == group_objects
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == hyper
    expected = _groups(model)  # decay / no-decay by name, in model order
    assert [_ids(g["params"]) for g in opt.param_groups] == [_ids(g["params"]) for g in expected]
    assert all(torch.equal(opt.state[kept][k], v) for k, v in kept_state.items())
    new_bias = model[0].second.bias  # an exact copy of the old bias: its state carries over
    assert all(torch.equal(opt.state[new_bias][k], v) for k, v in bias_state.items())
    assert old_bias not in opt.state and all(id(p) in _ids(model.parameters()) for p in opt.state)
    factor = model[0].first.weight
    if name == "Adagrad":  # state made in __init__: fresh, as a new Adagrad would make it
        fresh = torch.optim.Adagrad([nn.Parameter(factor.detach())], initial_accumulator_value=0.1)
        assert torch.equal(opt.state[factor]["sum"], next(iter(fresh.state.values()))["sum"])
    else:
        assert factor not in opt.state

    twin = copy.deepcopy(model)
    rebuilt = OPTIMIZERS[name](_groups(twin))
    rebuilt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if saved to disk
    _step(model, opt, seed=2)
    _step(twin, rebuilt, seed=2)
    for (n, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), n
    assert not torch.equal(factor, before["0.weight"][:8])  # the factors do train


def test_parameters_the_optimizer_did_not_hold_stay_out() -> None:
    model = _model()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    before = dict(model.named_parameters())
    _prune(model)
    update_optimizer(opt, model, before)
    assert _ids(opt.param_groups[0]["params"]) == _ids(model[0].parameters())
    assert len(opt.param_groups[0]["params"]) == 3


def test_update_after_step_adds_no_parameters_it_never_held() -> None:
    model = _model()  # the old code went from 2 to 4+ parameters here
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
    pruner = SpectralPruner(
        model,
        schedule=schedules.Constant(0.0),
        every=1,
        criterion=MPCriterion(min_rank=8),
        split=True,
    )
    assert pruner.step(1).changed
    assert update_optimizer_after_step(opt, model) is opt
    assert _ids(opt.param_groups[0]["params"]) == _ids(model[0].parameters())


def test_a_frozen_bias_stays_frozen_while_the_weight_factors_train() -> None:
    model = _model()
    opt = torch.optim.Adam([model[0].weight, model[2].weight, model[2].bias], lr=0.01)
    before = dict(model.named_parameters())
    _prune(model)
    update_optimizer(opt, model, before)
    held = _ids(opt.param_groups[0]["params"])
    assert held == _ids([model[0].first.weight, model[0].second.weight, *model[2].parameters()])


def test_a_weight_truncated_in_place_keeps_its_parameter_and_state() -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    _step(model, opt)
    weight = model[2].weight
    state = {k: v.clone() for k, v in opt.state[weight].items()}
    before = dict(model.named_parameters())
    report = _prune(model, split=False)
    assert report["2"].action == "truncated" and model[2].weight is weight
    update_optimizer(opt, model, before)
    assert _ids(opt.param_groups[0]["params"]) == _ids(model.parameters())
    assert all(torch.equal(opt.state[weight][k], v) for k, v in state.items())


def test_refactoring_a_factorized_layer_maps_factor_to_factor() -> None:
    model = _model()
    _prune(model)
    opt = torch.optim.SGD(_groups(model), lr=0.1)
    before = dict(model.named_parameters())
    _, report = rmtprune.prune(
        model,
        inplace=True,
        criterion=rmtprune.MPCriterion(bulk_keep=0.0, min_rank=4),
        select=rmtprune.Select(include="0"),
    )
    assert report["0"].rank_after < 8
    found = replacements(before, model)
    assert [olds for _, olds in found.values()] == [
        [before["0.first.weight"]],
        [before["0.second.weight"]],
        [before["0.second.bias"]],
    ]
    update_optimizer(opt, model, before)
    assert [_ids(g["params"]) for g in opt.param_groups] == [
        _ids(g["params"]) for g in _groups(model)
    ]


def test_scheduler_keeps_driving_the_optimizer_through_pruner_step() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    pruner = SpectralPruner(
        model, schedule=schedules.Constant(0.0), every=2, criterion=MPCriterion(min_rank=8)
    )
    lrs = []
    for epoch in range(1, 5):
        _step(model, opt, seed=epoch)
        sched.step()
        assert pruner.step(epoch, optimizer=opt).changed == (epoch == 2)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [0.05, 0.025, 0.0125, 0.00625]
    assert _ids(opt.param_groups[0]["params"]) == _ids(model.parameters())


def test_update_after_step_is_in_place() -> None:
    model = _model()
    opt = torch.optim.AdamW(_groups(model), lr=0.01)  # the old code raised TypeError here
    pruner = SpectralPruner(
        model, schedule=schedules.Constant(0.0), every=1, criterion=MPCriterion(min_rank=8)
    )
    assert pruner.step(1).changed
    assert update_optimizer_after_step(opt, model) is opt
    assert [_ids(g["params"]) for g in opt.param_groups] == [
        _ids(g["params"]) for g in _groups(model)
    ]


def test_update_after_step_without_a_record_warns_and_adds_nothing() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _prune(model)
    with pytest.warns(UserWarning, match="update_optimizer"):
        assert update_optimizer_after_step(opt, model) is opt
    assert set(_ids(opt.param_groups[0]["params"])) <= set(_ids(model.parameters()))


def test_lbfgs_follows_the_new_parameters() -> None:
    model = _model()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    x = torch.randn(8, 64)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    before = dict(model.named_parameters())
    _prune(model)
    update_optimizer(opt, model, before)
    opt.step(closure)  # would fail on a flat history of the old size
    assert _ids(opt.param_groups[0]["params"]) == _ids(model.parameters())


def test_bad_arguments_name_the_parameter() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="'optimizer' parameter of update_optimizer"):
        update_optimizer(object(), model, {})
    with pytest.raises(TypeError, match="'model' parameter of update_optimizer"):
        update_optimizer(opt, object(), {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'before' parameter of update_optimizer"):
        update_optimizer(opt, model, [model.weight])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'optimizer' parameter of update_optimizer_after_step"):
        update_optimizer_after_step(object(), model)
    with pytest.raises(TypeError, match="'model' parameter of update_optimizer_after_step"):
        update_optimizer_after_step(opt, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"'optimizer' parameter of SpectralPruner\.step"):
        SpectralPruner(model, schedule=schedules.Constant(0.0), every=1).step(1, optimizer=1)
