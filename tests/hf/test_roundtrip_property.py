"""Property: any small model with layers factorized at random ranks round-trips exactly.

Random layer sizes, dtypes and ranks (every supported layer type: Linear, Conv2d,
Embedding, and Hugging Face Conv1D), split with the adapters; saved with
:func:`rmtprune.save` and loaded into a freshly built dense model, or saved with
:func:`rmtprune.save_pretrained` and loaded with :func:`rmtprune.from_pretrained`.  The
state dict and the outputs must be bit-for-bit identical.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import rmtprune
from rmtprune.factorize import get_adapter, set_submodule, truncated_svd
from tests.hf.helpers import MODELS, output, transformers

DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])


class Small(nn.Module):
    """Embedding → Conv1D → Linear, plus a small conv branch on the same tokens."""

    def __init__(self, vocab: int, d: int, hidden: int, channels: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.proj = transformers.pytorch_utils.Conv1D(hidden, d)
        self.head = nn.Linear(hidden, 3)
        self.conv = nn.Conv2d(1, channels, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.head(torch.tanh(self.proj(self.embed(tokens))))
        image = self.embed(tokens)[:, None].to(self.conv.weight.dtype)
        return h.sum() + self.conv(image).sum(dim=(1, 2, 3))[:, None]


def _split_at(model: nn.Module, fractions: list[float]) -> nn.Module:
    """Split each supported, untied layer at rank ``round(fraction · min(m, n))`` (at least 1)."""
    count: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            count[id(param)] = count.get(id(param), 0) + 1
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if n and get_adapter(m) is not None and all(count[id(p)] == 1 for p in m.parameters())
    ]
    for (name, layer), fraction in zip(layers, fractions, strict=False):
        adapter = get_adapter(layer)
        assert adapter is not None
        m, n = adapter.matrix_shape(layer)
        rank = max(1, round(fraction * min(m, n)))
        U, s, Vh = truncated_svd(adapter.weight_matrix(layer), rank)
        set_submodule(model, name, adapter.rebuild(layer, U, s, Vh, split=True))
    return model


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vocab=st.integers(4, 30),
    d=st.integers(1, 12),
    hidden=st.integers(1, 12),
    channels=st.integers(1, 5),
    dtype=DTYPES,
    fractions=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_io_round_trip_of_random_factorized_models_is_exact(
    vocab: int,
    d: int,
    hidden: int,
    channels: int,
    dtype: torch.dtype,
    fractions: list[float],
    seed: int,
) -> None:
    torch.manual_seed(seed)
    model = _split_at(Small(vocab, d, hidden, channels).to(dtype), fractions)
    tokens = torch.randint(0, vocab, (2, 5))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m.safetensors"
        rmtprune.save(model, path)
        torch.manual_seed(seed + 1)  # a differently initialised base model
        loaded = rmtprune.load(Small(vocab, d, hidden, channels).to(dtype), path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fractions=st.lists(st.floats(0.0, 1.0), min_size=16, max_size=16),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_hf_round_trip_of_randomly_factorized_gpt2_is_exact(
    fractions: list[float], dtype: torch.dtype
) -> None:
    build, inputs = MODELS["gpt2"]
    torch.manual_seed(0)
    model = _split_at(build().eval().to(dtype), fractions)
    with tempfile.TemporaryDirectory() as directory:
        rmtprune.save_pretrained(model, directory)
        loaded = rmtprune.from_pretrained(transformers.GPT2LMHeadModel, directory)
    x = inputs()
    assert torch.equal(output(model, x), output(loaded, x))
    assert rmtprune.storage.format.describe_structure(
        model
    ) == rmtprune.storage.format.describe_structure(loaded)
