"""Calibrated rank choice: closed forms, the held-out guarantee recomputed independently."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.cli.app import main
from rmtprune.pruning.calibration import Calibrated
from rmtprune.pruning.criteria import ModelCriterion, RankDecision
from rmtprune.pruning.layers import candidate_layers
from rmtprune.pruning.outputs import OutputProbe
from rmtprune.pruning.rank_search import first_passing, hull_moves, lower_hull
from rmtprune.pruning.selection import Select
from rmtprune.pruning.whitening import LayerFactors, factorize_at, input_grams


def _structured(m: int, n: int, rank: int, noise: float, g: torch.Generator) -> torch.Tensor:
    """A weight with ``rank`` decaying strong directions plus small noise (like trained layers)."""
    u, _ = torch.linalg.qr(torch.randn(m, rank, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, rank, generator=g))
    s = 2.0 * 0.75 ** torch.arange(rank, dtype=torch.float32)
    return u @ torch.diag(s) @ v.T + noise * torch.randn(m, n, generator=g) / max(m, n) ** 0.5


def _mlp(seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(48, 96), nn.Tanh(), nn.Linear(96, 96), nn.Tanh(), nn.Linear(96, 40)
    )
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.copy_(_structured(*layer.weight.shape, 12, 0.05, g))
    return model


def _batches(n_batches: int, size: int, dim: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, dim, generator=g) for _ in range(n_batches)]


def _change(original: nn.Module, pruned: nn.Module, batches: list, key=None) -> float:
    """Independent relative change of the output over ``batches`` (float64; the padded tokens
    of a batch with an attention mask are left out)."""
    num = den = 0.0
    with torch.no_grad():
        for b in batches:
            f = original(**b) if isinstance(b, dict) else original(b)
            h = pruned(**b) if isinstance(b, dict) else pruned(b)
            if key is not None:
                f, h = f[key], h[key]
            mask = b.get("attention_mask") if isinstance(b, dict) else None
            f, h = f.double(), h.double()
            if mask is not None:
                f, h = f[mask.bool()], h[mask.bool()]  # (tokens, d): real tokens only
            num += float((h - f).square().sum())
            den += float(f.square().sum())
    return math.sqrt(num / den)


# --- closed forms --------------------------------------------------------------------------


def test_linear_model_matches_closed_form_rank() -> None:
    """y = W x with isotropic inputs: the change at rank r is sqrt(Σ_{i>r} s_i² / Σ s_i²)."""
    m, n, size = 40, 60, 80
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    s = 0.7 ** np.arange(m)
    layer = nn.Sequential(nn.Linear(n, m, bias=False).double())
    layer[0].weight.data = u @ torch.diag(torch.from_numpy(s)) @ v.T
    batches = []
    for _ in range(4):  # every batch has XᵀX = size · I exactly
        q, _ = torch.linalg.qr(torch.randn(size, n, generator=g, dtype=torch.float64))
        batches.append(q * size**0.5)
    closed = np.sqrt(np.cumsum((s**2)[::-1])[::-1] / np.sum(s**2))  # closed[r] = change at r
    r_break = (m * n - 1) // (m + n)
    for delta in (0.01, 0.05, 0.2):
        expected = min(r for r in range(1, r_break + 1) if closed[r] <= delta)
        criterion, select = Calibrated(batches, delta), Select(min_dim=8)
        pruned, report = rmtprune.prune(layer, criterion=criterion, select=select)
        assert report["0"].rank_after == expected
        assert report.output_change == pytest.approx(closed[expected], rel=1e-9)
        assert report.output_change_fit == pytest.approx(closed[expected], rel=1e-9)
        held = batches[1::2]
        assert _change(layer, pruned, held) == pytest.approx(closed[expected], rel=1e-9)


def test_plain_factors_predict_the_output_error_of_each_rank() -> None:
    """tail_error2[r] = ‖(W − W_r) Xᵀ‖² for anisotropic inputs, checked by multiplication."""
    g = torch.Generator().manual_seed(2)
    W = torch.randn(20, 30, generator=g, dtype=torch.float64)
    X = torch.randn(200, 30, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 30)
    f = LayerFactors.fit(W, X.T @ X, whiten=False)
    for r in (0, 3, 10, 20):
        U, s, Vh = f.truncate(r)
        direct = float(((W - U @ torch.diag(s) @ Vh) @ X.T).square().sum())
        assert float(f.tail_error2[r]) == pytest.approx(direct, rel=1e-9, abs=1e-9)


def test_whitened_truncation_is_optimal_in_the_data_metric() -> None:
    """ridge = 0: error = tail singular values of W·chol(XᵀX) (SVD-LLM); never worse than plain."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(20, 30, generator=g, dtype=torch.float64)
    X = torch.randn(200, 30, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 30)
    gram = X.T @ X
    white = LayerFactors.fit(W, gram, whiten=True, ridge=0.0)
    plain = LayerFactors.fit(W, gram, whiten=False)
    sigma = np.linalg.svd(W.numpy() @ np.linalg.cholesky(gram.numpy()), compute_uv=False)
    for r in (1, 5, 12):
        U, s, Vh = white.truncate(r)
        err = float(((W - U @ torch.diag(s) @ Vh) @ X.T).square().sum())
        assert err == pytest.approx(float(np.sum(sigma[r:] ** 2)), rel=1e-8)
        assert err == pytest.approx(float(white.tail_error2[r]), rel=1e-8)
        assert err < float(plain.tail_error2[r])
    U, s, Vh = white.truncate(20)
    assert torch.allclose(U @ torch.diag(s) @ Vh, W, atol=1e-10)  # full rank gives W back


