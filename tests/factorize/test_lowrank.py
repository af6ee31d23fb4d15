"""LowRankLinear / LowRankConv2d compute the layer with weight W2 @ W1, checked against torch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rmtprune.factorize import LowRankConv2d, LowRankLinear, LowRankModule

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).norm() / b.detach().norm())


def test_lowrank_linear_computes_product_and_copies_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(3, 7, generator=g, dtype=torch.float64)
    w2 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    layer = LowRankLinear.from_factors(w1, w2, b)
    x = torch.randn(4, 7, generator=g, dtype=torch.float64)
    expected = x @ (w2 @ w1).T + b
    assert rel_err(layer(x), expected) < 1e-14
    assert (layer.rank, layer.in_features, layer.out_features) == (3, 7, 5)
    assert layer.first.weight.dtype == torch.float64
    assert "in_features=7, out_features=5, rank=3" in repr(layer)
    # from_factors copies: changing the sources afterwards does not change the layer
    w1.zero_()
    b.zero_()
    assert rel_err(layer(x), expected) < 1e-14
    assert isinstance(layer, LowRankModule)


def test_lowrank_linear_to_dense_round_trip() -> None:
    g = torch.Generator().manual_seed(1)
    for bias in (True, False):
        layer = LowRankLinear(9, 4, rank=2, bias=bias)
        dense = layer.to_dense()
        assert type(dense) is nn.Linear
        assert (dense.bias is None) == (not bias)
        torch.testing.assert_close(
            dense.weight, layer.second.weight @ layer.first.weight, rtol=0, atol=0
        )
        x = torch.randn(6, 9, generator=g)
        assert rel_err(dense(x), layer(x)) < TOL[torch.float32]
        # the dense copy is independent of the factorized layer
        with torch.no_grad():
            dense.weight.add_(1.0)
        assert rel_err(layer(x), layer.second(layer.first(x))) == 0.0
        assert sum(p.numel() for p in layer.parameters()) == 2 * (9 + 4) + (4 if bias else 0)


def _reference_conv(like: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    ref = copy.deepcopy(like)
    with torch.no_grad():
        ref.weight.copy_(weight.reshape(ref.weight.shape))
        if bias is None:
            ref.bias = None
        else:
            ref.bias.copy_(bias)
    return ref


CONV_CASES = [
    {"kernel_size": 3},
    {"kernel_size": (3, 2), "stride": 2},
    {"kernel_size": 3, "padding": 1, "stride": (1, 2)},
    {"kernel_size": 3, "padding": "same"},
    {"kernel_size": (2, 3), "padding": "same", "dilation": 2},
    {"kernel_size": 3, "padding": "valid"},
    {"kernel_size": 3, "padding": 2, "dilation": 2, "padding_mode": "reflect"},
    {"kernel_size": 3, "padding": 1, "padding_mode": "replicate"},
    {"kernel_size": (3, 5), "padding": (1, 2), "padding_mode": "circular", "stride": 2},
    {"kernel_size": 3, "padding": "same", "padding_mode": "reflect"},
    {"kernel_size": 1},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
@pytest.mark.parametrize("bias", [True, False])
def test_lowrank_conv_equals_dense_conv(case: dict, dtype: torch.dtype, bias: bool) -> None:
    g = torch.Generator().manual_seed(2)
    like = nn.Conv2d(3, 5, bias=bias, dtype=dtype, **case)
    kh, kw = like.kernel_size
    rank = 2
    w1 = torch.randn(rank, 3 * kh * kw, generator=g, dtype=dtype)
    w2 = torch.randn(5, rank, generator=g, dtype=dtype)
    b = torch.randn(5, generator=g, dtype=dtype) if bias else None
    layer = LowRankConv2d.from_factors(w1, w2, b, like=like)
    assert (layer.rank, layer.in_features, layer.out_features) == (rank, 3 * kh * kw, 5)
    assert layer.second.kernel_size == (1, 1) and layer.second.padding == (0, 0)
    x = torch.randn(2, 3, 11, 12, generator=g, dtype=dtype)
    expected = _reference_conv(like, w2 @ w1, b)(x)
    out = layer(x)
    assert out.shape == expected.shape
    assert rel_err(out, expected) < TOL[dtype]
    dense = layer.to_dense()
    assert type(dense) is nn.Conv2d
    assert (dense.stride, dense.padding, dense.dilation, dense.padding_mode) == (
        like.stride,
        like.padding,
        like.dilation,
        like.padding_mode,
    )
    assert rel_err(dense(x), expected) < TOL[dtype]
    n_params = sum(p.numel() for p in layer.parameters())
    assert n_params == rank * (5 + 3 * kh * kw) + (5 if bias else 0)


def test_lowrank_conv_matches_functional_conv_with_padding_mode() -> None:
    # independent truth for a non-zero padding mode: pad explicitly, then an unpadded conv
    g = torch.Generator().manual_seed(3)
    like = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect", dtype=torch.float64)
    w1 = torch.randn(3, 18, generator=g, dtype=torch.float64)
    w2 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    layer = LowRankConv2d.from_factors(w1, w2, None, like=like)
    x = torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), (w2 @ w1).reshape(4, 2, 3, 3))
    assert rel_err(layer(x), expected) < 1e-13


def test_constructors_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="'rank'"):
        LowRankLinear(3, 4, rank=0)
    with pytest.raises(TypeError, match="'in_features'"):
        LowRankLinear(3.5, 4, rank=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'second_weight'"):
        LowRankLinear.from_factors(torch.ones(2, 3), torch.ones(4, 3))
    with pytest.raises(ValueError, match="'bias'"):
        LowRankLinear.from_factors(torch.ones(2, 3), torch.ones(4, 2), torch.ones(3))
    with pytest.raises(ValueError, match="groups=2"):
        LowRankConv2d.from_factors(
            torch.ones(1, 18), torch.ones(4, 1), None, nn.Conv2d(4, 4, 3, groups=2)
        )
    with pytest.raises(ValueError, match="columns"):
        LowRankConv2d.from_factors(torch.ones(1, 17), torch.ones(4, 1), None, nn.Conv2d(2, 4, 3))
    with pytest.raises(ValueError, match="'padding_mode'"):
        LowRankConv2d(2, 3, 1, 3, padding_mode="mirror")


def test_a_split_layer_is_called_by_keyword_as_the_layer_it_replaces() -> None:
    """A model that calls its layers by keyword (``layer(input=x)``, HF ``Conv1D``: ``x=``)
    keeps working after the split."""
    import rmtprune

    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    cases = [
        (torch.nn.Linear(12, 10), "input", torch.randn(3, 12, generator=g)),
        (torch.nn.Conv2d(3, 8, 3), "input", torch.randn(2, 3, 6, 6, generator=g)),
        (torch.nn.Embedding(20, 10), "input", torch.randint(0, 20, (2, 5), generator=g)),
        (transformers.pytorch_utils.Conv1D(10, 12), "x", torch.randn(3, 12, generator=g)),
    ]
    for layer, keyword, x in cases:
        model = torch.nn.Sequential(layer)
        pruned, report = rmtprune.prune(
            model, criterion=rmtprune.FixedRank(2), select=rmtprune.Select(min_dim=1), split=True
        )
        assert report.layers[0].action == "split", type(layer).__name__
        torch.testing.assert_close(pruned[0](**{keyword: x}), pruned[0](x))
