"""Prune-while-distilling: loss closed forms, recovery by training, pruning on a schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.factorize.lowrank import LowRankLinear
from rmtprune.factorize.svd import truncated_svd
from rmtprune.pruning.distill import distill, docstring_sentences, embedding_loss, mean_pooled
from rmtprune.pruning.outputs import OutputProbe


def _teacher(seed: int) -> nn.Sequential:
    """Layers = a few strong directions + MP noise (what the spectral rule is built for)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 64))
    with torch.no_grad():
        for layer in model[::2]:
            m, n = layer.weight.shape
            u, _ = torch.linalg.qr(torch.randn(m, 6, generator=g))
            v, _ = torch.linalg.qr(torch.randn(n, 6, generator=g))
            signal = u @ torch.diag(torch.linspace(3.0, 1.5, 6)) @ v.T
            layer.weight.copy_(signal + 0.3 * torch.randn(m, n, generator=g) / max(m, n) ** 0.5)
    return model


def _batches(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 64, generator=g) for _ in range(n)]


def test_loss_and_pooling_closed_forms() -> None:
    t = torch.randn(3, 5, 4)
    assert float(embedding_loss(t, t, None)) == pytest.approx(0.0, abs=1e-7)
    assert float(embedding_loss(-t, t, None)) == pytest.approx(4.0 + 2.0, rel=1e-6)
    s = torch.zeros(1, 2, 2)
    s[0, :, 0] = 1.0
    u = torch.zeros(1, 2, 2)
    u[0, :, 1] = 1.0  # orthogonal embeddings: relative error 2, 1 − cos = 1
    assert float(embedding_loss(s, u, None)) == pytest.approx(3.0)
    h = torch.arange(12.0).reshape(2, 3, 2)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    pooled = mean_pooled(h, {"attention_mask": mask})
    assert pooled.tolist() == [[0.0, 1.0], [8.0, 9.0]]
    assert mean_pooled(torch.ones(4, 3)).shape == (4, 3)


class _Tokens(nn.Module):
    """A token model: ``(B, T, 4)`` states from ``input_ids``, padded positions included."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids)


def test_a_student_equal_to_its_teacher_starts_at_zero_loss_with_padded_batches() -> None:
    """The targets are the teacher's whole outputs, padding too (the output change, not the
    loss, leaves padding out): a student equal to the teacher has loss 0 before any step."""
    torch.manual_seed(0)
    teacher = _Tokens()
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    batches = [{"input_ids": torch.randint(0, 10, (2, 4)), "attention_mask": mask}] * 2
    assert torch.equal(OutputProbe(teacher, batches).reference[0], teacher(**batches[0]).double())
    result = distill(copy.deepcopy(teacher), teacher, batches, epochs=1, lr=1e-12)
    assert result.history[0].loss == pytest.approx(0.0, abs=1e-6)  # float32 cosine rounding


def test_docstring_sentences_are_deterministic_and_clean() -> None:
    first, second = docstring_sentences(seed=1), docstring_sentences(seed=2)
    assert len(set(first)) == len(first) > 1000
    assert all(40 <= len(s) <= 200 and s[0].isupper() for s in first)
    assert second != first and sorted(second) == sorted(first)  # same set, other order


@pytest.mark.slow
def test_distillation_alone_repairs_a_perturbed_student() -> None:
    teacher = _teacher(0)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    held = _batches(2, 99)
    before = OutputProbe(teacher, held).change(student)
    result = distill(student, teacher, _batches(8, 1), epochs=15, lr=3e-3, eval_batches=held)
    assert result.params_after == result.params_before
    assert result.history[-1].output_change < 0.5 * before
    assert result.history[-1].loss < result.history[0].loss
    assert all(not e.pruned for e in result.history)


@pytest.mark.slow
def test_pruning_while_distilling_beats_one_shot_at_the_same_ranks() -> None:
    teacher = _teacher(1)
    student = copy.deepcopy(teacher)
    pruner = rmtprune.SpectralPruner(student, schedule=rmtprune.schedules.Linear(3), every=1)
    held = _batches(2, 98)
    result = distill(
        student, teacher, _batches(8, 2), epochs=8, lr=2e-3, pruner=pruner, eval_batches=held
    )
    assert result.params_after < 0.5 * result.params_before
    assert any(e.pruned for e in result.history[:3]) and not result.history[-1].pruned
    one_shot = copy.deepcopy(teacher)
    for name in ("0", "2"):
        layer = student.get_submodule(name)
        assert isinstance(layer, LowRankLinear)
        dense = one_shot.get_submodule(name)
        U, s, Vh = truncated_svd(dense.weight, layer.rank)
        dense.weight.data = (U @ torch.diag(s) @ Vh).float()
    one_shot_change = OutputProbe(teacher, held).change(one_shot)
    distilled = result.history[-1].output_change
    assert distilled is not None and math.isfinite(distilled)
    assert distilled < 0.7 * one_shot_change
    assert result.to_dict()["history"][0]["epoch"] == 1


def test_bad_arguments_name_the_parameter() -> None:
    teacher = _teacher(2)
    student = copy.deepcopy(teacher)
    with pytest.raises(ValueError, match="'epochs' parameter of distill"):
        distill(student, teacher, _batches(2, 0), epochs=0)
    other = rmtprune.SpectralPruner(teacher, schedule=rmtprune.schedules.Linear(3), every=1)
    with pytest.raises(ValueError, match="'pruner' parameter of distill"):
        distill(student, teacher, _batches(2, 0), epochs=1, pruner=other)
