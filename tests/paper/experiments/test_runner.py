"""End-to-end runs of each experiment's smoke preset, identical starts, resume and determinism."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from rmtprune.paper.data import DatasetNotFoundError
from rmtprune.paper.experiments import (
    DEMO_CONFIG,
    RunResult,
    get_config,
    run_demo,
    run_experiment,
)
from rmtprune.paper.experiments.classification.claims import CLAIMS
from rmtprune.paper.experiments.classification.experiments import CLASSIFICATION_EXPERIMENTS
from rmtprune.paper.training import EpochRecord

from . import load_metrics, real_data_root

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(smoke_runs: dict[str, RunResult]) -> dict[str, RunResult]:
    return smoke_runs


EXPERIMENTS = tuple(CLASSIFICATION_EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_outputs_exist(runs: dict[str, RunResult], experiment: str) -> None:
    result = runs[experiment]
    run = result.run_dir
    cfg = get_config(experiment, "smoke")
    for name in ("config.json", "environment.json", "metrics.json", "report.md", "report.html"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["config"] == cfg.to_dict()
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["seed"] for s in metrics["seeds"]] == list(cfg.seeds)
    for seed in metrics["seeds"]:
        for arm in ("normal", "pruned"):
            records = seed[arm]["history"]["records"]
            assert [r["epoch"] for r in records] == list(range(1, cfg.epochs + 1))
            assert len(seed[arm]["layers"]) == cfg.epochs + 1
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(cfg.seeds) * 2 * (cfg.epochs + 1)
    rank_columns = [c for c in rows[0] if c.endswith(".rank")]
    assert rank_columns and all(r[c] != "" for r in rows for c in rank_columns)
    with open(run / "after_training.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(cfg.seeds) * 3 * 2
    names = {p.name for p in result.figures}
    assert {"accuracy_vs_epoch.png", "params_vs_epoch.png", "accuracy_vs_params.png"} <= names
    assert any(n.startswith("spectrum_") for n in names)
    for path in result.figures:
        assert path.read_bytes()[:8] == PNG, path


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_report_states_each_claim(runs: dict[str, RunResult], experiment: str) -> None:
    result = runs[experiment]
    md = (result.run_dir / "report.md").read_text()
    page = (result.run_dir / "report.html").read_text()
    for claim in CLAIMS.values():
        assert claim in md
        assert claim.replace('"', "&quot;") in page
    verdicts = {c.key: c.verdict for c in result.claims}
    assert verdicts["loss-landscape"] == "not tested here"
    fc = experiment.startswith("fc")
    assert (verdicts["fc-accuracy-variance"] == "not applicable") is not fc
    # self-contained page: every figure embedded, no link to a file
    assert page.count('src="data:image/png;base64,') == len(result.figures)
    assert 'src="figures/' not in page
    for path in result.figures:
        assert f"]({path.relative_to(result.run_dir).as_posix()})" in md


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_values_are_sane(
    runs: dict[str, RunResult], data_root: Path, experiment: str
) -> None:
    result = runs[experiment]
    chance = 1 / result.config.num_classes
    floor = 0.2 if (real_data_root() is not None and experiment == "fc-cifar10") else 0.5
    for s in result.seeds:
        assert s.normal.final_accuracy > max(floor, 2 * chance)
        assert s.pruned.final_accuracy > max(floor, 2 * chance)
        dense = s.normal.initial.n_params
        assert set(s.normal.params_curve()) == {dense}
        curve = s.pruned.params_curve()
        assert curve[0] == dense
        assert all(b <= a for a, b in itertools.pairwise(curve))
        assert curve[-1] < dense
        # per-layer ranks never grow in the pruned arm and fall below full rank
        for name in {r.name for r in s.pruned.layers[0]}:
            ranks = [next(r.rank for r in ep if r.name == name) for ep in s.pruned.layers]
            assert all(b <= a for a, b in itertools.pairwise(ranks))
    reduction = result.summary[1]
    assert reduction.method == "pruned" and 0 < reduction.reduction < 1


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_both_arms_start_identical(runs: dict[str, RunResult], experiment: str) -> None:
    for s in runs[experiment].seeds:
        assert s.normal.initial_weights_sha256 == s.pruned.initial_weights_sha256
        assert s.normal.initial == s.pruned.initial
        first_n, first_p = s.normal.history[0], s.pruned.history[0]
        # epoch 1 trains before its pruning step: the training metrics are bitwise equal
        assert first_n.train_loss == first_p.train_loss
        assert first_n.train_accuracy == first_p.train_accuracy
        assert first_n.lr == first_p.lr
        assert first_p.pruning is not None and first_p.pruning["epoch"] == 1


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_baselines_hit_the_budget(runs: dict[str, RunResult], experiment: str) -> None:
    for s in runs[experiment].seeds:
        target = s.pruned.final_params
        dense = s.normal.final_params
        by_method = {r.method: r for r in s.after_training}
        assert set(by_method) == {"mp-oneshot", "magnitude", "svd-energy"}
        mag, svd = by_method["magnitude"], by_method["svd-energy"]
        assert mag.target_params == target == svd.target_params
        assert mag.after.n_params == target
        assert mag.n_zeroed == dense - target
        assert abs(svd.after.n_params / target - 1) < 0.01
        assert svd.energy is not None and 0 < svd.energy <= 1
        oneshot = by_method["mp-oneshot"]
        assert oneshot.target_params is None and oneshot.after.n_params < dense
        for r in by_method.values():
            assert len(r.finetune_history) == runs[experiment].config.finetune_epochs


def _every_two_config() -> Any:
    return get_config("fc-mnist", "smoke").replace(every=2, seeds=(0,), finetune_epochs=1)


@pytest.fixture(scope="module")
def reference(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out = tmp_path_factory.mktemp("reference") / "run"
    return run_experiment(_every_two_config(), out=out, data_dir=data_root, progress=False)


def test_arms_bitwise_equal_before_first_pruning_epoch(reference: RunResult) -> None:
    s = reference.seeds[0]
    one_n, one_p = s.normal.history[0].to_dict(), s.pruned.history[0].to_dict()
    for key in ("lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "n_params"):
        assert one_n[key] == one_p[key], key  # epoch 1: no pruning yet (every = 2)
    assert s.normal.layers[1] == s.pruned.layers[1]
    two_n, two_p = s.normal.history[1], s.pruned.history[1]
    assert two_n.train_loss == two_p.train_loss  # trained identically, pruned afterwards
    assert two_p.pruning is not None and two_p.pruning["changed"]
    assert two_p.n_params < two_n.n_params and two_p.test_loss != two_n.test_loss


class Killed(Exception):
    pass


@pytest.mark.parametrize(
    "where",
    [
        ("normal", 2),
        pytest.param(("pruned", 1), marks=pytest.mark.slow),
        pytest.param(("pruned", 3), marks=pytest.mark.slow),
    ],
)
def test_killed_run_resumes_to_identical_metrics(
    reference: RunResult, data_root: Path, tmp_path: Path, where: tuple[str, int]
) -> None:
    def hook(seed: int, arm: str, record: EpochRecord) -> None:
        if (arm, record.epoch) == where:
            raise Killed

    out = tmp_path / "run"
    cfg = _every_two_config()
    with pytest.raises(Killed):
        run_experiment(cfg, out=out, data_dir=data_root, progress=False, on_epoch_end=hook)
    assert not (out / "metrics.json").exists()
    first = json.loads((out / "environment.json").read_text())
    resumed = run_experiment(cfg, out=out, data_dir=data_root, progress=False)
    assert load_metrics(out) == load_metrics(reference.run_dir)
    assert resumed.summary == reference.summary
    environment = json.loads((out / "environment.json").read_text())
    assert environment["started"] == first["started"]  # the first process's record is kept
    assert [set(e) for e in environment["resumed"]] == [set(first)]


def test_resume_refuses_other_config(reference: RunResult, data_root: Path) -> None:
    with pytest.raises(ValueError, match="differs in \\['epochs'\\]"):
        run_experiment(
            _every_two_config().replace(epochs=4), out=reference.run_dir, data_dir=data_root
        )
    with pytest.raises(ValueError, match="resume=True"):
        run_experiment(_every_two_config(), out=reference.run_dir, data_dir=data_root, resume=False)


def test_missing_data_says_how_to_provide_it(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    with pytest.raises(DatasetNotFoundError) as info:
        run_demo(data_dir=tmp_path / "empty", out=out, progress=False)
    message = str(info.value)
    for hint in ("RMTPRUNE_DATA", "--data-dir", "--download", "FashionMNIST/raw"):
        assert hint in message
    assert not out.exists()


def test_demo_config_is_a_small_fashion_comparison() -> None:
    assert DEMO_CONFIG.dataset == "fashion-mnist"
    assert DEMO_CONFIG.architecture == "fc" and DEMO_CONFIG.widths[0] == 784
    assert 2 <= len(DEMO_CONFIG.seeds) <= 3
    assert DEMO_CONFIG.train_subset is not None and DEMO_CONFIG.train_subset < 60000
