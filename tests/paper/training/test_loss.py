"""The paper's objective and evaluation against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from rmtprune.paper.training import (
    add_regularization_grad,
    data_loss,
    evaluate,
    paper_loss,
    regularization,
)


def test_paper_loss_matches_hand_computation() -> None:
    probs = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
    log_probs = torch.log(torch.tensor(probs, dtype=torch.float64))
    target = torch.tensor([0, 2])
    params = [
        torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64),
        torch.tensor([-3.0], dtype=torch.float64),
    ]
    nll = -(math.log(0.7) + math.log(0.6)) / 2
    abs_sum = 1 + 2 + 0.5 + 0 + 3
    sq_sum = 1 + 4 + 0.25 + 0 + 9
    expected = nll + 5e-6 * abs_sum + 5e-6 * sq_sum
    assert float(paper_loss(log_probs, target, params)) == pytest.approx(expected, rel=1e-14)
    expected = nll + 0.1 * abs_sum + 0.01 * sq_sum
    got = float(paper_loss(log_probs, target, params, l1=0.1, l2=0.01))
    assert got == pytest.approx(expected, rel=1e-14)


def test_regularization_gradient_is_l1_sign_plus_2_l2_theta() -> None:
    theta = torch.tensor([1.5, -0.25, 3.0], dtype=torch.float64, requires_grad=True)
    regularization([theta], l1=0.3, l2=0.2).backward()
    expected = 0.3 * torch.sign(theta.detach()) + 2 * 0.2 * theta.detach()
    torch.testing.assert_close(theta.grad, expected, rtol=0, atol=1e-15)
    assert float(regularization([], l1=1, l2=1)) == 0.0
    assert float(regularization([theta], l1=0, l2=0)) == 0.0
    with pytest.raises(ValueError, match="'l1'"):
        regularization([theta], l1=-1.0)


def test_evaluate_counts_loss_and_accuracy() -> None:
    # A "model" returning fixed log-probabilities per input row index.
    table = torch.log(torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.5, 0.5]]))

    class Lookup(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return table[x.long()]

    x = torch.arange(4)
    y = torch.tensor([0, 0, 1, 1])
    model = Lookup().train()
    result = evaluate(model, (x, y), batch_size=3)
    nll = -(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.5)) / 4
    assert result.loss == pytest.approx(nll, rel=1e-6)
    # argmax: 0, 1, 1, 0 (tie -> first) against 0, 0, 1, 1.
    assert result.accuracy == 0.5 and result.n_samples == 4
    assert model.training  # mode restored
    reg = evaluate(
        torch.nn.Linear(1, 1, bias=False), (torch.ones(2, 1), torch.ones(2)), objective="mse"
    )
    assert math.isnan(reg.accuracy)


def test_data_loss_mse_and_errors() -> None:
    out = torch.tensor([[1.0], [3.0]])
    assert float(data_loss(out, torch.tensor([0.0, 1.0]), "mse")) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="'objective'"):
        data_loss(out, torch.zeros(2), "hinge")


def test_added_regularization_grad_equals_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 20, generator=g, dtype=torch.float64)
    a[0, :5] = 0.0  # subgradient 0 at 0, as autograd's
    b = torch.randn(20, generator=g, dtype=torch.float64)
    frozen = torch.randn(4, dtype=torch.float64)
    data_grad = torch.randn(30, 20, generator=g, dtype=torch.float64)
    ref = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    ((ref[0] * data_grad).sum() + regularization(ref, l1=0.3, l2=0.7)).backward()
    fast = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    (fast[0] * data_grad).sum().backward()  # b gets no data gradient: its .grad is None
    assert fast[1].grad is None
    add_regularization_grad([*fast, frozen], l1=0.3, l2=0.7)
    for r, f in zip(ref, fast, strict=True):
        torch.testing.assert_close(f.grad, r.grad, rtol=0, atol=1e-14)
    assert frozen.grad is None
