"""Summary tables, the verdict on each claim of SPEC section 6, and the report files.

The report reads results only.  It states, for each claim of the paper, what
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
>>> from rmtprune.experiments.report import paired_comparison
>>> c = paired_comparison([0.90, 0.91, 0.92], [0.89, 0.90, 0.90])
>>> round(c.mean, 4), c.wins, c.n
(0.0133, 3, 3)
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from rmtprune.experiments.config import ExperimentConfig
from rmtprune.pruning.report import _json_safe

if TYPE_CHECKING:
    from rmtprune.experiments.runner import ArmResult, RunResult, SeedResult

__all__ = [
    "ClaimVerdict",
    "PairedComparison",
    "SummaryRow",
    "assess_claims",
    "paired_comparison",
    "render_html",
    "render_markdown",
    "summarize",
    "summary_table",
    "write_metrics",
    "write_report",
]


@dataclass(frozen=True)
class PairedComparison:
    """Per-seed differences ``a − b``: mean, std, 95 % CI, t-test p-value, wins / losses."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    p_value: float
    wins: int
    losses: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> PairedComparison:
    """Paired comparison of two equally long samples (a two-sided t-test on ``a − b``).

    With one pair the spread, interval and p-value are NaN; with zero spread the
    p-value is 0 (all differences equal and non-zero) or 1 (all zero).
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = int(d.size)
    mean = float(d.mean()) if n else math.nan
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    if n < 2:
        return PairedComparison(n, mean, math.nan, math.nan, math.nan, math.nan, wins, losses)
    std = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    if std == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = float(2.0 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))
    return PairedComparison(n, mean, std, mean - half, mean + half, p, wins, losses)


@dataclass(frozen=True)
class SummaryRow:
    """One line of the comparison table: a method at a stage, over seeds."""

    method: str
    stage: str
    label: str
    n_params: tuple[int, ...]
    accuracies: tuple[float, ...]
    dense_params: int

    @property
    def params_mean(self) -> float:
        """Mean parameter count over seeds."""
        return float(np.mean(self.n_params))

    @property
    def reduction(self) -> float:
        """Fraction of the dense network's parameters removed (mean count)."""
        return 1.0 - self.params_mean / self.dense_params

    @property
    def accuracy_mean(self) -> float:
        """Mean test accuracy over seeds."""
        return float(np.mean(self.accuracies))

    @property
    def accuracy_std(self) -> float:
        """Standard deviation (ddof = 1) of the test accuracy over seeds; NaN for one seed."""
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Fields and derived statistics."""
        return {
            "method": self.method,
            "stage": self.stage,
            "label": self.label,
            "n_params": list(self.n_params),
            "accuracies": list(self.accuracies),
            "dense_params": self.dense_params,
            "params_mean": self.params_mean,
            "reduction": self.reduction,
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": None if math.isnan(self.accuracy_std) else self.accuracy_std,
        }


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


@dataclass(frozen=True)
class ClaimVerdict:
    """What the run says about one claim of the paper."""

    key: str
    claim: str
    verdict: str
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


CLAIMS = {
    "reduction": 'Pruning gives "a drastic reduction of parameters while not reducing the '
    'accuracy of DNNs and CNNs".',
    "fc-accuracy-variance": 'Pruning fully connected DNNs "increases the accuracy and decreases '
    'the variance for random initializations".',
    "loss-landscape": 'This is "due to the simplification of the loss landscape".',
}


def summary_table(rows: Sequence[SummaryRow]) -> str:
    """The comparison table in Markdown: method, parameters, reduction, accuracy mean ± std."""
    lines = ["| method | parameters | reduction | test accuracy |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.params_mean:,.0f} | {100 * r.reduction:.1f} % | {_acc(r)} |"
        )
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.2f}"


def _acc(row: SummaryRow) -> str:
    if math.isnan(row.accuracy_std):
        return f"{_pct(row.accuracy_mean)} %"
    return f"{_pct(row.accuracy_mean)} ± {_pct(row.accuracy_std)} %"


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


def assess_claims(
    config: ExperimentConfig, seeds: Sequence[SeedResult]
) -> tuple[ClaimVerdict, ...]:
    """Verdict and numbers for each claim of SPEC section 6 (see the module docstring)."""
    rows = summarize(seeds)
    normal, pruned = rows[0], rows[1]
    cmp_ = paired_comparison(pruned.accuracies, normal.accuracies)
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
        f"{'yes' if drastic else 'no'}). Final test accuracy: normal {_acc(normal)}, "
        f"pruned {_acc(pruned)}; {_paired_text(cmp_)}. Accuracy counts as not reduced when the "
        f"mean difference is above −{100 * tol:.2g} points: {'yes' if kept else 'no'}."
        + (
            " The drop is small but consistent: the whole interval lies below zero."
            if kept and significantly_lower
            else ""
        )
        + _caveat(cmp_.n)
    )
    out = [ClaimVerdict("reduction", CLAIMS["reduction"], verdict, explanation)]

    key = "fc-accuracy-variance"
    if config.architecture != "fc":
        out.append(
            ClaimVerdict(
                key,
                CLAIMS[key],
                "not applicable",
                "This experiment is a CNN; the claim is about fully connected networks.",
            )
        )
    else:
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
            f"{_paired_text(cmp_)}. Standard deviation over seeds: normal {_pct(s_n)}, "
            f"pruned {_pct(s_p)} points (ratio pruned/normal {ratio:.2f})." + _caveat(cmp_.n)
        )
        out.append(ClaimVerdict(key, CLAIMS[key], verdict, explanation))
    out.append(
        ClaimVerdict(
            "loss-landscape",
            CLAIMS["loss-landscape"],
            "not tested here",
            "Deferred to the landscape experiment (seed-to-seed variance, loss barrier between "
            "seeds, loss surface along random directions).",
        )
    )
    return tuple(out)


# ------------------------------------------------------------------------ rendering
Block = tuple[Any, ...]


def _blocks(result: RunResult) -> list[Block]:
    cfg = result.config
    rows = result.summary
    b: list[Block] = [("h", 1, f"rmtprune reproduction: {cfg.experiment} ({cfg.preset} preset)")]
    arch = (
        f"fully connected {list(cfg.widths)}"
        if cfg.architecture == "fc"
        else f"CNN channels {list(cfg.channels)}, FC {cfg.fc_width}, dropout {cfg.dropout}"
    )
    b.append(
        (
            "p",
            f"Data {cfg.dataset} (train subset {cfg.train_subset or 'all'}, test subset "
            f"{cfg.test_subset or 'all'}); network {arch}; init {cfg.init}; {cfg.epochs} epochs, "
            f"SGD lr {cfg.lr} (×{cfg.lr_decay} after each pruning epoch, both arms), momentum "
            f"{cfg.momentum}, batch {cfg.batch_size}; pruning every {cfg.every} epoch(s) with "
            f"Linear(T={cfg.schedule_epochs_resolved:g}), min_rank {cfg.min_rank_resolved}, fit "
            f"cutoff {cfg.fit_cutoff} (conv {cfg.conv_fit_cutoff}); seeds {list(cfg.seeds)}. "
            f"Both arms start from the same weights and see the same data order; they differ "
            f"only by the pruning steps. Baselines start from the trained normal network, at the "
            f"pruned arm's final parameter count of the same seed, and get "
            f"{cfg.finetune_epochs} epoch(s) of fine-tuning.",
        )
    )
    b.append(("h", 2, "Claims of the paper"))
    for c in result.claims:
        b.append(("p", f"**{c.claim}** Verdict: **{c.verdict}**. {c.explanation}"))
    b.append(("h", 2, "Comparison (final test accuracy, mean ± std over seeds)"))
    b.append(
        (
            "table",
            ["method", "parameters (mean)", "reduction", "test accuracy"],
            [
                [r.label, f"{r.params_mean:,.0f}", f"{100 * r.reduction:.1f} %", _acc(r)]
                for r in rows
            ],
        )
    )
    b.append(("h", 2, "Per seed"))
    per_seed = []
    for s in result.seeds:
        d = s.pruned.final_accuracy - s.normal.final_accuracy
        per_seed.append(
            [
                s.seed,
                f"{_pct(s.normal.final_accuracy)} %",
                f"{_pct(s.pruned.final_accuracy)} %",
                f"{100 * d:+.2f}",
                f"{s.normal.final_params:,}",
                f"{s.pruned.final_params:,}",
            ]
        )
    b.append(
        (
            "table",
            ["seed", "normal", "pruned", "diff (points)", "normal params", "pruned params"],
            per_seed,
        )
    )
    last = result.seeds[0].pruned.layers[-1] if result.seeds[0].pruned.layers else ()
    if last:
        b.append(("h", 2, f"Pruned arm, seed {result.seeds[0].seed}: layers at the end"))
        b.append(
            (
                "table",
                ["layer", "shape", "rank", "spikes", "fit error D", "sigma2", "status"],
                [
                    [
                        r.name,
                        "×".join(map(str, r.shape)),
                        r.rank,
                        "–" if r.n_spikes is None else r.n_spikes,
                        "–" if math.isnan(r.fit_error) else f"{r.fit_error:.3g}",
                        "–" if math.isnan(r.sigma2) else f"{r.sigma2:.3g}",
                        r.status if not r.reason else f"{r.status}: {r.reason}",
                    ]
                    for r in last
                ],
            )
        )
    b.append(("h", 2, "Figures"))
    for path in result.figures:
        b.append(("img", path, path.stem.replace("_", " ")))
    b.append(("h", 2, "Files"))
    b.append(
        (
            "p",
            "config.json (resolved configuration), environment.json (versions, git commit), "
            "metrics.json and metrics.csv (per seed, arm and epoch), after_training.csv "
            "(baselines before/after fine-tuning), figures/*.png, seed-*/ (checkpoints).",
        )
    )
    return b


def render_markdown(result: RunResult) -> str:
    """The report as Markdown, figures linked by relative path."""
    out: list[str] = []
    for block in _blocks(result):
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            headers, rows = block[1], block[2]
            out.append("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
            out[-1] += "".join("\n| " + " | ".join(str(c) for c in r) + " |" for r in rows)
        elif kind == "img":
            rel = block[1].relative_to(result.run_dir).as_posix()
            out.append(f"![{block[2]}]({rel})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def render_html(result: RunResult) -> str:
    """The report as one self-contained HTML page (figures embedded as data URIs)."""
    body: list[str] = []
    for block in _blocks(result):
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                for r in block[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(figure_html(block[1], block[2]))
    return html_page(f"rmtprune {result.config.experiment} ({result.config.preset})", body)


HTML_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;"
    "line-height:1.45}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid "
    "#bbb;padding:.25em .6em;text-align:left}th{background:#eee}img{max-width:100%}"
    "figure{margin:1.5em 0}"
)


def figure_html(path: Path, caption: str) -> str:
    """A PNG embedded as a base64 data URI, so the page needs no other file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = html.escape(caption)
    return (
        f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
        f"<figcaption>{cap}</figcaption></figure>"
    )


