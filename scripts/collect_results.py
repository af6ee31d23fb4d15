"""Print the Markdown results tables of README.md and docs/results.md from finished runs.

Reads ``runs/small/<experiment>/metrics.json`` (written by ``rmtprune reproduce``), so every
number in those tables is transcribed by this script, not by hand::

    .venv/bin/python scripts/collect_results.py [RUNS_DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

CLASSIFICATION = ("fc-mnist", "fc-fashion", "cnn-mnist", "cnn-fashion", "fc-cifar10")


def _mean_std(values: list[float], signed: bool = False) -> str:
    """``mean ± std`` in percent points; the mean alone for a single seed."""
    mean = f"{100 * statistics.mean(values):{'+' if signed else ''}.2f}"
    if len(values) < 2:
        return mean
    return f"{mean} ± {100 * statistics.stdev(values):.2f}"


def _acc(values: list[float]) -> str:
    return f"{_mean_std(values)} %"


def classification_table(root: Path) -> str:
    lines = [
        "| experiment | parameters dense → pruned | reduction | normal | pruned "
        "| pruned − normal (paired) | seeds | verdicts (claim 1 / claim 2) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    for name in CLASSIFICATION:
        path = root / name / "metrics.json"
        if not path.is_file():
            missing.append(name)
            continue
        data = json.loads(path.read_text())
        rows = {r["method"] + ":" + r["stage"]: r for r in data["summary"]}
        normal, pruned = rows["normal:final"], rows["pruned:final"]
        diffs = [p - n for p, n in zip(pruned["accuracies"], normal["accuracies"], strict=True)]
        verdicts = " / ".join(c["verdict"] for c in data["claims"][:2])
        lines.append(
            f"| {name} | {normal['params_mean']:,.0f} → {pruned['params_mean']:,.0f} | "
            f"{100 * pruned['reduction']:.1f} % | {_acc(normal['accuracies'])} | "
            f"{_acc(pruned['accuracies'])} | {_mean_std(diffs, signed=True)} points | "
            f"{len(diffs)} | {verdicts} |"
        )
    if missing:
        lines.append(f"\nNot run in {root}: {', '.join(missing)}.")
    return "\n".join(lines)


def baselines_table(root: Path, name: str) -> str:
    data = json.loads((root / name / "metrics.json").read_text())
    lines = ["| method | parameters (mean) | reduction | test accuracy |", "|---|---|---|---|"]
    for r in data["summary"]:
        lines.append(
            f"| {r['label']} | {r['params_mean']:,.0f} | {100 * r['reduction']:.1f} % | "
            f"{_acc(r['accuracies'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/small")
    print(classification_table(root))
    for name in CLASSIFICATION:
        if (root / name / "metrics.json").is_file():
            print(f"\n### {name}\n")
            print(baselines_table(root, name))


if __name__ == "__main__":
    main()
