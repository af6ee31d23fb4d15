"""The runnable examples of docs/integrations.md (docs/examples/*.py), each run as a test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _load(name: str) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    if str(EXAMPLES) not in sys.path:  # spawned DDP workers import the example by name
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ddp_ranks_with_different_thread_counts_hold_equal_weights(tmp_path: Path) -> None:
    results = _load("ddp_example").main(tmp_path)
    ranks = [r["snapshots"] for r in results]
    pruned = ranks[0][0]
    assert "0.first.weight" in pruned and "2.first.weight" in pruned  # both layers were split
    for a, b in zip(*ranks, strict=True):  # after each pruning step and after training on
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ranks[0][1]["0.first.weight"], ranks[0][2]["0.first.weight"])  # trains


def test_plain_loop_example() -> None:
    result = _load("plain_loop_example").main()
    params = result["params"]
    assert len(params) == 3 and params[0] >= params[1] > params[2]  # pruned at epochs 2 and 4
    model, optimizer = result["model"], result["optimizer"]
    decay, no_decay = optimizer.param_groups
    named = list(model.named_parameters())
    assert [id(p) for p in decay["params"]] == [id(p) for n, p in named if "bias" not in n]
    assert [id(p) for p in no_decay["params"]] == [id(p) for n, p in named if "bias" in n]
    assert result["scheduler"].optimizer is optimizer
    assert sum(p.numel() for p in model.parameters()) == params[-1]


@pytest.mark.slow
def test_lightning_example(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    result = _load("lightning_example").main(tmp_path)
    assert [r.epoch for r in result["reports"]] == [2, 4]  # once before the kill, once after
    model, optimizer = result["model"], result["trainer"].optimizers[0]
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [
        id(p) for p in model.parameters()
    ]
    assert sum(p.numel() for p in model.parameters()) == result["reports"][-1].params_after


@pytest.mark.slow
def test_transformers_example(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    result = _load("transformers_example").main(tmp_path)
    assert [r.epoch for r in result["reports"]] == [4, 8]
    model = result["model"]
    assert sum(p.numel() for p in model.parameters()) == result["reports"][-1].params_after
