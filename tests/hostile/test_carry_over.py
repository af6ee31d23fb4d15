"""What a user attached to a layer follows it to its replacement, or the layer is skipped.

Before (torch 2.13): a split dropped every hook of the layer, made frozen weights trainable
and dropped a ``channels_last`` format; a ``torch.nn.utils.prune`` mask crashed the default
copy of ``prune()``, was reported "truncated" with ``split=False`` while the output did not
change (the mask's hook recomputes the weight), and was silently dropped with ``split=True``.
After: hooks (with their flags and handles), ``requires_grad``, mode, dtype and memory format
are carried by ``set_submodule``; masks, legacy backward hooks and factor hooks skip the layer
with the reason; the effect check undoes a replacement that lost any of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

import rmtprune
from rmtprune.factorize import get_adapter, set_submodule, truncated_svd
from rmtprune.pruning._guards import check_effect
from rmtprune.pruning.layers import candidate_layers

M, N, R = 40, 48, 4
SELECT = rmtprune.Select(min_dim=8)


def _model(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N, M), nn.Tanh()).to(dtype)


def _truncated(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The rank-``rank`` SVD truncation of ``weight`` as a matrix (float64, computed here)."""
    matrix = weight.detach().double().reshape(weight.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def _prune_split(model: nn.Module, inplace: bool, rank: int = R) -> nn.Module:
    crit = rmtprune.FixedRank(rank)
    pruned, report = rmtprune.prune(
        model, criterion=crit, select=SELECT, split=True, inplace=inplace
    )
    assert report["0"].action == "split" and report["0"].rank_after == rank
    return pruned


def _pruner_split(model: nn.Module, inplace: bool) -> nn.Module:
    pruner = rmtprune.SpectralPruner(
        model, criterion=rmtprune.FixedRank(R), select=SELECT, every=1, split=True
    )
    report = pruner.step(1)
    assert report.changed and report["0"].action == "split"
    return model


def _resplit_dense(model: nn.Module, inplace: bool) -> nn.Module:
    """A split layer pruned again with split=False: a new dense layer (rebuild).  Truncating
    the rank-(R+1) truncation to rank R is the rank-R truncation."""
    pruned = _prune_split(model, inplace, R + 1)
    crit = rmtprune.FixedRank(R)
    again, report = rmtprune.prune(pruned, criterion=crit, select=SELECT, split=False, inplace=True)
    assert report["0"].action == "truncated" and type(again[0]) is nn.Linear
    return again


def _truncate_in_place(model: nn.Module, inplace: bool) -> nn.Module:
    crit = rmtprune.FixedRank(R)
    pruned, report = rmtprune.prune(
        model, criterion=crit, select=SELECT, split=False, inplace=inplace
    )
    assert report["0"].action == "truncated"
    return pruned


ROUTES: dict[str, Callable[[nn.Module, bool], nn.Module]] = {
    "prune split": _prune_split,
    "SpectralPruner.step": _pruner_split,
    "split then split=False": _resplit_dense,
    "split=False in place": _truncate_in_place,
}


class Recorder:
    """Registers one hook of every kind on a layer and records what each one sees."""

    def __init__(self, layer: nn.Module) -> None:
        self.seen: dict[str, list[Any]] = {}
        self.order: list[str] = []
        rec = self._rec
        self.handles = {
            "forward": layer.register_forward_hook(lambda m, i, o: rec("forward", o)),
            "forward_kwargs": layer.register_forward_hook(
                lambda m, a, k, o: rec("forward_kwargs", (a[0], dict(k))), with_kwargs=True
            ),
            "forward_always": layer.register_forward_hook(
                lambda m, i, o: rec("forward_always", o), always_call=True
            ),
            "forward_first": layer.register_forward_hook(
                lambda m, i, o: rec("forward_first", o), prepend=True
            ),
            "pre": layer.register_forward_pre_hook(lambda m, i: rec("pre", i[0])),
            "pre_kwargs": layer.register_forward_pre_hook(
                lambda m, a, k: rec("pre_kwargs", a[0]), with_kwargs=True
            ),
            "backward": layer.register_full_backward_hook(lambda m, gi, go: rec("backward", gi[0])),
            "backward_pre": layer.register_full_backward_pre_hook(
                lambda m, go: rec("backward_pre", go[0])
            ),
            "state_post": layer.register_state_dict_post_hook(
                lambda m, sd, prefix, meta: rec("state_post", prefix)
            ),
            "state_legacy": layer._register_state_dict_hook(
                lambda m, sd, prefix, meta: rec("state_legacy", prefix)
            ),
            "state_pre": layer.register_state_dict_pre_hook(
                lambda m, prefix, keep: rec("state_pre", prefix)
            ),
            "load_pre": layer.register_load_state_dict_pre_hook(
                lambda m, *args: rec("load_pre", m)
            ),
            "load_post": layer.register_load_state_dict_post_hook(
                lambda m, keys: rec("load_post", m)
            ),
        }

    def _rec(self, kind: str, value: Any) -> None:
        self.seen.setdefault(kind, []).append(value)
        self.order.append(kind)

    def clear(self) -> None:
        self.seen.clear()
        self.order.clear()


def _exercise(model: nn.Module, x: torch.Tensor) -> None:
    """One forward + backward, one state_dict, one load_state_dict."""
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()
    model.load_state_dict(model.state_dict())


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_hook_fires_as_before_on_the_function_the_report_claims(
    route: str, inplace: bool
) -> None:
    model = _model()
    layer = model[0]
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    rec = Recorder(layer)
    x = torch.randn(5, N, dtype=torch.float64)
    _exercise(model, x)
    kinds_before = list(rec.order)
    rec.clear()
    pruned = ROUTES[route](model, inplace)
    rec.clear()  # a SpectralPruner or copy may call nothing, but be sure
    new = pruned[0]
    _exercise(pruned, x)
    assert rec.order == kinds_before  # same hooks, same number of calls, same order
    truncated = _truncated(weight, R)
    y = x @ truncated.T + bias
    for kind in ("forward", "forward_always", "forward_first"):
        torch.testing.assert_close(rec.seen[kind][0], y)
    torch.testing.assert_close(rec.seen["forward_kwargs"][0][0], x)
    torch.testing.assert_close(rec.seen["pre"][0], x)
    grad_out = 1.0 - torch.tanh(y) ** 2  # d/dy of tanh(y).sum()
    torch.testing.assert_close(rec.seen["backward_pre"][0], grad_out)
    torch.testing.assert_close(rec.seen["backward"][0], grad_out @ truncated)
    assert rec.seen["state_post"] == rec.seen["state_legacy"] == rec.seen["state_pre"] == ["0."]
    assert rec.seen["load_pre"] == [new] and rec.seen["load_post"] == [new]


@pytest.mark.parametrize("route", ["prune split", "SpectralPruner.step", "split then split=False"])
def test_handles_from_before_pruning_still_remove_their_hooks(route: str) -> None:
    model = _model()
    rec = Recorder(model[0])
    ROUTES[route](model, True)
    x = torch.randn(3, N, dtype=torch.float64)
    _exercise(model, x)
    assert len(rec.order) == len(rec.handles)  # the hooks are there ...
    for handle in rec.handles.values():
        handle.remove()
    rec.clear()
    _exercise(model, x)
    assert rec.order == []  # ... and the handles from before removed them
    assert not any(d for d in (model[0]._forward_hooks_with_kwargs, model[0]._forward_hooks))


def test_always_call_hook_still_fires_when_forward_raises() -> None:
    model = _model()
    rec = Recorder(model[0])
    _prune_split(model, True)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, N + 1, dtype=torch.float64))
    assert rec.order == ["pre", "pre_kwargs", "forward_always"]


