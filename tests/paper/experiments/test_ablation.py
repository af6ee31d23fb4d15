"""The regularisation × pruning ablation: identical starts, arms, statistics, resume, presets."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from rmtprune.paper.experiments import reproduce
from rmtprune.paper.experiments.ablation.answers import answer, verdicts
from rmtprune.paper.experiments.ablation.arms import ARM_NAMES, ARMS
from rmtprune.paper.experiments.ablation.experiment import ABLATION
from rmtprune.paper.experiments.ablation.results import (
    AblationArm,
    AblationRun,
    AblationSeed,
    DatasetResult,
)
from rmtprune.paper.experiments.ablation.run import run_ablation
from rmtprune.paper.experiments.classification.baselines import EvalPoint
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.registry import list_experiments
from rmtprune.paper.experiments.results import ArmResult
from rmtprune.paper.experiments.stats import variance_comparison
from rmtprune.paper.training import EpochRecord, History, evaluate
from rmtprune.paper.training import state as training_state

from . import strip_times

DATASETS = ("fc-mnist", "fc-fashion")


@pytest.fixture(scope="module")
def run(ablation_smoke: AblationRun) -> AblationRun:
    return ablation_smoke


@pytest.fixture(scope="module")
def metrics(run: AblationRun) -> dict[str, Any]:
    return json.loads((run.run_dir / "metrics.json").read_text())


def _sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _state(run: AblationRun, dataset: str, seed: int, arm: str) -> training_state.TrainingState:
    folder = run.run_dir / dataset / f"seed-{seed}" / arm
    return training_state.load_state(training_state.state_path(folder))


def test_the_smoke_run_writes_every_file(run: AblationRun) -> None:
    assert [d.experiment for d in run.datasets] == list(DATASETS)
    for name in ("config.json", "environment.json", "metrics.csv", "final.csv", "report.html"):
        assert (run.run_dir / name).is_file(), name
    assert len(run.figures) == 6 and all(p.read_bytes()[:4] == b"\x89PNG" for p in run.figures)
    report = (run.run_dir / "report.md").read_text()
    for figure in run.figures:
        assert f"]({figure.relative_to(run.run_dir).as_posix()})" in report
    for d in run.datasets:
        assert d.config.epochs == 2 and d.config.seeds == (0, 1) and d.config.train_subset == 1000
        assert [v.key for v in run.verdicts[d.experiment]] == [
            "a-unregularised",
            "b-regularised",
            "c-variance-unregularised",
            "c-variance-regularised",
            "d-mp-vs-l1l2",
        ]


def test_four_arms_start_from_bitwise_identical_weights(run: AblationRun) -> None:
    for d in run.datasets:
        for s in d.seeds:
            expected = _sha256(d.config.build_model(s.seed))  # built here, independently
            digests = {a.result.initial_weights_sha256 for a in s.arms}
            assert digests == {expected}
            assert len({a.result.initial for a in s.arms}) == 1  # same epoch-0 evaluation
        assert len({s.arms[0].result.initial_weights_sha256 for s in d.seeds}) == len(d.seeds)


def test_arms_differ_only_in_regularisation_and_pruning(run: AblationRun) -> None:
    for d in run.datasets:
        dense = sum(p.numel() for p in d.config.build_model(0).parameters())
        for s in d.seeds:
            saved = {a: _state(run, d.experiment, s.seed, a) for a in ARM_NAMES}
            for arm in ARMS:
                cfg = saved[arm.name].config
                assert (cfg["l1"], cfg["l2"]) == ((5e-6, 5e-6) if arm.regularised else (0.0, 0.0))
                assert (saved[arm.name].pruner_state is None) == (not arm.pruned)
                others = {k: v for k, v in cfg.items() if k not in ("l1", "l2")}
                first = {k: v for k, v in saved["neither"].config.items() if k not in ("l1", "l2")}
                assert others == first  # same lr schedule, seed, batch size, ...
                params = s.arm(arm.name).result.params_curve()
                if arm.pruned:
                    assert params[0] == dense and all(p < dense for p in params[1:])
                else:
                    assert params == [dense] * (d.config.epochs + 1)
            # pruning acts after an epoch's training pass: epoch 1 trains identically
            one = {a: s.arm(a).result.history[0] for a in ARM_NAMES}
            assert one["neither"].train_loss == one["mp"].train_loss
            assert one["l1l2"].train_loss == one["both"].train_loss
            assert one["neither"].train_loss != one["l1l2"].train_loss  # L1/L2 do act
            assert one["neither"].test_loss != one["mp"].test_loss  # and so does pruning
            assert len({tuple(s.arm(a).result.history.column("lr")) for a in ARM_NAMES}) == 1


def test_train_accuracy_is_the_final_networks_on_the_training_set(
    run: AblationRun, data_root: Path
) -> None:
    d = run.datasets[0]
    train, _ = d.config.load_data(data_root)
    s = d.seeds[0]
    for name in ("neither", "mp"):
        saved = _state(run, d.experiment, s.seed, name)
        model = d.config.build_model(s.seed)
        if saved.structure is not None:
            model = training_state.apply_model_structure(model, saved.structure)
        model.load_state_dict(saved.model_state)
        found = evaluate(model, train)
        assert s.arm(name).train_accuracy == found.accuracy
        assert s.arm(name).train_loss == pytest.approx(found.loss, rel=1e-12)
    rows = list(csv.DictReader((run.run_dir / "final.csv").open()))
    assert len(rows) == 2 * 2 * 4
    key = (d.experiment, str(s.seed), "mp")
    first = next(r for r in rows if (r["experiment"], r["seed"], r["arm"]) == key)
    assert float(first["train_accuracy"]) == s.arm("mp").train_accuracy
    assert float(first["running_train_accuracy"]) == s.arm("mp").result.history[-1].train_accuracy


def _accuracies(entry: dict[str, Any], arm: str) -> list[float]:
    out = []
    for seed in entry["seeds"]:
        (found,) = [a for a in seed["arms"] if a["arm"] == arm]
        out.append(found["result"]["history"]["records"][-1]["test_accuracy"])
    return out


@pytest.mark.parametrize("dataset", DATASETS)
def test_paired_statistics_equal_an_independent_recomputation(
    metrics: dict[str, Any], run: AblationRun, dataset: str
) -> None:
    entry = metrics["datasets"][dataset]
    answers = entry["answers"]
    report = (run.run_dir / "report.md").read_text()
    acc = {arm: _accuracies(entry, arm) for arm in ARM_NAMES}
    for key, a, b in (
        ("a_unregularised", "mp", "neither"),
        ("b_regularised", "both", "l1l2"),
        ("d_mp_vs_l1l2", "mp", "l1l2"),
    ):
        test = stats.ttest_rel(acc[a], acc[b])
        interval = test.confidence_interval(0.95)
        stored = answers[key]
        assert stored["n"] == 2
        assert stored["mean"] == pytest.approx(np.mean(np.subtract(acc[a], acc[b])), abs=1e-15)
        assert stored["p_value"] == pytest.approx(test.pvalue, rel=1e-9)
        assert (stored["ci_low"], stored["ci_high"]) == pytest.approx(
            (interval.low, interval.high), rel=1e-9
        )
        assert f"p = {test.pvalue:.3g}" in report
    for key in ("c_variance_unregularised", "c_variance_regularised"):
        assert answers[key]["p_value"] is None  # two seeds: no variance test
    assert answers["arms"]["mp"]["test_accuracy"] == acc["mp"]
    verdicts_ = {v["key"]: v["verdict"] for v in entry["verdicts"]}
    p_a = answers["a_unregularised"]["p_value"]
    higher = np.mean(acc["mp"]) > np.mean(acc["neither"])
    expected = "INCONCLUSIVE" if p_a >= 0.05 else ("HOLDS" if higher else "DOES NOT HOLD")
    assert verdicts_["a-unregularised"] == expected


class Killed(Exception):
    pass


def test_killed_run_resumes_to_identical_metrics(
    run: AblationRun, data_root: Path, tmp_path: Path
) -> None:
    configs = {"fc-mnist": ABLATION.configs("smoke", seeds=(0,))["fc-mnist"]}
    out = tmp_path / "run"

    def kill(seed: int, arm: str, record: EpochRecord) -> None:
        if (arm, record.epoch) == ("mp", 1):
            raise Killed

    with pytest.raises(Killed):
        run_ablation(
            configs, "smoke", out=out, data_dir=data_root, progress=False, on_epoch_end=kill
        )
    assert not (out / "metrics.json").exists()
    assert not (out / "fc-mnist" / "seed-0" / "ablation.json").exists()
    run_ablation(configs, "smoke", out=out, data_dir=data_root, progress=False)
    resumed = json.loads((out / "metrics.json").read_text())["datasets"]["fc-mnist"]["seeds"]
    reference = json.loads((run.run_dir / "metrics.json").read_text())["datasets"]["fc-mnist"]
    assert strip_times(resumed) == strip_times(reference["seeds"][:1])

    def trained(seed: int, arm: str, record: EpochRecord) -> None:
        raise AssertionError("a finished run must not train again")

    again = run_ablation(
        configs, "smoke", out=out, data_dir=data_root, progress=False, on_epoch_end=trained
    )
    assert strip_times(again.metrics["datasets"]["fc-mnist"]["seeds"]) == strip_times(resumed)
    with pytest.raises(ValueError, match=r"differs in \['experiments'\]"):
        run_ablation(
            {**configs, "fc-fashion": configs["fc-mnist"].replace(dataset="fashion-mnist")},
            "smoke",
            out=out,
            data_dir=data_root,
            progress=False,
        )
    with pytest.raises(ValueError, match="holds a run of 'ablation', not of the 'fc-mnist'"):
        reproduce("fc-mnist", preset="smoke", out=out, data_dir=data_root, progress=False)


def test_variance_comparison_is_the_pitman_morgan_test() -> None:
    rng = np.random.default_rng(3)
    for n in (3, 5, 8):
        a, b = rng.normal(size=n), 2.5 * rng.normal(size=n)
        c = variance_comparison(a, b)
        r, p = stats.pearsonr(a + b, a - b)  # cov(a + b, a − b) = var(a) − var(b)
        assert c.r == pytest.approx(r, rel=1e-12) and c.p_value == pytest.approx(p, rel=1e-9)
        assert c.ratio == pytest.approx(np.std(a, ddof=1) / np.std(b, ddof=1), rel=1e-12)
        t = stats.t.ppf(0.975, n - 2)
        assert c.r_critical == pytest.approx(t / math.sqrt(t * t + n - 2), rel=1e-12)
    assert variance_comparison([1.0, 2.0, 3.0], [1.0, 0.0, 2.0]).r_critical == pytest.approx(
        0.99692, abs=1e-5
    )
    shifted = variance_comparison([1.0, 2.0, 4.0], [0.5, 1.5, 3.5])  # equal variances exactly
    assert (shifted.r, shifted.p_value) == (0.0, 1.0) and shifted.ratio == pytest.approx(1.0)
    two = variance_comparison([1.0, 2.0], [3.0, 5.0])
    assert math.isnan(two.p_value) and two.ratio == pytest.approx(0.5)
    with pytest.raises(ValueError, match="'a' and 'b' parameters of variance_comparison"):
        variance_comparison([1.0, 2.0, 3.0], [1.0, 2.0])


def _seed(seed: int, accuracy: dict[str, float]) -> AblationSeed:
    arms = []
    for name, acc in accuracy.items():
        record = EpochRecord(1, 0.02, 0.5, 0.9, 0.4, acc, 100, 1.0)
        result = ArmResult(seed, name, EvalPoint(100, 2.3, 0.1), "x", History((record,)), ())
        arms.append(AblationArm(name, result, 0.3, 0.95))
    return AblationSeed(seed, tuple(arms))


def test_verdicts_follow_the_paired_test_rule() -> None:
    rows = [  # neither, l1l2, mp, both per seed
        (0.80, 0.950, 0.850, 0.960),
        (0.70, 0.851, 0.752, 0.840),
        (0.75, 0.899, 0.799, 0.910),
    ]
    seeds = tuple(_seed(i, dict(zip(ARM_NAMES, r, strict=True))) for i, r in enumerate(rows))
    a = answer(DatasetResult("fc-fashion", ExperimentConfig(), seeds))
    found = {v.key: v for v in verdicts(a)}
    assert a.unregularised.p_value < 0.05 and found["a-unregularised"].verdict == "HOLDS"
    assert a.regularised.p_value >= 0.05 and found["b-regularised"].verdict == "INCONCLUSIVE"
    assert a.mp_vs_l1l2.p_value < 0.05
    assert found["d-mp-vs-l1l2"].verdict == "MP only is lower"
    recovered = (np.mean([r[2] for r in rows]) - 0.75) / (np.mean([r[1] for r in rows]) - 0.75)
    assert a.gain_recovered == pytest.approx(recovered, rel=1e-12)
    # mp − neither is almost constant: equal spreads, so no variance verdict either way
    assert found["c-variance-unregularised"].verdict == "INCONCLUSIVE"
    assert "only |r| > 0.997" in found["c-variance-unregularised"].explanation


def test_no_share_of_a_gain_that_is_a_loss_and_no_spread_from_one_seed() -> None:
    rows = [(0.90, 0.89, 0.88, 0.90), (0.91, 0.90, 0.88, 0.89), (0.92, 0.91, 0.90, 0.91)]
    seeds = tuple(_seed(i, dict(zip(ARM_NAMES, r, strict=True))) for i, r in enumerate(rows))
    a = answer(DatasetResult("fc-fashion", ExperimentConfig(), seeds))
    # L1+L2 only is 1 point below neither, MP only 2.33 below: the ratio 2.33 is no share
    assert a.l1l2_gain == pytest.approx(-0.01) and math.isnan(a.gain_recovered)
    text = {v.key: v for v in verdicts(a)}["d-mp-vs-l1l2"].explanation
    assert "not defined: L1+L2 only is not above neither (-1.000 points)" in text
    assert "233 %" not in text
    one = answer(DatasetResult("fc-fashion", ExperimentConfig(), seeds[:1]))
    for v in verdicts(one):
        assert "nan" not in v.explanation, v.key
    assert "One seed: no spread, no variance test." in verdicts(one)[2].explanation


def test_registry_presets_and_the_manuscript_protocol() -> None:
    assert list_experiments()[-1] == "ablation"
    assert set(ABLATION.presets) == {"smoke", "small", "paper", "manuscript-small", "manuscript"}
    small = ABLATION.configs("small")
    assert list(small) == list(DATASETS)
    for name, cfg in small.items():  # the classification experiments' small preset, unchanged
        from rmtprune.paper.experiments.registry import get_config

        assert cfg.replace(experiment=name, preset="small") == get_config(name, "small")
    (manuscript,) = ABLATION.configs("manuscript").values()
    assert manuscript.widths == (784, 3000, 3000, 3000, 3000, 500, 10)
    assert manuscript.epochs == 100 and manuscript.dataset == "fashion-mnist"
    (cfg,) = ABLATION.configs("manuscript-small").values()
    assert cfg.epochs == 40 and (cfg.momentum, cfg.l1, cfg.l2) == (0.9, 1e-6, 1e-6)
    train = cfg.train_config(0)
    for epoch in range(1, cfg.epochs + 1):  # lr 0.01 × 0.96 every 4 epochs
        assert train.learning_rate(epoch) == pytest.approx(0.01 * 0.96 ** ((epoch - 1) // 4))
    assert [cfg.schedule()(e) for e in (4, 40, 200)] == [0.98, 0.8, 0.0]  # max(0, 1 − e/200)
    assert cfg.every == 4
    with pytest.raises(ValueError, match="'preset' parameter of reproduce must be one of"):
        reproduce("fc-mnist", preset="manuscript-small")
    with pytest.raises(ValueError, match="'import_seeds' parameter of reproduce"):
        reproduce("ablation", preset="smoke", import_seeds=["x/metrics.json"])
