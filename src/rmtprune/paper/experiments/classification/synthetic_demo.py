"""The synthetic demonstration behind ``rmtprune demo --synthetic``.

It needs no data: a signal-plus-noise matrix shows the fitted edge, the spikes
against the BBP prediction and the fit statistic; a freshly initialised network
with one planted signal shows :func:`rmtprune.analyze` and :func:`rmtprune.prune`.

Example
-------
>>> import io
>>> numbers = run_synthetic_demo(seed=0, out=io.StringIO())  # doctest: +SKIP
>>> numbers["n_spikes"]  # doctest: +SKIP
3.0
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from rmtprune.pruning.criteria import MPCriterion
from rmtprune.pruning.walker import analyze, prune
from rmtprune.rmt import BEMA

__all__ = ["run_synthetic_demo"]


def _matrix_part(seed: int, stream: TextIO) -> tuple[Any, np.ndarray]:
    """BEMA on W = S + R: print the estimates against the truth; return the fit and S."""
    rng = np.random.default_rng(seed)
    m, n = 500, 1000
    big, ratio = max(m, n), min(m, n) / max(m, n)
    sigma = 1.0 / math.sqrt(big)
    thetas = np.array([5.0, 3.0, 2.0, 0.5])
    u, _ = np.linalg.qr(rng.standard_normal((m, thetas.size)))
    v, _ = np.linalg.qr(rng.standard_normal((n, thetas.size)))
    signal = (u * (thetas * sigma * math.sqrt(big))) @ v.T
    w = signal + sigma * rng.standard_normal((m, n))

    fit = BEMA().fit(w)
    pvalue = fit.pvalue(n_simulations=100, random_state=seed)
    print(f"Signal plus noise: W = S + R, {m}×{n}, noise variance σ² = {sigma**2:.3e}", file=stream)
    print(f"  BEMA σ² estimate   {fit.sigma2_:.4e}  (true {sigma**2:.4e})", file=stream)
    print(
        f"  edge λ₊            {fit.lambda_plus_:.4f}  (MP edge σ²(1+√γ)² = "
        f"{sigma**2 * (1 + math.sqrt(ratio)) ** 2:.4f})",
        file=stream,
    )
    print(f"  singular-value edge {fit.threshold_:.4f}", file=stream)
    print(
        f"  fit statistic D    {fit.fit_error_:.4f}  (simulated p-value {pvalue:.2f})", file=stream
    )
    bbp = ratio**0.25
    print(f"  BBP threshold γ^(1/4) = {bbp:.3f}; strengths θ = {thetas.tolist()}", file=stream)
    predicted = [
        sigma * math.sqrt(big) * math.sqrt((1 + t * t) * (ratio + t * t)) / t
        for t in thetas
        if t > bbp
    ]
    found = fit.singular_values_[: fit.n_spikes_]
    print(f"  spikes found: {fit.n_spikes_} (expected {len(predicted)})", file=stream)
    for s_found, s_pred in zip(found, predicted, strict=False):
        print(f"    singular value {s_found:.4f}   BBP prediction {s_pred:.4f}", file=stream)
    return fit, signal


def _planted_network(signal: np.ndarray, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    widths = [784, 1000, 1000, 10]
    model = nn.Sequential(
        nn.Flatten(),
        *[layer for a, b in itertools.pairwise(widths) for layer in (nn.Linear(a, b), nn.ReLU())][
            :-1
        ],
    )
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0.0, layer.in_features**-0.5)
                layer.bias.zero_()
        planted = torch.as_tensor(
            signal[:, :784] / np.linalg.norm(signal[:, :784], 2) * 3.0, dtype=torch.float32
        )
        first = model[1]
        if not isinstance(first, nn.Linear):  # pragma: no cover - fixed structure above
            raise TypeError("the first layer of the demo network must be nn.Linear")
        first.weight[:500] += planted
    return model


def run_synthetic_demo(seed: int = 0, out: TextIO | None = None) -> dict[str, float]:
    """Print the synthetic demonstration and return its headline numbers."""
    stream = out if out is not None else sys.stdout
    fit, signal = _matrix_part(seed, stream)
    model = _planted_network(signal, seed)
    print(
        "\nA [784, 1000, 1000, 10] network at initialisation, rank-3 signal planted in "
        "its first layer:",
        file=stream,
    )
    print(analyze(model).to_markdown(), file=stream)
    pruned, report = prune(model, criterion=MPCriterion(bulk_keep=0.0, min_rank=10))
    print("\nprune(bulk_keep=0, min_rank=10):", file=stream)
    print(report.to_markdown(), file=stream)
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        agree = float((model(x).argmax(1) == pruned(x).argmax(1)).float().mean())
    print(
        f"\nParameters {report.params_before:,} → {report.params_after:,} "
        f"({100 * report.reduction:.1f} % removed).",
        file=stream,
    )
    return {
        "sigma2": float(fit.sigma2_),
        "lambda_plus": float(fit.lambda_plus_),
        "n_spikes": float(fit.n_spikes_),
        "fit_error": float(fit.fit_error_),
        "reduction": report.reduction,
        "agreement": agree,
    }
