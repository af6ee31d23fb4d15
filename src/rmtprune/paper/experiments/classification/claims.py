"""Summary rows and the verdict on each claim of docs/method.md section 6, from a run's results.

These functions read results only.  They state, for each claim of the paper, what
the numbers of the run say, agreeing or not:

1. "a drastic reduction of parameters while not reducing the accuracy":
   reduction of the pruned arm's final parameter count against the dense network
   (drastic from ``config.drastic_reduction``), and the paired difference of final
   test accuracy, pruned − normal, over seeds (not reduced when the mean
   difference is at least ``−config.accuracy_tolerance``; a drop within that
   tolerance whose 95 % interval lies wholly below zero is reported as such, not
   as plain agreement);
2. "pruning fully connected DNNs increases the accuracy and decreases the variance
   for random initializations" (fully connected experiments only): sign and
   significance of the mean paired difference, and the ratio of the standard
   deviations over seeds;
3. "due to the simplification of the loss landscape": deferred to the landscape
   experiment.

The paired comparison is a t-test on the per-seed differences with a 95 %
confidence interval, plus the count of seeds where the pruned arm is higher.
With three seeds these are weak: the report says so.

Example
-------
>>> from rmtprune.paper.experiments.classification.claims import paired_comparison
>>> c = paired_comparison([0.90, 0.91, 0.92], [0.89, 0.90, 0.90])
>>> round(c.mean, 4), c.wins, c.n
(0.0133, 3, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.results import (
    ClaimVerdict,
    SeedResult,
    SummaryRow,
    accuracy_text,
    percent,
    summary_table,
)
from rmtprune.paper.experiments.stats import PairedComparison, paired_comparison

__all__ = [
    "CLAIMS",
    "ClaimVerdict",
    "PairedComparison",
    "SummaryRow",
    "accuracy_text",
    "assess_claims",
    "paired_comparison",
    "percent",
    "summarize",
    "summary_table",
]


_LABELS = {
    "mp-oneshot": "MP one-shot after training (bulk_keep=0)",
    "magnitude": "global magnitude pruning",
    "svd-energy": "SVD truncation, ranks by retained energy",
}


def summarize(seeds: Sequence[SeedResult]) -> tuple[SummaryRow, ...]:
    """Rows: dense, pruned during training, then each after-training method before / after ft."""
    dense = seeds[0].normal.history[-1].n_params if seeds[0].normal.history else 0
    rows = [
        SummaryRow(
            "normal",
            "final",
            "normal (dense)",
            tuple(s.normal.final_params for s in seeds),
            tuple(s.normal.final_accuracy for s in seeds),
            dense,
        ),
        SummaryRow(
            "pruned",
            "final",
            "pruned during training (MP)",
            tuple(s.pruned.final_params for s in seeds),
            tuple(s.pruned.final_accuracy for s in seeds),
            dense,
        ),
    ]
    methods = [r.method for r in seeds[0].after_training]
    for method in methods:
        found = [next(r for r in s.after_training if r.method == method) for s in seeds]
        ft = found[0].finetune_epochs
        for stage, label in (("before-ft", "before fine-tuning"), ("after-ft", f"+ {ft} ep. ft")):
            points = [r.before if stage == "before-ft" else r.after for r in found]
            rows.append(
                SummaryRow(
                    method,
                    stage,
                    f"{_LABELS.get(method, method)}, {label}",
                    tuple(p.n_params for p in points),
                    tuple(p.test_accuracy for p in points),
                    dense,
                )
            )
    return tuple(rows)


CLAIMS = {
    "reduction": 'Pruning gives "a drastic reduction of parameters while not reducing the '
    'accuracy of DNNs and CNNs".',
    "fc-accuracy-variance": 'Pruning fully connected DNNs "increases the accuracy and decreases '
    'the variance for random initializations".',
    "loss-landscape": 'This is "due to the simplification of the loss landscape".',
}


def _paired_text(c: PairedComparison) -> str:
    if c.n < 2:
        return f"difference pruned − normal {100 * c.mean:+.2f} points (one seed: no spread)"
    return (
        f"paired difference pruned − normal {100 * c.mean:+.2f} points "
        f"(95 % CI [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}], paired t-test p = "
        f"{c.p_value:.3g}; pruned higher in {c.wins} of {c.n} seeds)"
    )


def _caveat(n: int) -> str:
    if n < 2:
        return " With a single seed nothing can be said about seed-to-seed variation."
    return (
        f" With {n} seeds the interval is wide and a standard deviation is estimated from "
        f"{n - 1} degree(s) of freedom, so small differences are not distinguishable from noise."
    )


def _reduction_verdict(
    config: ExperimentConfig, normal: SummaryRow, pruned: SummaryRow, cmp_: PairedComparison
) -> ClaimVerdict:
    tol = config.accuracy_tolerance
    drastic = pruned.reduction >= config.drastic_reduction
    kept = cmp_.mean >= -tol
    significantly_lower = cmp_.n >= 2 and cmp_.ci_high < 0
    clearly_lower = not kept and significantly_lower
    if drastic and kept and significantly_lower:
        verdict = "agrees within tolerance (small, significant drop)"
    elif drastic and kept:
        verdict = "agrees"
    elif drastic and clearly_lower:
        verdict = "disagrees"
    elif drastic:
        verdict = "inconclusive"
    else:
        verdict = "partly agrees" if kept else "disagrees"
    explanation = (
        f"Parameters: dense {normal.params_mean:,.0f} → pruned {pruned.params_mean:,.0f} "
        f"(mean over {cmp_.n} seed(s)), a reduction of {100 * pruned.reduction:.1f} % "
        f"(called drastic from {100 * config.drastic_reduction:.0f} %: "
        f"{'yes' if drastic else 'no'}). Final test accuracy: normal {accuracy_text(normal)}, "
        f"pruned {accuracy_text(pruned)}; {_paired_text(cmp_)}. Accuracy counts as not "
        f"reduced when the mean difference is above −{100 * tol:.2g} points: "
        f"{'yes' if kept else 'no'}."
        + (
            " The drop is small but consistent: the whole interval lies below zero."
            if kept and significantly_lower
            else ""
        )
        + _caveat(cmp_.n)
    )
    return ClaimVerdict("reduction", CLAIMS["reduction"], verdict, explanation)


def _fc_verdict(
    config: ExperimentConfig, normal: SummaryRow, pruned: SummaryRow, cmp_: PairedComparison
) -> ClaimVerdict:
    key = "fc-accuracy-variance"
    if config.architecture != "fc":
        return ClaimVerdict(
            key,
            CLAIMS[key],
            "not applicable",
            "This experiment is a CNN; the claim is about fully connected networks.",
        )
    higher = cmp_.mean > 0
    s_n, s_p = normal.accuracy_std, pruned.accuracy_std
    if cmp_.n < 2:
        verdict = "inconclusive"
    else:
        lower_var = s_p < s_n
        if higher and lower_var:
            verdict = "agrees" if cmp_.ci_low > 0 else "agrees in direction (not significant)"
        elif higher or lower_var:
            verdict = "partly agrees"
        else:
            verdict = (
                "disagrees" if cmp_.ci_high < 0 else "disagrees in direction (not significant)"
            )
    ratio = s_p / s_n if s_n and not math.isnan(s_n) else math.nan
    explanation = (
        f"Mean accuracy is {'higher' if higher else 'not higher'} with pruning: "
        f"{_paired_text(cmp_)}. Standard deviation over seeds: normal {percent(s_n)}, "
        f"pruned {percent(s_p)} points (ratio pruned/normal {ratio:.2f})." + _caveat(cmp_.n)
    )
    return ClaimVerdict(key, CLAIMS[key], verdict, explanation)


def assess_claims(
    config: ExperimentConfig, seeds: Sequence[SeedResult]
) -> tuple[ClaimVerdict, ...]:
    """Verdict and numbers for each claim of docs/method.md section 6 (see the module docstring)."""
    rows = summarize(seeds)
    normal, pruned = rows[0], rows[1]
    cmp_ = paired_comparison(pruned.accuracies, normal.accuracies)
    return (
        _reduction_verdict(config, normal, pruned, cmp_),
        _fc_verdict(config, normal, pruned, cmp_),
        ClaimVerdict(
            "loss-landscape",
            CLAIMS["loss-landscape"],
            "not tested here",
            "Deferred to the landscape experiment (seed-to-seed variance, loss barrier between "
            "seeds, loss surface along random directions).",
        ),
    )
