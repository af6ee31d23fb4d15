"""The theory experiment: BBP closed forms, the SPEC §7 bound by hand, and the smoke run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rmtprune.paper.experiments.analysis import theory, theory_network
from rmtprune.paper.experiments.analysis.theory import (
    TheoryConfig,
    bbp_overlaps,
    bbp_singular_value,
    bound_check,
    classification_margin,
    network_outputs,
    predicted_distances,
    signal_plus_noise,
    tau_bound,
)

from . import analysis_content, unit_stamps

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(
    data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[theory.TheoryResult, Path]:
    root = data_root
    out = tmp_path_factory.mktemp("theory")
    return theory.run("smoke", out=out, data_dir=root, progress=False), out


def _means(result: theory.TheoryResult, key: str) -> np.ndarray:
    sizes = sorted({r.size for r in result.synthetic})
    return np.array(
        [np.mean([key_of(r, key) for r in result.synthetic if r.size == n]) for n in sizes]
    )


def key_of(record: theory.SyntheticRecord, key: str) -> float:
    m, n = record.shape
    if key == "entry_rms":
        return record.distance_fro / math.sqrt(m * n)
    if key == "noise_left":
        return record.distance_fro / record.noise_fro
    return float(getattr(record, key))


# ----------------------------------------------------------------------------- closed forms


def test_bbp_formulas_match_a_simulation() -> None:
    # One spike θ = 3 in a 600 × 1200 matrix (γ = 1/2): singular value and both overlaps.
    S, R = signal_plus_noise(1200, 0.5, [3.0], signal_seed=3, noise_seed=4)
    u, s, vh = np.linalg.svd(S + R, full_matrices=False)
    su, _, svh = np.linalg.svd(S, full_matrices=False)
    assert s[0] == pytest.approx(bbp_singular_value(3.0, 0.5), rel=0.01)
    left, right = bbp_overlaps(3.0, 0.5)
    assert (u[:, 0] @ su[:, 0]) ** 2 == pytest.approx(left, abs=0.02)
    assert (vh[0] @ svh[0]) ** 2 == pytest.approx(right, abs=0.02)
    # Below the threshold γ^(1/4) the value sticks to the edge 1 + √γ, the overlaps vanish.
    assert bbp_singular_value(0.5, 0.5) == 1 + math.sqrt(0.5)
    assert bbp_overlaps(0.8, 0.5) == (0.0, 0.0)


def test_predicted_distances_closed_forms() -> None:
    # A lost strength contributes exactly θ to both norms.
    assert predicted_distances([0.5], 1.0) == (0.5, 0.5)
    # A very strong spike is recovered: its block norm vanishes like 1/θ.
    op, fro = predicted_distances([1000.0], 0.5)
    assert op < 2e-3 * 1000 and fro < 3.0
    # The Frobenius limit adds squares: two lost strengths 0.3 and 0.4 give 0.5.
    assert predicted_distances([0.3, 0.4], 1.0)[1] == pytest.approx(0.5)


def test_predicted_distances_match_a_large_simulation() -> None:
    S, R = signal_plus_noise(1600, 0.5, [4.0, 2.0, 0.5], signal_seed=1, noise_seed=2)
    W = S + R
    u, s, vh = np.linalg.svd(W, full_matrices=False)
    pruned = (u[:, :2] * s[:2]) @ vh[:2]
    op, fro = predicted_distances([4.0, 2.0, 0.5], 0.5)
    assert np.linalg.norm(pruned - S, 2) == pytest.approx(op, rel=0.05)
    assert np.linalg.norm(pruned - S) == pytest.approx(fro, rel=0.05)


# ----------------------------------------------------------------------------- §7 by hand


def _random_network(seed: int, n: int = 64, d: int = 30, samples: int = 40) -> tuple:
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    S2 = (
        torch.randn(n, 3, generator=g, dtype=torch.float64)
        @ torch.randn(3, n, generator=g, dtype=torch.float64)
        / math.sqrt(n)
    )
    W3 = torch.randn(10, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    x = torch.randn(samples, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (samples,), generator=g)
    noise = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    return W1, S2, W3, x, labels, noise


def test_tau_and_outputs_by_hand() -> None:
    W1, S2, W3, x, labels, noise = _random_network(0)
    n = W1.shape[0]
    s = x[7].tolist()
    # ‖W₁ s‖₂ by explicit sums, ‖W₃‖_∞ = largest absolute row sum.
    w1s = [sum(W1[i, j].item() * s[j] for j in range(len(s))) for i in range(n)]
    norm = math.sqrt(sum(v * v for v in w1s))
    row_sum = max(sum(abs(W3[i, j].item()) for j in range(n)) for i in range(10))
    tau = 2 * math.sqrt(2) * row_sum * norm * math.sqrt(math.log(2 * n) / n)
    assert float(tau_bound(W1, W3, x)[7]) == pytest.approx(tau, rel=1e-12)
    # X(s) = W₃ |W₂ |W₁ s|| by explicit loops, and the margin of the true class.
    h1 = [abs(v) for v in w1s]
    W2 = S2 + noise
    h2 = [abs(sum(W2[i, j].item() * h1[j] for j in range(n))) for i in range(n)]
    out = [sum(W3[k, i].item() * h2[i] for i in range(n)) for k in range(10)]
    got = network_outputs(W1, W2, W3, x, "abs")[7]
    assert got.tolist() == pytest.approx(out, rel=1e-10)
    c = int(labels[7])
    margin = out[c] - max(v for k, v in enumerate(out) if k != c)
    assert float(classification_margin(got[None], labels[7:8])[0]) == pytest.approx(margin)


def test_bound_check_fields_and_a_case_where_the_bound_fails() -> None:
    W1, S2, W3, x, labels, noise = _random_network(1)
    check = bound_check(W1, S2, W3, x, labels, noise, "relu")
    clean = network_outputs(W1, S2, W3, x, "relu")
    noisy = network_outputs(W1, S2 + noise, W3, x, "relu")
    assert np.allclose(check.change, (clean - noisy).abs().amax(1).numpy())
    assert np.all(check.tau > 0) and check.exceed_fraction == 0.0
    assert np.array_equal(check.in_band, np.abs(check.margin) <= 2 * check.tau)
    # Far outside the theorem (noise variance 10⁴/N instead of g/N ≤ 1/N) the bound breaks.
    loud = bound_check(W1, S2, W3, x, labels, 100.0 * noise, "relu")
    assert loud.exceed_fraction > 0.5


# ----------------------------------------------------------------------------- smoke run


def test_pruned_matrix_approaches_s(smoke: tuple[theory.TheoryResult, Path]) -> None:
    result, _ = smoke
    rms = _means(result, "entry_rms")
    left = _means(result, "noise_left")
    assert np.all(np.diff(rms) < 0) and np.all(np.diff(left) < 0)
    # Known scaling: ‖W′ − S‖_F → a constant, so the per-entry error falls like 1/N and the
    # fraction of the noise left (‖R‖_F ≈ √(mn/N)) like N^(-1/2).
    assert result.slopes["entry_rms_pruned"].slope == pytest.approx(-1.0, abs=0.15)
    assert result.slopes["noise_left"].slope == pytest.approx(-0.5, abs=0.15)
    # The absolute distances sit near their BBP limits and below ‖R‖.
    op, fro = result.limits
    assert _means(result, "distance_op")[-1] == pytest.approx(op, rel=0.1)
    assert _means(result, "distance_fro")[-1] == pytest.approx(fro, rel=0.1)
    assert all(r.distance_op < r.noise_op for r in result.synthetic)


def test_bema_edge_and_spikes(smoke: tuple[theory.TheoryResult, Path]) -> None:
    result, _ = smoke
    large = [r for r in result.synthetic if r.size >= 400]
    for r in large:
        assert r.lambda_plus / r.edge == pytest.approx(1.0, abs=0.04)
        assert r.lambda_plus / r.edge_tw == pytest.approx(1.0, abs=0.025)
        assert r.edge == pytest.approx((1 + math.sqrt(0.5)) ** 2 / r.size)
    expected = sum(t > 0.5**0.25 for t in result.config.strengths)
    assert expected == 3
    assert all(r.n_spikes == expected and r.kept_rank == expected for r in result.synthetic)
    for r in large:
        assert np.allclose(r.spikes, r.bbp_spikes, rtol=0.05)
    # α barely matters at β = 0.5; λ̂₊ decreases as β grows (the TW quantile t_{1−β} falls).
    alphas = [r.lambda_plus_mean for r in result.sweep if r.parameter == "alpha"]
    betas = [r.lambda_plus_mean for r in result.sweep if r.parameter == "beta"]
    assert max(alphas) / min(alphas) < 1.01
    assert np.all(np.diff(betas) < 0)


def test_network_bound_per_sample(smoke: tuple[theory.TheoryResult, Path]) -> None:
    result, out = smoke
    (net,) = result.networks
    n_test = 500
    checks = net.samples
    for array in (checks.tau, checks.margin, checks.change, checks.in_band, net.change_pruned):
        assert len(array) == n_test == net.n_test
    assert np.all(checks.tau > 0)
    assert net.exceed_fraction <= net.one_over_n == 1 / 128
    assert net.max_change_over_tau < 1
    assert net.flipped_outside_band == 0 and net.max_accuracy_change <= net.band_fraction
    assert net.pruned_fro < net.noise_fro
    saved = np.load(out / "network_samples.npz")
    assert np.array_equal(saved["relu_N128_tau"], checks.tau)


def test_outputs_and_verdicts(smoke: tuple[theory.TheoryResult, Path]) -> None:
    result, out = smoke
    for name in ("config.json", "metrics.json", "report_section.md", *result.files):
        assert (out / name).is_file(), name
    pngs = [f for f in result.files if f.endswith(".png")]
    assert len(pngs) == 3 and all((out / f).read_bytes()[:8] == PNG for f in pngs)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["experiment"] == "theory" and len(metrics["verdicts"]) == 8
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["sizes"] == [100, 200, 400, 800]
    text = (out / "report_section.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("- **Verdict")]
    assert len(lines) == len(result.verdicts) == 8
    assert all(f": {v.verdict}.**" in line for v, line in zip(result.verdicts, lines, strict=True))
    assert len({v.key for v in result.verdicts}) == 8
    assert all(v.holds is not None for v in result.verdicts)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'preset'"):
        theory.run("huge", out=tmp_path)
    with pytest.raises(ValueError, match="'widths'"):
        TheoryConfig(
            sizes=(100,),
            seeds=1,
            sweep_size=100,
            widths=(8,),
            activations=("relu",),
            n_train=10,
            n_test=10,
            epochs=1,
        )
    with pytest.raises(ValueError, match="'activation'"):
        network_outputs(*(torch.eye(2, dtype=torch.float64),) * 4, "tanh")
    with pytest.raises(TypeError, match="'seeds'"):
        TheoryConfig.from_preset("smoke", seeds=1.5)  # type: ignore[arg-type]


def test_rerun_loads_units_and_changed_config_is_refused(
    smoke: tuple[theory.TheoryResult, Path], data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, out = smoke
    stamps = unit_stamps(out)
    sizes, seeds = result.config.sizes, range(result.config.seeds)
    units = {f"synthetic-{n}-{s}" for n in sizes for s in seeds} | {"network-relu-128"}
    assert set(stamps) == {f"{u}{suffix}" for u in units for suffix in (".json", ".seconds.json")}
    samples = dict(np.load(out / "network_samples.npz"))

    def never(*args: Any) -> None:
        raise AssertionError("a finished unit was computed again")

    with monkeypatch.context() as m:
        m.setattr(theory, "_synthetic", never)
        m.setattr(theory_network, "_network", never)
        again = theory.run("smoke", out=out, data_dir=data_root, progress=False)
    assert analysis_content(again) == analysis_content(result)
    assert unit_stamps(out) == stamps
    for key, values in np.load(out / "network_samples.npz").items():
        assert values.dtype == samples[key].dtype and np.array_equal(values, samples[key])
    with pytest.raises(ValueError, match=r"differs in \['seeds'\]"):
        theory.run("smoke", seeds=2, out=out, data_dir=data_root, progress=False)


def test_interrupted_run_resumes_to_the_same_result(
    smoke: tuple[theory.TheoryResult, Path], data_root: Path, tmp_path: Path
) -> None:
    result, out = smoke
    copy = tmp_path / "interrupted"
    shutil.copytree(out, copy)
    last = max(result.config.sizes)
    (copy / "units" / f"synthetic-{last}-{result.config.seeds - 1}.json").unlink()
    (copy / "units" / "network-relu-128.json").unlink()
    resumed = theory.run("smoke", out=copy, data_dir=data_root, progress=False)
    assert analysis_content(resumed) == analysis_content(result)
    assert unit_stamps(copy).keys() == unit_stamps(out).keys()
