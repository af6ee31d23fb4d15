"""The ablation's four questions, answered per data set with the experiments' paired tests.

On the final test accuracy of each seed (the four arms of a seed start from the same
weights, so the seeds pair the arms):

(a) does MP pruning raise accuracy over an **unregularised** baseline? ``mp − neither``;
(b) over a **regularised** one? ``both − l1l2``;
(c) does pruning lower the seed-to-seed spread, in either case?  ``std(mp)`` against
    ``std(neither)`` and ``std(both)`` against ``std(l1l2)``, by the Pitman–Morgan test of
    equal variances of paired samples
    (:func:`~rmtprune.paper.experiments.stats.variance_comparison`);
(d) how close does MP pruning alone get to L1+L2 alone?  ``mp − l1l2`` with its interval,
    and the share of the regularisation's gain over *neither* that pruning alone recovers,
    ``(mp − neither) / (l1l2 − neither)`` of the means — defined only when that gain is
    positive (a ratio of two losses is no share of a gain).

(a), (b) and (d) are :func:`~rmtprune.paper.experiments.stats.paired_comparison`: the paired
t-test on the per-seed differences with a 95 % interval.  The rule is that of the other
experiments: a verdict says HOLDS or DOES NOT HOLD (by the sign) only when ``p < 0.05``,
INCONCLUSIVE otherwise.  With three seeds the t-test has two degrees of freedom and the
variance test one (it needs a correlation above 0.997): the power to see anything but a
large, consistent effect is small, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rmtprune.paper.experiments.ablation.arms import ARMS
from rmtprune.paper.experiments.ablation.results import DatasetResult
from rmtprune.paper.experiments.results import ClaimVerdict, percent
from rmtprune.paper.experiments.stats import (
    PairedComparison,
    VarianceComparison,
    paired_comparison,
    variance_comparison,
)

__all__ = ["ALPHA", "Answers", "ArmSummary", "answer", "verdicts"]

ALPHA = 0.05
"""Significance level of every verdict (two-sided)."""


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


@dataclass(frozen=True)
class ArmSummary:
    """One arm over seeds: final test and train accuracy (per seed, mean, std), parameters."""

    arm: str
    label: str
    test_accuracy: tuple[float, ...]
    train_accuracy: tuple[float, ...]
    running_train_accuracy: tuple[float, ...]
    n_params: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Per-seed values with their means and standard deviations (``ddof = 1``)."""
        out: dict[str, Any] = {"arm": self.arm, "label": self.label}
        for key in ("test_accuracy", "train_accuracy", "running_train_accuracy"):
            values = getattr(self, key)
            out[key] = list(values)
            out[f"{key}_mean"] = float(np.mean(values))
            out[f"{key}_std"] = _std(values)
        out["n_params"] = list(self.n_params)
        out["n_params_mean"] = float(np.mean(self.n_params))
        return out


@dataclass(frozen=True)
class Answers:
    """The numbers behind the four questions for one data set (see the module docstring)."""

    experiment: str
    arms: tuple[ArmSummary, ...]
    unregularised: PairedComparison
    regularised: PairedComparison
    variance_unregularised: VarianceComparison
    variance_regularised: VarianceComparison
    mp_vs_l1l2: PairedComparison
    gain_recovered: float
    l1l2_gain: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "experiment": self.experiment,
            "arms": {a.arm: a.to_dict() for a in self.arms},
            "a_unregularised": self.unregularised.to_dict(),
            "b_regularised": self.regularised.to_dict(),
            "c_variance_unregularised": self.variance_unregularised.to_dict(),
            "c_variance_regularised": self.variance_regularised.to_dict(),
            "d_mp_vs_l1l2": self.mp_vs_l1l2.to_dict(),
            "d_gain_recovered": self.gain_recovered,
            "d_l1l2_gain": self.l1l2_gain,
        }


def answer(result: DatasetResult) -> Answers:
    """The statistics of the four questions for one data set."""
    test = {a.name: result.values(a.name, "test_accuracy") for a in ARMS}
    arms = tuple(
        ArmSummary(
            a.name,
            a.label,
            tuple(test[a.name]),
            tuple(result.values(a.name, "train_accuracy")),
            tuple(result.values(a.name, "running_train_accuracy")),
            tuple(int(v) for v in result.values(a.name, "n_params")),
        )
        for a in ARMS
    )
    metric = "test_accuracy"
    gain = float(np.mean(test["l1l2"]) - np.mean(test["neither"]))
    recovered = (
        float(np.mean(test["mp"]) - np.mean(test["neither"])) / gain if gain > 0 else math.nan
    )
    return Answers(
        result.experiment,
        arms,
        paired_comparison(test["mp"], test["neither"], metric=metric),
        paired_comparison(test["both"], test["l1l2"], metric=metric),
        variance_comparison(test["mp"], test["neither"], metric=metric),
        variance_comparison(test["both"], test["l1l2"], metric=metric),
        paired_comparison(test["mp"], test["l1l2"], metric=metric),
        recovered,
        gain,
    )