def _freeze(model: nn.Module, weight: bool, bias: bool) -> None:
    model[0].weight.requires_grad_(weight)
    model[0].bias.requires_grad_(bias)


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize(("weight", "bias"), [(False, True), (True, False), (False, False)])
def test_frozen_weights_stay_frozen(route: str, inplace: bool, weight: bool, bias: bool) -> None:
    model = _model()
    _freeze(model, weight, bias)
    pruned = ROUTES[route](model, inplace)
    flags = {n: p.requires_grad for n, p in pruned[0].named_parameters()}
    expected = {n: (bias if n.endswith("bias") else weight) for n in flags}
    assert flags == expected


def test_refactorizing_keeps_each_factors_flag() -> None:
    model = _model()
    _prune_split(model, True)
    model[0].first.weight.requires_grad_(False)  # e.g. train only W2
    crit = rmtprune.FixedRank(R - 1)
    _, report = rmtprune.prune(model, criterion=crit, select=SELECT, split=True, inplace=True)
    assert report["0"].rank_after == R - 1
    flags = {n: p.requires_grad for n, p in model[0].named_parameters()}
    assert flags == {"first.weight": False, "second.weight": True, "second.bias": True}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_layer_mode_is_kept(route: str) -> None:
    model = _model().train()
    model[0].eval()
    pruned = ROUTES[route](model, True)
    assert pruned.training and not pruned[0].training
    assert not any(sub.training for sub in pruned[0].modules())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("split", [True, False])
