"""Rank criteria against independent truth: exact sums, closed forms, the paper's rule."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize
from torch import nn

import rmtprune
from rmtprune import (
    BEMA,
    Energy,
    FixedRank,
    FixedRatio,
    GavishDonohoCriterion,
    LayerView,
    MPCriterion,
    RankDecision,
    Select,
)
from rmtprune.pruning.criteria import kept_rank
from rmtprune.rmt.bema import MIN_WINDOW, bulk_window

FAST = settings(max_examples=60, deadline=None)


def _view(lam: Sequence[float], shape: tuple[int, int], rank: int | None = None) -> LayerView:
    values = np.sort(np.asarray(lam, dtype=np.float64))
    p = min(shape)
    return LayerView("layer", None, shape, values, p if rank is None else rank)


@st.composite
def integer_spectra(draw: st.DrawFn) -> LayerView:
    """Spectra of small integers: cumulative sums in float64 are then exact."""
    p = draw(st.integers(1, 40))
    n = draw(st.integers(p, 80))
    lam = draw(st.lists(st.integers(1, 1000), min_size=p, max_size=p))
    rank = draw(st.integers(1, p))
    lam = sorted(lam)
    lam = [0] * (p - rank) + lam[p - rank :]  # a rank-deficient layer has exact zeros
    return _view(lam, (p, n), rank)


# ----------------------------------------------------------------- the rank rule
@FAST
@given(
    p=st.integers(1, 500),
    data=st.data(),
    f=st.floats(0.0, 1.0),
    g=st.floats(0.0, 1.0),
)
def test_kept_rank_properties(p: int, data: st.DataObject, f: float, g: float) -> None:
    k = data.draw(st.integers(0, p))
    current = data.draw(st.integers(1, p))
    min_rank = data.draw(st.none() | st.integers(1, p))
    r = kept_rank(k, p, f, current_rank=current, min_rank=min_rank)
    assert 1 <= r <= current
    lo, hi = sorted((f, g))
    assert kept_rank(k, p, lo, current_rank=current) <= kept_rank(k, p, hi, current_rank=current)
    raw = k + math.floor(f * (p - k) + 1e-12)
    if min_rank is None and 1 <= raw <= current:
        assert r == raw
    assert kept_rank(k, p, 1.0, current_rank=current) == current  # f = 1 keeps everything


@FAST
@given(p=st.integers(1, 400), alpha=st.floats(0.01, 0.49), data=st.data())
def test_bema_window_rule(p: int, alpha: float, data: st.DataObject) -> None:
    start, stop = math.floor(alpha * p + 1e-9), math.floor((1 - alpha) * p + 1e-9)
    rank = data.draw(st.none() | st.integers(1, p))
    try:
        window = bulk_window(p, alpha, rank)
    except ValueError:
        if rank is None or rank >= p:
            assert stop - start < MIN_WINDOW
        else:
            assert rank - math.ceil(alpha * rank - 1e-9) < MIN_WINDOW
            assert stop - max(start, p - rank) < MIN_WINDOW
        return
    lo, hi = window
    assert hi - lo >= MIN_WINDOW
    if rank is None or rank >= p:
        assert window == (start, stop)
    elif stop - max(start, p - rank) >= MIN_WINDOW:
        assert window == (max(start, p - rank), stop)  # the usual window, real values only
    else:
        assert window == (p - rank, p - math.ceil(alpha * rank - 1e-9))
    if rank is not None:
        assert lo >= p - rank  # never fits the zeros of a rank-deficient layer


# ----------------------------------------------------------------- criteria, properties
@FAST
@given(layer=integer_spectra(), e1=st.floats(1e-6, 1.0), e2=st.floats(1e-6, 1.0))
def test_energy_is_the_exact_cumulative_energy_rank(layer: LayerView, e1: float, e2: float) -> None:
    top = [int(x) for x in layer.eigenvalues[::-1]]  # descending, exact integers
    total = sum(top)
    for e in (e1, e2):
        truth = next(r for r in range(1, len(top) + 1) if sum(top[:r]) / total >= e)
        decision = Energy(e).decide(layer)
        assert decision.rank == min(truth, layer.rank)
        assert 1 <= decision.rank <= layer.rank
    lo, hi = sorted((e1, e2))
    assert Energy(lo).decide(layer).rank <= Energy(hi).decide(layer).rank


@FAST
@given(
    layer=integer_spectra(), r=st.integers(1, 60), q1=st.floats(1e-3, 1.0), q2=st.floats(1e-3, 1.0)
)
def test_fixed_rank_and_ratio_are_exact(layer: LayerView, r: int, q1: float, q2: float) -> None:
    assert FixedRank(r).decide(layer).rank == min(r, layer.rank)
    assert FixedRank({"layer": r}).decide(layer).rank == min(r, layer.rank)
    left = FixedRank({"other": r}).decide(layer)
    assert left.rank == layer.rank and "not in the rank mapping" in left.reason
    for q in (q1, q2):  # the documented floor, which forgives 1e-12 of rounding error
        wanted = max(1, math.floor(q * layer.p + 1e-12))
        assert FixedRatio(q).decide(layer).rank == min(wanted, layer.rank)
    lo, hi = sorted((q1, q2))
    assert FixedRatio(lo).decide(layer).rank <= FixedRatio(hi).decide(layer).rank


def test_fixed_ratio_keeps_the_count_a_decimal_fraction_names() -> None:
    assert 0.29 * 100 < 29 and FixedRatio(0.29).decide(_view([1.0] * 100, (100, 100))).rank == 29
    five = _view([1.0] * 5, (5, 5))
    assert FixedRatio(0.9999999999999999).decide(five).rank == 5  # found by hypothesis
    assert FixedRatio(0.999).decide(five).rank == 4


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    f1=st.floats(0.0, 1.0),
    f2=st.floats(0.0, 1.0),
    min_rank=st.none() | st.integers(1, 60),
)
def test_mp_rule_rank_in_range_and_monotone(
    seed: int, f1: float, f2: float, min_rank: int | None
) -> None:
    rng = np.random.default_rng(seed)
    w = torch.from_numpy(rng.standard_normal((60, 90)))
    w[:3] *= 4.0  # a few strong directions
    layer = LayerView.from_matrix("w", w)
    ranks = []
    for f in sorted((f1, f2)):
        decision = MPCriterion(bulk_keep=f, min_rank=min_rank, fit_cutoff=1.0).decide(layer)
        assert not decision.skip and 1 <= decision.rank <= layer.rank
        if min_rank is not None:
            assert decision.rank >= min(min_rank, layer.rank)
        ranks.append(decision.rank)
    assert ranks[0] <= ranks[1]


# ----------------------------------------------------------------- criteria vs truth
def test_energy_reason_and_doc_example() -> None:
    w = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64))
    decision = Energy(0.9).decide(LayerView.from_matrix("fc", w))
    # s² = 16, 4, 1, 1: the top two hold 20/22 = 90.9 % >= 90 %, the top one 72.7 %
    assert decision == RankDecision(2, "2 of 4 values hold 90.9 % of the energy (energy=0.9)")


def _mp_median_ratio_one() -> float:
    """Median of MP(1, 1) by quadrature of its density (independent of rmtprune)."""

    def density(x: float) -> float:
        return math.sqrt(max((4.0 - x) * x, 0.0)) / (2 * math.pi * x)

    def cdf(t: float) -> float:
        return float(integrate.quad(density, 0.0, t, limit=200)[0])

    return float(optimize.brentq(lambda t: cdf(t) - 0.5, 1e-6, 4.0, xtol=1e-13))


def test_gavish_donoho_is_the_closed_form_threshold() -> None:
    rng = np.random.default_rng(5)
    m = 200
    u, _ = np.linalg.qr(rng.standard_normal((m, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((m, 4)))
    strengths = np.array([40.0, 32.0, 28.0, 26.5])  # near ω·median ≈ 2.86·sqrt(m)·0.8 ≈ 26
    w = rng.standard_normal((m, m)) + (u * strengths) @ v.T
    s = np.linalg.svd(w, compute_uv=False)
    omega = (4.0 / math.sqrt(3.0)) / math.sqrt(_mp_median_ratio_one())  # λ*(1) / sqrt(μ₁)
    tau = omega * float(np.median(s))
    truth = int(np.count_nonzero(s > tau))
    decision = GavishDonohoCriterion().decide(LayerView.from_matrix("w", torch.from_numpy(w)))
    assert decision.rank == truth and 1 <= truth <= 4
    assert decision.fit is not None and decision.fit.threshold == pytest.approx(tau, rel=1e-9)
    assert "Gavish–Donoho threshold" in decision.reason
    # rank-deficient layers are refused (the median would be a zero)
    refused = GavishDonohoCriterion().decide(_view(np.arange(1.0, 11.0), (10, 20), rank=6))
    assert refused.skip and "rank-deficient" in refused.reason


def _noisy_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(160, 120), nn.ReLU(), nn.Linear(120, 80), nn.Linear(80, 10))
    with torch.no_grad():
        u, v = torch.randn(120, 3), torch.randn(3, 160)
        model[0].weight += 0.4 * u @ v / 160**0.5
    return model


def test_mp_criterion_is_the_papers_rule() -> None:
    # the older keywords' equality with it: tests/pruning/test_deprecations.py
    model = _noisy_model(0)
    criterion = MPCriterion(bulk_keep=0.3, min_rank=5)
    _, report = rmtprune.prune(model, criterion=criterion)
    for name, layer in (("0", model[0]), ("2", model[2])):
        w = layer.weight.detach().double()
        bema = BEMA().fit(w)  # SPEC section 4 by hand
        p = min(w.shape)
        r = max(bema.n_spikes_ + math.floor(0.3 * (p - bema.n_spikes_)), 5)
        row = report[name]
        assert (row.n_spikes, row.rank_after, row.bulk_keep) == (bema.n_spikes_, r, 0.3)
        assert row.reason == f"{bema.n_spikes_} spikes + {r - bema.n_spikes_} of " + (
            f"{p - bema.n_spikes_} bulk values (bulk_keep=0.3)"
        )
    assert report["0"].n_spikes == 3
    assert report["3"].action == "skipped" and report["3"].reason.startswith("too small")


def test_a_layer_without_spikes_says_the_rule_kept_nothing_and_rank_1_is_the_floor() -> None:
    # pure noise (no spike above the Tracy-Widom edge) and bulk_keep=0: r = 0 + 0, floored at 1;
    # the reason used to read "0 spikes + 1 of 80 bulk values" although the rule kept none
    g = torch.Generator().manual_seed(3)
    layer = nn.Linear(120, 80)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(80, 120, generator=g) / 120**0.5)
    row = rmtprune.prune(nn.Sequential(layer), criterion=MPCriterion(), select=Select(min_dim=1))[
        1
    ]["0"]
    assert (row.n_spikes, row.rank_after) == (0, 1)
    assert row.reason == (
        "no spikes and bulk_keep=0: the fit sees only noise; kept rank 1 of 80, "
        "the smallest factorization (set min_rank to keep more)"
    )
    floored = rmtprune.prune(
        nn.Sequential(layer), criterion=MPCriterion(min_rank=4), select=Select(min_dim=1)
    )[1]["0"]
    assert floored.rank_after == 4 and "raised to min_rank=4" in floored.reason


def test_other_criteria_prune_to_their_ranks() -> None:
    model = _noisy_model(1)
    for criterion in (Energy(0.8), FixedRank(7), FixedRatio(0.25), GavishDonohoCriterion()):
        pruned, report = rmtprune.prune(model, criterion=criterion)
        for name in ("0", "2"):
            layer = LayerView.from_matrix(name, getattr(model, name).weight.detach())
            want = criterion.decide(layer)
            row = report[name]
            assert (row.rank_after, row.reason) == (want.rank, want.reason)
            assert getattr(pruned, name).rank == want.rank  # split: r (m + n) < m n here
        assert report.params_after == sum(p.numel() for p in pruned.parameters())


class GlobalTopK:
    """A model-level criterion: keep the ``k`` largest singular values over all layers."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.seen: list[str] = []

    def decide_model(
        self, model: nn.Module, layers: Sequence[LayerView]
    ) -> Mapping[str, RankDecision]:
        self.seen = [layer.name for layer in layers]
        pooled = sorted(
            ((s, layer.name) for layer in layers for s in layer.singular_values), reverse=True
        )
        counts = {layer.name: 0 for layer in layers}
        for _, name in pooled[: self.k]:
            counts[name] += 1
        return {
            name: RankDecision(max(c, 1), f"{c} of the global top {self.k}")
            for name, c in counts.items()
            if name != "2"  # leaves layer "2" out: it must stay as it is
        }


