"""Result, verdicts, figures and the Markdown section of the ``theory`` experiment.

:class:`TheoryResult` (re-exported by :mod:`rmtprune.paper.experiments.analysis.theory`) and
everything
that reads the records of part (a) (:mod:`rmtprune.paper.experiments.analysis.theory`) and part (b)
(:mod:`rmtprune.paper.experiments.analysis.theory_network`) without computing anything new: the
per-size
means (:func:`by_size`), the verdict lines, the PNG figures, the CSV tables and the text of
``report_section.md``.

Example
-------
>>> from types import SimpleNamespace
>>> from rmtprune.paper.experiments.analysis.theory_report import by_size
>>> rows = [SimpleNamespace(size=n, distance_op=d) for n, d in ((10, 1.0), (10, 3.0), (20, 1.5))]
>>> [x.tolist() for x in by_size(rows, "distance_op")[:2]]
[[10.0, 20.0], [2.0, 1.5]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.experiments.analysis.theory_config import (
    SweepRecord,
    SyntheticRecord,
    TheoryConfig,
)
from rmtprune.paper.experiments.analysis.theory_figures import (
    bound_figure,
    by_size,
    synthetic_figures,
)
from rmtprune.paper.experiments.analysis.theory_network import NetworkRecord
from rmtprune.paper.experiments.formats import write_text
from rmtprune.paper.experiments.results import ClaimVerdict

__all__ = [
    "SLOPES",
    "TheoryResult",
    "by_size",
    "network_verdicts",
    "synthetic_verdicts",
    "write_outputs",
]

# ----------------------------------------------------------------------------- result


@dataclass(frozen=True)
class TheoryResult:
    """Everything the theory experiment measured (see ``theory.run``)."""

    preset: str
    config: TheoryConfig
    synthetic: tuple[SyntheticRecord, ...]
    sweep: tuple[SweepRecord, ...]
    networks: tuple[NetworkRecord, ...]
    slopes: Mapping[str, common.Slope]
    limits: tuple[float, float]
    verdicts: tuple[ClaimVerdict, ...]
    files: tuple[str, ...]
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly ``dict`` (the content of ``metrics.json``)."""
        return {
            "experiment": "theory",
            "preset": self.preset,
            "synthetic": [r.to_dict() for r in self.synthetic],
            "sweep": [r.to_dict() for r in self.sweep],
            "networks": [r.to_dict() for r in self.networks],
            "slopes": {k: v.to_dict() for k, v in self.slopes.items()},
            "predicted_limits": {"distance_op": self.limits[0], "distance_fro": self.limits[1]},
            "verdicts": [v.to_dict() for v in self.verdicts],
            "files": list(self.files),
            "wall_time": self.wall_time,
        }


# ----------------------------------------------------------------------------- verdicts

SLOPES = ("distance_op", "distance_fro", "entry_rms_pruned", "entry_rms_noise", "noise_left")


def _list(values: Any, fmt: str = ".4f") -> str:
    return ", ".join(format(float(v), fmt) for v in values)


def _spike_deviation(records: Sequence[SyntheticRecord]) -> float:
    """Largest |mean over seeds of found / BBP − 1| over the strengths, at the largest N."""
    top = [r for r in records if r.size == max(r.size for r in records)]
    top = [r for r in top if r.n_spikes == r.n_expected]
    if not top:
        return math.nan
    ratios = np.array([np.array(r.spikes) / np.array(r.bbp_spikes) for r in top])
    return float(np.max(np.abs(ratios.mean(axis=0) - 1.0)))


