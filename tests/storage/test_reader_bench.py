"""A few-MB run of bench/bench_checkpoint.py's code path: the streamed analysis of a generated
3-shard LLaMA-style bf16 checkpoint equals the analysis of the loaded model (in float64)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import rmtprune
from rmtprune.cli.app import main
from rmtprune.storage.reader import open_checkpoint

transformers = pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_checkpoint.py"


def _bench_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_checkpoint", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_checkpoint"] = module
    spec.loader.exec_module(module)
    return module


def test_streamed_bf16_checkpoint_equals_the_in_memory_analysis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bench = _bench_module()
    shape = bench.LlamaShape(
        hidden=128, intermediate=352, layers=3, heads=4, kv_heads=2, vocab=2000
    )
    directory = tmp_path / "llama"
    written = bench.write_llama_checkpoint(str(directory), shape, shards=3)
    assert written["files"] == 3 and 1e6 < written["total_bytes"] < 5e6
    checkpoint = open_checkpoint(directory)
    assert {checkpoint.info(n).dtype for n in checkpoint.names()} == {"BF16"}
    report_path = tmp_path / "report.json"
    assert main(["analyze", str(directory), "--json", str(report_path), "--quiet"]) == 0
    streamed = json.loads(report_path.read_text())
    fitted = bench._fitted_weights(str(report_path))
    assert len(fitted) == 7 * 3 + 2  # seven matrices per block, lm_head and the embedding

    model = transformers.LlamaForCausalLM.from_pretrained(directory).to(torch.float64)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (64, 128)
    want = json.loads(rmtprune.analyze(model).to_json())
    assert streamed == want
    spiked = [r for r in want["layers"] if r["status"] == "ok" and r["n_spikes"] >= 4]
    assert len(spiked) >= 15  # the planted rank-4 signal is seen
