"""Experiment configuration: SPEC section 6 defaults, experiments as small overrides, presets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rmtprune.factorize import LowRankConv2d
from rmtprune.paper.experiments import (
    EXPERIMENTS,
    Experiment,
    ExperimentConfig,
    get_config,
    get_experiment,
    list_experiments,
    reproduce,
)
from rmtprune.paper.experiments.classification.experiments import CLASSIFICATION_EXPERIMENTS
from rmtprune.paper.experiments.config import PRESETS


def test_defaults_are_the_papers_common_settings() -> None:
    cfg = ExperimentConfig()
    train = cfg.train_config(0)
    assert (train.lr, train.momentum, train.batch_size) == (0.02, 0.9, 128)
    assert (train.l1, train.l2, train.objective) == (5e-6, 5e-6, "nll")
    assert cfg.init == "normal"
    assert cfg.widths == (784, 3000, 3000, 3000, 10)
    assert cfg.channels == (32, 64, 128, 256, 512) and cfg.fc_width == 1000
    assert cfg.dropout == 0.35
    assert (cfg.fit_cutoff, cfg.conv_fit_cutoff) == (0.05, 0.6)
    assert cfg.min_rank_resolved == 10  # the number of classes, as the authors
    assert len(cfg.seeds) >= 3


@pytest.mark.parametrize("epochs", [4, 12, 40])
def test_linear_schedule_scales_with_the_run(epochs: int) -> None:
    cfg = ExperimentConfig(epochs=epochs)
    t = 0.75 * epochs
    schedule = cfg.schedule()
    for e in range(epochs + 1):
        assert schedule(e) == pytest.approx(max(0.0, 1.0 - e / t), abs=1e-15)
    assert ExperimentConfig(epochs=epochs, schedule_epochs=300).schedule()(30) == 0.9


def test_both_arms_share_one_learning_rate_schedule() -> None:
    cfg = ExperimentConfig(epochs=6)
    train = cfg.train_config(4)
    assert train.seed == 4 and train.epochs == 6
    assert [train.learning_rate(e) for e in (1, 2, 4)] == pytest.approx(
        [0.02, 0.02 * 0.96, 0.02 * 0.96**3], rel=1e-15
    )
    assert cfg.final_lr() == pytest.approx(0.02 * 0.96**6, rel=1e-15)
    every2 = ExperimentConfig(epochs=6, every=2).train_config(0)
    # decay after each pruning epoch only (2 and 4): epochs 1-2, 3-4, 5-6
    assert [every2.learning_rate(e) for e in range(1, 7)] == pytest.approx(
        [0.02, 0.02, 0.0192, 0.0192, 0.018432, 0.018432], rel=1e-12
    )
    ft = cfg.train_config(4, epochs=2, lr=0.01)
    assert (ft.epochs, ft.learning_rate(2), ft.seed) == (2, 0.01, 4)


def test_conv_layers_get_the_authors_cutoff() -> None:
    assert ExperimentConfig().fit_cutoffs() == 0.05
    cutoffs = ExperimentConfig(architecture="cnn").fit_cutoffs()
    assert not isinstance(cutoffs, float)
    assert cutoffs[nn.Conv2d] == 0.6 and cutoffs[LowRankConv2d] == 0.6
    assert cutoffs[object] == 0.05


def test_build_model_same_seed_same_weights() -> None:
    cfg = ExperimentConfig(hidden=(30, 20))
    a, b, c = cfg.build_model(1), cfg.build_model(1), cfg.build_model(2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.0.weight"], sc["layers.0.weight"])
    weight = sa["layers.0.weight"].double()
    assert float(weight.var()) * 784 == pytest.approx(1.0, rel=0.05)  # N(0, 1/n)
    assert float(sa["layers.0.bias"].abs().max()) == 0.0
    cnn = ExperimentConfig(architecture="cnn", dataset="cifar10", channels=(4,) * 5)
    model = cnn.build_model(0)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_every_experiment_only_overrides_what_differs() -> None:
    base = ExperimentConfig().to_dict()
    allowed = {"experiment", "preset", "dataset", "architecture", "epochs", "finetune_epochs"}
    for name in CLASSIFICATION_EXPERIMENTS:
        paper = get_config(name, "paper").to_dict()
        changed = {k for k, v in paper.items() if base[k] != v}
        assert changed <= allowed, (name, changed)
    assert get_config("fc-cifar10", "paper").widths == (3072, 3000, 3000, 3000, 10)
    assert get_config("fc-mnist", "paper").widths == (784, 3000, 3000, 3000, 10)
    assert get_config("cnn-fashion", "paper").channels == (32, 64, 128, 256, 512)


@pytest.mark.parametrize("name", CLASSIFICATION_EXPERIMENTS)
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_keep_the_protocol(name: str, preset: str) -> None:
    cfg = get_config(name, preset)
    assert (cfg.experiment, cfg.preset) == (name, preset)
    assert cfg.lr == 0.02 and cfg.momentum == 0.9 and cfg.lr_decay == 0.96
    assert cfg.schedule_epochs is None and cfg.every == 1
    assert cfg.schedule_epochs_resolved == pytest.approx(0.75 * cfg.epochs)
    if preset != "smoke":
        assert cfg.batch_size == 128 and len(cfg.seeds) == 3
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_values_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="'dataset' parameter of ExperimentConfig"):
        ExperimentConfig(dataset="svhn")
    with pytest.raises(ValueError, match="'seeds'"):
        ExperimentConfig(seeds=(1, 1))
    with pytest.raises(ValueError, match="'alpha'"):
        ExperimentConfig(alpha=0.7)
    with pytest.raises(ValueError, match="'experiment_id' parameter of get_config"):
        get_config("fc-svhn")
    with pytest.raises(ValueError, match="'experiment_id' parameter of get_config"):
        get_config("theory")  # an analysis experiment has no ExperimentConfig
    with pytest.raises(ValueError, match="'experiment_id' parameter of get_experiment"):
        get_experiment("fc-svhn")
    with pytest.raises(ValueError, match="'preset'"):
        CLASSIFICATION_EXPERIMENTS["fc-mnist"].config("huge")
    with pytest.raises(ValueError, match="'values'"):
        ExperimentConfig.from_dict({"width": 3})


def test_derived_values_are_recorded() -> None:
    derived = get_config("fc-fashion", "small").derived()
    assert derived["schedule"] == "Linear(T=9)"
    assert derived["min_rank"] == 10
    assert math.isclose(derived["finetune_lr"], 0.02 * 0.96**12)


def test_seeds_argument_of_reproduce() -> None:
    from rmtprune.paper.experiments.seeds import seed_tuple

    assert seed_tuple(3) == (0, 1, 2)
    assert seed_tuple([5, 7]) == (5, 7)
    assert seed_tuple("3") == (0, 1, 2) and seed_tuple("5,7") == (5, 7)
    with pytest.raises(ValueError, match="'seeds' parameter of reproduce"):
        seed_tuple(0)
    with pytest.raises(ValueError, match="'seeds' parameter of reproduce"):
        seed_tuple("three")


CLASSIFICATION = ("fc-mnist", "fc-fashion", "cnn-mnist", "cnn-fashion", "fc-cifar10")
TEN = (*CLASSIFICATION, "theory", "init", "regression", "landscape", "ablation")


def test_one_registry_lists_the_ten_experiments() -> None:
    assert list_experiments() == TEN
    assert tuple(EXPERIMENTS) == TEN


@pytest.mark.parametrize("name", TEN)
def test_every_experiment_follows_the_protocol(name: str) -> None:
    experiment = get_experiment(name)
    assert isinstance(experiment, Experiment) and experiment.id == name
    assert set(experiment.presets) >= set(PRESETS)
    assert set(experiment.presets) == set(PRESETS) or name == "ablation"
    assert experiment.description == (
        f"SPEC {experiment.section}: {experiment.title}"
        if name in CLASSIFICATION_EXPERIMENTS
        else f"{experiment.section}: {experiment.title}"
    )


@pytest.mark.parametrize("name", TEN)
def test_reproduce_accepts_every_listed_id(name: str) -> None:
    # an accepted id gets as far as the preset check; an unknown one is refused before it
    with pytest.raises(ValueError, match="'preset' parameter of reproduce"):
        reproduce(name, preset="huge", out="/tmp/never-written")
    with pytest.raises(ValueError, match="'experiment_id' parameter of reproduce"):
        reproduce(name + "-x", preset="huge", out="/tmp/never-written")