def synthetic_verdicts(
    config: TheoryConfig,
    records: Sequence[SyntheticRecord],
    slopes: Mapping[str, common.Slope],
    limits: tuple[float, float],
) -> list[ClaimVerdict]:
    """The five verdicts of part (a): edge, spike count, spike locations, convergence to S."""
    V, ns = ClaimVerdict.from_holds, by_size(records, "edge_ratio")[0]
    sizes = ", ".join(str(int(n)) for n in ns)
    tw = by_size(records, "edge_tw_ratio")[1]
    right = sum(r.n_spikes == r.n_expected for r in records)
    spike_dev = _spike_deviation(records)
    rms, rms_noise, left = (
        slopes[k].slope for k in ("entry_rms_pruned", "entry_rms_noise", "noise_left")
    )
    op, fro = by_size(records, "distance_op")[1], by_size(records, "distance_fro")[1]
    dev = max(abs(op[-1] / limits[0] - 1), abs(fro[-1] / limits[1] - 1))
    return [
        V(
            "bema-edge",
            "BEMA's lambda_plus converges to the bulk edge",
            abs(tw[-1] - 1) <= 0.02 and abs(tw[-1] - 1) < abs(tw[0] - 1),
            f"Mean λ̂₊ / (edge with TW margin) = {_list(tw)} and λ̂₊ / σ²(1+√γ)² = "
            f"{_list(by_size(records, 'edge_ratio')[1])} at N = {sizes}. The excess is σ̂² "
            f"(σ̂²/σ² = {_list(by_size(records, 'sigma2_ratio')[1])}), mostly the signal pushing "
            "the bulk's order statistics up (interlacing, O(rank/p)): on R alone σ̂²/σ² = "
            f"{_list(by_size(records, 'sigma2_noise_ratio')[1])}.",
        ),
        V(
            "spike-count",
            "the spikes found are the strengths above the BBP threshold",
            right == len(records),
            f"{right} of {len(records)} matrices have n_spikes = {records[0].n_expected} "
            f"(θ = {_list(config.strengths, 'g')}, threshold γ^(1/4) = {config.ratio**0.25:.3f}).",
        ),
        V(
            "spike-locations",
            "the outliers sit at the BBP locations σ√N·sqrt((1+θ²)(γ+θ²))/θ",
            spike_dev <= 0.02,
            f"At N = {int(ns[-1])} the seed-mean outliers deviate from the predictions by at most "
            f"{spike_dev:.2%}.",
        ),
        V(
            "pruned-approaches-s",
            "the pruned matrix approaches S as N grows (per entry)",
            rms < rms_noise - 0.25 and left < 0,
            f"Per-entry RMS error ‖W′−S‖_F/√(mn) ∝ N^{rms:.2f}, against N^{rms_noise:.2f} for "
            f"the unpruned W; the noise left, ‖W′−S‖_F/‖R‖_F = "
            f"{_list(by_size(records, 'noise_left')[1], '.3f')} at N = {sizes} (∝ N^{left:.2f}).",
        ),
        V(
            "distance-limit",
            "‖W′−S‖ in operator and Frobenius norm tends to the BBP limit (not to 0)",
            dev <= 0.1,
            f"‖W′−S‖_op = {_list(op, '.3f')} (limit {limits[0]:.3f}, slope "
            f"{slopes['distance_op'].slope:.2f}), ‖W′−S‖_F = {_list(fro, '.3f')} (limit "
            f"{limits[1]:.3f}) at N = {sizes}; ‖R‖_op = "
            f"{_list(by_size(records, 'noise_op')[1], '.3f')} (→ 1+√γ): with R ~ N(0, 1/N) no "
            "rank-k estimate can be o(1) from S in operator norm.",
        ),
    ]


