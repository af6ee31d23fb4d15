"""Benchmark of magnitude sparsity: where ``rmtprune.prune(model, criterion=Sparsity(...))``
spends its time, and the selection of the lowest scores against the sort it replaced.

Every figure is a ratio against a reference measured in the same run (this machine is shared
and noisy).  Run with::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sparsity.py           # 2 layers of 2048²
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sparsity.py --small   # 2 layers of 512²

Prints a Markdown table; docs/sparsity.md records a run.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch
from bench_prune import _median_time  # bench/ is the script's directory
from torch import nn

import rmtprune
from rmtprune.pruning.sparsity import without_lowest


def _sorted_out(flat: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep


def _spectra_share(model: nn.Module) -> tuple[float, float]:
    """Total time of one magnitude-sparsity prune and the share spent in eigenvalues."""
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(rmtprune.prune, model, criterion=rmtprune.Sparsity(0.5), progress=False)
    total = time.perf_counter() - start
    stats = pstats.Stats(profile)
    spectra = sum(
        row[3]  # cumulative time
        for (path, _, name), row in stats.stats.items()  # type: ignore[attr-defined]
        if name == "eigenvalues" and path.endswith("spectrum.py")
    )
    return total, spectra / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    size = 512 if args.small else 2048
    torch.manual_seed(0)
    flat = torch.randn(size * size, dtype=torch.float64).abs()
    k = flat.numel() // 2
    assert torch.equal(without_lowest(flat, k), _sorted_out(flat, k))
    select = _median_time(lambda: without_lowest(flat, k), 5)
    sort = _median_time(lambda: _sorted_out(flat, k), 5)
    model = nn.Sequential(nn.Linear(size, size), nn.ReLU(), nn.Linear(size, size))
    total, share = _spectra_share(model)
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print("| measurement | value |")
    print("|---|---|")
    print(f"| lowest half of {flat.numel():,} scores: selection (s) | {select:.3f} |")
    print(f"| same, stable argsort (s) | {sort:.3f} |")
    print(f"| sort / selection | {sort / select:.1f}× |")
    print(f"| prune(Sparsity(0.5)) of 2 layers {size}×{size} (s) | {total:.2f} |")
    print(f"| share of it computing spectra (unused by magnitude scores) | {100 * share:.0f} % |")


if __name__ == "__main__":
    main()
