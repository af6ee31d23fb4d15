"""Float16, bfloat16 and float64 weights are analysed and pruned exactly like float32 ones.

The weights are generated so that they are exactly representable in every dtype (rounded
to bfloat16, tiny values zeroed so that float16 keeps them exactly), hence the float64
spectra are identical and so must be every number of the analysis and every pruning
decision.  Before, bfloat16 layers got rank 0 ("all-zero weight") and float16 ones lost
rank, because the rank tolerance followed the storage dtype.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.factorize import LowRankModule
from tests.hf.helpers import MODELS

DTYPES = [torch.float16, torch.bfloat16, torch.float64]


def _representable(model: nn.Module) -> nn.Module:
    """``model`` (float32) with every weight rounded to bfloat16 and exactly float16 too."""
    with torch.no_grad():
        for param in model.parameters():
            value = param.to(torch.bfloat16).float()
            value[value.abs() < 2**-14] = 0.0  # float16 normal range
            param.copy_(value)
            assert torch.equal(param.half().float(), param) and torch.equal(
                param.bfloat16().float(), param
            )
    return model


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return _representable(nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 48)))


def _analysis(report: rmtprune.ModelReport) -> list[tuple[object, ...]]:
    return [
        (r.name, r.rank, r.status, r.n_spikes, r.sigma2, r.lambda_plus, r.fit_error, r.mp_like)
        for r in report
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_analysis_of_a_square_layer_does_not_depend_on_the_storage_dtype(
    dtype: torch.dtype,
) -> None:
    model = _mlp()
    want = rmtprune.analyze(model)
    got = rmtprune.analyze(copy.deepcopy(model).to(dtype))
    assert want["0"].rank == 128 and want["0"].status == "ok"  # full rank, fitted
    assert _analysis(got) == _analysis(want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pruning_decisions_and_factor_dtypes(dtype: torch.dtype) -> None:
    model = _mlp()
    _, want = rmtprune.prune(model, criterion=rmtprune.MPCriterion(bulk_keep=0.25))
    pruned, got = rmtprune.prune(
        copy.deepcopy(model).to(dtype), criterion=rmtprune.MPCriterion(bulk_keep=0.25)
    )
    decisions = [(r.name, r.action, r.rank_before, r.rank_after, r.params_after) for r in got]
    assert decisions == [
        (r.name, r.action, r.rank_before, r.rank_after, r.params_after) for r in want
    ]
    assert want["0"].action == "split"
    for layer in (pruned[0], pruned[2]):
        assert isinstance(layer, LowRankModule)
        assert {p.dtype for p in layer.parameters()} == {dtype}
        assert layer.weight.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_bert_in_half_precision_is_analysed_like_float32(dtype: torch.dtype) -> None:
    build, inputs = MODELS["bert"]
    torch.manual_seed(0)
    model = _representable(build().eval())
    want = rmtprune.analyze(model, select=rmtprune.Select(min_dim=8))
    got = rmtprune.analyze(copy.deepcopy(model).to(dtype), select=rmtprune.Select(min_dim=8))
    assert _analysis(got) == _analysis(want)
    ranks = {r.name: r.rank for r in got if r.status == "ok"}
    assert ranks["encoder.layer.0.attention.self.query"] == 32  # a full-rank 32 × 32 layer
    settings = {
        "criterion": rmtprune.MPCriterion(bulk_keep=0.0, min_rank=8, fit_cutoff=1e9),
        "select": rmtprune.Select(min_dim=8),
    }
    _, want_report = rmtprune.prune(model, **settings)
    pruned, report = rmtprune.prune(copy.deepcopy(model).to(dtype), **settings)
    assert [(r.name, r.action, r.rank_after) for r in report] == [
        (r.name, r.action, r.rank_after) for r in want_report
    ]
    assert sum(r.action == "split" for r in report) >= 12
    with torch.no_grad():
        assert pruned(**inputs()).last_hidden_state.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_a_split_layer_is_re_analysed_like_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    model = _representable(nn.Sequential(nn.Linear(256, 128)))
    split, _ = rmtprune.prune(model, criterion=rmtprune.MPCriterion(bulk_keep=0.5))
    half = copy.deepcopy(split).to(dtype)
    with torch.no_grad():  # factors exactly representable, as for the dense weights
        for param in half.parameters():
            param.copy_(param.float().to(dtype))
        single = copy.deepcopy(half).to(torch.float32)
    assert _analysis(rmtprune.analyze(half)) == _analysis(rmtprune.analyze(single))


@pytest.mark.parametrize(
    ("key", "expected"), [(None, torch.float32), ("bfloat16", torch.bfloat16)], ids=str
)
def test_configs_without_dtype_build_without_a_deprecation_warning(
    tmp_path, key: str | None, expected: torch.dtype
) -> None:
    """all-MiniLM-L6-v2's config (transformers 4.8) has no dtype key, older ones say
    "torch_dtype": transformers 5 warns whenever the attribute of that old name is read."""
    import json
    import logging

    transformers = pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging

    from rmtprune.hf.directory import build_architecture

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("dtype", None)
    if key is not None:
        raw["torch_dtype"] = key
    (tmp_path / "config.json").write_text(json.dumps(raw))
    said: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = said.append  # type: ignore[method-assign]
    hf_logging.warning_once.cache_clear()  # a warning given earlier in this process counts too
    hf_logging.get_logger().addHandler(handler)  # transformers' loggers do not propagate
    try:
        model = build_architecture(tmp_path)
    finally:
        hf_logging.get_logger().removeHandler(handler)
    assert {p.dtype for p in model.parameters()} == {expected}  # the old key is still read
    assert not [r.getMessage() for r in said if "deprecated" in r.getMessage()]
