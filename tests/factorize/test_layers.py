"""Factorized layers look like the layers they replace: weight, features, conv hyperparameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rmtprune.factorize import (
    LowRankConv1D,
    LowRankConv2d,
    LowRankEmbedding,
    LowRankLinear,
    get_adapter,
    set_submodule,
    truncated_svd,
)


def _split(layer: nn.Module, rank: int) -> nn.Module:
    adapter = get_adapter(layer)
    assert adapter is not None
    U, s, Vh = truncated_svd(adapter.weight_matrix(layer), rank)
    return adapter.rebuild(layer, U, s, Vh, split=True)


@pytest.mark.parametrize(
    "dense",
    [
        nn.Linear(12, 7),
        nn.Conv2d(3, 6, (3, 2), stride=2, padding=1, dilation=(1, 2)),
        nn.Embedding(20, 6, padding_idx=1),
    ],
    ids=["linear", "conv2d", "embedding"],
)
def test_weight_is_the_dense_product_read_only_and_not_state(dense: nn.Module) -> None:
    torch.manual_seed(0)
    layer = _split(dense, 3)
    weight = layer.weight
    assert weight.shape == dense.weight.shape and weight.dtype == dense.weight.dtype
    assert not isinstance(weight, nn.Parameter)
    assert all(not key.endswith(".weight") or key.count(".") == 1 for key in layer.state_dict())
    assert "weight" not in dict(layer.named_parameters(recurse=False))
    # equals the weight of the equivalent dense layer (an independent product)
    assert torch.allclose(weight, layer.to_dense().weight, atol=1e-6)
    with pytest.raises(AttributeError, match=r"read-only.*first\.weight / second\.weight"):
        layer.weight = nn.Parameter(weight.detach().clone())
    with pytest.raises(AttributeError, match="read-only"):
        layer.weight = weight.detach()


def test_weight_follows_the_factor_dtype_and_is_differentiable() -> None:
    layer = LowRankLinear(8, 5, rank=2, dtype=torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16
    float_layer = LowRankLinear(8, 5, rank=2)
    float_layer.weight.sum().backward()
    assert float_layer.first.weight.grad is not None


def test_conv_hyperparameters_are_those_of_the_replaced_conv() -> None:
    conv = nn.Conv2d(4, 9, (3, 1), stride=(2, 1), padding=(1, 0), dilation=2)
    layer = _split(conv, 2)
    assert isinstance(layer, LowRankConv2d)
    got = (
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        layer.padding_mode,
    )
    want = (
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.padding_mode,
    )
    assert got == want
    x = torch.randn(2, 4, 11, 8)
    assert torch.allclose(
        layer(x),
        nn.functional.conv2d(x, layer.weight, conv.bias, conv.stride, conv.padding, conv.dilation),
        atol=1e-5,
    )


def test_conv1d_layout() -> None:
    layer = LowRankConv1D.from_factors(torch.randn(2, 5), torch.randn(3, 2), torch.randn(3))
    x = torch.randn(4, 5)
    assert (layer.nx, layer.nf, tuple(layer.weight.shape)) == (5, 3, (5, 3))
    assert torch.allclose(layer(x), x @ layer.weight + layer.bias, atol=1e-6)  # Conv1D's formula


def test_embedding_factors_and_errors() -> None:
    layer = LowRankEmbedding.from_factors(torch.randn(2, 4), torch.randn(6, 2), nn.Embedding(6, 4))
    tokens = torch.tensor([5, 0, 2])
    assert torch.allclose(layer(tokens), layer.weight[tokens], atol=1e-6)
    with pytest.raises(TypeError, match=r"'like' parameter of LowRankEmbedding\.from_factors"):
        LowRankEmbedding.from_factors(torch.randn(2, 4), torch.randn(6, 2), nn.Linear(4, 6))
    with pytest.raises(ValueError, match="'rank' parameter of LowRankEmbedding"):
        LowRankEmbedding(6, 4, rank=0)


def test_set_submodule_replaces_a_shared_module_under_every_name() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Module()
    model.a = shared
    model.inner = nn.Sequential(shared)
    new = nn.Identity()
    assert set_submodule(model, "a", new) is shared
    assert model.a is new and model.inner[0] is new


def test_weight_is_on_the_factors_device() -> None:
    for layer in (
        LowRankLinear(8, 5, rank=2, device="meta", dtype=torch.float16),
        LowRankConv2d(3, 4, rank=2, kernel_size=3, device="meta"),
        LowRankEmbedding(9, 4, rank=2, device="meta", dtype=torch.bfloat16),
    ):
        weight = layer.weight
        assert weight.device.type == "meta" and weight.dtype == layer.first.weight.dtype
