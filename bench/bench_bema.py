"""Benchmark of the spectrum routes, of BEMA's fit and of its false-spike rate.

Prints three plain tables (numbers for docs/benchmarks_bema.md):

1. ``routes``: time of the eigenvalue computation by each route (NumPy/OpenBLAS
   Gram, PyTorch/MKL Gram — the route used by :func:`rmtprune.rmt.spectrum.eigenvalues`
   —, SciPy ``svdvals``, PyTorch ``svdvals``), median of repeats, float64.
2. ``fit``: ``BEMA().fit`` on a 3000 × 3000 float32 matrix against the eigenvalue
   computation alone, the fitting step alone (everything after the eigenvalues),
   and a reference fitting step that inverts the MP CDF point by point with
   ``scipy.optimize.brentq`` over ``scipy.integrate.quad`` of the density (how the
   authors' notebook does it), all in the same run.
3. ``spikes``: fraction of pure-noise matrices with one or more false spikes at
   ``beta = 0.1``, with its exact (Clopper–Pearson) 95 % interval, next to the same
   rate with the true ``sigma2`` plugged into the edge (isolates the Tracy–Widom
   finite-size effect from the bias of the estimated ``sigma2``).

Usage::

    .venv/bin/python bench/bench_bema.py [--section all|routes|fit|spikes] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy
import scipy.linalg
import torch
from scipy import integrate, optimize, stats

from rmtprune.rmt import BEMA
from rmtprune.rmt.goodness_of_fit import gaussian_eigenvalues
from rmtprune.rmt.spectrum import eigenvalues


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------- routes


def gram_numpy(A: np.ndarray) -> np.ndarray:
    G = A.T @ A if A.shape[0] >= A.shape[1] else A @ A.T
    return np.linalg.eigvalsh(G)


def gram_torch(A: np.ndarray) -> np.ndarray:
    T = torch.from_numpy(A)
    G = T.T @ T if A.shape[0] >= A.shape[1] else T @ T.T
    return torch.linalg.eigvalsh(G).numpy()


def svd_scipy(A: np.ndarray) -> np.ndarray:
    return scipy.linalg.svdvals(A, check_finite=False)


def svd_torch(A: np.ndarray) -> np.ndarray:
    return torch.linalg.svdvals(torch.from_numpy(A)).numpy()


def bench_routes(repeats: int) -> None:
    routes = [
        ("numpy Gram", gram_numpy),
        ("torch Gram*", gram_torch),
        ("scipy svdvals", svd_scipy),
        ("torch svdvals", svd_torch),
    ]
    shapes = [(300, 300), (1000, 1000), (784, 3000), (3000, 784), (3000, 3000)]
    print("\n## Eigenvalue routes (float64, seconds, median of", repeats, "repeats)")
    print("| shape | " + " | ".join(name for name, _ in routes) + " | Gram rel. err. at λ_min |")
    print("|---|" + "---|" * (len(routes) + 1))
    rng = np.random.default_rng(0)
    for shape in shapes:
        A = rng.standard_normal(shape)
        cells = []
        for _name, fn in routes:
            reps = 1 if (fn is svd_scipy and A.size > 4e6) else repeats
            cells.append(f"{median_time(lambda fn=fn, A=A: fn(A), reps):.4f}")
        s2 = np.sort(svd_torch(A) ** 2)
        g = np.sort(gram_torch(A))
        err = abs(g[0] - s2[0]) / s2[0]
        print(f"| {shape[0]}×{shape[1]} | " + " | ".join(cells) + f" | {err:.1e} |")
    print("(* the route used by rmtprune.rmt.spectrum.eigenvalues)")


# ----------------------------------------------------------------------------- fit


def reference_fit(lam: np.ndarray, shape: tuple[int, int], alpha: float = 0.25) -> float:
    """The notebook's way: each quantile by brentq on a quad-integrated MP density."""
    p, N = min(shape), max(shape)
    ratio = p / N
    lo, hi = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2

    def pdf(x: float) -> float:
        return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * ratio * x)

    def cdf(x: float) -> float:
        return integrate.quad(pdf, lo, x)[0]

    start, stop = math.floor(alpha * p), math.floor((1 - alpha) * p)
    q = np.array(
        [
            optimize.brentq(lambda x, lev=k / p: cdf(x) - lev, lo, hi, xtol=1e-14, rtol=1e-14)
            for k in range(start, stop)
        ]
    )
    return float(q @ lam[start:stop] / (q @ q))