def test_dtype_is_kept(dtype: torch.dtype, split: bool) -> None:
    model = _model(dtype)
    weight = model[0].weight.detach().clone()
    crit = rmtprune.FixedRank(R)
    pruned, _ = rmtprune.prune(model, criterion=crit, select=SELECT, split=split)
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    tol = {torch.float64: 1e-10, torch.bfloat16: 3e-2}[dtype]
    effective = get_adapter(pruned[0]).weight_matrix(pruned[0]).double()
    torch.testing.assert_close(effective, _truncated(weight, R), rtol=tol, atol=tol)


@pytest.mark.parametrize("route", ["prune", "SpectralPruner.step"])
def test_channels_last_convolution_factors_stay_channels_last(route: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(12, 36, 3, padding=1)).double()
    model = model.to(memory_format=torch.channels_last)
    weight, bias = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    crit = rmtprune.FixedRank(R)
    if route == "prune":
        model, _ = rmtprune.prune(model, criterion=crit, select=SELECT, split=True)
    else:
        rmtprune.SpectralPruner(model, criterion=crit, select=SELECT, every=1, split=True).step(1)
    first, second = model[0].first.weight, model[0].second.weight
    for factor in (first, second):
        assert factor.is_contiguous(memory_format=torch.channels_last)
    assert not first.is_contiguous()  # really laid out channels_last (3x3 kernel)
    x = torch.randn(2, 12, 7, 7, dtype=torch.float64).to(memory_format=torch.channels_last)
    kernel = _truncated(weight, R).reshape(weight.shape)
    expected = nn.functional.conv2d(x, kernel, bias, padding=1)
    torch.testing.assert_close(model(x), expected)


# ---- torch.nn.utils.prune masks: skipped in every mode, analysed as the masked weight ----


def _masked() -> nn.Sequential:
    model = _model()
    tprune.l1_unstructured(model[0], "weight", amount=0.5)
    return model


MASK_REASON = "weight has a torch.nn.utils.prune mask (L1Unstructured)"


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("split", [True, False])
def test_masked_layer_is_skipped_with_the_reason(split: bool, inplace: bool) -> None:
    model = _masked()
    x = torch.randn(4, N, dtype=torch.float64)
    y = model(x).detach()
    crit = rmtprune.FixedRank(R)
    pruned, report = rmtprune.prune(
        model, criterion=crit, select=SELECT, split=split, inplace=inplace
    )
    row = report["0"]
    assert row.action == "skipped" and MASK_REASON in row.reason
    assert "torch.nn.utils.prune.remove(module, 'weight')" in row.reason
    assert not report.changed and (pruned is model) == inplace
    torch.testing.assert_close(pruned(x), y, rtol=0, atol=0)
    assert tprune.is_pruned(pruned[0])  # the mask is still there
    _, dry = rmtprune.prune(model, criterion=crit, select=SELECT, split=split, dry_run=True)
    assert dry["0"].action == "skipped"


def test_masked_layer_is_skipped_by_the_pruner() -> None:
    model = _masked()
    pruner = rmtprune.SpectralPruner(
        model, criterion=rmtprune.FixedRank(R), select=SELECT, every=1, split=True
    )
    report = pruner.step(1)
    assert not report.changed and MASK_REASON in report["0"].reason


def test_masked_copy_computes_from_its_own_tensors() -> None:
    model = _masked()
    pruned, _ = rmtprune.prune(model, criterion=rmtprune.FixedRank(R), select=SELECT)
    with torch.no_grad():
        pruned[0].weight_orig.mul_(2.0)  # the copy's mask hook reads the copy's tensors
    pruned(torch.randn(3, N, dtype=torch.float64))
    torch.testing.assert_close(pruned[0].weight, 2 * model[0].weight)


def test_analysis_reads_the_masked_weight_the_next_forward_computes() -> None:
    model = _masked()
    with torch.no_grad():
        model[0].weight_orig.mul_(3.0)  # e.g. an optimizer step: module.weight is stale now
    effective = model[0].weight_orig.detach() * model[0].weight_mask
    (view,) = candidate_layers(model, SELECT)  # what analyze and the criteria fit
    torch.testing.assert_close(view.matrix, effective)
    expected = torch.linalg.svdvals(effective) ** 2 / N  # eigenvalues of W Wᵀ / n
    torch.testing.assert_close(
        torch.as_tensor(view.eigenvalues).sort().values.double(), expected.sort().values
    )


def test_after_prune_remove_the_masked_weight_is_pruned() -> None:
    model = _masked()
    effective = model[0].weight.detach().clone()
    tprune.remove(model[0], "weight")
    crit = rmtprune.FixedRank(R)
    pruned, report = rmtprune.prune(model, criterion=crit, select=SELECT, split=True)
    assert report["0"].action == "split"
    after = get_adapter(pruned[0]).weight_matrix(pruned[0])
    torch.testing.assert_close(after, _truncated(effective, R))


