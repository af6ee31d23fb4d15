"""The demonstration behind ``rmtprune demo``: normal vs pruned on Fashion-MNIST, in minutes.

A fully connected ``[784, 1000, 1000, 10]`` network is trained on a subset of
Fashion-MNIST for a few epochs over several seeds, once normally and once with
pruning every epoch (linear schedule), from identical initial weights.  The
trained normal network is also pruned after training (MP one-shot, global
magnitude and SVD-energy at the pruned arm's size, each fine-tuned for one
epoch).  The comparison table and the parameter reduction are printed, and the
run directory holds the metrics, the figures and ``report.md`` / ``report.html``.

Example
-------
>>> from rmtprune.paper.experiments import run_demo
>>> result = run_demo(seeds=2)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from rmtprune.paper.data import DATA_ENV, DatasetNotFoundError
from rmtprune.paper.experiments.classification.run import run_experiment
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.results import RunResult
from rmtprune.paper.experiments.seeds import seed_tuple

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_CONFIG = ExperimentConfig(
    experiment="demo",
    preset="demo",
    dataset="fashion-mnist",
    hidden=(1000, 1000),
    epochs=10,
    train_subset=30000,
    seeds=(0, 1, 2),
    finetune_epochs=1,
)
"""Configuration of the demo (three seeds; ``run_demo(seeds=K)`` changes them)."""


def run_demo(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    seeds: int | str | Sequence[int] = 3,
    progress: bool = True,
    device: str = "cpu",
    download: bool = False,
    stream: TextIO | None = None,
) -> RunResult:
    """Run the demo, print the comparison and return the run's result.

    Parameters
    ----------
    data_dir : path or None
        Data root holding ``FashionMNIST/raw`` (default ``$RMTPRUNE_DATA``, else
        the user cache).
    out : path or None
        Run directory (default ``runs/demo-demo-<timestamp>``).
    seeds : int, str or sequence of int
        Number of seeds (0, 1, …) or the seeds themselves (as in
        :func:`rmtprune.paper.experiments.reproduce`).
    progress : bool
        Progress bars and per-epoch log lines on stderr.
    download : bool
        Fetch Fashion-MNIST from the official sources if missing.
    device : str
        Torch device of training (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).
    stream : text stream or None
        Where the table and the summary are printed (default stdout).

    Returns
    -------
    RunResult

    Raises
    ------
    rmtprune.paper.data.DatasetNotFoundError
        When Fashion-MNIST is missing and ``download`` is false; the message says
        where the files must be and the three ways to provide them.
    """
    config = DEMO_CONFIG.replace(seeds=seed_tuple(seeds, "run_demo"), device=device)
    try:
        result = run_experiment(
            config, out=out, data_dir=data_dir, download=download, progress=progress
        )
    except DatasetNotFoundError as exc:
        raise DatasetNotFoundError(
            f"{exc}\n\nThe demo needs Fashion-MNIST. Either\n"
            f"  - set {DATA_ENV}=/path/to/data-root (the folder holding FashionMNIST/raw),\n"
            "  - or run `rmtprune demo --data-dir /path/to/data-root`,\n"
            "  - or run `rmtprune demo --download` to fetch it from the official sources "
            "(about 30 MB, checked by SHA-256)."
        ) from None
    stream = stream if stream is not None else sys.stdout
    normal, pruned = result.summary[0], result.summary[1]
    print(
        f"\nFashion-MNIST, fully connected {list(config.widths)}, {config.epochs} epochs on "
        f"{config.train_subset} training images, {len(config.seeds)} seed(s):\n",
        file=stream,
    )
    print(result.table(), file=stream)
    print(
        f"\nPruning during training removed {100 * pruned.reduction:.1f} % of the parameters "
        f"({normal.params_mean:,.0f} → {pruned.params_mean:,.0f}); final test accuracy "
        f"{100 * pruned.accuracy_mean:.2f} % vs {100 * normal.accuracy_mean:.2f} % for the "
        f"normal network ({100 * (pruned.accuracy_mean - normal.accuracy_mean):+.2f} points).",
        file=stream,
    )
    for claim in result.claims[:2]:
        print(f"Claim: {claim.claim}\n  → {claim.verdict}", file=stream)
    print(f"\nReport: {result.run_dir / 'report.md'} (and report.html)", file=stream)
    return result
