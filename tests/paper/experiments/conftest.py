"""Session-wide fixtures of the experiment tests: one data root, one smoke run per experiment.

Every test module that needs data, a finished smoke run of a classification experiment,
the regression experiment's or the ablation's smoke run uses these, so ``make test-fast``
trains each smoke preset once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rmtprune.paper.experiments import RunResult, reproduce
from rmtprune.paper.experiments.ablation.results import AblationRun
from rmtprune.paper.experiments.analysis.experiments import AnalysisRun, reproduce_analysis
from rmtprune.paper.experiments.classification.experiments import CLASSIFICATION_EXPERIMENTS

from . import real_data_root, write_synthetic_data


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$RMTPRUNE_DATA`` when it holds the three data sets, else generated look-alikes."""
    return real_data_root() or write_synthetic_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def smoke_runs(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    """The smoke preset of every classification experiment, run once per session."""
    root = tmp_path_factory.mktemp("smoke-runs")
    runs = {}
    for e in CLASSIFICATION_EXPERIMENTS:
        result = reproduce(e, preset="smoke", out=root / e, data_dir=data_root, progress=False)
        assert isinstance(result, RunResult)
        runs[e] = result
    return runs


@pytest.fixture(scope="session")
def regression_smoke(tmp_path_factory: pytest.TempPathFactory) -> AnalysisRun:
    """The regression experiment's smoke preset with its report, run once per session.

    Tests may continue the run in its directory (a resumed call loads every unit) but must
    copy the directory before changing or deleting anything in it.
    """
    out = tmp_path_factory.mktemp("regression-smoke") / "run"
    return reproduce_analysis("regression", preset="smoke", out=out, progress=False)


@pytest.fixture(scope="session")
def ablation_smoke(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> AblationRun:
    """The ablation's smoke preset (both data sets, 2 seeds, 2 epochs), run once per session.

    Tests must copy the directory before changing or deleting anything in it.
    """
    out = tmp_path_factory.mktemp("ablation-smoke") / "run"
    result = reproduce("ablation", preset="smoke", out=out, data_dir=data_root, progress=False)
    assert isinstance(result, AblationRun)
    return result
