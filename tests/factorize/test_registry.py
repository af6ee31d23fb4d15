"""Layer adapters: the rebuilt layers compute the rank-r truncation of the original layer.

Truth: ``torch.linalg.svd`` of the weight (float64) and torch's own layers carrying the
truncated weight ``U_r diag(s_r) Vh_r``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rmtprune.factorize import (
    Conv2dAdapter,
    LinearAdapter,
    LowRankConv2d,
    LowRankLinear,
    LowRankModule,
    TransposedLinearAdapter,
    get_adapter,
    register_adapter,
    set_submodule,
    supported_types,
)

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).double().norm() / b.detach().double().norm())


class TransposedLinear(nn.Module):
    """Stand-in for Hugging Face GPT-2's Conv1D: weight stored (in, out), y = x @ W + b."""

    def __init__(self, out_features: int, in_features: int, bias: bool = True) -> None:
        super().__init__()
        self.nf = out_features
        self.weight = nn.Parameter(torch.randn(in_features, out_features) * 0.1)
        self.bias = nn.Parameter(torch.randn(out_features) * 0.1) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


register_adapter(TransposedLinear, TransposedLinearAdapter())


def svd_triplets(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, ...]:
    U, s, Vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    return U[:, :rank], s[:rank], Vh[:rank]


def truncated(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    U, s, Vh = svd_triplets(matrix, rank)
    return (U * s) @ Vh


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def with_weight(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A deep copy of ``module`` whose weight tensor is replaced (the reference layer)."""
    ref = copy.deepcopy(module)
    with torch.no_grad():
        ref.weight.copy_(weight.reshape(ref.weight.shape))
    return ref


def make_layer(kind: str, m: int, n_in: int, bias: bool, dtype: torch.dtype, seed: int):
    torch.manual_seed(seed)
    if kind == "linear":
        layer = nn.Linear(n_in, m, bias=bias, dtype=dtype)
        x = torch.randn(7, n_in, dtype=dtype)
    else:
        layer = TransposedLinear(m, n_in, bias=bias).to(dtype)
        x = torch.randn(7, n_in, dtype=dtype)
    return layer, x


LINEAR_SHAPES = [(12, 20), (20, 12), (15, 15), (1, 9), (9, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("kind", ["linear", "transposed"])
def test_linear_like_split_and_dense_equal_truncation(
    kind: str, shape: tuple[int, int], bias: bool, dtype: torch.dtype
) -> None:
    m, n = shape
    layer, x = make_layer(kind, m, n, bias, dtype, seed=m * 100 + n)
    adapter = get_adapter(layer)
    assert adapter is not None and adapter.unsupported_reason(layer) is None
    matrix = layer.weight.detach() if kind == "linear" else layer.weight.detach().T
    assert adapter.matrix_shape(layer) == (m, n)
    assert torch.equal(adapter.weight_matrix(layer), matrix)
    assert adapter.current_rank(layer) is None
    b = 0 if not bias else m
    assert adapter.param_count(layer) == count(layer) == m * n + b
    before = snapshot(layer)
    p = min(m, n)
    for rank in sorted({1, max(1, p // 2), p}):
        U, s, Vh = svd_triplets(matrix, rank)
        weight = truncated(matrix, rank).to(dtype)
        expected = with_weight(layer, weight if kind == "linear" else weight.T)(x)
        split = adapter.rebuild(layer, U, s, Vh, split=True)
        assert isinstance(split, LowRankLinear) and split.rank == rank
        assert split.first.weight.dtype == dtype
        assert rel_err(split(x), expected) < TOL[dtype]
        assert count(split) == adapter.split_param_count(layer, rank) == rank * (m + n) + b
        dense = adapter.rebuild(layer, U, s, Vh, split=False)
        assert type(dense) is type(layer)
        assert dense.weight.shape == layer.weight.shape and dense.weight.dtype == dtype
        assert rel_err(dense(x), expected) < TOL[dtype]
        assert count(dense) == adapter.dense_param_count(layer, rank) == m * n + b
        if rank == p:  # the full split is the original layer
            assert rel_err(split(x), layer(x)) < TOL[dtype]
        if bias:  # the bias is copied, not shared
            assert torch.equal(split.second.bias, layer.bias.detach())
            assert split.second.bias.data_ptr() != layer.bias.data_ptr()
            assert dense.bias.data_ptr() != layer.bias.data_ptr()
    assert_unchanged(layer, before)


CONV_CASES = [
    ({"kernel_size": 3}, 4, 6),
    ({"kernel_size": (3, 2), "stride": 2}, 10, 3),
    ({"kernel_size": 3, "padding": "same"}, 5, 5),
    ({"kernel_size": 3, "padding": 1, "padding_mode": "reflect", "dilation": 2}, 8, 2),
    ({"kernel_size": (1, 3), "padding": (0, 2), "padding_mode": "circular"}, 6, 4),
    ({"kernel_size": 3, "padding": 1, "padding_mode": "replicate", "stride": (2, 1)}, 40, 3),
    ({"kernel_size": 1}, 7, 9),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: str(c))
def test_conv_split_and_dense_equal_truncation(case, bias: bool, dtype: torch.dtype) -> None:
    kwargs, out_ch, in_ch = case
    torch.manual_seed(out_ch * 10 + in_ch)
    conv = nn.Conv2d(in_ch, out_ch, bias=bias, dtype=dtype, **kwargs)
    x = torch.randn(2, in_ch, 9, 10, dtype=dtype)
    adapter = get_adapter(conv)
    assert isinstance(adapter, Conv2dAdapter) and adapter.unsupported_reason(conv) is None
    kh, kw = conv.kernel_size
    m, n = out_ch, in_ch * kh * kw
    assert adapter.matrix_shape(conv) == (m, n)
    matrix = adapter.weight_matrix(conv)
    assert torch.equal(matrix, conv.weight.detach().reshape(m, n))
    b = m if bias else 0
    before = snapshot(conv)
    conv.eval()  # the replacements inherit the training flag
    p = min(m, n)
    for rank in sorted({1, max(1, p // 2), p}):
        U, s, Vh = svd_triplets(matrix, rank)
        expected = with_weight(conv, truncated(matrix, rank).to(dtype))(x)
        split = adapter.rebuild(conv, U, s, Vh, split=True)
        assert isinstance(split, LowRankConv2d) and split.rank == rank
        assert not split.training and not split.first.training
        assert rel_err(split(x), expected) < TOL[dtype]
        assert count(split) == adapter.split_param_count(conv, rank) == rank * (m + n) + b
        dense = adapter.rebuild(conv, U, s, Vh, split=False)
        assert type(dense) is nn.Conv2d and dense.padding_mode == conv.padding_mode
        assert rel_err(dense(x), expected) < TOL[dtype]
        if rank == p:
            assert rel_err(split(x), conv(x)) < TOL[dtype]
    assert_unchanged(conv, before)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_refactorizing_a_lowrank_layer_composes(kind: str) -> None:
    torch.manual_seed(5)
    if kind == "linear":
        layer: LowRankModule = LowRankLinear(14, 11, rank=6, dtype=torch.float64)
        x = torch.randn(5, 14, dtype=torch.float64)
    else:
        layer = LowRankConv2d(
            3, 11, rank=6, kernel_size=3, padding=1, padding_mode="reflect", dtype=torch.float64
        )
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        layer.second.bias.uniform_(-1.0, 1.0)
    adapter = get_adapter(layer)
    assert adapter is not None and adapter.current_rank(layer) == 6
    m, n = adapter.matrix_shape(layer)
    product = layer.second_matrix() @ layer.first_matrix()
    assert torch.allclose(adapter.weight_matrix(layer), product, rtol=0, atol=1e-15)
    assert adapter.param_count(layer) == count(layer) == 6 * (m + n) + m
    dense_type = type(layer.to_dense())
    before = snapshot(layer)
    rank = 3
    U, s, Vh = svd_triplets(product, rank)
    reference = layer.to_dense()
    with torch.no_grad():
        reference.weight.copy_(truncated(product, rank).reshape(reference.weight.shape))
    expected = reference(x)
    split = adapter.rebuild(layer, U, s, Vh, split=True)
    assert type(split) is type(layer) and split.rank == rank
    assert torch.equal(split.bias, layer.bias.detach())  # the bias survives re-splitting
    assert rel_err(split(x), expected) < 1e-12
    dense = adapter.rebuild(layer, U, s, Vh, split=False)
    assert type(dense) is dense_type
    assert rel_err(dense(x), expected) < 1e-12
    assert_unchanged(layer, before)
    # truncate() re-factorizes in place
    adapter.truncate(layer, U, s, Vh)
    assert adapter.current_rank(layer) == rank
    assert rel_err(layer(x), expected) < 1e-12


@pytest.mark.parametrize("kind", ["linear", "conv", "transposed"])
def test_truncate_sets_weight_in_place(kind: str) -> None:
    torch.manual_seed(6)
    layer: nn.Module
    if kind == "linear":
        layer = nn.Linear(9, 6)
    elif kind == "conv":
        layer = nn.Conv2d(2, 6, 2)
    else:
        layer = TransposedLinear(6, 9)
    adapter = get_adapter(layer)
    assert adapter is not None
    matrix = adapter.weight_matrix(layer).clone()
    bias = layer.bias.detach().clone()
    weight_ptr = layer.weight.data_ptr()
    U, s, Vh = svd_triplets(matrix, 2)
    adapter.truncate(layer, U, s, Vh)
    assert layer.weight.data_ptr() == weight_ptr  # same storage, new values
    assert rel_err(adapter.weight_matrix(layer), truncated(matrix, 2).float()) < 1e-6
    assert torch.equal(layer.bias.detach(), bias)


def test_rank_zero_and_bad_factors() -> None:
    layer = nn.Linear(4, 3)
    adapter = get_adapter(layer)
    assert adapter is not None
    empty = (torch.zeros(3, 0), torch.zeros(0), torch.zeros(0, 4))
    dense = adapter.rebuild(layer, *empty, split=False)
    assert torch.equal(dense.weight, torch.zeros(3, 4))
    assert torch.equal(dense(torch.randn(2, 4)), layer.bias.detach().expand(2, 3))
    with pytest.raises(ValueError, match="at least one"):
        adapter.rebuild(layer, *empty, split=True)
    with pytest.raises(ValueError, match="'U_r'"):
        adapter.rebuild(layer, torch.zeros(4, 1), torch.ones(1), torch.zeros(1, 4), split=True)
    with pytest.raises(ValueError, match="'Vh_r'"):
        adapter.rebuild(layer, torch.zeros(3, 1), torch.ones(1), torch.zeros(1, 3), split=True)
    with pytest.raises(ValueError, match="'s_r'"):
        adapter.rebuild(layer, torch.zeros(3, 1), -torch.ones(1), torch.zeros(1, 4), split=True)


def test_unsupported_and_unknown_layers() -> None:
    grouped = nn.Conv2d(8, 8, 3, groups=4)
    adapter = get_adapter(grouped)
    assert adapter is not None
    assert adapter.unsupported_reason(grouped) == (
        "grouped convolution (groups=4) is not supported"
    )
    assert get_adapter(nn.ReLU()) is None
    assert get_adapter(nn.Conv1d(2, 3, 3)) is None
    assert get_adapter(nn.ConvTranspose2d(2, 3, 3)) is None
    lazy = nn.LazyLinear(3)
    assert "not initialized" in get_adapter(lazy).unsupported_reason(lazy)
    attention = nn.MultiheadAttention(8, 2)
    reason = get_adapter(attention.out_proj).unsupported_reason(attention.out_proj)
    assert reason is not None and "MultiheadAttention" in reason


def test_lookup_by_mro_and_by_qualified_name() -> None:
    class MyLinear(nn.Linear):
        pass

    assert isinstance(get_adapter(MyLinear(2, 3)), LinearAdapter)
    # Hugging Face's Conv1D is registered by name: a class with that qualified name is found
    # without importing transformers.
    fake = type("Conv1D", (TransposedLinear,), {"__module__": "transformers.pytorch_utils"})
    fake_adapter = get_adapter(fake(4, 3))
    assert isinstance(fake_adapter, TransposedLinearAdapter)
    unrelated = type("Conv1D", (nn.Module,), {"__module__": "somewhere.else"})
    assert get_adapter(unrelated()) is None
    for cls in (nn.Linear, nn.Conv2d, LowRankLinear, LowRankConv2d, TransposedLinear):
        assert cls in supported_types()
    with pytest.raises(TypeError, match="'adapter'"):
        register_adapter(nn.Linear, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'layer_type'"):
        register_adapter(int, LinearAdapter())  # type: ignore[arg-type]


def test_set_submodule() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 4)))
    new = LowRankLinear(3, 4, rank=1)
    old = set_submodule(model, "1.1", new)
    assert isinstance(old, nn.Linear) and model[1][1] is new
    x = torch.randn(2, 2)
    assert torch.equal(model(x), new(torch.relu(model[0](x))))
    for bad in ("", "2", "1.5", "0.weight", "1.1.missing"):
        with pytest.raises(ValueError, match="'qualified_name'"):
            set_submodule(model, bad, nn.Identity())
    with pytest.raises(TypeError, match="'new_module'"):
        set_submodule(model, "0", torch.zeros(1))  # type: ignore[arg-type]
