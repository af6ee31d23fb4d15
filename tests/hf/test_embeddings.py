"""Embeddings are analysed and split into a small table and a projection; tied ones stay tied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.factorize import LowRankEmbedding, get_adapter
from tests.hf.helpers import FORCE_SPLIT, MODELS, output, truncate_like


def _table(
    vocab: int = 300, d: int = 64, rank: int = 5, padding_idx: int | None = 0
) -> nn.Embedding:
    """A low-rank signal plus noise, with a zero padding row."""
    g = torch.Generator().manual_seed(3)
    signal = torch.randn(vocab, rank, generator=g) @ torch.randn(rank, d, generator=g)
    embedding = nn.Embedding(vocab, d, padding_idx=padding_idx)
    with torch.no_grad():
        embedding.weight.copy_(signal + 0.05 * torch.randn(vocab, d, generator=g))
        if padding_idx is not None:
            embedding.weight[padding_idx] = 0.0
    return embedding


def test_embedding_is_analysed_as_a_vocab_by_d_matrix_and_split() -> None:
    model = nn.Sequential(_table())
    row = rmtprune.analyze(model)["0"]
    assert (row.shape, row.status, row.n_spikes) == ((300, 64), "ok", 5)
    pruned, report = rmtprune.prune(model)
    layer = pruned[0]
    assert isinstance(layer, LowRankEmbedding) and report["0"].action == "split"
    assert (layer.num_embeddings, layer.embedding_dim, layer.rank, layer.padding_idx) == (
        300,
        64,
        5,
        0,
    )
    assert report["0"].params_after == 5 * (300 + 64) == sum(p.numel() for p in layer.parameters())
    # the lookup equals the rank-5 truncation of the table, and padding still maps to zero
    U, s, Vh = torch.linalg.svd(model[0].weight.detach().double(), full_matrices=False)
    best = ((U[:, :5] * s[:5]) @ Vh[:5]).float()
    tokens = torch.tensor([[0, 1, 299, 7]])
    assert torch.allclose(layer(tokens), best[tokens], atol=1e-5)
    assert torch.equal(layer(torch.tensor([0])), torch.zeros(1, 64))
    assert torch.allclose(layer.weight, best, atol=1e-5) and layer.weight.shape == (300, 64)


def test_padding_row_stays_fixed_in_training() -> None:
    layer = rmtprune.prune(nn.Sequential(_table()))[0][0]
    layer(torch.tensor([0, 3])).sum().backward()
    assert torch.equal(layer.first.weight.grad[0], torch.zeros(layer.rank))
    assert layer.first.weight.grad[3].abs().sum() > 0


def test_unsupported_embeddings_are_skipped_with_the_reason() -> None:
    class Scaled(nn.Embedding):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2.0

    model = nn.Sequential(nn.Embedding(300, 64, max_norm=1.0), Scaled(300, 64))
    report = rmtprune.analyze(model)
    assert "max_norm" in report["0"].reason and report["0"].status == "skipped"
    assert "overrides nn.Embedding.forward" in report["1"].reason


def test_gpt2_tied_embeddings_are_skipped_and_stay_tied() -> None:
    build, _ = MODELS["gpt2"]
    torch.manual_seed(0)
    model = build().eval()
    pruned, report = rmtprune.prune(model, **FORCE_SPLIT)
    for name, other in (("transformer.wte", "lm_head"), ("lm_head", "transformer.wte")):
        assert report[name].action == "skipped"
        assert f"weight shared with {other} (tied parameters)" in report[name].reason
    assert pruned.lm_head.weight is pruned.transformer.wte.weight
    assert report["transformer.wpe"].action == "split"  # the position table is not tied


def test_t5_shared_embeddings_are_skipped_and_stay_tied() -> None:
    build, inputs = MODELS["t5"]
    torch.manual_seed(0)
    model = build().eval()
    pruned, report = rmtprune.prune(model, **FORCE_SPLIT)
    for name in ("shared", "encoder.embed_tokens", "decoder.embed_tokens"):
        assert report[name].action == "skipped" and "tied parameters" in report[name].reason
    assert pruned.encoder.embed_tokens.weight is pruned.shared.weight
    assert pruned.decoder.embed_tokens.weight is pruned.shared.weight
    ranks = {row.name: row.rank_after for row in report if row.action == "split"}
    x = inputs()
    assert torch.allclose(output(pruned, x), output(truncate_like(model, ranks), x), atol=1e-5)


def test_bert_position_and_token_type_tables() -> None:
    build, _ = MODELS["bert"]
    torch.manual_seed(0)
    report = rmtprune.analyze(build())
    assert "too small" in report["embeddings.token_type_embeddings"].reason  # 2 × 32
    assert report["embeddings.position_embeddings"].status == "ok"  # 40 × 32: the criterion decides
    assert report["embeddings.word_embeddings"].shape == (96, 32)


def test_embedding_adapter_rejects_wrong_triplets() -> None:
    table = _table(vocab=10, d=4, rank=2)
    with pytest.raises(ValueError, match="'U_r' parameter"):
        get_adapter(table).rebuild(
            table, torch.ones(4, 1), torch.ones(1), torch.ones(1, 4), split=True
        )
