"""Distilling a sparse student: its masked weights stay exactly zero while it learns, with and
without a Sparsity schedule growing its masks."""

from __future__ import annotations

import math

import torch
from torch import nn

import rmtprune
from rmtprune.factorize.masks import mask_of
from rmtprune.pruning.distill import distill

ALL = rmtprune.Select(min_dim=1, min_params=1)
LAYERS = ("0", "2")


def _setup() -> tuple[nn.Module, nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 48), nn.Tanh(), nn.Linear(48, 32))
    student, _ = rmtprune.prune(teacher, criterion=rmtprune.Sparsity(0.5), select=ALL)
    g = torch.Generator().manual_seed(1)
    return teacher, student, [torch.randn(16, 32, generator=g) for _ in range(4)]


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    found = {name: mask_of(model.get_submodule(name)) for name in LAYERS}
    return {name: mask.clone() for name, mask in found.items() if mask is not None}


def _check_zeros(student: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """The masked weights are exactly zero in the state dict and in the weight a forward pass
    uses (between an optimizer step and the next forward pass the raw weight may hold values
    there: factorize/masks.py), and nowhere else."""
    state = student.state_dict()
    student(torch.zeros(1, 32))
    for name, mask in masks.items():
        assert torch.equal(state[f"{name}.weight"] == 0, ~mask), name
        assert torch.equal(student.get_submodule(name).weight == 0, ~mask), name


def test_distilling_a_sparse_student_keeps_its_zeros_and_learns() -> None:
    teacher, student, batches = _setup()
    masks = _masks(student)
    kept = student[0].weight[masks["0"]].detach().clone()
    result = distill(student, teacher, batches, epochs=3, lr=3e-3)
    losses = [e.loss for e in result.history]
    assert losses[0] > losses[1] > losses[2]  # the student learns ...
    assert not torch.equal(student[0].weight[masks["0"]].detach(), kept)
    assert _masks(student).keys() == masks.keys()  # ... with the masks it started with
    assert all(torch.equal(mask_of(student.get_submodule(n)), m) for n, m in masks.items())
    _check_zeros(student, masks)


def test_a_sparsity_schedule_during_distillation_grows_the_masks_and_never_revives() -> None:
    teacher, student, batches = _setup()
    first = _masks(student)
    criterion = rmtprune.Sparsity(0.8)  # (1 - f) * 0.8: 0.27, 0.53 (< 0.5: no change), 0.8
    pruner = rmtprune.SpectralPruner(
        student, criterion=criterion, schedule=rmtprune.schedules.Linear(3), every=1, select=ALL
    )
    result = distill(student, teacher, batches, epochs=3, lr=3e-3, pruner=pruner)
    assert [e.pruned for e in result.history] == [False, True, True]
    assert result.history[-1].loss < result.history[0].loss
    last = _masks(student)
    for name in LAYERS:
        numel = student.get_submodule(name).weight.numel()
        assert int((~last[name]).sum()) == math.floor(0.8 * numel + 0.5)
        assert not bool((last[name] & ~first[name]).any())  # removed once, removed for good
    _check_zeros(student, last)
