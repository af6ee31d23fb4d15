"""SpectralPruner: scheduled steps during training, and identical decisions after a resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rmtprune import MPCriterion, Select, SpectralPruner, schedules
from rmtprune.pruning.optim import update_optimizer_after_step
from rmtprune.storage.format import apply_structure, describe_structure


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(5, 40, generator=g)
    labels = torch.randint(0, 5, (600,), generator=g)
    x = centers[labels] + torch.randn(600, 40, generator=g)
    return x, labels


def _model(seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(40, 160), nn.ReLU(), nn.Linear(160, 160), nn.ReLU(), nn.Linear(160, 5)
    )
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0.0, layer.in_features**-0.5)
    return model


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, epoch: int) -> None:
    x, y = _data()
    g = torch.Generator().manual_seed(100 + epoch)
    order = torch.randperm(len(x), generator=g)
    for start in range(0, len(x), 50):
        idx = order[start : start + 50]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def _pruner(model: nn.Module) -> SpectralPruner:
    return SpectralPruner(
        model,
        schedule=schedules.Linear(total_epochs=8),
        every=2,
        criterion=MPCriterion(min_rank=5),
        select=Select(min_dim=32),
    )


def _run(
    model: nn.Module, pruner: SpectralPruner, opt: torch.optim.Optimizer, epochs: range
) -> tuple[torch.optim.Optimizer, list[int]]:
    counts = []
    for epoch in epochs:
        _train_epoch(model, opt, epoch)
        report = pruner.step(epoch)
        if report.changed:
            opt = update_optimizer_after_step(opt, model)
        counts.append(report.params_after)
    return opt, counts


def test_non_pruning_epochs_are_no_ops() -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    pruner = _pruner(model)
    for epoch in (0, 1, 3, 5):
        report = pruner.step(epoch)
        assert not report.changed and len(report) == 0 and report.epoch == epoch
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert [pruner.is_pruning_epoch(e) for e in range(5)] == [False, False, True, False, True]


def test_parameters_drop_at_scheduled_epochs_and_training_goes_on() -> None:
    model = _model()
    pruner = _pruner(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = sum(p.numel() for p in model.parameters())
    opt, counts = _run(model, pruner, opt, range(1, 9))
    # drops happen only at epochs 2, 4, 6, 8 and are monotone
    assert counts[0] == start
    drops = [i + 1 for i in range(len(counts)) if counts[i] < ([start, *counts])[i]]
    assert set(drops) <= {2, 4, 6, 8} and 2 in drops
    assert counts[-1] < 0.5 * start
    # the pruned ranks follow the schedule: at epoch 8 f = 0, only spikes (or min_rank) remain
    # a layer never grows back, even a dense one truncated in place and trained further
    for name in ("0", "2"):
        ranks = [h["ranks"][name] for h in pruner.history if name in h["ranks"]]
        assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks)
    last = pruner.history[-1]
    assert last["epoch"] == 8 and last["bulk_keep"] == 0.0
    x, y = _data()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


def test_resume_from_state_dict_makes_the_same_decisions() -> None:
    reference = _model()
    ref_pruner = _pruner(reference)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    _run(reference, ref_pruner, opt, range(1, 9))

    first = _model()
    pruner = _pruner(first)
    opt = torch.optim.SGD(first.parameters(), lr=0.05, momentum=0.9)
    opt, _ = _run(first, pruner, opt, range(1, 5))
    saved = {
        "structure": describe_structure(first),
        "model": copy.deepcopy(first.state_dict()),
        "optimizer": copy.deepcopy(opt.state_dict()),
        "pruner": copy.deepcopy(pruner.state_dict()),
    }
    # a new process: fresh model (different init), rebuilt structure, restored state
    resumed = _model(seed=99)
    apply_structure(resumed, saved["structure"])
    resumed.load_state_dict(saved["model"])
    new_opt = torch.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    new_opt.load_state_dict(saved["optimizer"])
    new_pruner = _pruner(resumed)
    new_pruner.load_state_dict(saved["pruner"])
    assert new_pruner.step(4).changed is False  # epoch 4 was already done
    _run(resumed, new_pruner, new_opt, range(5, 9))

    assert new_pruner.history == ref_pruner.history
    ref_state, got_state = reference.state_dict(), resumed.state_dict()
    assert ref_state.keys() == got_state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], got_state[k]), k


def test_dry_run_and_state_checks() -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    report = _pruner(model).dry_run(8)
    assert report.dry_run and any(r.action == "split" for r in report)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="'every' parameter of SpectralPruner"):
        SpectralPruner(model, schedule=schedules.Constant(0.5), every=0)
    with pytest.raises(TypeError, match="'schedule' parameter of SpectralPruner"):
        SpectralPruner(model, schedule=0.5, every=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must come from state_dict"):
        _pruner(model).load_state_dict({"epoch": 3})
    bad = SpectralPruner(model, schedule=lambda e: 1.5, every=1)
    with pytest.raises(ValueError, match="expected a fraction in"):
        bad.step(1)
