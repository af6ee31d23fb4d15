"""Parametrized weights: a report never says a layer changed when its function did not.

Before: with ``split=False`` the report said "truncated" while the effective weight was
unchanged; ``SpectralPruner.step`` on a spectral-norm layer said ``changed=True`` and changed
nothing; ``parametrizations.weight_norm`` tripped the parameter-count guard; legacy
``nn.utils.weight_norm`` failed in ``deepcopy``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import rmtprune
from rmtprune.pruning._guards import check_effect

M, N = 64, 128


class Doubling(nn.Module):
    """A custom parametrization: the layer uses twice the stored tensor."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2.0 * weight


def _custom(layer: nn.Linear) -> None:
    parametrize.register_parametrization(layer, "weight", Doubling())


def _legacy(layer: nn.Linear) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.nn.utils.weight_norm(layer)


KINDS: dict[str, Callable[[nn.Linear], object]] = {
    "custom": _custom,
    "spectral_norm": parametrizations.spectral_norm,
    "weight_norm": parametrizations.weight_norm,
    "legacy weight_norm": _legacy,
}


def _model(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(N, M))
    KINDS[kind](model[0])
    return model.eval()


def _effective(layer: nn.Module) -> torch.Tensor:
    if hasattr(layer, "first"):
        return (layer.second.weight @ layer.first.weight).detach()
    return layer.weight.detach().clone()


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_parametrized_layer_is_skipped_with_the_reason(kind: str, split: bool) -> None:
    model = _model(kind)
    x = torch.randn(5, N)
    y = model(x)
    pruned, report = rmtprune.prune(model, split=split, criterion=rmtprune.MPCriterion(min_rank=8))
    row = report["0"]
    assert row.action == "skipped"
    expected = {"custom": "Doubling"}.get(kind, kind)
    assert f"weight is parametrized ({expected})" in row.reason
    assert row.rank_after == row.rank_before and not report.changed
    assert report.params_after == report.params_before
    torch.testing.assert_close(pruned(x), y)  # and indeed nothing changed
    _, dry = rmtprune.prune(
        model, split=split, criterion=rmtprune.MPCriterion(min_rank=8), dry_run=True
    )
    assert dry["0"].action == "skipped"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_analysis_reads_the_effective_weight(kind: str) -> None:
    model = _model(kind)
    effective = model[0].weight.detach().double()
    expected = torch.linalg.svdvals(effective)
    row = rmtprune.analyze(model, select=rmtprune.Select(min_dim=8))["0"]
    assert row.status == "ok"
    # sigma2 of a pure-noise layer estimates the per-entry variance of the effective weight
    assert row.sigma2 == pytest.approx(float((expected**2).sum()) / (M * N), rel=0.25)


def test_analysis_does_not_advance_spectral_norm() -> None:
    model = _model("spectral_norm").train()
    u = model[0].parametrizations.weight[0]._u.clone()
    rmtprune.analyze(model)
    rmtprune.prune(model, criterion=rmtprune.MPCriterion(min_rank=8), dry_run=True)
    torch.testing.assert_close(model[0].parametrizations.weight[0]._u, u, rtol=0, atol=0)
    assert model[0].parametrizations.weight[0].training  # mode restored


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_opt_in_removal_then_pruning_acts_on_the_effective_weight(kind: str, split: bool) -> None:
    model = _model(kind)
    x = torch.randn(5, N)
    y = model(x)
    assert rmtprune.remove_parametrizations(model) == ["0"]
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)  # same function
    effective = model[0].weight.detach().double()
    pruned, report = rmtprune.prune(
        model, split=split, criterion=rmtprune.MPCriterion(bulk_keep=0.0, min_rank=8)
    )
    assert report["0"].action == ("split" if split else "truncated")
    after = _effective(pruned[0]).double()
    assert int(torch.linalg.matrix_rank(after, rtol=1e-5)) == report["0"].rank_after == 8
    u, s, vh = torch.linalg.svd(effective, full_matrices=False)
    best = (u[:, :8] * s[:8]) @ vh[:8]  # Eckart–Young: the rank-8 truncation
    torch.testing.assert_close(after, best, rtol=1e-4, atol=1e-4)


def test_spectral_pruner_does_not_claim_a_change_it_did_not_make() -> None:
    model = _model("spectral_norm").train()
    pruner = rmtprune.SpectralPruner(
        model, schedule=lambda epoch: 0.0, every=1, criterion=rmtprune.MPCriterion(min_rank=8)
    )
    report = pruner.step(1)
    assert not report.changed and report["0"].action == "skipped"
    assert pruner.ranks == {}


def test_legacy_weight_norm_model_can_be_copied_and_pruned_after_opt_in() -> None:
    model = _model("legacy weight_norm")
    pruned, report = rmtprune.prune(
        model, criterion=rmtprune.MPCriterion(min_rank=8)
    )  # inplace=False deep-copies
    assert report["0"].action == "skipped"
    assert pruned is not model
    x = torch.randn(3, N)
    torch.testing.assert_close(pruned(x), model(x))


class Computed(nn.Linear):
    """A layer whose ``weight`` attribute is recomputed on every access (like a parametrization
    the walker does not recognise), so writing into it has no effect."""

    def __init__(self) -> None:
        super().__init__(N, M)
        self.stored = nn.Parameter(self.weight.detach().clone())
        del self.weight

    @property  # type: ignore[override]
    def weight(self) -> torch.Tensor:
        return self.stored * 1.0


def test_effect_check_reports_no_effect_as_skipped() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Computed())
    _, report = rmtprune.prune(
        model, split=False, criterion=rmtprune.MPCriterion(min_rank=8), inplace=True
    )
    assert report["0"].action == "skipped"
    assert "no effect" in report["0"].reason
    assert not report.changed


def test_effect_check_accepts_a_real_change() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(N, M)
    model = nn.Sequential(layer)
    before = float(layer.weight.detach().double().square().sum())
    s = torch.linalg.svdvals(layer.weight.detach().double())[:8]
    assert check_effect(model, "0", layer, before, s) is not None  # nothing was written yet
    u, sv, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    with torch.no_grad():
        layer.weight.copy_((u[:, :8] * sv[:8]) @ vh[:8])
    assert check_effect(model, "0", layer, before, s) is None
