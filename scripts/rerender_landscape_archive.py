"""Render the archived ``landscape`` report under docs/results again from its metrics.json.

Usage::

    PYTHONPATH=src python scripts/rerender_landscape_archive.py [DIR]

The archived ``metrics.json`` holds every measured unit of the run (the final numbers of
each solution, the loss along each line, the loss on each lattice), so the current code
can write the report again without training: the units are stored in a temporary run
directory of the same configuration, :func:`rmtprune.paper.experiments.analysis.landscape.run`
resumes
it (computing nothing: every unit is there; it loads the Fashion-MNIST evaluation subset
from ``$RMTPRUNE_DATA``) and its files are copied back.  The original wall time is kept
in ``metrics.json`` and in the header of ``report.md``.  Afterwards ``git diff
docs/results/landscape`` shows what the current format changed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rmtprune.paper.experiments.analysis import landscape
from rmtprune.paper.experiments.formats import write_json, write_text
from rmtprune.paper.experiments.rundir import UnitStore, normalize, prepare_analysis_dir

ROOT = Path(__file__).resolve().parents[1] / "docs" / "results" / "landscape"


def _store_units(run_dir: Path, metrics: dict[str, Any]) -> None:
    store = UnitStore(run_dir)
    names = {
        "solutions": lambda u: f"solution-{u['arm']}-{u['seed']}",
        "lines": lambda u: f"line-{u['arm']}-{u['seed_a']}-{u['seed_b']}",
        "surfaces": lambda u: f"surface-{u['arm']}-{u['seed']}",
    }
    for kind, name in names.items():
        for unit in metrics[kind]:
            store.get(name(unit), lambda unit=unit: unit, dict, dict)


def rerender(folder: Path) -> None:
    """Write ``folder``'s metrics, tables, figures and report again from its metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    archived = json.loads((folder / "config.json").read_text())
    values = normalize(archived["config"])
    values["widths"] = tuple(values["widths"])
    config = landscape.LandscapeConfig(**values)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        prepare_analysis_dir(run_dir, "landscape", archived["preset"], config.to_dict())
        _store_units(run_dir, metrics)
        result = landscape.run(archived["preset"], out=run_dir, config=config, progress=False)
        for name in result.files:
            shutil.copyfile(run_dir / name, folder / name)
    write_json(
        folder / "metrics.json",
        {**result.to_dict(), "wall_time": metrics["wall_time"]},
        indent=2,
        newline=True,
    )
    header = (folder / "report.md").read_text().split("## landscape", 1)[0]
    section = (folder / "report_section.md").read_text()
    write_text(folder / "report.md", header + section)


def main() -> None:
    """Parse the arguments and render the directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT, help="archived run")
    rerender(parser.parse_args().folder)
    print("rendered", parser.parse_args().folder)


if __name__ == "__main__":
    main()
