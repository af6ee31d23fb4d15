"""The regression experiment: data, identical starts of the two arms, and the smoke run."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmtprune.paper.experiments.analysis import regression
from rmtprune.paper.experiments.analysis.experiments import AnalysisRun
from rmtprune.paper.experiments.analysis.regression import (
    RegressionConfig,
    make_data,
    target_function,
)

from . import analysis_content, unit_stamps

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(regression_smoke: AnalysisRun) -> tuple[regression.RegressionResult, Path]:
    """The session's smoke run (``conftest.regression_smoke``) and its directory."""
    assert isinstance(regression_smoke.result, regression.RegressionResult)
    return regression_smoke.result, regression_smoke.run_dir


def test_target_and_data() -> None:
    # sin(2πx) + 0.5 sin(6πx): 0 at x = 0 and 1, √3/2 at 1/3, 1 − 0.5 at 1/4, 0.5 + 0.5 at 1/12.
    values = target_function(np.array([0.0, 1 / 3, 1.0]))
    assert np.allclose(values, [0.0, np.sqrt(3) / 2, 0.0], atol=1e-12)
    assert target_function(np.array([0.25, 1 / 12])).tolist() == pytest.approx([0.5, 1.0])
    config = RegressionConfig.from_preset("smoke")
    (x, y), (grid, _) = make_data(config)
    assert x.shape == (300, 1) and float(x.min()) >= 0 and float(x.max()) <= 2
    residual = y.double().numpy() - target_function(x.double().numpy()[:, 0])
    assert residual.std() == pytest.approx(config.noise, rel=0.15)
    assert float(grid[0, 0]) == 0.0 and float(grid[-1, 0]) == 2.0
    # The training set does not depend on the model seeds: the same data every call.
    again = make_data(config)
    assert bool((again[0][1] == y).all())


def test_fit_beats_a_constant(smoke: tuple[regression.RegressionResult, Path]) -> None:
    result, _ = smoke
    # The mean square of sin(2πx) + 0.5 sin(6πx) over whole periods is 1/2 + 1/8 (mean 0).
    assert result.target_variance == pytest.approx(0.625, abs=2e-3)
    for arm in ("normal", "pruned"):
        assert np.all(result.final(arm) < 0.5 * result.target_variance)
        assert np.all(result.final(arm, "train_mse") < 0.5 * result.target_variance)


def test_arms_start_identical_and_pruning_removes_parameters(
    smoke: tuple[regression.RegressionResult, Path],
) -> None:
    result, _ = smoke
    every = result.config.every
    by = {(r.arm, r.seed): r for r in result.runs}
    for seed in range(result.config.seeds):
        normal, pruned = by["normal", seed], by["pruned", seed]
        # Same initial weights and mini-batches: identical until the first pruning step.
        assert normal.train_mse[: every - 1] == pruned.train_mse[: every - 1]
        assert normal.test_mse[: every - 1] == pruned.test_mse[: every - 1]
        assert len(set(normal.n_params)) == 1
        assert pruned.n_params[-1] < normal.n_params[-1]
        assert list(pruned.n_params) == sorted(pruned.n_params, reverse=True)
    assert result.verdicts[1].holds is True


def test_paired_comparison_and_outputs(smoke: tuple[regression.RegressionResult, Path]) -> None:
    result, out = smoke
    diff = result.final("pruned") - result.final("normal")
    assert result.test.mean == pytest.approx(diff.mean())
    assert result.test.losses == int((diff < 0).sum())
    for name in ("config.json", "metrics.json", "report_section.md", *result.files):
        assert (out / name).is_file(), name
    assert all((out / f).read_bytes()[:8] == PNG for f in result.files if f.endswith(".png"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["normal"]["test_mse"] == pytest.approx(result.final("normal").tolist())
    with (out / "curves.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * result.config.seeds * result.config.epochs
    lines = [
        line
        for line in (out / "report_section.md").read_text().splitlines()
        if line.startswith("- **Verdict")
    ]
    assert len(lines) == len(result.verdicts) == 2


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'widths'"):
        RegressionConfig(widths=(2, 8, 1), seeds=1, epochs=1, every=1, schedule_epochs=1.0)
    with pytest.raises(ValueError, match="'seeds'"):
        regression.run("smoke", seeds=0, out=tmp_path)
    with pytest.raises(TypeError, match="'config'"):
        regression.run("smoke", out=tmp_path, config="small")  # type: ignore[arg-type]


def test_rerun_loads_units_and_changed_config_is_refused(
    smoke: tuple[regression.RegressionResult, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    result, out = smoke
    stamps = unit_stamps(out)
    units = [f"seed-{s}-{a}" for s in (0, 1) for a in ("normal", "pruned")]
    assert sorted(stamps) == sorted(f"{u}{x}" for u in units for x in (".json", ".seconds.json"))

    def never(*args: Any) -> None:
        raise AssertionError("a finished unit was trained again")

    with monkeypatch.context() as m:
        m.setattr(regression, "_train", never)
        again = regression.run("smoke", out=out, progress=False)
    assert analysis_content(again) == analysis_content(result)
    assert again.runs == result.runs  # the predictions on the test grid too
    assert unit_stamps(out) == stamps
    changed = replace(result.config, lr=0.03)
    with pytest.raises(ValueError, match=r"differs in \['lr'\]"):
        regression.run("smoke", out=out, progress=False, config=changed)
    with pytest.raises(ValueError, match="already holds a run"):
        regression.run("smoke", out=out, progress=False, resume=False)


def test_interrupted_run_resumes_to_the_same_result(
    smoke: tuple[regression.RegressionResult, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, out = smoke
    copy = tmp_path / "interrupted"
    shutil.copytree(out, copy)
    (copy / "units" / "seed-1-pruned.json").unlink()  # killed while training the last unit
    trained = []
    train = regression._train

    def spy(config: Any, seed: int, arm: str, *args: Any) -> Any:
        trained.append((seed, arm))
        return train(config, seed, arm, *args)

    monkeypatch.setattr(regression, "_train", spy)
    resumed = regression.run("smoke", out=copy, progress=False)
    assert trained == [(1, "pruned")]
    assert analysis_content(resumed) == analysis_content(result)
    assert resumed.runs == result.runs
