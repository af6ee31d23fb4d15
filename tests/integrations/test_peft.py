"""PEFT (LoRA) end to end with the real ``peft``: prune a LoRA BERT, merge exactly, save honestly.

The truths: the reference model is the LoRA model with every split layer's weight replaced by
its best rank-``r`` approximation (``torch.linalg.svd`` in float64, ``tests/hf/helpers``), the
adapters untouched; a merged layer's weight is the truncated base weight plus
``scaling · B A`` computed here.  Models are float64 so that equal functions agree to ~1e-12.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import rmtprune
from rmtprune.factorize import LowRankLinear, get_adapter, set_submodule, truncated_svd
from rmtprune.integrations.peft import pruned_layers

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from tests.hf.helpers import truncate_like  # noqa: E402  (needs transformers)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own

RANK = 8
LORA_R = 12  # above RANK: a walker that pruned adapters would truncate them
PRUNE: dict[str, Any] = {
    "criterion": rmtprune.FixedRank(RANK),
    "select": rmtprune.Select(min_dim=2),
    "split": True,
}
Q0 = "base_model.model.encoder.layer.0.attention.self.query"


def _lora_bert(seed: int = 0, **config: Any) -> nn.Module:
    torch.manual_seed(seed)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=100,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=40,
        )
    ).double()
    options = {"r": LORA_R, "lora_alpha": 8, "lora_dropout": 0.0, "init_lora_weights": False}
    lora = peft.LoraConfig(target_modules=["query", "value"], **{**options, **config})
    model = peft.get_peft_model(bert, lora)
    model.eval()
    return model


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, 100, (2, 7), generator=g)}


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs()).last_hidden_state


def _lora_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}


def _split_ranks(report: Any) -> dict[str, int]:
    return {r.name: r.rank_after for r in report.layers if r.action == "split"}


@pytest.fixture(scope="module")
def pruned() -> tuple[nn.Module, nn.Module, Any]:
    model = _lora_bert()
    out, report = rmtprune.prune(model, **PRUNE)
    return model, out, report


def test_adapters_left_alone_bases_split(pruned: tuple[nn.Module, nn.Module, Any]) -> None:
    model, out, report = pruned
    adapters = [r for r in report.layers if ".lora_" in r.name]
    assert len(adapters) == 2 * 2 * 2  # lora_A, lora_B of query, value in two layers
    for row in adapters:
        owner = row.name.split(".lora_")[0]
        assert row.action == "skipped"
        assert row.reason == f"LoRA adapter of {owner!r}: left alone"
    before, after = _lora_params(model), _lora_params(out)
    assert before.keys() == after.keys() and len(before) == 8
    assert all(torch.equal(before[n], after[n]) for n in before)  # bitwise
    assert all(p.requires_grad for n, p in out.named_parameters() if ".lora_" in n)
    for layer in ("query", "value"):
        base = out.get_submodule(Q0.replace("query", layer)).base_layer
        assert isinstance(base, LowRankLinear) and base.rank == RANK
        assert report[f"{Q0.replace('query', layer)}.base_layer"].action == "split"


def test_factors_of_frozen_bases_stay_frozen(pruned: tuple[nn.Module, nn.Module, Any]) -> None:
    _, out, _ = pruned
    factors = {n: p for n, p in out.named_parameters() if ".base_layer." in n}
    assert factors and not any(p.requires_grad for p in factors.values())


def test_outputs_equal_truncated_weights_plus_adapters(
    pruned: tuple[nn.Module, nn.Module, Any],
) -> None:
    model, out, report = pruned
    ranks = {name: r for name, r in _split_ranks(report).items() if ".lora_" not in name}
    reference = truncate_like(model, ranks)  # the adapters as they were
    torch.testing.assert_close(_out(out), _out(reference), rtol=1e-10, atol=1e-10)


def _effective(base: nn.Module, layer: nn.Module, adapters: list[str]) -> torch.Tensor:
    weight = base.weight.detach().clone()
    for a in adapters:
        weight += layer.scaling[a] * layer.lora_B[a].weight @ layer.lora_A[a].weight
    return weight.detach()


def test_merge_and_unload_is_exact(pruned: tuple[nn.Module, nn.Module, Any]) -> None:
    _, out, _ = pruned
    out = rmtprune.pruning._guards.copy_model(out)
    expected, count = _out(out), sum(p.numel() for p in out.parameters())
    lora = out.get_submodule(Q0)
    truth = _effective(lora.base_layer, lora, ["default"])
    merged = out.merge_and_unload()
    query = merged.encoder.layer[0].attention.self.query
    assert type(query) is LowRankLinear and query.rank == RANK + LORA_R
    torch.testing.assert_close(query.weight, truth, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_out(merged), expected, rtol=1e-12, atol=1e-12)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    # r + r_l parameters: the adapter's A and B now sit inside the factors
    assert sum(p.numel() for p in query.parameters()) == (RANK + LORA_R) * (64 + 64) + 64
    assert sum(p.numel() for p in merged.parameters()) == count


def test_merge_then_unmerge_restores_the_factors(pruned: tuple[nn.Module, nn.Module, Any]) -> None:
    _, out, _ = pruned
    out = rmtprune.pruning._guards.copy_model(out)
    expected = _out(out)
    lora = out.get_submodule(Q0)
    w1, w2 = lora.base_layer.first.weight.clone(), lora.base_layer.second.weight.clone()
    flags = [p.requires_grad for p in lora.base_layer.parameters()]
    out.merge_adapter()
    assert lora.merged and lora.base_layer.rank == RANK + LORA_R
    torch.testing.assert_close(_out(out), expected, rtol=1e-12, atol=1e-12)
    out.unmerge_adapter()
    assert not lora.merged and lora.base_layer.rank == RANK
    assert torch.equal(lora.base_layer.first.weight, w1)
    assert torch.equal(lora.base_layer.second.weight, w2)
    assert [p.requires_grad for p in lora.base_layer.parameters()] == flags
    torch.testing.assert_close(_out(out), expected, rtol=1e-12, atol=1e-12)


def test_two_active_adapters_with_bias_merge_exactly_and_safely() -> None:
    model = _lora_bert(lora_bias=True)
    second = peft.LoraConfig(
        r=2, lora_alpha=6, target_modules=["query"], lora_dropout=0.0, init_lora_weights=False
    )
    model.add_adapter("second", second)
    model.base_model.set_adapter(["default", "second"])
    with torch.no_grad():  # lora_bias starts at zero: make it count
        for n, p in model.named_parameters():
            if n.endswith("lora_B.default.bias"):
                p.normal_()
    model.eval()
    out, _ = rmtprune.prune(model, **PRUNE)
    expected = _out(out)
    lora = out.get_submodule(Q0)
    truth = _effective(lora.base_layer, lora, ["default", "second"])
    bias = lora.base_layer.bias + lora.scaling["default"] * lora.lora_B["default"].bias
    merged = out.merge_and_unload(safe_merge=True)
    query = merged.encoder.layer[0].attention.self.query
    assert query.rank == RANK + LORA_R + 2
    torch.testing.assert_close(query.weight, truth, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(query.bias, bias.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_out(merged), expected, rtol=1e-12, atol=1e-12)


def test_truncated_in_place_merges_natively_and_refuses_adapter_save(tmp_path: Path) -> None:
    model = _lora_bert()
    out, report = rmtprune.prune(model, **{**PRUNE, "split": False})
    assert report[f"{Q0}.base_layer"].action == "truncated"
    expected = _out(out)
    with pytest.raises(ValueError, match="saves the adapter weights only"):
        out.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    torch.testing.assert_close(_out(out.merge_and_unload()), expected, rtol=1e-12, atol=1e-12)


def test_analyze_fits_the_base_weight_and_says_so() -> None:
    model = _lora_bert()
    report = rmtprune.analyze(model, select=rmtprune.Select(min_dim=2))
    row = report[f"{Q0}.base_layer"]
    assert row.status == "ok"
    assert "fitted on the base weight alone, without the update scaling·B·A" in row.reason
    assert "['default']" in row.reason
    base = model.get_submodule(Q0).base_layer.weight.detach()
    lam = torch.linalg.svdvals(base).square() / 64  # λ = s² / N, N = max(m, n)
    torch.testing.assert_close(
        torch.as_tensor(row.eigenvalues, dtype=torch.float64), lam.sort().values
    )
    assert report[f"{Q0}.lora_A.default"].status == "skipped"
    assert report[f"{Q0}.lora_A.default"].reason.startswith("LoRA adapter of")


def test_dora_bases_are_not_pruned() -> None:
    model = _lora_bert(use_dora=True)
    out, report = rmtprune.prune(model, **PRUNE)
    row = report[f"{Q0}.base_layer"]
    assert row.action == "skipped" and "DoRA" in row.reason
    assert type(out.get_submodule(Q0).base_layer) is nn.Linear
    assert report["base_model.model.encoder.layer.0.attention.self.key"].action == "split"


def test_a_merge_that_cannot_be_exact_refuses_and_changes_nothing() -> None:
    model = _lora_bert(use_dora=True)
    base = model.get_submodule(Q0).base_layer
    adapter = get_adapter(base)
    assert adapter is not None
    u, s, vh = truncated_svd(adapter.weight_matrix(base), RANK)
    set_submodule(model, f"{Q0}.base_layer", adapter.rebuild(base, u, s, vh, split=True))
    expected = _out(model)
    with pytest.raises(ValueError, match=f"DoRA.*|{Q0}") as info:
        model.merge_and_unload()
    assert Q0 in str(info.value) and "DoRA" in str(info.value)
    lora = model.get_submodule(Q0)
    assert not lora.merged and lora.base_layer.rank == RANK
    torch.testing.assert_close(_out(model), expected, rtol=0, atol=0)


def test_save_pretrained_refuses_merge_and_rmtprune_save_is_exact(
    pruned: tuple[nn.Module, nn.Module, Any], tmp_path: Path
) -> None:
    _, out, _ = pruned
    out = rmtprune.pruning._guards.copy_model(out)
    assert f"{Q0}.base_layer" in pruned_layers(out)
    with pytest.raises(ValueError, match=r"merge_and_unload\(\); rmtprune.save_pretrained"):
        out.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    expected = _out(out)
    merged = out.merge_and_unload()
    rmtprune.save_pretrained(merged, tmp_path / "model")
    loaded = rmtprune.from_pretrained(transformers.BertModel, tmp_path / "model")
    loaded.eval()
    torch.testing.assert_close(_out(loaded), expected, rtol=1e-12, atol=1e-12)
    # an unpruned PEFT model still saves (and loads) its adapter as before
    fresh = _lora_bert()
    fresh.save_pretrained(tmp_path / "plain")
    assert (tmp_path / "plain" / "adapter_config.json").is_file()


def test_forward_backward_step_trains_the_adapters(
    pruned: tuple[nn.Module, nn.Module, Any],
) -> None:
    model, out, _ = pruned
    out = rmtprune.pruning._guards.copy_model(out)
    out.train()
    before = _lora_params(out)
    assert before.keys() == _lora_params(model).keys()  # the same adapters, not their factors
    trainable = [p for p in out.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    hidden = out(**_inputs()).last_hidden_state
    direction = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(2)).double()
    loss = (hidden * direction).sum()  # a layer norm's output has a constant mean square
    loss.backward()
    for n, p in out.named_parameters():
        if ".lora_" in n:
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), n
    optimizer.step()
    after = _lora_params(out)
    assert all(not torch.equal(before[n], after[n]) for n in before)


def _truncate_in_place(model: nn.Module, ranks: dict[str, int]) -> None:
    """Replace each named linear layer's weight by its best rank-r approximation (float64 SVD)."""
    with torch.no_grad():
        for name, rank in ranks.items():
            weight = model.get_submodule(name).weight
            U, s, Vh = torch.linalg.svd(weight.double(), full_matrices=False)
            weight.copy_((U[:, :rank] * s[:rank]) @ Vh[:rank])


