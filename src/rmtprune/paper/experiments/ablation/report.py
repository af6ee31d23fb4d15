"""The ablation's files: ``metrics.json``, ``metrics.csv``, ``final.csv``, figures, report.

``metrics.json`` holds, per data set, the configuration, every seed's four arms (history,
layer analyses, initial-weight digest, final train-set evaluation), the per-arm summaries,
the statistics of questions (a)–(d) (:mod:`~rmtprune.paper.experiments.ablation.answers`) and
the verdicts.  ``metrics.csv`` has one row per data set, seed, arm and epoch; ``final.csv``
one per data set, seed and arm (final test and train accuracy, parameters).  The figures
(per data set: test accuracy, running train accuracy and parameters against the epoch, the
four arms as mean ± std over seeds) are drawn by
:func:`rmtprune.paper.experiments.classification.plots.plot_curves`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmtprune.paper.experiments.ablation.answers import Answers, answer, verdicts
from rmtprune.paper.experiments.ablation.arms import ARMS
from rmtprune.paper.experiments.ablation.results import AblationArm, AblationRun, DatasetResult
from rmtprune.paper.experiments.classification.plots import Curve, plot_curves
from rmtprune.paper.experiments.formats import (
    csv_text,
    markdown_table,
    markdown_to_html,
    to_jsonable,
    write_json,
    write_text,
)
from rmtprune.paper.experiments.results import ClaimVerdict, percent

__all__ = ["COLORS", "make_figures", "render_markdown", "write_run"]

COLORS = {"neither": "tab:gray", "l1l2": "tab:blue", "mp": "tab:orange", "both": "tab:green"}

_HISTORY = ("lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "n_params")


# ------------------------------------------------------------------------ figures
def make_figures(run_dir: Path, preset: str, datasets: Sequence[DatasetResult]) -> list[Path]:
    """Per data set: test accuracy, running train accuracy and parameters vs epoch."""
    paths = []
    for d in datasets:
        name = f"ablation {d.experiment} ({preset})"
        for key, ylabel, percent_, first in (
            ("test_accuracy", "test accuracy (%)", True, 1),
            ("train_accuracy", "train accuracy, running over the epoch (%)", True, 1),
            ("n_params", "parameters", False, 0),
        ):
            curves = []
            for arm in ARMS:
                rows = []
                for s in d.seeds:
                    r = s.arm(arm.name).result
                    column = [float(v) for v in r.history.column(key)]
                    rows.append([float(r.initial.n_params), *column] if first == 0 else column)
                curves.append(Curve(arm.label, np.array(rows), COLORS[arm.name]))
            paths.append(
                plot_curves(
                    curves,
                    ylabel=ylabel,
                    title=f"{name}: {ylabel.split(' (')[0].split(',')[0]}",
                    path=run_dir / "figures" / f"{d.experiment}_{key}.png",
                    first_epoch=first,
                    percent=percent_,
                )
            )
    return paths


# ------------------------------------------------------------------------ tables
def _mean_std(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{percent(float(np.mean(values)))} %"
    return f"{percent(float(np.mean(values)))} ± {percent(float(np.std(values, ddof=1)))} %"


def _arm_table(a: Answers) -> str:
    rows = []
    for s in a.arms:
        gap = np.mean(s.train_accuracy) - np.mean(s.test_accuracy)
        rows.append(
            [
                s.label,
                _mean_std(s.test_accuracy),
                _mean_std(s.train_accuracy),
                _mean_std(s.running_train_accuracy),
                f"{100 * gap:+.2f}",
                f"{np.mean(s.n_params):,.0f}",
            ]
        )
    headers = [
        "arm",
        "test accuracy",
        "train accuracy (final network)",
        "train accuracy (last epoch, running)",
        "train − test (points)",
        "parameters",
    ]
    return markdown_table(headers, rows)


def _seed_table(d: DatasetResult) -> str:
    rows = [
        [s.seed, *(f"{percent(s.arm(arm.name).test_accuracy)} %" for arm in ARMS)] for s in d.seeds
    ]
    return markdown_table(["seed", *(arm.label for arm in ARMS)], rows)


def _setup(d: DatasetResult) -> str:
    c = d.config
    every = "every epoch" if c.every == 1 else f"every {c.every} epochs"
    return (
        f"Data {c.dataset} (train subset {c.train_subset or 'all'}, test subset "
        f"{c.test_subset or 'all'}); network {list(c.widths)}; init {c.init}; {c.epochs} epochs, "
        f"SGD lr {c.lr} (×{c.lr_decay} after each pruning epoch, {every}, in all four arms), "
        f"momentum {c.momentum}, batch {c.batch_size}; L1 = {c.l1:g}, L2 = {c.l2:g} in the "
        f"regularised arms, 0 in the others; pruning {every} with "
        f"Linear(T={c.schedule_epochs_resolved:g}) (kept bulk max(0, 1 − e/T)), min_rank "
        f"{c.min_rank_resolved}, fit cutoff {c.fit_cutoff}; seeds {list(c.seeds)}. The four "
        "arms of a seed start from the same weights (same SHA-256) and see the same data "
        "order."
    )


def _verdict_lines(found: Sequence[ClaimVerdict]) -> list[str]:
    return [f"**{v.claim}** Verdict: **{v.verdict}**. {v.explanation}" for v in found]


_METHOD = (
    "Tests, on the final test accuracy per seed (the seeds pair the arms): (a), (b), (d) the "
    "paired t-test on the per-seed differences with a 95 % interval; (c) the Pitman–Morgan "
    "test of equal variances for paired samples (the correlation of the sum and the "
    "difference of the two arms over seeds). As in the other experiments, a verdict HOLDS or "
    "DOES NOT HOLD only when p < 0.05; otherwise it is INCONCLUSIVE. With three seeds the "
    "t-test has 2 degrees of freedom and the variance test 1: only large, consistent effects "
    "can reach significance. Train accuracy (final network) is measured after the last epoch "
    "on the whole training set in eval mode; the running value is the mean over the last "
    "epoch's mini-batches while training (before that epoch's pruning step)."
)

_FILES = (
    "config.json and environment.json (the ablation), <data set>/config.json (its "
    "configuration), metrics.json (every seed and arm, summaries, statistics, verdicts), "
    "metrics.csv (per data set, seed, arm and epoch), final.csv (per data set, seed and arm), "
    "figures/*.png, <data set>/seed-<s>/<arm>/ (checkpoints, histories)."
)


def render_markdown(run: AblationRun, answers: dict[str, Answers]) -> str:
    """The report as Markdown, figures linked by relative path."""
    out = [
        f"# rmtprune ablation: regularisation × pruning ({run.preset} preset)",
        "Four arms per seed from the same initial weights: neither (no L1/L2, no pruning), "
        "L1+L2 only, MP pruning only, both. Questions: (a) does pruning raise accuracy when the "
        "baseline is unregularised, (b) when it is regularised, (c) does it lower the "
        "seed-to-seed spread in either case, (d) how close does MP pruning alone get to L1+L2 "
        f"alone. Command: `rmtprune reproduce ablation --preset {run.preset}`.",
        _METHOD,
    ]
    for d in run.datasets:
        a = answers[d.experiment]
        out += [f"## {d.experiment}", _setup(d), "### Verdicts"]
        out += _verdict_lines(run.verdicts[d.experiment])
        out += ["### Arms (final epoch, mean ± std over seeds)", _arm_table(a)]
        out += ["### Final test accuracy per seed", _seed_table(d), "### Figures"]
        for path in run.figures:
            if path.name.startswith(f"{d.experiment}_"):
                rel = path.relative_to(run.run_dir).as_posix()
                out.append(f"![{path.stem.replace('_', ' ')}]({rel})")
    out += ["## Files", _FILES]
    return "\n\n".join(out) + "\n"


# ------------------------------------------------------------------------ metrics
def _epoch_rows(d: DatasetResult) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for s in d.seeds:
        for arm in s.arms:
            r = arm.result
            zero = [r.initial.test_loss, r.initial.test_accuracy, r.initial.n_params]
            rows.append([d.experiment, s.seed, arm.arm, 0, None, None, None, *zero])
            for record in r.history:
                values = [getattr(record, k) for k in _HISTORY]
                rows.append([d.experiment, s.seed, arm.arm, record.epoch, *values])
    return rows


def _trained(a: AblationArm) -> list[Any]:
    return [a.train_accuracy, a.running_train_accuracy, a.n_params]


def _final_rows(d: DatasetResult) -> list[list[Any]]:
    return [
        [d.experiment, s.seed, a.arm, a.test_loss, a.test_accuracy, a.train_loss, *_trained(a)]
        for s in d.seeds
        for a in s.arms
    ]


def write_run(
    run_dir: Path, preset: str, datasets: tuple[DatasetResult, ...], wall_time: float
) -> AblationRun:
    """Answer the questions, write figures, metrics, CSV files and the report; the run."""
    answers = {d.experiment: answer(d) for d in datasets}
    found = {name: verdicts(a) for name, a in answers.items()}
    metrics = to_jsonable(
        {
            "experiment": "ablation",
            "preset": preset,
            "arms": [a.to_dict() for a in ARMS],
            "datasets": {
                d.experiment: {
                    "config": d.config.to_dict(),
                    "answers": answers[d.experiment].to_dict(),
                    "verdicts": [v.to_dict() for v in found[d.experiment]],
                    "seeds": [s.to_dict() for s in d.seeds],
                }
                for d in datasets
            },
        }
    )
    write_json(run_dir / "metrics.json", metrics, newline=True)
    head = ["experiment", "seed", "arm", "epoch", *_HISTORY]
    write_text(
        run_dir / "metrics.csv", csv_text(head, [r for d in datasets for r in _epoch_rows(d)])
    )
    head = ["experiment", "seed", "arm", "test_loss", "test_accuracy", "train_loss"]
    head += ["train_accuracy", "running_train_accuracy", "n_params"]
    write_text(run_dir / "final.csv", csv_text(head, [r for d in datasets for r in _final_rows(d)]))
    figures = tuple(make_figures(run_dir, preset, datasets))
    run = AblationRun(run_dir, preset, datasets, found, metrics, figures, wall_time)
    markdown = render_markdown(run, answers)
    write_text(run_dir / "report.md", markdown)
    title = f"rmtprune ablation ({preset})"
    write_text(run_dir / "report.html", markdown_to_html(markdown, run_dir, title))
    return run