def network_verdicts(networks: Sequence[NetworkRecord]) -> list[ClaimVerdict]:
    """The three verdicts of part (b): the bound (docs/method.md section 7), the accuracy band,
    the pruned W₂′."""
    V = ClaimVerdict.from_holds

    def each(fmt: str) -> str:
        return "; ".join(f"{n.activation} N={n.width}: " + fmt.format(n=n) for n in networks)

    vacuous = min(n.band_fraction for n in networks) >= 0.99
    return [
        V(
            "spec7-bound",
            "SPEC §7: ‖X(s;S₂) − X(s;W₂)‖_∞ ≤ τ(s) with probability ≥ 1 − 1/N",
            all(n.exceed_fraction <= n.one_over_n for n in networks),
            "Fraction of (sample, draw) pairs above τ: "
            + each(
                "{n.exceed_fraction:.3g} (1/N = {n.one_over_n:.3g}), max change/τ "
                "{n.max_change_over_tau:.3g}, median {n.median_change_over_tau:.3g}"
            )
            + ". The bound holds with room to spare: τ is larger than the change by the "
            "inverse of these ratios.",
        ),
        V(
            "spec7-accuracy",
            "the accuracies with S₂ and W₂ differ by at most the fraction with |δX| ≤ 2τ",
            all(
                n.max_accuracy_change <= n.band_fraction and n.flipped_outside_band == 0
                for n in networks
            ),
            each(
                "|Δacc| ≤ {n.max_accuracy_change:.4f}, band {n.band_fraction:.4f}, flips "
                "outside the band {n.flipped_outside_band}"
            )
            + (
                ". The band holds (almost) every sample, so this bound is vacuous here."
                if vacuous
                else "."
            ),
        ),
        V(
            "pruned-w2-like-s2",
            "the pruned W₂′ behaves like S₂",
            all(
                n.pruned_fro < n.noise_fro and n.agreement_pruned >= n.agreement_noisy
                for n in networks
            ),
            each(
                "‖·−S₂‖_F {n.pruned_fro:.3g} (W₂′) vs {n.noise_fro:.3g} (W₂), ‖·−S₂‖_op "
                "{n.pruned_op:.3g} vs {n.noise_op:.3g}; same prediction as S₂ "
                "{n.agreement_pruned:.4f} vs {n.agreement_noisy:.4f}; accuracy S₂/W₂/W₂′ "
                "{n.accuracy_signal:.4f}/{n.accuracy_noisy:.4f}/{n.accuracy_pruned:.4f}"
            )
            + ".",
        ),
    ]


# ----------------------------------------------------------------------------- figures, text


def _synthetic_text(
    config: TheoryConfig,
    records: Sequence[SyntheticRecord],
    sweep: Sequence[SweepRecord],
    limits: tuple[float, float],
    slopes: Mapping[str, common.Slope],
) -> list[str]:
    names = (
        "edge_ratio",
        "edge_tw_ratio",
        "distance_op",
        "noise_op",
        "distance_fro",
        "entry_rms_pruned",
        "entry_rms_noise",
    )
    columns = [by_size(records, k)[1] for k in names]
    sizes = sorted(config.sizes)
    spikes = [np.mean([r.n_spikes for r in records if r.size == n]) for n in sizes]
    synthetic = [[n, spikes[i], *(c[i] for c in columns)] for i, n in enumerate(sizes)]
    headers = ["N", "spikes", "λ̂₊/edge", "λ̂₊/edge_TW", "‖W′−S‖_op", "‖R‖_op", "‖W′−S‖_F"]
    sweep_rows = [
        [
            r.parameter,
            r.value,
            *(x / r.edge for x in (r.lambda_plus_mean, r.lambda_plus_std, r.edge_tw)),
        ]
        for r in sweep
    ]
    return [
        f"**(a) Synthetic W = S + R.** W is m×N with m = {config.ratio:g}·N, R has i.i.d. "
        "N(0, 1/N) entries (σ√N = 1), S = Σ θᵢ uᵢvᵢᵀ with fixed orthonormal u, v and θ = "
        f"{_list(config.strengths, 'g')} (BBP threshold γ^(1/4) = {config.ratio**0.25:.3f}). "
        f"W′ = prune(W, bulk_keep=0), BEMA α = {config.alpha:g}, β = {config.beta:g}. Means "
        f"over {config.seeds} seeds per N.",
        "",
        common.markdown_table([*headers, "RMS/entry W′", "RMS/entry W"], synthetic),
        "",
        f"BBP limits (N → ∞): ‖W′−S‖_op → {limits[0]:.4f}, ‖W′−S‖_F → {limits[1]:.4f}. Log-log "
        "slopes: " + ", ".join(f"{k} {v.slope:.3f}" for k, v in slopes.items()) + ".",
        "",
        common.markdown_table(["parameter", "value", "λ̂₊/edge", "std", "edge_TW/edge"], sweep_rows),
    ]