def test_conv_input_gram_gives_the_true_output_error() -> None:
    """For Conv2d the Gram matrix of the unfolded inputs predicts the convolution's error."""
    g = torch.Generator().manual_seed(4)
    conv = nn.Conv2d(4, 40, 3, padding=1, stride=2, bias=False).double()
    x = torch.randn(3, 4, 9, 9, generator=g, dtype=torch.float64)
    grams = input_grams(conv, {"": (conv, 36)}, [x])
    f = LayerFactors.fit(conv.weight.reshape(40, 36), grams[""], whiten=False)
    U, s, Vh = f.truncate(5)
    truncated = nn.Conv2d(4, 40, 3, padding=1, stride=2, bias=False).double()
    truncated.weight.data = (U @ torch.diag(s) @ Vh).reshape(40, 4, 3, 3)
    with torch.no_grad():
        direct = float((conv(x) - truncated(x)).square().sum())
    assert float(f.tail_error2[5]) == pytest.approx(direct, rel=1e-9)


def test_factorize_at_equal_ranks_whitened_beats_plain_on_its_data() -> None:
    model = _mlp(9)
    g = torch.Generator().manual_seed(9)
    scale = torch.linspace(0.05, 2.0, 48)  # anisotropic inputs: where whitening pays
    batches = [torch.randn(64, 48, generator=g) * scale for _ in range(2)]
    ranks = {"0": 6, "2": 10}
    plain = factorize_at(model, ranks)
    white = factorize_at(model, ranks, batches, whiten=True)
    count = [sum(p.numel() for p in m.parameters()) for m in (plain, white)]
    assert count[0] == count[1] == 17896 - (96 * 48 - 6 * 144) - (96 * 96 - 10 * 192)
    assert _change(model, white, batches) < _change(model, plain, batches)
    with pytest.raises(ValueError, match="'batches' parameter of factorize_at"):
        factorize_at(model, ranks, whiten=True)


