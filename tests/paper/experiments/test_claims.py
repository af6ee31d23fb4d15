"""Paired statistics, summary rows and the verdict on each claim of SPEC section 6."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rmtprune.paper.experiments import (
    ArmResult,
    ClaimVerdict,
    EvalPoint,
    ExperimentConfig,
    SeedResult,
)
from rmtprune.paper.experiments.classification.claims import (
    CLAIMS,
    assess_claims,
    paired_comparison,
    summarize,
    summary_table,
)
from rmtprune.paper.training import EpochRecord, History


def test_paired_comparison_matches_scipy() -> None:
    a = [0.912, 0.905, 0.921, 0.899, 0.915]
    b = [0.903, 0.907, 0.910, 0.891, 0.902]
    c = paired_comparison(a, b)
    d = np.subtract(a, b)
    assert c.n == 5 and c.mean == pytest.approx(d.mean(), abs=1e-15)
    assert c.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-12)
    assert (c.wins, c.losses) == (4, 1)


def test_paired_comparison_edge_cases() -> None:
    one = paired_comparison([0.9], [0.8])
    assert one.n == 1 and one.mean == pytest.approx(0.1)
    assert math.isnan(one.std) and math.isnan(one.p_value)
    same = paired_comparison([0.5, 0.6], [0.5, 0.6])
    assert same.p_value == 1.0 and same.wins == same.losses == 0
    shifted = paired_comparison([0.6, 0.7], [0.5, 0.6])
    assert shifted.p_value == 0.0 and shifted.ci_low == pytest.approx(0.1)


def _arm(seed: int, arm: str, accuracy: float, params: int) -> ArmResult:
    record = EpochRecord(1, 0.02, 0.5, 0.8, 0.4, accuracy, params, 1.0)
    return ArmResult(seed, arm, EvalPoint(1000, 2.3, 0.1), "x", History((record,)), ())


def _seeds(normal: list[float], pruned: list[float], pruned_params: int) -> list[SeedResult]:
    return [
        SeedResult(i, _arm(i, "normal", a, 1000), _arm(i, "pruned", b, pruned_params), ())
        for i, (a, b) in enumerate(zip(normal, pruned, strict=True))
    ]


def _verdicts(cfg: ExperimentConfig, seeds: list[SeedResult]) -> dict[str, str]:
    return {c.key: c.verdict for c in assess_claims(cfg, seeds)}


def test_claims_agree_when_pruning_is_drastic_better_and_steadier() -> None:
    seeds = _seeds([0.90, 0.88, 0.92], [0.925, 0.905, 0.94], pruned_params=300)
    v = _verdicts(ExperimentConfig(), seeds)
    assert v == {
        "reduction": "agrees",
        "fc-accuracy-variance": "agrees",
        "loss-landscape": "not tested here",
    }
    claims = assess_claims(ExperimentConfig(), seeds)
    assert "70.0 %" in claims[0].explanation  # 1000 → 300 parameters
    assert [c.claim for c in claims] == list(CLAIMS.values())


def test_claims_disagree_when_accuracy_clearly_drops() -> None:
    seeds = _seeds([0.90, 0.91, 0.92], [0.85, 0.855, 0.87], pruned_params=300)
    v = _verdicts(ExperimentConfig(), seeds)
    assert v["reduction"] == "disagrees" and v["fc-accuracy-variance"] == "disagrees"


def test_claims_verdict_shades() -> None:
    cfg = ExperimentConfig()
    # accuracy kept but only 20 % removed: not drastic
    assert _verdicts(cfg, _seeds([0.9, 0.9], [0.9, 0.9], 800))["reduction"] == "partly agrees"
    # a 0.3-point drop, within the tolerance but on every seed: not plain agreement
    steady = _seeds([0.900, 0.910, 0.920], [0.897, 0.906, 0.917], 300)
    assert _verdicts(cfg, steady)["reduction"] == (
        "agrees within tolerance (small, significant drop)"
    )
    # the same mean drop with a spread that makes it indistinguishable from zero
    spread = _seeds([0.900, 0.910, 0.920], [0.905, 0.900, 0.916], 300)
    assert _verdicts(cfg, spread)["reduction"] == "agrees"
    # a 1-point drop that three noisy seeds cannot confirm
    noisy = _seeds([0.90, 0.92, 0.88], [0.91, 0.89, 0.87], 300)
    assert _verdicts(cfg, noisy)["reduction"] == "inconclusive"
    # higher and steadier, but three seeds do not make it significant
    weak = _seeds([0.90, 0.88, 0.92], [0.921, 0.918, 0.925], 300)
    assert _verdicts(cfg, weak)["fc-accuracy-variance"] == "agrees in direction (not significant)"
    # higher on average but more variable
    mixed = _seeds([0.90, 0.90, 0.90], [0.93, 0.90, 0.92], 300)
    assert _verdicts(cfg, mixed)["fc-accuracy-variance"] == "partly agrees"
    # lower and more variable, within the noise of three seeds
    worse = _seeds([0.90, 0.90, 0.91], [0.89, 0.91, 0.88], 300)
    assert _verdicts(cfg, worse)["fc-accuracy-variance"] == (
        "disagrees in direction (not significant)"
    )
    # one seed: variance cannot be judged
    assert _verdicts(cfg, _seeds([0.9], [0.95], 300))["fc-accuracy-variance"] == "inconclusive"
    cnn = ExperimentConfig(architecture="cnn")
    assert _verdicts(cnn, noisy)["fc-accuracy-variance"] == "not applicable"


def test_summary_rows_and_table() -> None:
    seeds = _seeds([0.90, 0.92], [0.91, 0.93], pruned_params=250)
    rows = summarize(seeds)
    assert [r.method for r in rows] == ["normal", "pruned"]
    assert rows[1].reduction == pytest.approx(0.75)
    assert rows[1].accuracy_mean == pytest.approx(0.92)
    assert rows[1].accuracy_std == pytest.approx(math.sqrt(2) * 0.01)
    table = summary_table(rows)
    assert "| pruned during training (MP) | 250 | 75.0 % | 92.00 ± 1.41 % |" in table


def test_one_verdict_type_for_graded_and_yes_no_claims() -> None:
    graded = assess_claims(ExperimentConfig(), _seeds([0.9, 0.9], [0.9, 0.9], 100))[0]
    assert isinstance(graded, ClaimVerdict) and graded.holds is None
    assert list(graded.to_dict()) == ["key", "claim", "verdict", "explanation"]
    yes = ClaimVerdict.from_holds("k", "a claim", np.bool_(True), "numbers.")
    no = ClaimVerdict.from_holds("k", "a claim", False, "numbers.")
    unsure = ClaimVerdict.from_holds("k", "a claim", None, "numbers.")
    assert [v.verdict for v in (yes, no, unsure)] == ["HOLDS", "DOES NOT HOLD", "INCONCLUSIVE"]
    assert [v.holds for v in (yes, no, unsure)] == [True, False, None]
    assert no.line() == "- **Verdict — a claim: DOES NOT HOLD.** numbers."
    assert ClaimVerdict(**no.to_dict()) == no
