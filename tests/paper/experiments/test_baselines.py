"""Baselines at a parameter budget: global magnitude pruning and SVD truncation by energy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from rmtprune.factorize import LowRankLinear
from rmtprune.paper.experiments import (
    ExperimentConfig,
    PostTrainingResult,
    magnitude_prune,
    svd_energy_choice,
    svd_energy_prune,
)
from rmtprune.paper.experiments.classification.baselines import (
    MAX_ADJUST,
    count_parameters,
    finetune,
    run_method,
)
from rmtprune.paper.training import TrainConfig


def _mlp(seed: int = 0, widths: tuple[int, ...] = (60, 80, 70, 10)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers[-1] = nn.LogSoftmax(dim=1)
    net = nn.Sequential(*layers)
    with torch.no_grad():  # a few strong directions on top of noise, like a trained layer
        g = torch.Generator().manual_seed(seed + 100)
        for m in net.modules():
            if isinstance(m, nn.Linear):
                u = torch.randn(m.out_features, 3, generator=g)
                v = torch.randn(3, m.in_features, generator=g)
                m.weight.add_(u @ v / m.in_features**0.5)
    return net


def _data(n: int = 256, d: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, :10].argmax(dim=1))


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
def test_magnitude_zeroes_exactly_the_smallest_weights(fraction: float) -> None:
    net = _mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dense = count_parameters(net)
    target = int(dense * fraction)
    pruned = magnitude_prune(net, target)
    assert pruned.n_params == target
    assert pruned.n_zeroed == dense - target
    weights = [m.weight for m in pruned.model.modules() if isinstance(m, nn.Linear)]
    originals = [m.weight for m in net.modules() if isinstance(m, nn.Linear)]
    zero = torch.cat([(w == 0).reshape(-1) for w in weights])
    assert int(zero.sum()) == dense - target
    values = torch.cat([w.detach().abs().reshape(-1) for w in originals])
    assert float(values[zero].max()) <= float(values[~zero].min())
    mask_zero = torch.cat([~m.reshape(-1) for _, m in pruned.masks])
    assert torch.equal(mask_zero, zero)
    # untouched: the input model, and the kept weights of the copy
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    kept = torch.cat([w.detach().reshape(-1) for w in weights])[~zero]
    assert torch.equal(kept, torch.cat([w.detach().reshape(-1) for w in originals])[~zero])


def test_masked_weights_stay_zero_during_finetuning() -> None:
    net = _mlp(1)
    dense = count_parameters(net)
    pruned = magnitude_prune(net, dense // 3)
    start = [m.weight.detach().clone() for m in pruned.model.modules() if isinstance(m, nn.Linear)]
    data = _data()
    history = finetune(
        pruned.model, data, data, TrainConfig(epochs=2, batch_size=32), masks=pruned.masks
    )
    assert len(history) == 2
    now = [m.weight.detach() for m in pruned.model.modules() if isinstance(m, nn.Linear)]
    for (_, mask), w0, w1 in zip(pruned.masks, start, now, strict=True):
        assert bool((w1[~mask] == 0).all())
        assert bool((w1[mask] != w0[mask]).any())  # the kept weights did train
    # hooks are removed afterwards: a plain backward pass reaches the masked entries again
    out = pruned.model(data[0]).sum()
    out.backward()
    first = next(m for m in pruned.model.modules() if isinstance(m, nn.Linear))
    assert first.weight.grad is not None
    assert bool((first.weight.grad[~pruned.masks[0][1]] != 0).any())


def _energy(w: np.ndarray, r: int) -> float:
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    return float((s[:r] ** 2).sum() / (s**2).sum())


@pytest.mark.parametrize("fraction", [0.25, 0.45, 0.7])
def test_svd_energy_ranks_keep_the_stated_energy(fraction: float) -> None:
    net = _mlp(2)
    target = int(count_parameters(net) * fraction)
    choice = svd_energy_choice(net, target, min_dim=10)
    layers = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    assert [n for n, _ in choice.ranks] == ["1", "3", "5"]
    for (name, r), (_, r0), (_, kept) in zip(
        choice.ranks, choice.energy_ranks, choice.retained, strict=True
    ):
        w = layers[name].weight.detach().numpy()
        # the energy rank is the smallest rank that keeps the stated energy
        assert _energy(w, r0) >= choice.energy - 1e-9
        if r0 > 1:
            assert _energy(w, r0 - 1) < choice.energy
        assert abs(r - r0) <= MAX_ADJUST
        assert kept == pytest.approx(_energy(w, r), abs=1e-9)
    assert abs(choice.n_params / target - 1) < 0.01
    pruned, same = svd_energy_prune(net, target, min_dim=10)
    assert same == choice
    assert count_parameters(pruned) == choice.n_params
    for name, r in choice.ranks:
        layer = dict(pruned.named_modules())[name]
        w = layers[name].weight.detach().double().numpy()
        u, s, vh = np.linalg.svd(w)
        best = (u[:, :r] * s[:r]) @ vh[:r]
        if name in choice.dense:
            assert isinstance(layer, nn.Linear)
        else:
            assert isinstance(layer, LowRankLinear) and layer.rank == r
            product = (layer.second.weight @ layer.first.weight).detach().double().numpy()
            np.testing.assert_allclose(product, best, atol=1e-5)
            assert torch.equal(layer.bias, layers[name].bias)


def test_svd_energy_exact_budget_needs_no_adjustment() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64))
    for r in (1, 5, 20):
        choice = svd_energy_choice(net, r * 128 + 64, min_dim=10)
        assert choice.ranks == choice.energy_ranks == (("0", r),)
        assert choice.n_params == r * 128 + 64


def test_run_method_round_trips_and_keeps_the_budget() -> None:
    cfg = ExperimentConfig(hidden=(80, 70), finetune_epochs=1, min_dim=10, batch_size=32)
    x = torch.randn(200, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    data = (x, (x.flatten(1)[:, :10].argmax(dim=1)))
    net = cfg.build_model(0)
    target = count_parameters(net) // 4
    for method in ("magnitude", "svd-energy", "mp-oneshot"):
        result = run_method(method, net, cfg, seed=0, target_params=target, train=data, test=data)
        assert PostTrainingResult.from_dict(result.to_dict()) == result
        assert result.after.n_params == result.before.n_params
        assert len(result.finetune_history) == 1
        if method != "mp-oneshot":
            assert abs(result.after.n_params / target - 1) < 0.01
    with pytest.raises(ValueError, match="'method'"):
        run_method("random", net, cfg, seed=0, target_params=target, train=data, test=data)
