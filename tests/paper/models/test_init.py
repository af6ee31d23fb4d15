"""Initialisation schemes: empirical moments against the closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rmtprune.paper.models import SCHEMES, FullyConnected, PaperCNN, initialize, weight_variance

CLOSED_FORM = {
    "normal": lambda n, m: 1.0 / n,
    "normal_n2": lambda n, m: 1.0 / n**2,
    "xavier": lambda n, m: 2.0 / (n + m),
    "kaiming": lambda n, m: 2.0 / n,
    "xavier_uniform": lambda n, m: 2.0 / (n + m),
    "kaiming_uniform": lambda n, m: 2.0 / n,
}


def _moments(w: torch.Tensor) -> tuple[float, float, float]:
    x = w.detach().double().flatten()
    mean = float(x.mean())
    var = float(((x - mean) ** 2).mean())
    kurt = float(((x - mean) ** 4).mean()) / var**2
    return mean, var, kurt


@pytest.mark.parametrize("scheme", SCHEMES)
def test_linear_weights_have_the_closed_form_variance(scheme: str) -> None:
    layer = initialize(nn.Linear(1000, 400), scheme, generator=torch.Generator().manual_seed(0))
    n, m = 1000, 400
    var = CLOSED_FORM[scheme](n, m)
    assert weight_variance(scheme, n, m) == pytest.approx(var, rel=1e-15)
    mean, emp_var, kurt = _moments(layer.weight)
    size = n * m
    assert abs(mean) < 5 * math.sqrt(var / size)
    # sd of the sample variance: sqrt((kurtosis - 1)/size) * var; 5 sd tolerance.
    assert abs(emp_var / var - 1) < 5 * math.sqrt(2.0 / size)
    # Shape of the law: kurtosis 3 (Gaussian) or 9/5 (uniform).
    assert kurt == pytest.approx(1.8 if scheme.endswith("_uniform") else 3.0, abs=0.05)
    if scheme.endswith("_uniform"):
        assert float(layer.weight.detach().abs().max()) <= math.sqrt(3 * var)
    assert torch.count_nonzero(layer.bias) == 0


def test_conv_fan_in_counts_the_kernel() -> None:
    conv = initialize(nn.Conv2d(64, 128, 3), "normal", generator=1)
    fan_in = 64 * 9
    _, var, _ = _moments(conv.weight)
    assert abs(var * fan_in - 1) < 5 * math.sqrt(2.0 / conv.weight.numel())
    grouped = initialize(nn.Conv2d(64, 64, 3, groups=4), "kaiming", generator=2)
    _, var, _ = _moments(grouped.weight)
    assert abs(var * (16 * 9) / 2 - 1) < 5 * math.sqrt(2.0 / grouped.weight.numel())


def test_initialisation_is_deterministic_and_resets_norms() -> None:
    a = initialize(PaperCNN(), "normal", generator=torch.Generator().manual_seed(3))
    b = PaperCNN()
    with torch.no_grad():
        b.features[2].weight.fill_(7.0)
        b.features[2].running_mean.fill_(3.0)
    b = initialize(b, "normal", generator=torch.Generator().manual_seed(3))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(b.features[2].weight, torch.ones(32))
    assert torch.equal(b.features[2].running_mean, torch.zeros(32))
    c = initialize(FullyConnected([20, 10]), "normal", generator=4)
    d = initialize(FullyConnected([20, 10]), "normal", generator=5)
    assert not torch.equal(c.layers[0].weight, d.layers[0].weight)


def test_initialize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="'scheme'"):
        initialize(nn.Linear(2, 2), "orthogonal", generator=0)
    with pytest.raises(TypeError, match="'generator'"):
        initialize(nn.Linear(2, 2), "normal", generator=0.5)  # type: ignore[arg-type]
    model = nn.Sequential(nn.Linear(2, 2), nn.Embedding(3, 2))
    with pytest.raises(ValueError, match=r"\['1'\]"):
        initialize(model, "normal", generator=0)
