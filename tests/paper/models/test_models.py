"""Architectures of the paper: shapes, forward values, dropout, log_softmax axis."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from rmtprune.paper.models import Abs, FullyConnected, PaperCNN, conv_output_size


def test_fully_connected_forward_matches_hand_computation() -> None:
    torch.manual_seed(0)
    net = FullyConnected([6, 5, 4, 3]).double()
    linears = [m for m in net.layers if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(5, 6), (4, 5), (3, 4)]
    assert [type(m) for m in net.layers] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    x = torch.randn(7, 2, 3, dtype=torch.float64)  # flattened to 6 features
    h = x.reshape(7, 6)
    for i, layer in enumerate(linears):
        h = h @ layer.weight.T + layer.bias
        if i < 2:
            h = torch.clamp(h, min=0)
    expected = h - torch.logsumexp(h, dim=1, keepdim=True)
    out = net(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(7, dtype=torch.float64))


def test_fully_connected_variants() -> None:
    net = FullyConnected([3, 4, 2], activation="abs", output="identity", bias=False)
    assert isinstance(net.layers[1], Abs)
    assert all(m.bias is None for m in net.layers if isinstance(m, nn.Linear))
    x = torch.tensor([[1.0, -2.0, 0.5]])
    with torch.no_grad():
        expected = net.layers[2].weight @ (net.layers[0].weight @ x[0]).abs()
    torch.testing.assert_close(net(x)[0], expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"widths": [784]}, ValueError, "'widths'"),
        ({"widths": [784, 0, 10]}, ValueError, "'widths'"),
        ({"widths": "784"}, TypeError, "'widths'"),
        ({"widths": [4, 2], "activation": "gelu"}, ValueError, "'activation'"),
        ({"widths": [4, 2], "output": "softmax"}, ValueError, "'output'"),
    ],
)
def test_fully_connected_rejects_bad_input(
    kwargs: dict[str, object], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        FullyConnected(**kwargs)  # type: ignore[arg-type]


def test_cnn_flat_size_is_measured_not_assumed() -> None:
    net = PaperCNN()
    # (28-2-2-2)//2 = 11, (11-2-2)//2 = 3, so 512 * 3 * 3.
    assert conv_output_size(28, 5) == 3 and net.flat_features == 512 * 3 * 3 == 4608
    with torch.no_grad():
        feats = net.eval().features(torch.zeros(2, 1, 28, 28))
    assert feats.shape == (2, 512, 3, 3) and feats.flatten(1).shape[1] == net.flat_features
    assert net.classifier[0].in_features == 4608
    cifar = PaperCNN(in_channels=3, input_size=32)
    with torch.no_grad():
        assert cifar.eval().features(torch.zeros(1, 3, 32, 32)).flatten(1).shape[1] == 8192
    assert cifar.flat_features == 8192


def test_cnn_layer_order_and_parameter_count() -> None:
    net = PaperCNN()
    kinds = [type(m).__name__ for m in net.features]
    block = ["Conv2d", "ReLU", "BatchNorm2d"]
    pool = ["MaxPool2d", "Dropout"]
    assert kinds == block * 3 + pool + block * 2 + pool
    assert [type(m).__name__ for m in net.classifier] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    chans = [1, 32, 64, 128, 256, 512]
    convs = sum(o * i * 9 + o + 2 * o for i, o in itertools.pairwise(chans))
    fc = 4608 * 1000 + 1000 + 2 * 1000 + 1000 * 10 + 10
    assert sum(p.numel() for p in net.parameters()) == convs + fc
    assert all(m.p == 0.35 for m in net.modules() if isinstance(m, nn.Dropout))


def test_cnn_dropout_only_in_training_and_log_softmax_per_sample() -> None:
    torch.manual_seed(0)
    net = PaperCNN(channels=(4, 4, 4, 4, 4), fc_width=16, input_size=20)
    x = torch.randn(3, 1, 20, 20)
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.exp().sum(dim=1), torch.ones(3))  # over classes, per sample
    assert not torch.allclose(a.exp().sum(dim=0), torch.ones(10))
    # Each eval output is that sample alone: no mixing across the batch.
    with torch.no_grad():
        torch.testing.assert_close(net(x[1:2])[0], a[1])
    net.train()
    with torch.no_grad():
        c, d = net(x), net(x)
    assert not torch.equal(c, d)


def test_cnn_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="'input_size'"):
        PaperCNN(input_size=16)  # 14, 12, 10 -> 5, 3, 1 -> 0
    with pytest.raises(ValueError, match="'dropout'"):
        PaperCNN(dropout=1.0)
    with pytest.raises(ValueError, match="'channels'"):
        PaperCNN(channels=())