def paired_text(c: PairedComparison, a: str, b: str) -> str:
    """``a − b`` in points with its interval, p-value and wins (one seed: no spread)."""
    if c.n < 2:
        return f"{a} − {b} {100 * c.mean:+.2f} points (one seed: no spread, no test)"
    return (
        f"{a} − {b} {100 * c.mean:+.2f} points (95 % CI [{100 * c.ci_low:+.2f}, "
        f"{100 * c.ci_high:+.2f}], paired t-test p = {c.p_value:.3g}; {a} higher in "
        f"{c.wins} of {c.n} seeds)"
    )


def _decided(c: PairedComparison | VarianceComparison) -> bool:
    return not math.isnan(c.p_value) and c.p_value < ALPHA


def _mean_verdict(key: str, claim: str, c: PairedComparison, a: str, b: str) -> ClaimVerdict:
    holds = (c.mean > 0) if _decided(c) else None
    return ClaimVerdict.from_holds(
        key,
        claim,
        holds,
        f"Final test accuracy {percent(c.mean_a)} % ({a}) against {percent(c.mean_b)} % ({b}); "
        f"{paired_text(c, a, b)}. Inconclusive unless p < {ALPHA:g}.",
    )


def variance_text(c: VarianceComparison, a: str, b: str) -> str:
    """The two standard deviations, their ratio and the Pitman–Morgan test, with its power."""
    if c.n < 2:
        return "One seed: no spread, no variance test."
    head = (
        f"Std of test accuracy over {c.n} seeds: {a} {percent(c.std_a)}, {b} "
        f"{percent(c.std_b)} points (ratio {c.ratio:.2f})"
    )
    if math.isnan(c.p_value):
        return f"{head}; with {c.n} seeds the variance test needs at least 3 seeds: no test."
    return (
        f"{head}; Pitman–Morgan test of equal variances for paired samples: correlation of "
        f"sum and difference r = {c.r:+.3f}, p = {c.p_value:.3g} ({c.n - 2} degree(s) of "
        f"freedom: only |r| > {c.r_critical:.3f} reaches p < {ALPHA:g}, so the power to "
        f"detect even a several-fold difference of spread is small)."
    )


def _variance_verdict(key: str, claim: str, c: VarianceComparison, a: str, b: str) -> ClaimVerdict:
    holds = (c.ratio < 1) if _decided(c) else None
    return ClaimVerdict.from_holds(
        key, claim, holds, variance_text(c, a, b) + f" Inconclusive unless p < {ALPHA:g}."
    )


def _closeness_verdict(c: PairedComparison, recovered: float, gain: float) -> ClaimVerdict:
    if _decided(c):
        verdict = "MP only is higher than L1+L2 only" if c.mean > 0 else "MP only is lower"
    else:
        verdict = "not distinguishable at these seeds"
    share = (
        f"not defined: L1+L2 only is not above neither ({100 * gain:+.3f} points), so there is "
        "no gain for MP pruning to recover"
        if math.isnan(recovered)
        else f"{100 * recovered:.0f} % (descriptive; it means little unless L1+L2 only is "
        "clearly above neither)"
    )
    return ClaimVerdict(
        "d-mp-vs-l1l2",
        "(d) How close MP pruning alone gets to L1+L2 alone.",
        verdict,
        f"{paired_text(c, 'MP only', 'L1+L2 only')}. Share of L1+L2's gain over neither that "
        f"MP pruning alone recovers, (mp − neither)/(l1l2 − neither) of the means: {share}.",
    )


def verdicts(a: Answers) -> tuple[ClaimVerdict, ...]:
    """The verdicts on (a)–(d) for one data set."""
    return (
        _mean_verdict(
            "a-unregularised",
            "(a) MP pruning raises the test accuracy of an unregularised network "
            "(MP only vs neither).",
            a.unregularised,
            "MP only",
            "neither",
        ),
        _mean_verdict(
            "b-regularised",
            "(b) MP pruning raises the test accuracy of an L1+L2-regularised network "
            "(both vs L1+L2 only).",
            a.regularised,
            "both",
            "L1+L2 only",
        ),
        _variance_verdict(
            "c-variance-unregularised",
            "(c) MP pruning lowers the seed-to-seed spread without L1+L2 (MP only vs neither).",
            a.variance_unregularised,
            "MP only",
            "neither",
        ),
        _variance_verdict(
            "c-variance-regularised",
            "(c) MP pruning lowers the seed-to-seed spread with L1+L2 (both vs L1+L2 only).",
            a.variance_regularised,
            "both",
            "L1+L2 only",
        ),
        _closeness_verdict(a.mp_vs_l1l2, a.gain_recovered, a.l1l2_gain),
    )
