"""Benchmark of the pruning engine (issue: analyze / prune / forward latency).

Every figure is a ratio against a reference measured in the same run, because
this machine is shared and noisy.  Run with::

    .venv/bin/python bench/bench_prune.py            # full size (784-3000-3000-3000-10)
    .venv/bin/python bench/bench_prune.py --small    # a quick check

Prints a Markdown table; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

import rmtprune
from rmtprune.rmt.spectrum import eigenvalues


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model(widths: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layer = nn.Linear(a, b)
        with torch.no_grad():
            layer.weight.normal_(0.0, a**-0.5)
        layers += [layer, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _run(model: nn.Module, x: torch.Tensor, reps: int) -> None:
    for _ in range(reps):
        model(x)


WEIGHTWATCHER_SCRIPT = """
import json, sys, time, torch
from torch import nn
import weightwatcher as ww
widths = json.loads(sys.argv[1])
torch.manual_seed(0)
layers = []
for a, b in zip(widths, widths[1:]):
    layer = nn.Linear(a, b)
    with torch.no_grad():
        layer.weight.normal_(0.0, a ** -0.5)
    layers += [layer, nn.ReLU()]
model = nn.Sequential(*layers[:-1])
start = time.perf_counter()
ww.WeightWatcher(model=model).analyze(mp_fit=True)
print(json.dumps({"seconds": time.perf_counter() - start, "version": ww.__version__}))
"""


def _weightwatcher_seconds(python: str, widths: list[int]) -> tuple[float, str]:
    """Time WeightWatcher's analyze(mp_fit=True) on the same model, in its own interpreter."""
    out = (
        subprocess.run(
            [python, "-c", WEIGHTWATCHER_SCRIPT, json.dumps(widths)],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    result = json.loads(out)
    return float(result["seconds"]), str(result["version"])


def _macs(model: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="784-1000-1000-1000-10 instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=300, help="kept rank for the latency test")
    parser.add_argument(
        "--weightwatcher",
        metavar="PYTHON",
        default=None,
        help="an interpreter with weightwatcher installed: time its analyze(mp_fit=True) too",
    )
    args = parser.parse_args()
    width = 1000 if args.small else 3000
    widths = [784, width, width, width, 10]
    model = _model(widths, seed=0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {widths}\n")
    print("| measurement | seconds | ratio |")
    print("|---|---|---|")

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    t_eig = _median_time(lambda: [eigenvalues(m.weight) for m in linears], args.repeats)
    t_analyze = _median_time(lambda: rmtprune.analyze(model), args.repeats)
    print(f"| bare eigenvalues, all layers | {t_eig:.3f} | 1.00 |")
    print(f"| analyze(model) | {t_analyze:.3f} | {t_analyze / t_eig:.2f} × eigenvalues |")
    if args.weightwatcher:
        t_ww, version = _weightwatcher_seconds(args.weightwatcher, widths)
        print(
            f"| WeightWatcher {version} analyze(mp_fit=True) | {t_ww:.3f} | "
            f"{t_ww / t_eig:.2f} × eigenvalues, {t_ww / t_analyze:.2f} × rmtprune |"
        )

    t_prune = _median_time(
        lambda: rmtprune.prune(
            model, criterion=rmtprune.MPCriterion(bulk_keep=0.0, min_rank=args.rank)
        ),
        args.repeats,
    )
    print(
        f"| prune(criterion=MPCriterion(bulk_keep=0, min_rank={args.rank})) | {t_prune:.3f} | "
        f"{t_prune / t_eig:.2f} × eigenvalues |"
    )

    pruned, report = rmtprune.prune(
        model, criterion=rmtprune.MPCriterion(bulk_keep=0.0, min_rank=args.rank)
    )
    macs_dense = _macs(model)
    macs_pruned = _macs(pruned)
    model.eval()
    pruned.eval()
    for batch in (128, 1):
        x = torch.randn(batch, 784)
        reps = 20 if batch == 128 else 200
        with torch.inference_mode():
            for _ in range(3):
                model(x)
                pruned(x)
            t_dense = _median_time(partial(_run, model, x, reps), args.repeats) / reps
            t_pruned = _median_time(partial(_run, pruned, x, reps), args.repeats) / reps
        print(f"| forward batch {batch}, dense | {t_dense * 1e3:.3f} ms | 1.00 |")
        print(
            f"| forward batch {batch}, pruned (rank {args.rank}) | {t_pruned * 1e3:.3f} ms | "
            f"speedup {t_dense / t_pruned:.2f}× (MAC ratio {macs_dense / macs_pruned:.2f}×) |"
        )
    print(
        f"\nparameters {report.params_before:,} → {report.params_after:,} "
        f"({100 * report.reduction:.1f} % removed)"
    )


if __name__ == "__main__":
    main()
