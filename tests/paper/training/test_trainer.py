"""Trainer: SGD arithmetic, learning, determinism, learning-rate schedule, progress, history."""

from __future__ import annotations

import copy
import io
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from rmtprune.paper.models import FullyConnected, PaperCNN, initialize
from rmtprune.paper.training import EpochRecord, History, TrainConfig, Trainer, evaluate, paper_loss


def blobs(n: int, d: int, seed: int, classes: int = 2, gap: float = 3.0) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    means = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * gap
    return means[y] + torch.randn(n, d, generator=g), y


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 20, 20, generator=g)
    x[:, :, 5:15, 5:15] += 1.5 * (2 * y.float() - 1).view(-1, 1, 1, 1)
    return x, y


def small_cnn(seed: int) -> PaperCNN:
    net = PaperCNN(channels=(4, 4, 4, 4, 4), fc_width=16, input_size=20, num_classes=2)
    return initialize(net, "normal", generator=seed)  # type: ignore[return-value]


def metrics(history: History) -> list[tuple[Any, ...]]:
    """Every field except the wall time."""
    return [tuple(v for k, v in r.to_dict().items() if k != "wall_time") for r in history.records]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_epochs_equal_hand_sgd_with_momentum_and_decay() -> None:
    x, y = blobs(16, 5, seed=0, classes=3)
    model = initialize(FullyConnected([5, 3]), "normal", generator=0)
    start = copy.deepcopy(model)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9, l1=0.01, l2=0.02, lr_decay=0.5)
    Trainer(model, (x, y), (x, y), cfg, progress=False).fit()

    def grads(net: nn.Module) -> list[torch.Tensor]:
        net.zero_grad()
        paper_loss(net(x), y, net.parameters(), l1=0.01, l2=0.02).backward()
        return [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]

    g0 = grads(start)
    with torch.no_grad():
        for p, g in zip(start.parameters(), g0, strict=True):
            p -= 0.1 * g  # epoch 1: momentum buffer = gradient
    g1 = grads(start)
    with torch.no_grad():
        for p, a, b in zip(start.parameters(), g0, g1, strict=True):
            p -= 0.05 * (0.9 * a + b)  # epoch 2: lr halved, buffer = 0.9·g0 + g1
    for p, q in zip(model.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def xor(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of [-1, 1]² away from the axes, labelled by the sign of x₀·x₁ (not linear)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3 * n, 2, generator=g) * 2 - 1
    x = x[(x.abs() > 0.1).all(dim=1)][:n]
    return x, (x[:, 0] * x[:, 1] > 0).long()


def test_learns_separable_data() -> None:
    x, y = xor(800, seed=1)
    xt, yt = xor(400, seed=2)
    model = initialize(FullyConnected([2, 64, 2]), "normal", generator=1)
    before = evaluate(model, (xt, yt))
    cfg = TrainConfig(epochs=5, batch_size=32)
    history = Trainer(model, (x, y), (xt, yt), cfg, progress=False).fit()
    assert before.accuracy < 0.7
    assert history[-1].test_accuracy >= 0.97
    assert history[-1].test_loss < 0.5 * before.loss
    assert history[-1].train_loss < 0.5 * history[0].train_loss
    assert history.column("n_params") == [2 * 64 + 64 + 64 * 2 + 2] * 5


def test_same_seed_is_bitwise_reproducible_and_seed_matters() -> None:
    x, y = images(96, seed=3)
    cfg = TrainConfig(epochs=2, batch_size=16)
    runs = []
    for seed in (0, 0, 1):
        model = small_cnn(5)
        config = TrainConfig(epochs=2, batch_size=16, seed=seed)
        runs.append((model, Trainer(model, (x, y), (x, y), config, progress=False).fit()))
    (m0, h0), (m1, h1), (m2, h2) = runs
    assert same_weights(m0, m1) and metrics(h0) == metrics(h1)
    assert not same_weights(m0, m2) and metrics(h0) != metrics(h2)
    assert cfg.seed == 0


def test_learning_rate_schedule() -> None:
    every = TrainConfig(epochs=5, lr=0.02, lr_decay=0.96)
    assert [every.learning_rate(e) for e in range(1, 6)] == pytest.approx(
        [0.02 * 0.96**k for k in range(5)], rel=1e-15
    )
    at = TrainConfig(epochs=6, lr=0.1, lr_decay=0.5, lr_decay_epochs=[2, 4])  # type: ignore[arg-type]
    assert at.lr_decay_epochs == (2, 4)
    assert [at.learning_rate(e) for e in range(1, 7)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert TrainConfig.from_dict(at.to_dict()) == at
    with pytest.raises(ValueError, match="'lr_decay'"):
        TrainConfig(epochs=1, lr_decay=1.5)
    with pytest.raises(ValueError, match="'objective'"):
        TrainConfig(epochs=1, objective="hinge")
    with pytest.raises(TypeError, match="'epochs'"):
        TrainConfig(epochs=2.5)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Report:
    changed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed}


class _ReplacingPruner:
    """Replaces the first layer's weight Parameter at every epoch (optimizer must be rebuilt)."""

    def __init__(self, model: FullyConnected) -> None:
        self.model = model

    def step(self, epoch: int) -> _Report:
        layer = self.model.layers[0]
        layer.weight = nn.Parameter(layer.weight.detach().clone())
        return _Report(True)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _rebuild(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    hyper = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    new = torch.optim.SGD([{"params": list(model.parameters()), **hyper}])
    for p in model.parameters():
        if p in optimizer.state:
            new.state[p] = optimizer.state[p]
    return new


def test_both_arms_get_the_same_learning_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    from rmtprune.paper.training import state as checkpoint

    monkeypatch.setattr(checkpoint, "describe_structure", lambda m: {})
    monkeypatch.setattr(checkpoint, "apply_structure", lambda m, s: m)
    x, y = blobs(64, 6, seed=4)
    cfg = TrainConfig(epochs=4, batch_size=16, lr_decay=0.5, lr_decay_epochs=(1, 3))
    seen: dict[str, list[float]] = {"normal": [], "pruned": []}
    for arm in seen:
        model = initialize(FullyConnected([6, 8, 2]), "normal", generator=2)
        pruner = _ReplacingPruner(model) if arm == "pruned" else None

        def record(trainer: Trainer, _: EpochRecord, arm: str = arm) -> None:
            seen[arm].append(trainer.optimizer.param_groups[0]["lr"])

        history = Trainer(
            model,
            (x, y),
            (x, y),
            cfg,
            pruner=pruner,
            progress=False,
            on_epoch_end=record,
            update_optimizer=_rebuild,
        ).fit()
        assert history.column("lr") == [0.02, 0.01, 0.01, 0.005]
    assert seen["normal"] == seen["pruned"] == [0.02, 0.01, 0.01, 0.005]


def test_history_files_and_round_trips(tmp_path: Any) -> None:
    x, y = blobs(40, 4, seed=5)
    model = initialize(FullyConnected([4, 2]), "normal", generator=3)
    history = Trainer(
        model, (x, y), (x, y), TrainConfig(epochs=2, batch_size=8), run_dir=tmp_path, progress=False
    ).fit()
    assert History.from_dict(json.loads((tmp_path / "history.json").read_text())) == history
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].split(",") == [
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "n_params",
        "wall_time",
        "pruning",
    ]
    row = lines[2].split(",")
    assert int(row[0]) == 2 and float(row[5]) == history[1].test_accuracy
    assert history.column("epoch") == [1, 2]
    assert all(0 <= a <= 1 for a in history.column("test_accuracy"))
    with pytest.raises(ValueError, match="'name'"):
        history.column("accuracy")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_only_on_terminals(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = blobs(20, 3, seed=6)
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    Trainer(FullyConnected([3, 2]), (x, y), (x, y), TrainConfig(epochs=2), progress=True).fit()
    lines = [line for line in tty.getvalue().splitlines() if "train loss" in line]
    assert [line.split(" train loss ")[0].split("\r")[-1][-9:] for line in lines] == [
        "epoch 1/2",
        "epoch 2/2",
    ]
    monkeypatch.undo()
    x, y = blobs(20, 3, seed=6)
    Trainer(FullyConnected([3, 2]), (x, y), (x, y), TrainConfig(epochs=1)).fit()
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal


def test_regression_objective() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(128, 1, generator=g) * 2
    y = torch.sin(3 * x[:, 0])
    model = initialize(FullyConnected([1, 32, 1], output="identity"), "normal", generator=4)
    cfg = TrainConfig(epochs=30, batch_size=16, lr=0.05, objective="mse", l1=0.0, l2=0.0)
    history = Trainer(model, (x, y), (x, y), cfg, progress=False).fit()
    assert math.isnan(history[-1].test_accuracy)
    assert history[-1].test_loss < 0.2 * float(y.var())


def test_trainer_rejects_bad_input() -> None:
    x, y = blobs(8, 3, seed=8)
    model = FullyConnected([3, 2])
    with pytest.raises(TypeError, match="'train_data'"):
        Trainer(model, x, (x, y), TrainConfig(epochs=1))
    with pytest.raises(TypeError, match="'config'"):
        Trainer(model, (x, y), (x, y), {"epochs": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'resume'"):
        Trainer(model, (x, y), (x, y), TrainConfig(epochs=1), resume=True)
    other = _ReplacingPruner(FullyConnected([3, 2]))
    with pytest.raises(ValueError, match="'pruner'"):
        Trainer(model, (x, y), (x, y), TrainConfig(epochs=1), pruner=other)


class _ZeroingPruner:
    """Zeros the output layer in place: the evaluation that follows sees uniform outputs."""

    def __init__(self, model: FullyConnected) -> None:
        self.model = model
        self.epochs: list[int] = []

    def step(self, epoch: int) -> _Report:
        self.epochs.append(epoch)
        with torch.no_grad():
            for p in self.model.layers[-1].parameters():
                p.zero_()
        return _Report(False)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = list(state["epochs"])


def test_pruning_step_comes_after_training_and_before_evaluation() -> None:
    x, y = xor(200, seed=3)
    model = initialize(FullyConnected([2, 16, 2]), "normal", generator=5)
    pruner = _ZeroingPruner(model)
    history = Trainer(
        model, (x, y), (x, y), TrainConfig(epochs=2, batch_size=20), pruner=pruner, progress=False
    ).fit()
    assert pruner.epochs == [1, 2]
    for record in history:
        assert record.test_loss == pytest.approx(math.log(2), rel=1e-6)  # uniform outputs
        assert record.test_accuracy == int((y == 0).sum()) / len(y)  # argmax ties -> class 0
        assert record.pruning == {"changed": False}
    assert history[1].train_accuracy > 0.6  # epoch 2 trained from the zeroed layer
