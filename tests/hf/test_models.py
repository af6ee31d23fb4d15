"""Pruned Hugging Face models run, and compute what the densely truncated model computes.

Every supported layer of tiny BERT, GPT-2 (``Conv1D``), T5, LLaMA and ViT (patch ``Conv2d``)
models is split at a low rank; the outputs must equal those of the same model whose layers
are truncated densely to the same ranks (an exact identity, up to float rounding), and each
factorized layer's ``weight`` must equal the truncated dense weight.  Before the factorized
layers had a ``weight``, ViT and T5 raised ``AttributeError`` in ``forward``.
"""

from __future__ import annotations

import pytest
import torch

import rmtprune
from rmtprune.factorize import LowRankModule
from tests.hf.helpers import FORCE_SPLIT, MODELS, output, truncate_like


@pytest.mark.parametrize("name", sorted(MODELS))
def test_split_model_equals_dense_truncation(name: str) -> None:
    build, inputs = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    pruned, report = rmtprune.prune(model, **FORCE_SPLIT)
    ranks = {row.name: row.rank_after for row in report if row.action == "split"}
    assert len(ranks) >= 8  # attention, MLP (and embedding / patch) layers are all split
    reference = truncate_like(model, ranks)
    x = inputs()
    got, want = output(pruned, x), output(reference, x)
    scale = want.abs().max()
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(scale)), float(
        (got - want).abs().max()
    )
    # the output really changed: the truncation is not a no-op
    assert not torch.allclose(output(model, x), want, rtol=0, atol=1e-3 * float(scale))
    for layer_name in ranks:
        layer = pruned.get_submodule(layer_name)
        dense = reference.get_submodule(layer_name)
        assert isinstance(layer, LowRankModule)
        assert layer.weight.shape == dense.weight.shape and layer.weight.dtype == dense.weight.dtype
        assert torch.allclose(layer.weight, dense.weight, rtol=0, atol=1e-6)


def test_vit_patch_projection_is_split_and_reads_like_a_conv() -> None:
    build, inputs = MODELS["vit"]
    torch.manual_seed(0)
    pruned, report = rmtprune.prune(build().eval(), **FORCE_SPLIT)
    projection = pruned.embeddings.patch_embeddings.projection
    assert report["embeddings.patch_embeddings.projection"].action == "split"
    assert (projection.kernel_size, projection.stride, projection.padding) == (
        (4, 4),
        (4, 4),
        (0, 0),
    )
    assert (projection.in_channels, projection.out_channels, projection.groups) == (3, 32, 1)
    assert output(pruned, inputs()).shape == (2, 17, 32)


def test_gpt2_conv1d_split_keeps_the_conv1d_layout() -> None:
    build, _ = MODELS["gpt2"]
    torch.manual_seed(0)
    model = build().eval()
    pruned, _ = rmtprune.prune(model, **FORCE_SPLIT)
    c_attn = pruned.transformer.h[0].attn.c_attn
    original = model.transformer.h[0].attn.c_attn
    assert type(c_attn).__name__ == "LowRankConv1D"
    assert (c_attn.nf, c_attn.nx) == (original.nf, original.nx) == (96, 32)
    assert c_attn.weight.shape == original.weight.shape == (32, 96)
