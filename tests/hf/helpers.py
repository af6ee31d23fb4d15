"""Tiny Hugging Face models built from configs (no downloads) and an independent reference.

``truncate_like`` is the reference the factorized models are compared with: a copy of the
model in which each layer the report split is replaced in place by its best rank-``r``
approximation, computed here with ``torch.linalg.svd`` in float64 (not with rmtprune).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import rmtprune

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

__all__ = ["FORCE_SPLIT", "MODELS", "output", "truncate_like"]

FORCE_SPLIT: dict[str, Any] = {
    # fit_cutoff=1e9: every fitted layer counts as MP-like
    "criterion": rmtprune.MPCriterion(bulk_keep=0.0, min_rank=4, fit_cutoff=1e9),
    "select": rmtprune.Select(min_dim=2),
    "split": True,
}
"""``prune`` keywords that split every supported layer at rank ``max(spikes, 4)``."""


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    return transformers.BertModel(config)


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        vocab_size=96,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=40,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def _t5() -> nn.Module:
    config = transformers.T5Config(
        vocab_size=96,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        tie_word_embeddings=False,
        decoder_start_token_id=0,
    )
    return transformers.T5ForConditionalGeneration(config)


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=40,
    )
    return transformers.LlamaForCausalLM(config)


def _vit() -> nn.Module:
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
    )
    return transformers.ViTModel(config)


def _tokens() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, 96, (2, 7), generator=g)}


def _t5_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 96, (2, 7), generator=g)
    return {"input_ids": ids, "decoder_input_ids": ids[:, :5]}


def _pixels() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], dict[str, torch.Tensor]]]] = {
    "bert": (_bert, _tokens),
    "gpt2": (_gpt2, _tokens),
    "t5": (_t5, _t5_inputs),
    "llama": (_llama, _tokens),
    "vit": (_vit, _pixels),
}
"""Name → (builder of a tiny model, builder of its inputs)."""


def _matrix_view(module: nn.Module) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The ``m × n`` matrix of a dense layer and the map back to its weight layout."""
    weight = module.weight.detach()
    if type(module).__name__ == "Conv1D":  # HF GPT-2: x @ weight, weight is n × m
        return weight.t(), lambda matrix: matrix.t()
    if isinstance(module, nn.Conv2d):
        return weight.reshape(weight.shape[0], -1), lambda matrix: matrix.reshape(weight.shape)
    return weight, lambda matrix: matrix  # Linear (m × n) and Embedding (vocab × d)


def truncate_like(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """A copy of ``model`` whose named layers have their weight truncated to the given ranks."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, rank in ranks.items():
            module = reference.get_submodule(name)
            matrix, back = _matrix_view(module)
            U, s, Vh = torch.linalg.svd(matrix.double(), full_matrices=False)
            best = (U[:, :rank] * s[:rank]) @ Vh[:rank]
            module.weight.copy_(back(best).to(module.weight.dtype))
    return reference


def output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The first tensor output of an HF model (logits or last hidden state)."""
    with torch.no_grad():
        out = model(**inputs)
    return out[0]