def test_rank_search_hull_and_bisection() -> None:
    rng = random.Random(0)
    for _ in range(50):
        xs = sorted(rng.sample(range(100), 8))
        ys = sorted((rng.random() for _ in xs), reverse=True)
        pts = [(float(x), y) for x, y in zip(xs, ys, strict=True)]
        hull = lower_hull(pts)
        for mu in (0.01, 0.1, 1.0, 10.0, 100.0):  # every Lagrangian optimum is a hull vertex
            best = min(range(len(pts)), key=lambda i: pts[i][0] + mu * pts[i][1])
            value = pts[best][0] + mu * pts[best][1]
            assert min(pts[i][0] + mu * pts[i][1] for i in hull) == pytest.approx(value)
    moves = hull_moves([[(0.0, 4.0), (1.0, 1.0), (3.0, 0.0)], [(0.0, 1.0), (5.0, 0.0)]])
    assert [mu for mu, _, _ in moves] == pytest.approx([1 / 3, 2.0, 5.0])
    assert first_passing(0, 9, lambda j: j >= 4) == 4
    assert first_passing(3, 3, lambda j: False) == 3


# --- the guarantee ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("delta", [0.02, 0.1, 0.3])
def test_guarantee_holds_on_the_held_out_batches(seed: int, delta: float) -> None:
    model = _mlp(seed)
    batches = _batches(6, 32, 48, seed + 10)
    pruned, report = rmtprune.prune(model, criterion=Calibrated(batches, delta))
    held, fit = batches[1::2], batches[0::2]
    assert report.output_change == pytest.approx(_change(model, pruned, held), rel=1e-9)
    assert report.output_change_fit == pytest.approx(_change(model, pruned, fit), rel=1e-9)
    assert report.output_change <= delta
    assert report.max_output_change == delta
    assert sum(p.numel() for p in pruned.parameters()) == report.params_after
    if delta >= 0.1:
        assert report.params_after < 0.8 * report.params_before


def test_larger_budget_prunes_more_and_whitening_also_holds() -> None:
    model, batches = _mlp(2), _batches(6, 32, 48, 20)
    sizes = []
    for delta in (0.05, 0.3):
        _, report = rmtprune.prune(model, criterion=Calibrated(batches, delta))
        sizes.append(report.params_after)
    assert sizes[1] < sizes[0]
    pruned, report = rmtprune.prune(model, criterion=Calibrated(batches, 0.1, whiten=True))
    assert report.output_change <= 0.1
    assert report.output_change == pytest.approx(_change(model, pruned, batches[1::2]), rel=1e-9)
    assert "whitened" in report[0].reason


