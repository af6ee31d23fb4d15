"""analyze / prune against closed forms, exact identities and simulations."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import rmtprune
from rmtprune import MPCriterion, Select
from rmtprune.factorize.lowrank import LowRankConv2d, LowRankLinear
from rmtprune.pruning.layers import candidate_layers
from rmtprune.pruning.walker import analyze, kept_rank, prune


def _signal_plus_noise(
    m: int, n: int, thetas: list[float], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """W = S + R with R i.i.d. N(0, 1/N) and S of rank len(thetas), strengths theta (SPEC §1)."""
    g = torch.Generator().manual_seed(seed)
    big = max(m, n)
    noise = torch.randn(m, n, generator=g, dtype=torch.float64) / big**0.5
    u, _ = torch.linalg.qr(torch.randn(m, len(thetas), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(thetas), generator=g, dtype=torch.float64))
    signal = u @ torch.diag(torch.tensor(thetas, dtype=torch.float64)) @ v.T
    return signal, signal + noise


def _linear_with(weight: torch.Tensor, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias:
            layer.bias.uniform_(-1, 1)
    return layer


def test_kept_rank_rule() -> None:
    assert kept_rank(3, 100, 0.0, current_rank=100) == 3
    assert kept_rank(3, 100, 0.5, current_rank=100) == 3 + 48
    assert kept_rank(3, 100, 1.0, current_rank=100) == 100
    assert kept_rank(3, 100, 0.5, current_rank=20) == 20  # never grows back
    assert kept_rank(0, 100, 0.0, current_rank=100, min_rank=10) == 10


def test_signal_plus_noise_keeps_rank_k_and_approaches_signal() -> None:
    signal, w = _signal_plus_noise(400, 600, [3.0, 4.0, 6.0], seed=1)
    model = nn.Sequential(_linear_with(w))
    pruned, report = prune(model, criterion=MPCriterion(bulk_keep=0.0))
    row = report["0"]
    assert (row.n_spikes, row.rank_after, row.action) == (3, 3, "split")
    layer = pruned[0]
    assert isinstance(layer, LowRankLinear) and layer.rank == 3
    w_pruned = layer.to_dense().weight.detach()
    assert torch.linalg.norm(w_pruned - signal) <= 0.5 * torch.linalg.norm(w - signal)
    # the split pair is the rank-3 truncation of W, bias kept
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    truncated = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    torch.testing.assert_close(w_pruned, truncated, rtol=1e-10, atol=1e-10)
    x = torch.randn(7, 600, dtype=torch.float64)
    torch.testing.assert_close(pruned(x), x @ truncated.T + model[0].bias, rtol=1e-10, atol=1e-10)
    assert row.params_after == 3 * (400 + 600) + 400
    assert report.params_after == sum(p.numel() for p in pruned.parameters())


def test_input_model_untouched_and_dry_run_predicts_exactly() -> None:
    _, w = _signal_plus_noise(300, 200, [5.0, 7.0], seed=2)
    model = nn.Sequential(_linear_with(w.float()), nn.ReLU(), nn.Linear(300, 100))
    snapshot = copy.deepcopy(model.state_dict())
    _, dry = prune(model, criterion=MPCriterion(bulk_keep=0.3), dry_run=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])
    pruned, real = prune(model, criterion=MPCriterion(bulk_keep=0.3))
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])
    assert [r.to_dict() for r in dry] == [r.to_dict() for r in real]
    assert (dry.params_after, dry.dry_run, real.dry_run, real.changed) == (
        real.params_after,
        True,
        False,
        True,
    )
    assert real.params_after == sum(p.numel() for p in pruned.parameters())


def test_fresh_gaussian_network_is_mp_like_and_min_rank_is_respected() -> None:
    torch.manual_seed(0)
    widths = [784, 1000, 1000, 10]
    model = nn.Sequential(*[nn.Linear(a, b) for a, b in itertools.pairwise(widths)])
    with torch.no_grad():
        for layer in model:
            layer.weight.normal_(0.0, layer.in_features**-0.5)
    report = analyze(model)
    assert [r.status for r in report] == ["ok", "ok", "skipped"]
    assert report["2"].reason == "too small: min(m, n) = 10 < min_dim = 32"
    fitted = report.fitted
    assert all(r.mp_like for r in fitted)
    # the false-spike rate is at most beta = 0.1 per layer; allow one stray spike in total
    assert sum(r.n_spikes for r in fitted) <= 1
    for r in fitted:
        assert r.sigma2 == pytest.approx(1.0 / r.shape[1], rel=0.03)
    pruned, pr = prune(model, criterion=MPCriterion(bulk_keep=0.0, min_rank=10))
    assert [r.rank_after for r in pr] == [10, 10, 10]
    assert [r.action for r in pr] == ["split", "split", "skipped"]
    assert pruned[0].rank == 10 and pruned[1].rank == 10
    x = torch.randn(4, 784)
    u, s, vh = torch.linalg.svd(model[0].weight.detach().double(), full_matrices=False)
    first = (u[:, :10] * s[:10]) @ vh[:10]
    torch.testing.assert_close(
        pruned[0](x.double().float()).double(),
        x.double() @ first.T + model[0].bias.double(),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.slow
def test_default_min_dim_matches_the_noise_of_the_fit_statistic() -> None:
    """Why min_dim defaults to 32: below it the cutoff 0.05 rejects pure noise."""
    from rmtprune import BEMA

    rng = np.random.default_rng(0)
    small = [BEMA().fit(rng.standard_normal((10, 1000))).fit_error_ for _ in range(200)]
    large = [BEMA().fit(rng.standard_normal((50, 1000))).fit_error_ for _ in range(200)]
    at_min = [BEMA().fit(rng.standard_normal((32, 1000))).fit_error_ for _ in range(200)]
    assert np.mean(np.array(small) > 0.05) > 0.3  # p = 10: noise fails the test half the time
    assert np.mean(np.array(large) > 0.05) < 0.01
    assert np.mean(np.array(at_min) > 0.05) < 0.05


def test_repruning_a_split_layer_composes_and_keeps_bias() -> None:
    _, w = _signal_plus_noise(300, 500, [4.0, 6.0], seed=3)
    model = nn.Sequential(_linear_with(w))
    once, r1 = prune(model, criterion=MPCriterion(bulk_keep=0.5))
    assert r1["0"].rank_after == 2 + (300 - 2) // 2
    twice, r2 = prune(once, criterion=MPCriterion(bulk_keep=0.2))
    assert r2["0"].rank_before == r1["0"].rank_after
    assert r2["0"].n_spikes == 2  # the zero eigenvalues are not bulk: spikes stay the signal
    assert r2["0"].rank_after == 2 + int(0.2 * 298)
    dense = once[0].to_dense().weight.detach()
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    k = r2["0"].rank_after
    expected = u[:, :k] @ torch.diag(s[:k]) @ vh[:k]
    torch.testing.assert_close(twice[0].to_dense().weight.detach(), expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(twice[0].second.bias, model[0].bias)


def test_split_layer_trained_further_prunes_again() -> None:
    """Rank-deficient fit: after a split and more training, the layer still prunes."""
    torch.manual_seed(4)
    n = 400
    layer = nn.Linear(n, n)
    with torch.no_grad():
        layer.weight.normal_(0.0, n**-0.5)
    model = nn.Sequential(layer)
    pruned, first = prune(model, criterion=MPCriterion(bulk_keep=0.6), split=True)
    rank1 = first["0"].rank_after
    assert rank1 == int(0.6 * n) and isinstance(pruned[0], LowRankLinear)
    opt = torch.optim.SGD(pruned.parameters(), lr=0.01)
    x, y = torch.randn(256, n), torch.randn(256, n)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(pruned(x), y).backward()
        opt.step()
    report = analyze(pruned)
    row = report["0"]
    assert row.rank == rank1
    assert row.mp_like
    assert row.sigma2 == pytest.approx(1.0 / n, rel=0.05)  # a naive fit would give ~0.6/n or less
    assert row.n_spikes <= 2
    again, second = prune(pruned, criterion=MPCriterion(bulk_keep=0.3))
    assert second["0"].rank_after == row.n_spikes + int(0.3 * (n - row.n_spikes))
    assert again[0].rank == second["0"].rank_after


def test_conv_model_split_matches_truncated_conv() -> None:
    torch.manual_seed(5)
    conv = nn.Conv2d(64, 96, 3, stride=2, padding=1, dilation=1, dtype=torch.float64)
    model = nn.Sequential(conv)
    pruned, report = prune(model, criterion=MPCriterion(bulk_keep=0.25))
    row = report["0"]
    assert row.shape == (96, 64 * 9)
    assert isinstance(pruned[0], LowRankConv2d)
    w = conv.weight.detach().reshape(96, -1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    k = row.rank_after
    truncated = (u[:, :k] @ torch.diag(s[:k]) @ vh[:k]).reshape(conv.weight.shape)
    x = torch.randn(2, 64, 11, 11, dtype=torch.float64)
    expected = nn.functional.conv2d(x, truncated, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(pruned(x), expected, rtol=1e-10, atol=1e-10)


def test_truncation_in_place_when_split_does_not_pay() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(200, 200))
    weight = model[0].weight
    pruned, report = prune(model, criterion=MPCriterion(bulk_keep=0.9), inplace=True)
    row = report["0"]
    assert row.action == "truncated" and not row.split
    # the same Parameter object: the optimizer state of the weight survives
    assert pruned is model and pruned[0].weight is weight
    assert torch.linalg.matrix_rank(weight.detach().double(), rtol=1e-5).item() == row.rank_after
    assert row.params_after == row.params_before
    # a truncated dense layer is recognised as rank-deficient by the next fit
    assert analyze(model)["0"].rank == row.rank_after


def test_skips_are_reported_with_reasons() -> None:
    torch.manual_seed(7)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 40)
            self.grouped = nn.Conv2d(8, 8, 3, groups=4)
            self.attn = nn.MultiheadAttention(40, 4)
            self.bad = nn.Linear(40, 40)
            self.good = nn.Linear(80, 60)
            self.tiny = nn.Linear(5, 3)
            self.tied = nn.Linear(40, 50, bias=False)
            self.tied.weight = self.emb.weight

    net = Net()
    with torch.no_grad():
        net.bad.weight[0, 0] = float("nan")
    report = {r.name: r for r in analyze(net)}
    assert "tied parameters" in report["emb"].reason  # an Embedding is supported, but tied
    assert "grouped" in report["grouped"].reason
    assert "MultiheadAttention" in report["attn.out_proj"].reason
    assert "unsupported layer type MultiheadAttention" in report["attn"].reason
    assert report["bad"].reason == "non-finite weights (NaN or Inf)"
    assert report["tiny"].reason.startswith("too small")
    assert "tied" in report["tied"].reason
    assert report["good"].status == "ok"
    pruned, pr = prune(net, criterion=MPCriterion(bulk_keep=0.0))
    rows = {r.name: r for r in pr}
    assert rows["good"].action == "split"
    assert rows["bad"].action == "skipped"
    assert torch.isnan(pruned.bad.weight[0, 0])


def test_shared_modules_are_tied_layers_but_a_second_name_is_not() -> None:
    # a submodule shared by two layers ties both (pruning one would change the other),
    # while one module registered under two names is one layer, pruned once for both names
    torch.manual_seed(11)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LowRankLinear(80, 60, rank=30)
            self.b = LowRankLinear(80, 40, rank=30)
            self.b.first = self.a.first  # one first factor, two layers
            self.x = nn.Linear(64, 64)
            self.y = self.x
            self.block = nn.Sequential(self.x)

    net = Net()
    rows = {r.name: r for r in analyze(net)}
    assert sorted(rows) == ["a", "b", "x"]
    assert rows["a"].reason == "weight shared with b.first (tied parameters)"
    assert rows["b"].reason == "weight shared with a.first (tied parameters)"
    assert rows["x"].status == "ok"
    before = sum(p.numel() for p in net.parameters())
    pruned, report = prune(net, criterion=rmtprune.FixedRank(8))
    assert {r.name: r.action for r in report} == {"a": "skipped", "b": "skipped", "x": "split"}
    assert pruned.b.first is pruned.a.first
    assert pruned.x is pruned.y is pruned.block[0] and pruned.x.rank == 8
    assert report.params_before == before
    assert report.params_after == sum(p.numel() for p in pruned.parameters())
    assert report.params_after == before - 64 * 64 + 8 * (64 + 64)


def test_layers_filter_and_argument_errors() -> None:
    model = nn.Sequential(nn.Linear(50, 40), nn.Linear(40, 30))
    assert [r.name for r in analyze(model, select=Select(include=["1"]))] == ["1"]
    assert [r.name for r in analyze(model, select=Select(include="*"))] == ["0", "1"]
    with pytest.raises(ValueError, match=r"matches no weight layer. Valid names: \['0', '1'\]"):
        analyze(model, select=Select(include=["fc9"]))
    # the older keywords' errors naming analyze / prune: tests/pruning/test_deprecations.py
    with pytest.raises(ValueError, match="'alpha' parameter of MPCriterion"):
        MPCriterion(alpha=0.7)
    with pytest.raises(ValueError, match="'beta' parameter of MPCriterion"):
        MPCriterion(beta=1.5)
    with pytest.raises(ValueError, match="'bulk_keep' parameter of MPCriterion"):
        MPCriterion(bulk_keep=-0.1)
    with pytest.raises(ValueError, match="'min_rank' parameter of MPCriterion"):
        MPCriterion(min_rank=0)
    with pytest.raises(ValueError, match="'split' parameter of prune"):
        prune(model, split="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'model' parameter of analyze"):
        analyze(np.zeros((3, 3)))  # type: ignore[arg-type]


def test_report_exports() -> None:
    torch.manual_seed(8)
    report = analyze(nn.Sequential(nn.Linear(100, 80)))
    d = report.to_dict()
    assert d["layers"][0]["shape"] == [80, 100] and d["alpha"] == 0.25
    md = report.to_markdown()
    assert "| name |" in md and "80×100" in md
    assert rmtprune.__name__ == "rmtprune"


def test_analysis_and_prune_rows_hold_the_criterion_fit() -> None:
    _, weight = _signal_plus_noise(120, 240, [4.0, 6.0], seed=11)
    model = nn.Sequential(_linear_with(weight))
    crit = rmtprune.MPCriterion(bulk_keep=0.0)
    (view,) = candidate_layers(model)
    fit = crit.decide(view).fit
    assert fit is not None and fit.n_spikes == 2 and fit.mp_like  # two spikes of strength > 1
    row = analyze(model, criterion=crit)["0"]
    _, report = prune(model, criterion=crit, dry_run=True)
    assert row.fit == report["0"].fit == fit
    assert (row.sigma2, row.mp_like, report["0"].n_spikes) == (fit.sigma2, True, 2)
    assert list(row.to_dict()) == [
        *("name", "layer_type", "shape", "params", "ratio", "rank", "status", "reason"),
        *("sigma2", "lambda_plus", "threshold", "n_spikes", "fit_error", "mp_like"),
    ]
    assert list(report["0"].to_dict()) == [
        *("name", "layer_type", "shape", "action", "rank_before", "rank_after", "n_spikes"),
        *("bulk_keep", "params_before", "params_after", "split", "reason"),
        *("sigma2", "lambda_plus", "fit_error", "nonzero_before", "nonzero_after"),
    ]
    assert rmtprune.LayerAnalysis.from_dict(row.to_dict()) == row


def test_known_rank_of_a_truncated_dense_layer_trained_further() -> None:
    """Training regrows the truncated directions; the recorded rank keeps the fit honest."""
    torch.manual_seed(9)
    n = 300
    model = nn.Sequential(nn.Linear(n, n))
    with torch.no_grad():
        model[0].weight.normal_(0.0, n**-0.5)
    _, first = prune(model, criterion=MPCriterion(bulk_keep=0.7), inplace=True)
    rank = first["0"].rank_after
    assert first["0"].action == "truncated" and rank == int(0.7 * n)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(512, n), torch.randn(512, n)
    for _ in range(10):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    naive = analyze(model)["0"]
    assert naive.rank > rank + 50  # the zeros have regrown: the truncation no longer shows
    informed = analyze(model, ranks={"0": rank})["0"]
    assert informed.rank == rank
    assert informed.sigma2 == pytest.approx(1.0 / n, rel=0.1)
    assert informed.mp_like and informed.fit_error < 0.05
    # without the rank the regrown small values break the fit: the layer would be left alone
    assert not naive.mp_like and naive.fit_error > 0.2
    _, again = prune(model, criterion=MPCriterion(bulk_keep=0.4), ranks={"0": rank})
    assert again["0"].rank_after == informed.n_spikes + int(0.4 * (n - informed.n_spikes))
    with pytest.raises(ValueError, match=r"ranks\['0'\]. parameter of prune must be an int >= 1"):
        prune(model, ranks={"0": 0})