def test_a_model_with_hooks_frozen_layers_a_mask_and_lora_behaves_as_the_report_says() -> None:
    """Issue 20's "done when": everything attached at once, then the report is checked against
    the model: the split layers compute the truncated function, the masked layer is left as it
    was (skipped with the reason), the hook on a split base fires with the truncated output,
    frozen stays frozen, the adapters train, and the merge is exact."""
    masked = "base_model.model.encoder.layer.1.intermediate.dense"
    select = rmtprune.Select(min_dim=2, exclude="*embeddings*")

    def build() -> nn.Module:
        model = _lora_bert()
        torch_prune.l1_unstructured(model.get_submodule(masked), "weight", amount=0.5)
        return model

    model = build()
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(Q0).base_layer.register_forward_hook(
        lambda module, args, output: seen.append(output.detach().clone())
    )
    out, report = rmtprune.prune(model, criterion=rmtprune.FixedRank(RANK), select=select)
    rows = {r.name: r for r in report.layers}
    assert rows[masked].action == "skipped"
    assert "torch.nn.utils.prune mask" in rows[masked].reason
    assert rows[f"{Q0}.base_layer"].action == "split"
    assert all(r.action == "skipped" for n, r in rows.items() if ".lora_" in n)
    split = _split_ranks(report)
    assert f"{Q0}.base_layer" in split and masked not in split and len(split) > 4

    reference = build()  # the same model, truncated by hand where the report says "split"
    _truncate_in_place(reference, split)
    reference.eval()
    ref_seen: list[torch.Tensor] = []
    reference.get_submodule(Q0).base_layer.register_forward_hook(
        lambda module, args, output: ref_seen.append(output.detach().clone())
    )
    seen.clear()
    torch.testing.assert_close(_out(out), _out(reference), rtol=1e-10, atol=1e-10)
    assert len(ref_seen) == 1
    assert len(seen) == 1  # the user's hook came along, and fires once
    torch.testing.assert_close(seen[0], ref_seen[0], rtol=1e-10, atol=1e-10)
    hook.remove()  # the handle belongs to the original model; the pruned copy has its own hook
    _out(model)
    _out(out)
    assert len(seen) == 2

    mask = out.get_submodule(masked).weight_mask
    assert torch.equal(mask, model.get_submodule(masked).weight_mask)
    assert float((out.get_submodule(masked).weight == 0).double().mean()) == pytest.approx(0.5)
    assert report.params_after == sum(p.numel() for p in out.parameters())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for name, p in out.named_parameters():
        owner = name.rsplit(".", 2)[0] if ".first." in name or ".second." in name else None
        if ".lora_" in name:
            assert p.requires_grad, name
        elif owner is not None:  # a factor: frozen exactly when its layer's weight was
            assert not p.requires_grad and f"{owner}.weight" in frozen, name
        else:
            assert p.requires_grad == (name not in frozen), name

    expected = _out(out)
    merged = out.merge_and_unload()
    torch.testing.assert_close(_out(merged), expected, rtol=1e-12, atol=1e-12)