def html_page(title: str, body: list[str]) -> str:
    """A self-contained HTML page around ``body`` (already HTML)."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _epoch_rows(arm: ArmResult) -> list[dict[str, Any]]:
    """Flat per-epoch rows (epoch 0 first) with per-layer rank, spikes and fit error."""
    out = []
    base = {"seed": arm.seed, "arm": arm.arm}
    zero = {
        "epoch": 0,
        "lr": None,
        "train_loss": None,
        "train_accuracy": None,
        "test_loss": arm.initial.test_loss,
        "test_accuracy": arm.initial.test_accuracy,
        "n_params": arm.initial.n_params,
        "wall_time": 0.0,
    }
    records = [zero] + [
        {k: v for k, v in r.to_dict().items() if k != "pruning"} for r in arm.history
    ]
    for record, layers in zip(records, arm.layers, strict=False):
        row = {**base, **record}
        for layer in layers:
            row[f"{layer.name}.rank"] = layer.rank
            row[f"{layer.name}.n_spikes"] = layer.n_spikes
            row[f"{layer.name}.fit_error"] = layer.fit_error
        out.append(row)
    return out


def write_metrics(result: RunResult) -> None:
    """Write ``metrics.json``, ``metrics.csv`` (per seed, arm, epoch) and ``after_training.csv``."""
    run_dir = result.run_dir
    content = {k: v for k, v in result.to_dict().items() if k not in ("run_dir", "wall_time")}
    content.pop("figures")
    text = json.dumps(_json_safe(content), indent=1, allow_nan=False)
    (run_dir / "metrics.json").write_text(text + "\n", encoding="utf-8")
    rows = [row for s in result.seeds for arm in (s.normal, s.pruned) for row in _epoch_rows(arm)]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else str(row.get(c)) for c in columns))
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    head = "seed,method,stage,n_params,target_params,test_loss,test_accuracy,energy,n_zeroed"
    lines = [head]
    for s in result.seeds:
        for r in s.after_training:
            for stage, point in (("before-ft", r.before), ("after-ft", r.after)):
                values = [
                    s.seed,
                    r.method,
                    stage,
                    point.n_params,
                    r.target_params,
                    point.test_loss,
                    point.test_accuracy,
                    r.energy,
                    r.n_zeroed,
                ]
                lines.append(",".join("" if v is None else str(v) for v in values))
    (run_dir / "after_training.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_report(result: RunResult) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into the run directory; return their paths."""
    md = result.run_dir / "report.md"
    page = result.run_dir / "report.html"
    md.write_text(render_markdown(result), encoding="utf-8")
    page.write_text(render_html(result), encoding="utf-8")
    return md, page