_NETWORK_HEADERS = (
    "act",
    "N",
    "acc S₂",
    "acc W₂",
    "acc W₂′",
    "P(change>τ)",
    "1/N",
    "max change/τ",
    "band",
    "max Δacc (abs.)",
    "θ>1 / spikes",
    "‖R₂‖_F",
    "‖W₂′−S₂‖_F",
)


def _network_text(config: TheoryConfig, networks: Sequence[NetworkRecord]) -> list[str]:
    rows = [
        [
            n.activation,
            n.width,
            n.accuracy_signal,
            n.accuracy_noisy,
            n.accuracy_pruned,
            n.exceed_fraction,
            n.one_over_n,
            n.max_change_over_tau,
            n.band_fraction,
            n.max_accuracy_change,
            f"{n.n_above_threshold} / {n.n_spikes_mean:g}",
            n.noise_fro,
            n.pruned_fro,
        ]
        for n in networks
    ]
    return [
        "**(b) Network of SPEC §7.** X(s) = W₃ λ(W₂ λ(W₁ s)), no biases, 784 → N → N → 10, "
        f"trained on Fashion-MNIST ({config.epochs} epochs, {config.n_train or 60000} images) "
        f"with W₂ = S₂ of rank {config.signal_rank}; then R₂ ~ N(0, g/N), g = "
        f"{config.noise_variance:g}, drawn independently ({config.seeds} draws): W₂ = S₂ + R₂. "
        "Fractions over all (test sample, draw) pairs.",
        "",
        common.markdown_table(list(_NETWORK_HEADERS), rows),
    ]


def _report_section(
    config: TheoryConfig,
    records: Sequence[SyntheticRecord],
    sweep: Sequence[SweepRecord],
    networks: Sequence[NetworkRecord],
    limits: tuple[float, float],
    slopes: Mapping[str, common.Slope],
    verdicts: Sequence[ClaimVerdict],
    figures: Sequence[str],
) -> str:
    """The Markdown text of ``report_section.md``."""
    return "\n".join(
        [
            "## theory",
            "",
            *_synthetic_text(config, records, sweep, limits, slopes),
            "",
            *_network_text(config, networks),
            "",
            " ".join(f"![{f}]({f})" for f in figures),
            "",
            *(v.line() for v in verdicts),
            "",
        ]
    )


def write_outputs(
    folder: Path,
    config: TheoryConfig,
    records: Sequence[SyntheticRecord],
    sweep: Sequence[SweepRecord],
    networks: Sequence[NetworkRecord],
    slopes: Mapping[str, common.Slope],
    limits: tuple[float, float],
    verdicts: Sequence[ClaimVerdict],
    spectrum: np.ndarray,
    tw_reference: float,
) -> tuple[str, ...]:
    """Write the CSV tables, ``network_samples.npz``, the figures and ``report_section.md``.

    Returns the names of the files written, in the order of ``TheoryResult.files``.
    """
    common.write_csv(folder / "synthetic.csv", [r.to_dict() for r in records])
    common.write_csv(folder / "sweep.csv", [r.to_dict() for r in sweep])
    common.write_csv(folder / "networks.csv", [n.to_dict() for n in networks])
    arrays = {
        f"{n.activation}_N{n.width}_{k}": getattr(n.samples, k)
        for n in networks
        for k in ("tau", "margin", "change")
    }
    arrays.update({f"{n.activation}_N{n.width}_change_pruned": n.change_pruned for n in networks})
    np.savez_compressed(folder / "network_samples.npz", **arrays)
    figures = synthetic_figures(
        folder, config, records, sweep, slopes, limits, spectrum, tw_reference
    )
    figures += [bound_figure(folder, n) for n in networks]
    text = _report_section(config, records, sweep, networks, limits, slopes, verdicts, figures)
    write_text(folder / "report_section.md", text)
    return (
        "synthetic.csv",
        "sweep.csv",
        "networks.csv",
        "network_samples.npz",
        *figures,
        "report_section.md",
    )
