"""Render the archived classification reports under docs/results again from their metrics.

Usage::

    PYTHONPATH=src python scripts/rerender_archive.py [--figures] [DIR ...]

Each directory (default: every docs/results/<id> and docs/results/paper/<id> holding a
classification run) is rendered by :func:`rmtprune.paper.experiments.render_run` from its
``config.json`` and ``metrics.json``: metrics.json, metrics.csv, after_training.csv and
report.md are rewritten; the figures are kept (``--figures`` draws the accuracy and
parameter curves again; the spectra of archived runs were not stored).  Afterwards
``git diff --stat docs/results`` shows what changed (nothing, when the reporting code
renders the archive byte for byte).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rmtprune.paper.experiments import list_experiments
from rmtprune.paper.experiments.runner import render_run

ROOT = Path(__file__).resolve().parents[1] / "docs" / "results"


def archived_runs() -> list[Path]:
    """The classification run directories under docs/results."""
    found = []
    for folder in sorted([*ROOT.iterdir(), *(ROOT / "paper").iterdir()]):
        config = folder / "config.json"
        if config.is_file():
            experiment = json.loads(config.read_text()).get("config", {}).get("experiment")
            if experiment in list_experiments():
                found.append(folder)
    return found


def main() -> None:
    """Parse the arguments and render each directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="run directories (default: archive)")
    parser.add_argument("--figures", action="store_true", help="draw the curve figures again")
    args = parser.parse_args()
    for folder in args.dirs or archived_runs():
        render_run(folder, figures=args.figures, html=None)
        print(f"rendered {folder}")


if __name__ == "__main__":
    main()