def test_zero_budget_keeps_the_model_and_the_input_is_never_modified() -> None:
    model, batches = _mlp(3), _batches(4, 16, 48, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = rmtprune.prune(model, criterion=Calibrated(batches, 0.0))
    assert report.output_change == 0.0 and not report.changed
    assert report.params_after == report.params_before
    for key, value in pruned.state_dict().items():
        assert torch.equal(value, before[key])
    rmtprune.prune(model, criterion=Calibrated(batches, 0.5))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_dry_run_reports_what_a_real_run_does() -> None:
    model, batches = _mlp(4), _batches(4, 16, 48, 4)
    same, dry = rmtprune.prune(model, criterion=Calibrated(batches, 0.2), dry_run=True)
    _, real = rmtprune.prune(model, criterion=Calibrated(batches, 0.2))
    assert same is model and dry.dry_run and not dry.changed
    assert [r.rank_after for r in dry] == [r.rank_after for r in real]
    assert dry.params_after == real.params_after
    assert dry.output_change == real.output_change


class _DictModel(nn.Module):
    """Takes keyword inputs and returns a dict, like a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp(5)
        self.unused = nn.Linear(40, 40)

    def forward(self, features: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        out = self.body(features) * scale
        return {"logits": out, "extra": self.unused(out)}


def test_dict_inputs_and_a_layer_outside_the_first_output() -> None:
    model = _DictModel()
    batches = [{"features": x, "scale": 2.0} for x in _batches(4, 32, 48, 5)]
    pruned, report = rmtprune.prune(model, criterion=Calibrated(batches, 0.1))
    assert report.output_change <= 0.1
    changed = _change(model, pruned, batches[1::2], key="logits")
    assert report.output_change == pytest.approx(changed, rel=1e-9)
    assert report["unused"].action == "unchanged"
    assert "does not change the measured output" in report["unused"].reason
    assert report.params_after < report.params_before


@pytest.mark.slow
class _Tokens(nn.Module):
    """Returns its token states; ``noise`` adds a change on every position (padding too)."""

    def __init__(self, noise: torch.Tensor | None = None) -> None:
        super().__init__()
        self.noise = noise

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return states if self.noise is None else states + self.noise


def test_output_change_leaves_padded_positions_out() -> None:
    torch.manual_seed(0)
    states = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    noise = torch.randn(3, 5, 4)
    probe = OutputProbe(_Tokens(), [{"states": states, "attention_mask": mask}])
    real = mask.bool()
    want = float(noise.double()[real].norm() / states.double()[real].norm())  # real tokens only
    assert probe.change(_Tokens(noise)) == pytest.approx(want, rel=1e-6)  # float32 model
    assert probe.change(_Tokens(noise * (1 - mask[..., None]))) == 0.0  # only padding moved
    whole = OutputProbe(_Tokens(), [{"states": states, "attention_mask": torch.ones(3, 5)}])
    want = float(noise.double().norm() / states.double().norm())
    assert whole.change(_Tokens(noise)) == pytest.approx(want, rel=1e-6)


def _tiny_bert(hidden: int, intermediate: int) -> nn.Module:
    """A 2-layer BERT of random weights (seed 0), in eval mode; 99 tokens, 32 positions."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=intermediate,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()  # type: ignore[no-any-return]


def test_input_grams_leave_padded_tokens_out() -> None:
    """A padded batch gives the Gram matrices of its sentences run alone, without padding."""
    model = _tiny_bert(hidden=32, intermediate=48).double()
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.1.output.dense", "pooler.dense"]
    layers = {n: (model.get_submodule(n), model.get_submodule(n).in_features) for n in names}
    g = torch.Generator().manual_seed(1)
    lengths = [12, 7, 3]
    ids = torch.randint(1, 99, (3, 12), generator=g)
    mask = (torch.arange(12) < torch.tensor(lengths)[:, None]).long()
    padded = input_grams(model, layers, [{"input_ids": ids, "attention_mask": mask}])
    alone = [
        {"input_ids": ids[i : i + 1, :k], "attention_mask": torch.ones(1, k, dtype=torch.long)}
        for i, k in enumerate(lengths)
    ]
    truth = input_grams(model, layers, alone)  # 22 real tokens, no padding anywhere
    for name in names:
        got, want = padded[name], truth[name]
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    full = input_grams(model, layers, [{"input_ids": ids}])  # no mask: every position counts
    assert full["pooler.dense"] is not None
    assert not torch.allclose(full[names[1]], truth[names[1]])  # padding would have counted


def test_hugging_face_bert_from_a_tiny_config() -> None:
    model = _tiny_bert(hidden=64, intermediate=128)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.startswith("encoder"):
                module.weight.copy_(_structured(*module.weight.shape, 8, 0.2, g))
    batches = []
    for _ in range(4):
        ids = torch.randint(1, 99, (8, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[:, 9:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    pruned, report = rmtprune.prune(model, criterion=Calibrated(batches, 0.1))
    held = _change(model, pruned, batches[1::2], key="last_hidden_state")
    assert report.output_change == pytest.approx(held, rel=1e-6)
    assert report.output_change <= 0.1
    assert any(r.action == "split" for r in report)
    assert report["pooler.dense"].action == "unchanged"  # pooler_output is not the first output


# --- without calibration, measure-only, errors -------------------------------------------------


def test_without_calibration_the_report_says_not_measured(tmp_path, capsys) -> None:
    model = _mlp(6)
    _, report = rmtprune.prune(model)
    assert report.output_change is None
    assert "Output change: not measured" in report.to_markdown()
    assert report.to_dict()["output_change"] is None
    path = tmp_path / "m.safetensors"
    rmtprune.save(model, path)
    assert main(["prune", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out  # a CLI user is not told to pass a Python keyword
    assert "Output change: not measured" in out and "in Python, rmtprune.prune(" in out


def test_calibration_alone_measures_the_spectral_pruning() -> None:
    model, batches = _mlp(7), _batches(3, 16, 48, 7)
    pruned, report = rmtprune.prune(
        model, calibration=batches, criterion=rmtprune.MPCriterion(min_rank=2)
    )
    assert report.max_output_change is None
    assert report.output_change == pytest.approx(_change(model, pruned, batches), rel=1e-9)
    assert "on the calibration data" in report.to_markdown()


def test_decide_model_accepts_layer_views_and_leaves_the_model_alone() -> None:
    model, batches = _mlp(10), _batches(4, 32, 48, 10)
    before = [type(m) for m in model.modules()]

    views = [v for v in candidate_layers(model) if v.name in ("0", "2")]
    assert isinstance(Calibrated(batches, 0.3), ModelCriterion)
    decisions = Calibrated(batches, 0.3).decide_model(model, views)
    assert set(decisions) == {"0", "2"} and decisions["2"].rank < 96
    assert all(isinstance(d, RankDecision) for d in decisions.values())
    assert decisions["2"].factors is not None and decisions["2"].factors[1].numel() == (
        decisions["2"].rank
    )
    assert [type(m) for m in model.modules()] == before


def test_base_ranks_are_a_floor() -> None:
    model, batches = _mlp(8), _batches(4, 32, 48, 8)
    _, report = rmtprune.prune(model, criterion=Calibrated(batches, 1.0, base={"2": 20}))
    assert report["2"].rank_after >= 20
    assert report["0"].action == "unchanged" and report["0"].reason.startswith("base")


def test_whitened_factors_reach_the_pruned_model_through_the_walker() -> None:
    model = _mlp(9)
    g = torch.Generator().manual_seed(9)
    scale = torch.linspace(0.05, 2.0, 48)  # anisotropic inputs: whitening differs from plain
    batches = [torch.randn(32, 48, generator=g) * scale for _ in range(6)]
    criterion = Calibrated(batches, 0.1, whiten=True)
    pruned, report = rmtprune.prune(model, criterion=criterion)
    ranks = {r.name: r.rank_after for r in report if r.action == "split"}
    assert ranks and all("whitened" in report[name].reason for name in ranks)
    white = factorize_at(model, ranks, criterion.fit_batches, whiten=True, ridge=criterion.ridge)
    plain = factorize_at(model, ranks)
    x = torch.cat(batches)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), white(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(pruned(x), plain(x), rtol=1e-3, atol=1e-4)
    assert report.output_change == pytest.approx(_change(model, pruned, batches[1::2]), rel=1e-9)
    assert report.output_change <= 0.1
    # split=True (always) gives the same model: every rank the criterion keeps saves parameters
    again, same = rmtprune.prune(model, criterion=Calibrated(batches, 0.1, whiten=True), split=True)
    assert [r.rank_after for r in same] == [r.rank_after for r in report]
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x))


def test_prune_with_a_base_criterion_a_selection_and_a_dry_run() -> None:
    model, batches = _mlp(11), _batches(4, 32, 48, 11)
    spectral = rmtprune.MPCriterion(min_rank=30)
    _, guard = rmtprune.prune(model, criterion=Calibrated(batches, 1.0, base=spectral))
    _, plain = rmtprune.prune(model, criterion=spectral)
    for row in guard:
        if row.action == "split":
            assert row.rank_after >= plain[row.name].rank_after
    select = rmtprune.Select(include="2")
    _, only = rmtprune.prune(model, criterion=Calibrated(batches, 0.2), select=select)
    assert [r.name for r in only] == ["2"] and only.output_change <= 0.2
    floor = rmtprune.Calibrated(batches, 0.2, min_rank=40)
    _, floored = rmtprune.prune(model, criterion=floor, select=select)
    assert [r.name for r in floored] == ["2"] and floored["2"].rank_after >= 40
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same, dry = rmtprune.prune(
        model, criterion=Calibrated(batches, 0.2), dry_run=True, inplace=True
    )
    assert same is model and not dry.changed and dry.output_change is not None
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_the_walker_measures_the_model_it_produced_also_without_splitting() -> None:
    model, batches = _mlp(12), _batches(4, 32, 48, 12)
    criterion = Calibrated(batches, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "above max_output_change" warning
        pruned, report = rmtprune.prune(model, criterion=criterion, split=False)
    assert {r.action for r in report} <= {"truncated", "unchanged", "skipped"}
    assert "truncated" in {r.action for r in report}
    assert report.output_change == pytest.approx(_change(model, pruned, batches[1::2]), rel=1e-9)
    assert report.output_change == pytest.approx(criterion.output_change_, rel=1e-4, abs=1e-7)
    assert report.output_change_fit == criterion.output_change_fit_


def test_factors_of_the_wrong_shape_are_refused() -> None:
    model = nn.Sequential(nn.Linear(48, 40))
    bad = torch.zeros(40, 3), torch.ones(3), torch.zeros(3, 48)

    class Wrong:
        def decide_model(self, model, layers):
            return {"0": RankDecision(2, "wrong factors", factors=bad)}

    with pytest.raises(ValueError, match="factors of shapes"):
        rmtprune.prune(model, criterion=Wrong())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_output_change": 1.5}, ValueError, "'max_output_change' parameter of Calibrated"),
        ({"max_output_change": "0.1"}, TypeError, "'max_output_change'"),
        ({"holdout": 1.0}, ValueError, "'holdout' parameter of Calibrated"),
        ({"whiten": "yes"}, ValueError, "'whiten'"),
        ({"base": 3}, TypeError, "'base'"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, error, match) -> None:
    args = {"batches": _batches(2, 4, 48, 0), "max_output_change": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        Calibrated(**args)


def test_bad_calibration_data_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 batches"):
        Calibrated([torch.randn(4, 48)], 0.1)
    with pytest.raises(TypeError, match="parameter of Calibrated must be an iterable"):
        Calibrated(torch.randn(4, 48), 0.1)
    with pytest.raises(TypeError, match="'calibration' parameter of prune"):
        rmtprune.prune(_mlp(0), calibration=torch.randn(4, 48))


@pytest.mark.slow
def test_minilm_guard_holds_on_held_out_sentences(tmp_path) -> None:
    """The real pretrained model (optional package): the guarantee on held-out sentences."""
    minilm = pytest.importorskip("all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    from rmtprune.pruning.distill import docstring_sentences

    path = minilm.extract_model(str(tmp_path))
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    sentences = docstring_sentences()[:48]
    batches = [
        dict(tokenizer(sentences[i : i + 8], padding=True, return_tensors="pt"))
        for i in range(0, 48, 8)
    ]
    # δ = 0.2: the 24 fitted sentences hold 526 real tokens; with the padded positions (38 %)
    # no longer in the Gram matrices, whitened δ = 0.1 finds no safe cut on layer 5 alone
    criterion = Calibrated(batches, 0.2, whiten=True)
    select = rmtprune.Select(include="encoder.layer.5.*")
    pruned, report = rmtprune.prune(model, criterion=criterion, select=select)
    held = _change(model, pruned, batches[1::2], key="last_hidden_state")
    assert report.output_change == pytest.approx(held, rel=1e-6)
    assert report.output_change <= 0.2
    assert report.params_after < report.params_before
