"""The report files of a classification run: Markdown, HTML, metrics JSON and CSV.

The tables and the verdict on each claim of docs/method.md section 6 come from
:mod:`rmtprune.paper.experiments.classification.claims`; this module renders them with the figures
into
``report.md`` and, through the one HTML renderer of
:func:`rmtprune.paper.experiments.formats.markdown_to_html`, a self-contained ``report.html``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rmtprune.paper.experiments.classification.baselines import EvalPoint, PostTrainingResult
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.formats import (
    csv_text,
    markdown_table,
    markdown_to_html,
    write_json,
    write_text,
)
from rmtprune.paper.experiments.results import ArmResult, RunResult, accuracy_text, percent

__all__ = [
    "render_html",
    "render_markdown",
    "write_metrics",
    "write_report",
]


# ------------------------------------------------------------------------ rendering
Block = tuple[Any, ...]


def _setup_text(cfg: ExperimentConfig) -> str:
    arch = (
        f"fully connected {list(cfg.widths)}"
        if cfg.architecture == "fc"
        else f"CNN channels {list(cfg.channels)}, FC {cfg.fc_width}, dropout {cfg.dropout}"
    )
    return (
        f"Data {cfg.dataset} (train subset {cfg.train_subset or 'all'}, test subset "
        f"{cfg.test_subset or 'all'}); network {arch}; init {cfg.init}; {cfg.epochs} epochs, "
        f"SGD lr {cfg.lr} (×{cfg.lr_decay} after each pruning epoch, both arms), momentum "
        f"{cfg.momentum}, batch {cfg.batch_size}; pruning every {cfg.every} epoch(s) with "
        f"Linear(T={cfg.schedule_epochs_resolved:g}), min_rank {cfg.min_rank_resolved}, fit "
        f"cutoff {cfg.fit_cutoff} (conv {cfg.conv_fit_cutoff}); seeds {list(cfg.seeds)}. "
        f"Both arms start from the same weights and see the same data order; they differ "
        f"only by the pruning steps. Baselines start from the trained normal network, at the "
        f"pruned arm's final parameter count of the same seed, and get "
        f"{cfg.finetune_epochs} epoch(s) of fine-tuning."
    )


def _per_seed_table(result: RunResult) -> Block:
    rows = []
    for s in result.seeds:
        d = s.pruned.final_accuracy - s.normal.final_accuracy
        rows.append(
            [
                s.seed,
                f"{percent(s.normal.final_accuracy)} %",
                f"{percent(s.pruned.final_accuracy)} %",
                f"{100 * d:+.2f}",
                f"{s.normal.final_params:,}",
                f"{s.pruned.final_params:,}",
            ]
        )
    headers = ["seed", "normal", "pruned", "diff (points)", "normal params", "pruned params"]
    return ("table", headers, rows)


def _layer_blocks(result: RunResult) -> list[Block]:
    first = result.seeds[0]
    last = first.pruned.layers[-1] if first.pruned.layers else ()
    if not last:
        return []
    rows = [
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
    ]
    headers = ["layer", "shape", "rank", "spikes", "fit error D", "sigma2", "status"]
    return [("h", 2, f"Pruned arm, seed {first.seed}: layers at the end"), ("table", headers, rows)]


_FILES_TEXT = (
    "config.json (resolved configuration), environment.json (versions, git commit), "
    "metrics.json and metrics.csv (per seed, arm and epoch), after_training.csv "
    "(baselines before/after fine-tuning), figures/*.png, seed-*/ (checkpoints)."
)


def _blocks(result: RunResult) -> list[Block]:
    cfg = result.config
    b: list[Block] = [("h", 1, f"rmtprune reproduction: {cfg.experiment} ({cfg.preset} preset)")]
    b.append(("p", _setup_text(cfg)))
    b.append(("h", 2, "Claims of the paper"))
    b += [("p", f"**{c.claim}** Verdict: **{c.verdict}**. {c.explanation}") for c in result.claims]
    b.append(("h", 2, "Comparison (final test accuracy, mean ± std over seeds)"))
    rows = [
        [r.label, f"{r.params_mean:,.0f}", f"{100 * r.reduction:.1f} %", accuracy_text(r)]
        for r in result.summary
    ]
    b.append(("table", ["method", "parameters (mean)", "reduction", "test accuracy"], rows))
    b.append(("h", 2, "Per seed"))
    b.append(_per_seed_table(result))
    b += _layer_blocks(result)
    b.append(("h", 2, "Figures"))
    b += [("img", path, path.stem.replace("_", " ")) for path in result.figures]
    b.append(("h", 2, "Files"))
    b.append(("p", _FILES_TEXT))
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
            out.append(markdown_table(block[1], block[2]))
        elif kind == "img":
            rel = block[1].relative_to(result.run_dir).as_posix()
            out.append(f"![{block[2]}]({rel})")
    return "\n\n".join(out) + "\n"


def render_html(result: RunResult) -> str:
    """The report as one self-contained HTML page (figures embedded as data URIs)."""
    title = f"rmtprune {result.config.experiment} ({result.config.preset})"
    return markdown_to_html(render_markdown(result), result.run_dir, title)


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


def _after_values(point: EvalPoint, result: PostTrainingResult) -> list[Any]:
    return [point.test_loss, point.test_accuracy, result.energy, result.n_zeroed]


def write_metrics(result: RunResult) -> None:
    """Write ``metrics.json``, ``metrics.csv`` (per seed, arm, epoch) and ``after_training.csv``."""
    run_dir = result.run_dir
    content = {k: v for k, v in result.to_dict().items() if k not in ("run_dir", "wall_time")}
    content.pop("figures")
    write_json(run_dir / "metrics.json", content, newline=True)
    rows = [row for s in result.seeds for arm in (s.normal, s.pruned) for row in _epoch_rows(arm)]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    table = [[row.get(c) for c in columns] for row in rows]
    write_text(run_dir / "metrics.csv", csv_text(columns, table))
    head = "seed,method,stage,n_params,target_params,test_loss,test_accuracy,energy,n_zeroed"
    table = [
        [s.seed, r.method, stage, p.n_params, r.target_params, *_after_values(p, r)]
        for s in result.seeds
        for r in s.after_training
        for stage, p in (("before-ft", r.before), ("after-ft", r.after))
    ]
    write_text(run_dir / "after_training.csv", csv_text(head.split(","), table))


def write_report(result: RunResult, *, html: bool = True) -> tuple[Path, ...]:
    """Write ``report.md`` (and ``report.html`` unless ``html`` is false); return their paths."""
    md = result.run_dir / "report.md"
    write_text(md, render_markdown(result))
    if not html:
        return (md,)
    page = result.run_dir / "report.html"
    write_text(page, render_html(result))
    return md, page