def test_custom_model_level_criterion() -> None:
    model = _noisy_model(2)
    criterion = GlobalTopK(30)
    pruned, report = rmtprune.prune(model, criterion=criterion)
    assert criterion.seen == ["0", "2"]  # all candidates at once ("3" is too small)
    s0 = torch.linalg.svdvals(model[0].weight.double())
    s2 = torch.linalg.svdvals(model[2].weight.double())
    threshold = torch.sort(torch.cat([s0, s2]), descending=True).values[29]
    assert report["0"].rank_after == int((s0 >= threshold).sum())
    assert report["0"].reason.endswith("of the global top 30")
    assert report["2"].action == "unchanged" and "not decided" in report["2"].reason
    assert pruned[2].weight.shape == (80, 120)

    class Unknown(GlobalTopK):
        def decide_model(
            self, model: nn.Module, layers: Sequence[LayerView]
        ) -> Mapping[str, RankDecision]:
            return {"nope": RankDecision(1, "")}

    with pytest.raises(ValueError, match=r"decided ranks for \['nope'\], which are not candidate"):
        rmtprune.prune(model, criterion=Unknown(1))
    with pytest.raises(
        ValueError, match=r"kept rank 1000 for layer '0'; expected an int in \[1, 120\]"
    ):
        rmtprune.prune(model, criterion=_OneLayer(1000))