def bench_fit(repeats: int) -> None:
    shape = (3000, 3000)
    W = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    BEMA().fit(np.random.default_rng(2).standard_normal((50, 50)))  # warm the TW cache
    eig_times, fit_times = [], []
    for _ in range(repeats):  # interleaved, so that load changes hit both alike
        eig_times.append(median_time(lambda: eigenvalues(W), 1))
        fit_times.append(median_time(lambda: BEMA().fit(W), 1))
    t_eig, t_fit = statistics.median(eig_times), statistics.median(fit_times)
    lam = eigenvalues(W)
    t_step = median_time(lambda: BEMA().fit_eigenvalues(lam, shape), 50)
    t0 = time.perf_counter()
    sigma2_ref = reference_fit(lam, shape)
    t_ref = time.perf_counter() - t0
    sigma2 = BEMA().fit_eigenvalues(lam, shape).sigma2_
    print(f"\n## BEMA on a {shape[0]}×{shape[1]} float32 matrix (median of {repeats})")
    print("| quantity | value |")
    print("|---|---|")
    print(f"| eigenvalues(W) alone | {t_eig:.3f} s |")
    print(f"| BEMA().fit(W) total | {t_fit:.3f} s |")
    print(f"| total / eigenvalues | {t_fit / t_eig:.3f} |")
    print(f"| fitting step (fit_eigenvalues, p = 3000) | {1e3 * t_step:.2f} ms |")
    print(f"| reference step (brentq over quad, 1500 quantiles) | {t_ref:.2f} s |")
    print(f"| speedup of the fitting step | {t_ref / t_step:.0f}× |")
    print(f"| sigma2 ours / reference − 1 | {sigma2 / sigma2_ref - 1:.1e} |")


# ----------------------------------------------------------------------------- spikes


def oracle_edge(shape: tuple[int, int], t: float) -> float:
    p, N = min(shape), max(shape)
    g = p / N
    return (1 + g**0.5) ** 2 + t * N ** (-2 / 3) * g ** (-1 / 6) * (1 + g**0.5) ** (4 / 3)


def bench_spikes(trials: int) -> None:
    print(f"\n## False spikes on pure noise, beta = 0.1 ({trials} trials per row)")
    print("| shape | draws | BEMA rate [95 % CI] | true-σ² rate [95 % CI] | mean σ̂²/σ² − 1 |")
    print("|---|---|---|---|---|")
    shapes = [(200, 800), (300, 600), (500, 500), (784, 3000), (1000, 1000)]
    total_hits, total = 0, 0
    for shape in shapes:
        for method in ("dense", "bidiagonal"):
            if method == "dense" and min(shape) > 500:
                continue
            rng = np.random.default_rng(sum(shape) + len(method))
            hits = oracle = 0
            bias = []
            for _ in range(trials):
                lam = gaussian_eigenvalues(shape, rng, method=method)  # type: ignore[arg-type]
                bema = BEMA(beta=0.1).fit_eigenvalues(lam, shape)
                hits += bema.n_spikes_ > 0
                oracle += lam[-1] > oracle_edge(shape, bema.tw_quantile_)
                bias.append(bema.sigma2_ - 1.0)
            if method == "dense":
                total_hits += hits
                total += trials

            def fmt(k: int) -> str:
                ci = stats.binomtest(k, trials).proportion_ci(method="exact")
                return f"{k / trials:.3f} [{ci.low:.3f}, {ci.high:.3f}]"

            print(
                f"| {shape[0]}×{shape[1]} | {method} | {fmt(hits)} | {fmt(oracle)} "
                f"| {np.mean(bias):+.4f} |"
            )
    ci = stats.binomtest(total_hits, total).proportion_ci(method="exact")
    print(
        f"Pooled dense rows: {total_hits}/{total} = {total_hits / total:.3f} "
        f"[{ci.low:.3f}, {ci.high:.3f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", default="all", choices=["all", "routes", "fit", "spikes"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    print(
        f"numpy {np.__version__}, scipy {scipy.__version__}, torch {torch.__version__}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    )
    if args.section in ("all", "routes"):
        bench_routes(args.repeats)
    if args.section in ("all", "fit"):
        bench_fit(args.repeats)
    if args.section in ("all", "spikes"):
        bench_spikes(args.trials)


if __name__ == "__main__":
    main()
