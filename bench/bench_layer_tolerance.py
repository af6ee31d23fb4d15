"""Which spectral statistic predicts a layer's tolerance to cutting? (all-MiniLM-L6-v2)

Each of the encoder's 36 Linear layers is cut alone, the rest of the model untouched, to the rank
that removes ``--cut`` of its own parameters (whitened SVD from calibration sentences, and plain
SVD), and the cut's *sensitivity* is the relative change of ``last_hidden_state`` on held-out
sentences (``rmtprune.pruning.outputs.OutputProbe``).  Each layer's spectrum gives the
statistics an allocation rule could use:

- ``bulk_share``: fraction of eigenvalues inside the MP bulk (BEMA's ``λ+``);
- ``spikes``: eigenvalues above the edge (BEMA's count);
- ``spike_energy``: share of ``Σλ`` above the edge;
- ``fit_D``: the MP fit statistic (``fit_error``);
- ``edge_margin``: ``λ_max / λ+`` (how far the largest spike stands out);
- ``alpha``: Hill estimate of the power-law tail exponent of the eigenvalue density (top 10 %,
  the statistic of AlphaPruning's rule);
- ``stable_rank``: ``Σλ / λ_max``;
- ``tail_energy``: share of ``Σλ`` beyond the cut's rank (what plain SVD discards: the
  non-RMT baseline every rule should beat).

Prints the Spearman rank correlation of each statistic with the sensitivities over the 36 layers
(with its two-sided p-value) and the mean correlation within each kind of layer (the six
queries, the six keys, ...: what is left once the kinds are told apart), and with ``--out``
writes every layer's row as JSON.  Run::

    PYTHONPATH=src OMP_NUM_THREADS=2 python bench/bench_layer_tolerance.py --threads 2 \\
        --out bench_layer_tolerance.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
from scipy import stats
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_pretrained import prepare, tokenize, write_rows

import rmtprune
from rmtprune.pruning.outputs import OutputProbe
from rmtprune.pruning.whitening import factorize_at

STATISTICS = (
    "bulk_share",
    "spikes",
    "spike_energy",
    "fit_D",
    "edge_margin",
    "alpha",
    "stable_rank",
    "tail_energy",
)


def hill_alpha(lam: np.ndarray, share: float = 0.1) -> float:
    """Hill estimate of the tail exponent of the density of ``lam`` from its top ``share``."""
    top = np.sort(lam)[::-1]
    k = max(5, int(share * len(top)))
    return float(1.0 + k / np.sum(np.log(top[:k] / top[k])))


def cut_rank(shape: tuple[int, int], cut: float) -> int:
    """The rank whose two factors hold ``(1 - cut)`` of the dense layer's weights."""
    m, n = shape
    return max(1, math.floor((1.0 - cut) * m * n / (m + n)))


def layer_statistics(row: rmtprune.LayerAnalysis, rank: int) -> dict[str, float]:
    lam = np.sort(np.asarray(row.eigenvalues, dtype=np.float64))[::-1]
    edge = row.fit.lambda_plus
    total = float(lam.sum())
    return {
        "bulk_share": float(np.mean(lam <= edge)),
        "spikes": float(row.fit.n_spikes or 0),
        "spike_energy": float(lam[lam > edge].sum() / total),
        "fit_D": float(row.fit.fit_error),
        "edge_margin": float(lam[0] / edge),
        "alpha": hill_alpha(lam),
        "stable_rank": total / float(lam[0]),
        "tail_energy": float(lam[rank:].sum() / total),
    }


def kind(layer: str) -> str:
    """``encoder.layer.3.attention.self.query`` → ``attention.self.query``."""
    return layer.split(".", 3)[3]


def correlations(rows: list[dict[str, Any]]) -> str:
    """Spearman ρ of each statistic with the sensitivities: over all layers, and the mean of
    the ρ within each kind of layer (query, key, ..., output.dense: 6 layers each), which
    removes what only tells the kinds apart."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        kinds.setdefault(kind(r["layer"]), []).append(r)
    lines = [
        "| statistic | ρ, whitened cut | p | ρ, plain cut | p | mean ρ within a kind, whitened |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in STATISTICS:
        cells = []
        for change in ("change_whitened", "change_plain"):
            rho, p = stats.spearmanr([r[name] for r in rows], [r[change] for r in rows])
            cells += [f"{rho:+.2f}", f"{p:.2g}"]
        within = [
            stats.spearmanr([r[name] for r in rs], [r["change_whitened"] for r in rs])[0]
            for rs in kinds.values()
        ]
        cells.append(f"{np.nanmean(within):+.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    by_kind = [f"{k}: {np.mean([r['change_whitened'] for r in rs]):.3f}" for k, rs in kinds.items()]
    return "\n".join(lines) + "\n\nmean change by kind (whitened): " + "; ".join(by_kind)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calibration", type=int, default=96, help="calibration sentences")
    p.add_argument("--test", type=int, default=160, help="held-out test sentences")
    p.add_argument("--cut", type=float, default=0.25, help="share of each layer's weights cut")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.time()
    model, tokenizer, sentences = prepare(args.threads)
    calib = tokenize(tokenizer, sentences[: args.calibration], 16)[0::2]  # the fitted half
    probe = OutputProbe(model, tokenize(tokenizer, sentences[-args.test :], 32))
    report = rmtprune.analyze(model, select=rmtprune.Select(include="encoder.*"))
    rows: list[dict[str, Any]] = []
    for row in report:
        module = model.get_submodule(row.name)
        if not isinstance(module, nn.Linear) or row.eigenvalues is None:
            continue
        rank = cut_rank(row.shape, args.cut)
        entry: dict[str, Any] = {"layer": row.name, "shape": list(row.shape), "rank": rank}
        entry.update(layer_statistics(row, rank))
        for whiten in (True, False):
            pruned = factorize_at(model, {row.name: rank}, calib, whiten=whiten)
            entry["change_whitened" if whiten else "change_plain"] = probe.change(pruned)
        rows.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
    print(f"{len(rows)} layers, each cut by {100 * args.cut:g} % of its weights alone\n")
    print(correlations(rows))
    wall = write_rows(args.out, rows, start, args)
    print(f"\nwall time {wall:.0f} s, torch threads {args.threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