def test_legacy_spectral_norm_is_skipped_and_copied() -> None:
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nn.utils.spectral_norm(model[0])
    x = torch.randn(3, N, dtype=torch.float64)
    model.train()(x)  # the power iteration makes the weight a non-leaf tensor
    model.eval()
    y = model(x).detach()
    pruned, report = rmtprune.prune(model, criterion=rmtprune.FixedRank(R), select=SELECT)
    assert report["0"].action == "skipped"
    assert "weight is parametrized (legacy spectral_norm)" in report["0"].reason
    torch.testing.assert_close(pruned(x), y)
    assert rmtprune.remove_parametrizations(model) == ["0"]
    torch.testing.assert_close(model(x), y)


# ---- what cannot be carried: skipped with the reason, never dropped ----


def _legacy_backward(model: nn.Module, calls: list[int]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model[0].register_backward_hook(lambda m, gi, go: calls.append(1))


@pytest.mark.parametrize("split", [True, False])
def test_legacy_backward_hook_skips_the_layer(split: bool) -> None:
    model = _model()
    calls: list[int] = []
    _legacy_backward(model, calls)
    crit = rmtprune.FixedRank(R)
    pruned, report = rmtprune.prune(model, criterion=crit, select=SELECT, split=split)
    assert report["0"].action == "skipped"
    assert "legacy backward hook (register_backward_hook)" in report["0"].reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned(torch.randn(2, N, dtype=torch.float64)).sum().backward()
    assert calls == [1]


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("kind", ["register_hook", "register_post_accumulate_grad_hook"])
def test_tensor_hook_on_the_weight_skips_the_layer(kind: str, inplace: bool) -> None:
    model = _model()
    calls: list[int] = []
    getattr(model[0].weight, kind)(lambda *args: calls.append(1))
    getattr(model[0].weight, kind)(lambda *args: calls.append(2))
    crit = rmtprune.FixedRank(R)
    pruned, report = rmtprune.prune(
        model, criterion=crit, select=SELECT, split=True, inplace=inplace
    )
    assert report["0"].action == "skipped"
    assert f"parameter 'weight' has a tensor hook ({kind})" in report["0"].reason
    pruned(torch.randn(2, N, dtype=torch.float64)).sum().backward()
    assert calls == [1, 2]  # the weight (of the copy too) kept its hooks


def test_hooks_on_a_factor_skip_the_layer() -> None:
    model = _model()
    _prune_split(model, True)
    model[0].first.register_forward_hook(lambda m, i, o: None)
    crit = rmtprune.FixedRank(R - 1)
    _, report = rmtprune.prune(model, criterion=crit, select=SELECT, split=True, inplace=True)
    assert report["0"].action == "skipped"
    assert "submodule 'first' has forward hooks" in report["0"].reason
    assert model[0].rank == R


def _rebuilt(layer: nn.Module, rank: int = R, split: bool = True) -> nn.Module:
    adapter = get_adapter(layer)
    return adapter.rebuild(layer, *truncated_svd(adapter.weight_matrix(layer), rank), split=split)


def test_set_submodule_refuses_what_it_cannot_carry() -> None:
    model = _model()
    _legacy_backward(model, [])
    layer = model[0]
    with pytest.raises(ValueError, match=r"cannot replace .0.\. .*legacy backward hook"):
        set_submodule(model, "0", _rebuilt(layer))
    assert model[0] is layer


def test_set_submodule_carries_nothing_onto_a_non_weight_layer() -> None:
    model = _model()
    model[0].register_forward_hook(lambda m, i, o: None)
    set_submodule(model, "0", nn.Identity())
    assert not model[0]._forward_hooks


def test_effect_check_undoes_a_replacement_that_lost_the_hooks() -> None:
    model = _model()
    layer = model[0]
    layer.register_forward_hook(lambda m, i, o: None)
    layer.weight.requires_grad_(False)
    before = float(layer.weight.detach().square().sum())
    kept = torch.linalg.svdvals(layer.weight.detach())[:R]
    set_submodule(model, "0", _rebuilt(layer), carry=False)  # as before the fix
    reason = check_effect(model, "0", layer, before, kept)
    assert reason is not None and "lost the layer's hooks (forward_hooks)" in reason
    assert model[0] is layer
    fresh = _rebuilt(layer)
    set_submodule(model, "0", fresh)  # carried: accepted
    assert check_effect(model, "0", layer, before, kept) is None and model[0] is fresh


def test_effect_check_sees_a_masked_weight_that_did_not_change() -> None:
    model = _masked()
    layer = model[0]
    before = float(layer.weight.detach().square().sum())
    u, s, vh = truncated_svd(layer.weight.detach(), R)
    get_adapter(layer).truncate(layer, u, s, vh)  # writes into the stale masked copy only
    assert "no effect" in str(check_effect(model, "0", layer, before, s))
