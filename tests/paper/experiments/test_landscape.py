"""The landscape experiment: interpolation, filter normalisation, barriers and the smoke run."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rmtprune import MPCriterion, prune
from rmtprune.paper.experiments.analysis import landscape
from rmtprune.paper.experiments.analysis.common import dense_copy
from rmtprune.paper.experiments.analysis.landscape import (
    LandscapeConfig,
    barrier_height,
    filter_normalized_direction,
    interpolation_losses,
    surface_losses,
)
from rmtprune.paper.models import FullyConnected, initialize
from rmtprune.paper.training import evaluate

from . import analysis_content, unit_stamps

PNG = b"\x89PNG\r\n\x1a\n"


def _data(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def _net(seed: int) -> torch.nn.Module:
    return initialize(FullyConnected([40, 48, 48, 10]), "normal", generator=seed)


@pytest.fixture(scope="module")
def smoke(
    data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[landscape.LandscapeResult, Path]:
    root = data_root
    out = tmp_path_factory.mktemp("landscape")
    return landscape.run("smoke", out=out, data_dir=root, progress=False), out


def test_interpolation_endpoints_are_the_solutions() -> None:
    data = _data()
    a, b = _net(1), _net(2)
    losses = interpolation_losses(a, b, data, [0.0, 0.5, 1.0])
    assert losses[0] == evaluate(a, data, batch_size=64).loss
    assert losses[2] == evaluate(b, data, batch_size=64).loss
    # The midpoint is the network with the averaged parameters.
    mid = _net(1)
    with torch.no_grad():
        for p, pa, pb in zip(mid.parameters(), a.parameters(), b.parameters(), strict=True):
            p.copy_(0.5 * pa + 0.5 * pb)
    assert losses[1] == pytest.approx(evaluate(mid, data).loss, rel=1e-6)
    # Neither model is modified.
    assert torch.equal(a.layers[0].weight, _net(1).layers[0].weight)


def test_pruned_networks_are_interpolated_as_dense_matrices() -> None:
    data = _data(1)
    pruned, report = prune(_net(3), criterion=MPCriterion(bulk_keep=0.0, min_rank=5))
    assert report.changed
    dense = dense_copy(pruned)
    assert [p.shape for p in dense.parameters()] == [p.shape for p in _net(0).parameters()]
    # The dense copy is the same function (up to rounding) as the factorized network.
    loss = interpolation_losses(dense, _net(4), data, [0.0])[0]
    assert loss == evaluate(dense, data, batch_size=64).loss
    assert loss == pytest.approx(evaluate(pruned, data, batch_size=64).loss, rel=1e-5)
    with pytest.raises(ValueError, match="same"):
        interpolation_losses(pruned, _net(4), data, [0.0])


def test_filter_normalised_directions() -> None:
    net = _net(5)
    direction = filter_normalized_direction(net, torch.Generator().manual_seed(0))
    for p, d in zip(net.parameters(), direction, strict=True):
        if p.dim() == 1:
            assert torch.count_nonzero(d) == 0
        else:
            rows_p = p.detach().norm(dim=1)
            assert torch.allclose(d.norm(dim=1), rows_p, rtol=1e-6, atol=0)
            assert not torch.allclose(d, p.detach())  # a random direction, not the weights
    again = filter_normalized_direction(net, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(direction, again, strict=True))


def test_surface_centre_and_barriers() -> None:
    data = _data(2)
    net = _net(6)
    g = torch.Generator().manual_seed(1)
    directions = [filter_normalized_direction(net, g) for _ in range(2)]
    coords = np.linspace(-1.0, 1.0, 5)
    grid = surface_losses(net, data, directions, coords)
    assert grid.shape == (5, 5)
    assert grid[2, 2] == evaluate(net, data, batch_size=64).loss
    # Barriers: a chord-straight path has none, a bump of height 1 above the chord has 1.
    assert barrier_height([1.0, 1.5, 2.0]) == (0.0, 0.0)
    assert barrier_height([1.0, 2.5, 2.0]) == pytest.approx((1.0, 0.5))
    assert barrier_height([2.0, 1.0, 0.5, 1.0]) == (0.0, 0.0)


def test_smoke_run(smoke: tuple[landscape.LandscapeResult, Path]) -> None:
    result, out = smoke
    for name in ("config.json", "metrics.json", "report_section.md", *result.files):
        assert (out / name).is_file(), name
    contours = [f for f in result.files if f.startswith("landscape_contour_")]
    assert sorted(contours) == [
        "landscape_contour_normal_seed0.png",
        "landscape_contour_pruned_seed0.png",
    ]
    assert all((out / f).read_bytes()[:8] == PNG for f in result.files if f.endswith(".png"))
    eval_loss = {(s.arm, s.seed): s.eval_loss for s in result.solutions}
    for line in result.lines:
        assert line.losses[0] == eval_loss[line.arm, line.seed_a]
        assert line.losses[-1] == eval_loss[line.arm, line.seed_b]
        assert (line.barrier, line.barrier_max) == barrier_height(line.losses)
        assert line.barrier >= 0 and np.isfinite(line.barrier)
    for surface in result.surfaces:
        centre = len(surface.coords) // 2
        assert (
            surface.losses[centre, centre]
            == surface.center_loss
            == eval_loss[surface.arm, surface.seed]
        )
        assert surface.sharpness == pytest.approx(np.mean(surface.losses - surface.center_loss))
    pruned = [s.n_params for s in result.solutions if s.arm == "pruned"]
    normal = [s.n_params for s in result.solutions if s.arm == "normal"]
    assert max(pruned) < min(normal)
    accuracies = [s.test_accuracy for s in result.solutions if s.arm == "normal"]
    assert result.summary["normal"]["test_accuracy_std"] == pytest.approx(
        np.std(accuracies, ddof=1)
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["pruned"]["barrier"] == pytest.approx(
        np.mean([r.barrier for r in result.lines if r.arm == "pruned"])
    )
    lines = [
        line
        for line in (out / "report_section.md").read_text().splitlines()
        if line.startswith("- **Verdict")
    ]
    assert len(lines) == len(result.verdicts) == 4


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'seeds'"):
        landscape.run("smoke", seeds=1, out=tmp_path)
    with pytest.raises(ValueError, match="'grid'"):
        LandscapeConfig(
            widths=(784, 10),
            seeds=2,
            epochs=1,
            n_train=10,
            n_test=10,
            n_eval=10,
            grid=2,
            line_points=3,
            surface_seeds=1,
            every=1,
            schedule_epochs=1.0,
        )
    with pytest.raises(ValueError, match="'preset'"):
        LandscapeConfig.from_preset("tiny")


def test_rerun_loads_units_and_changed_config_is_refused(
    smoke: tuple[landscape.LandscapeResult, Path], data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, out = smoke
    stamps = unit_stamps(out)
    expected = {
        f"solution-{a}-{s}{x}"
        for a in ("normal", "pruned")
        for s in (0, 1)
        for x in (".json", ".pt")
    }
    expected |= {"line-normal-0-1.json", "line-pruned-0-1.json"}
    expected |= {"surface-normal-0.json", "surface-pruned-0.json"}
    expected |= {n.replace(".json", ".seconds.json") for n in expected if n.endswith(".json")}
    assert set(stamps) == expected

    def never(*args: Any) -> None:
        raise AssertionError("a finished unit was computed again")

    with monkeypatch.context() as m:
        for name in ("_train", "interpolation_losses", "surface_losses"):
            m.setattr(landscape, name, never)
        again = landscape.run("smoke", out=out, data_dir=data_root, progress=False)
    assert analysis_content(again) == analysis_content(result)
    assert unit_stamps(out) == stamps
    with pytest.raises(ValueError, match=r"differs in \['grid'\]"):
        landscape.run(
            "smoke",
            out=out,
            data_dir=data_root,
            progress=False,
            config=replace(result.config, grid=5),
        )


def test_interrupted_run_resumes_to_the_same_result(
    smoke: tuple[landscape.LandscapeResult, Path], data_root: Path, tmp_path: Path
) -> None:
    result, out = smoke
    copy = tmp_path / "interrupted"
    shutil.copytree(out, copy)
    # killed while training the last solution: no line or surface was measured yet
    for unit in (copy / "units").iterdir():
        if unit.name.startswith(("solution-pruned-1", "line-", "surface-")):
            unit.unlink()
    kept = unit_stamps(copy)
    resumed = landscape.run("smoke", out=copy, data_dir=data_root, progress=False)
    assert analysis_content(resumed) == analysis_content(result)
    assert {k: v for k, v in unit_stamps(copy).items() if k in kept} == kept
    assert len(unit_stamps(copy)) == len(unit_stamps(out))