class _OneLayer:
    def __init__(self, rank: int) -> None:
        self.rank = rank

    def decide(self, layer: LayerView) -> RankDecision:
        return RankDecision(self.rank, "fixed")


def test_selection_and_keyword_errors() -> None:
    model = _noisy_model(3)
    _, report = rmtprune.prune(model, criterion=FixedRank(4), select=Select(exclude="2"))
    assert [r.name for r in report] == ["0", "3"]
    _, report = rmtprune.prune(model, criterion=FixedRank(4), select=Select(include="[02]"))
    assert [r.name for r in report] == ["0", "2"]
    _, report = rmtprune.prune(model, criterion=FixedRank(4), select=Select(min_dim=5))
    assert report["3"].rank_after == 4  # the 10 × 80 output layer is now eligible
    with pytest.raises(ValueError, match=r"'exclude' parameter names 'enc\.\*', which matches no"):
        rmtprune.prune(model, select=Select(exclude="enc.*"))
    with pytest.raises(TypeError, match="'criterion' parameter of prune must have a decide"):
        rmtprune.prune(model, criterion=0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'criterion' parameter of analyze must be an MPCriterion"):
        rmtprune.analyze(model, criterion=Energy())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'energy' parameter of Energy"):
        Energy(0.0)
    with pytest.raises(TypeError, match="'include' parameter of Select"):
        Select(include=3)  # type: ignore[arg-type]


def test_analyze_takes_the_criterion_and_the_selection() -> None:
    model = _noisy_model(4)
    new = rmtprune.analyze(
        model, criterion=MPCriterion(alpha=0.2, beta=0.05), select=Select(min_dim=8)
    )
    assert new["3"].status == "ok" and new.alpha == 0.2
    assert rmtprune.analyze(model)["3"].status == "skipped"  # 10 < the default min_dim


def test_spectral_pruner_takes_the_same_objects() -> None:
    model_a = _noisy_model(5)
    schedule = rmtprune.schedules.Linear(4)
    a = rmtprune.SpectralPruner(
        model_a, criterion=MPCriterion(min_rank=3), schedule=schedule, every=1
    )
    for epoch in (1, 2):
        assert a.step(epoch)["0"].bulk_keep == 1 - epoch / 4
    assert a.criterion_at(3) == MPCriterion(bulk_keep=0.25, min_rank=3)
    with pytest.raises(TypeError, match="must have a with_bulk_keep"):
        rmtprune.SpectralPruner(_noisy_model(5), criterion=FixedRank(3), schedule=schedule, every=1)
    fixed = rmtprune.SpectralPruner(_noisy_model(5), criterion=FixedRatio(0.5), every=2)
    report = fixed.step(2)
    assert report["0"].rank_after == 60 and fixed.history[0]["bulk_keep"] is None
