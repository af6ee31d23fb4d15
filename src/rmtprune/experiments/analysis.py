"""The analysis experiments behind ``rmtprune reproduce``: theory, init, regression, landscape.

Each is a module with ``run(preset, *, seeds, out, data_dir, progress)`` that writes
its ``config.json``, ``metrics.json``, figures and a ``report_section.md``.  This
module gives them the same run directory as the classification experiments: an
``environment.json``, and a ``report.md`` plus a self-contained ``report.html``
around the section.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rmtprune._validation import param_error
from rmtprune.experiments.report import figure_html, html_page
from rmtprune.experiments.runner import environment

__all__ = [
    "ANALYSIS_EXPERIMENTS",
    "AnalysisRun",
    "all_experiments",
    "markdown_to_html",
    "reproduce_analysis",
]

ANALYSIS_EXPERIMENTS: Mapping[str, str] = MappingProxyType(
    {
        "theory": "Section 4 / B.1: W = R + S as N grows, and the bound of section 7",
        "init": "Appendix E.2: normal vs pruned under four initialisations (Fashion-MNIST, FC)",
        "regression": "Appendix E.3: MLP regression of a noisy sum of sines, normal vs pruned",
        "landscape": "Section 3.2.1: seed spread, loss barrier and loss surface, normal vs pruned",
    }
)


def all_experiments() -> dict[str, str]:
    """Every id ``rmtprune reproduce`` accepts, with a one-line description."""
    from rmtprune.experiments.registry import EXPERIMENTS

    titles = {key: f"SPEC {e.section}: {e.title}" for key, e in EXPERIMENTS.items()}
    return {**titles, **ANALYSIS_EXPERIMENTS}


@dataclass(frozen=True)
class AnalysisRun:
    """Where an analysis experiment wrote its files, and what it returned."""

    experiment: str
    preset: str
    run_dir: Path
    result: Any
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (the experiment's own result under ``result``)."""
        return {
            "experiment": self.experiment,
            "preset": self.preset,
            "run_dir": str(self.run_dir),
            "result": self.result.to_dict(),
            "wall_time": self.wall_time,
        }


def _runner(experiment_id: str) -> Callable[..., Any]:
    import importlib

    module = {"theory": "theory", "init": "init_compare"}.get(experiment_id, experiment_id)
    run: Callable[..., Any] = importlib.import_module(f"rmtprune.experiments.{module}").run
    return run


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    escaped = re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
    return re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', escaped)


def _figure(base: Path, caption: str, name: str) -> str:
    path = base / name
    if not path.is_file():
        return f"<p>(missing figure {html.escape(name)})</p>"
    return figure_html(path, caption)


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    """A self-contained page from the Markdown the reports use.

    Handles headings, paragraphs, bullet lists, pipe tables and images (embedded
    as base64 PNG data URIs, read relative to ``base``).
    """
    body: list[str] = []
    blocks = re.split(r"\n\s*\n", markdown.strip())
    for block in blocks:
        lines = block.strip().splitlines()
        first = lines[0]
        if first.startswith("#"):
            level = len(first) - len(first.lstrip("#"))
            body.append(f"<h{level}>{_inline(first[level:].strip())}</h{level}>")
            rest = "\n".join(lines[1:]).strip()
            if rest:
                body.append(f"<p>{_inline(rest)}</p>")
        elif first.startswith("|") and len(lines) > 1:
            cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in cells[2:]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif all(ln.lstrip().startswith(("- ", "* ")) for ln in lines):
            items = "".join(f"<li>{_inline(ln.lstrip()[2:])}</li>" for ln in lines)
            body.append(f"<ul>{items}</ul>")
        else:
            for ln in lines:
                images = re.findall(r"!\[([^\]]*)\]\(([^)\s]+)\)", ln)
                if images and not re.sub(r"!\[[^\]]*\]\([^)\s]+\)", "", ln).strip():
                    body += [_figure(base, caption, name) for caption, name in images]
                else:
                    body.append(f"<p>{_inline(ln)}</p>")
    return html_page(title, body)


def reproduce_analysis(
    experiment_id: str,
    *,
    preset: str = "small",
    seeds: int | None = None,
    out: str | os.PathLike[str] | None = None,
    data_dir: Any = None,
    download: bool = False,
    progress: bool = True,
) -> AnalysisRun:
    """Run one analysis experiment into its own run directory and write its report.

    Parameters
    ----------
    experiment_id : {"theory", "init", "regression", "landscape"}
    preset : {"smoke", "small", "paper"}
    seeds : int, optional
        Number of seeds (the preset's default otherwise).
    out : path, optional
        Run directory; default ``runs/<experiment>-<preset>-<timestamp>``.
    """
    if experiment_id not in ANALYSIS_EXPERIMENTS:
        raise param_error(
            "experiment_id",
            "reproduce_analysis",
            f"one of {list(ANALYSIS_EXPERIMENTS)}",
            experiment_id,
        )
    if preset not in ("smoke", "small", "paper"):
        raise param_error("preset", "reproduce_analysis", "one of smoke, small, paper", preset)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out) if out is not None else Path("runs") / f"{experiment_id}-{preset}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    kwargs: dict[str, Any] = {"seeds": seeds, "out": run_dir, "progress": progress}
    if experiment_id != "regression":
        kwargs["data_dir"] = data_dir
    if experiment_id == "init":
        kwargs["download"] = download
    result = _runner(experiment_id)(preset, **kwargs)
    wall = time.perf_counter() - start
    (run_dir / "environment.json").write_text(
        json.dumps(environment(), indent=2) + "\n", encoding="utf-8"
    )
    section = (run_dir / "report_section.md").read_text(encoding="utf-8")
    title = f"rmtprune reproduction: {experiment_id} ({preset} preset)"
    markdown = (
        f"# {title}\n\n{ANALYSIS_EXPERIMENTS[experiment_id]}. Wall time {wall:.0f} s. "
        f"Command: `rmtprune reproduce {experiment_id} --preset {preset}"
        f"{'' if seeds is None else f' --seeds {seeds}'}`.\n\n{section}"
    )
    (run_dir / "report.md").write_text(markdown, encoding="utf-8")
    (run_dir / "report.html").write_text(
        markdown_to_html(markdown, run_dir, title), encoding="utf-8"
    )
    return AnalysisRun(experiment_id, preset, run_dir, result, wall)
