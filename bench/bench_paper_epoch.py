"""Cost of one training epoch of each experiment's dense network at the ``paper`` preset.

A whole paper-scale seed takes hours here, so docs/experiments.md gives each
experiment's duration as (measured dense epoch) × (the ratio, measured on the
fc-fashion paper run, of a whole seed to one dense epoch).  This script measures
the first factor: one full epoch (training on all images, then the test-set
evaluation) of the normal arm's network at the paper preset, seed 0.  Run with::

    RMTPRUNE_DATA=../shared/data OMP_NUM_THREADS=2 \\
        .venv/bin/python bench/bench_paper_epoch.py [--ids fc-fashion cnn-fashion] [--threads 2]

MNIST and Fashion-MNIST share shapes and sizes, so fc-mnist costs what
fc-fashion costs and cnn-mnist what cnn-fashion costs.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch

import rmtprune
from rmtprune.paper.experiments import get_config
from rmtprune.paper.experiments.classification.baselines import count_parameters
from rmtprune.paper.training import Trainer


def _time_epoch(experiment: str, threads: int, data_dir: str | None) -> tuple[int, int, float]:
    config = get_config(experiment, "paper")
    train, test = config.load_data(data_dir)
    model = config.build_model(0)
    train_config = dataclasses.replace(config.train_config(0, epochs=1), num_threads=threads)
    trainer = Trainer(model, train, test, train_config, progress=False)
    start = time.perf_counter()
    trainer.fit()
    return count_parameters(model), len(train), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", nargs="+", default=["fc-fashion", "fc-cifar10", "cnn-fashion"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    print(
        f"rmtprune {rmtprune.__version__}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s)\n"
    )
    print("| experiment | parameters | training images | one dense epoch (s) |")
    print("|---|---|---|---|")
    for experiment in args.ids:
        n_params, n_train, seconds = _time_epoch(experiment, args.threads, args.data_dir)
        print(f"| {experiment} | {n_params:,} | {n_train:,} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
