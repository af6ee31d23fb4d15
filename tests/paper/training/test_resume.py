"""A run killed after any epoch and resumed ends bitwise equal to one never interrupted."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rmtprune import MPCriterion, Select
from rmtprune.paper.models import FullyConnected, PaperCNN, initialize
from rmtprune.paper.training import EpochRecord, History, TrainConfig, Trainer, load_state
from rmtprune.paper.training import state as ckpt


class Killed(Exception):
    pass


def _kill_after(epoch: int) -> Any:
    def hook(trainer: Trainer, record: EpochRecord) -> None:
        if record.epoch == epoch:
            raise Killed

    return hook


def _scramble_rngs() -> None:
    """What another job in the same process might do to the global generators."""
    torch.manual_seed(12345)
    random.seed(678)
    np.random.seed(91011)  # noqa: NPY002


def metrics(history: History) -> list[str]:
    """Each record without its wall time, as JSON (so that NaN equals NaN)."""
    return [
        json.dumps({k: v for k, v in r.to_dict().items() if k != "wall_time"}, sort_keys=True)
        for r in history
    ]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _cnn_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (80,), generator=g)
    x = torch.randn(80, 1, 20, 20, generator=g)
    x[:, :, 6:14, 6:14] += (2 * y.float() - 1).view(-1, 1, 1, 1)
    return x, y


def _cnn(seed: int) -> PaperCNN:
    net = PaperCNN(channels=(4, 4, 4, 4, 4), fc_width=16, input_size=20, num_classes=2)
    return initialize(net, "normal", generator=seed)  # type: ignore[return-value]


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_killed_cnn_run_resumes_bitwise(tmp_path: Path, kill_at: int) -> None:
    data = _cnn_data()
    cfg = TrainConfig(epochs=4, batch_size=16, lr_decay=0.9, seed=3)
    full_model = _cnn(0)
    full = Trainer(full_model, data, data, cfg, run_dir=tmp_path / "a", progress=False).fit()

    killed = Trainer(
        _cnn(0),
        data,
        data,
        cfg,
        run_dir=tmp_path / "b",
        progress=False,
        on_epoch_end=_kill_after(kill_at),
    )
    with pytest.raises(Killed):
        killed.fit()
    assert load_state(tmp_path / "b" / "checkpoint.pt").epoch == kill_at
    _scramble_rngs()
    model = _cnn(99)  # different initial weights: everything must come from the checkpoint
    resumed = Trainer(model, data, data, cfg, run_dir=tmp_path / "b", resume=True, progress=False)
    assert resumed.epoch == kill_at
    history = resumed.fit()
    assert same_weights(model, full_model)
    assert metrics(history) == metrics(full)
    assert [r.epoch for r in history] == [1, 2, 3, 4]


def test_resume_can_extend_a_finished_run(tmp_path: Path) -> None:
    data = _cnn_data()
    base = TrainConfig(epochs=3, batch_size=16)
    full_model = _cnn(1)
    full = Trainer(full_model, data, data, base, progress=False).fit()
    short = TrainConfig(epochs=2, batch_size=16)
    Trainer(_cnn(1), data, data, short, run_dir=tmp_path, progress=False).fit()
    again = Trainer(_cnn(1), data, data, short, run_dir=tmp_path, resume=True, progress=False)
    assert len(again.fit()) == 2  # nothing left to do
    model = _cnn(2)
    longer = Trainer(model, data, data, base, run_dir=tmp_path, resume=True, progress=False)
    assert metrics(longer.fit()) == metrics(full) and same_weights(model, full_model)
    other = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in \['lr'\]"):
        Trainer(_cnn(1), data, data, other, run_dir=tmp_path, resume=True)


def test_resume_without_checkpoint_starts_afresh(tmp_path: Path) -> None:
    data = _cnn_data()
    cfg = TrainConfig(epochs=1, batch_size=16)
    a, b = _cnn(4), _cnn(4)
    ha = Trainer(a, data, data, cfg, run_dir=tmp_path / "new", resume=True, progress=False).fit()
    hb = Trainer(b, data, data, cfg, progress=False).fit()
    assert metrics(ha) == metrics(hb) and same_weights(a, b)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _cnn_data()
    cfg = TrainConfig(epochs=2, batch_size=16)
    calls = {"n": 0}
    real_save = torch.save

    def flaky_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # die half-way through writing the second checkpoint
            f.write(b"partial")
            raise OSError("disk full")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        Trainer(_cnn(5), data, data, cfg, run_dir=tmp_path, progress=False).fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "history.csv",
        "history.json",
    ]
    assert load_state(tmp_path / "checkpoint.pt").epoch == 1


# --------------------------------------------------------- with a pruner (stand-in structure)


@dataclass(frozen=True)
class _Report:
    changed: bool
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "rank": self.rank}


class _SvdPruner:
    """Truncates the first layer to a rank that halves at each even epoch (state: step count).

    It draws from NumPy's and Python's global generators and replaces the weight
    Parameter, so the optimizer must be rebuilt and every RNG must be restored.
    """

    def __init__(self, model: FullyConnected) -> None:
        self.model = model
        self.steps = 0
        self.ranks: list[int] = []

    def step(self, epoch: int) -> _Report:
        if epoch % 2:
            return _Report(False, -1)
        self.steps += 1
        layer = self.model.layers[0]
        w = layer.weight.detach().double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = max(1, len(s) >> self.steps)
        shift = 1e-3 * (float(np.random.rand()) + random.random())  # noqa: NPY002
        layer.weight = nn.Parameter(((u[:, :r] * s[:r]) @ vh[:r] + shift).float())
        self.ranks.append(r)
        return _Report(True, r)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "ranks": list(self.ranks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.ranks = list(state["ranks"])


def _rebuild(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    hyper = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    params = list(model.parameters())
    new = torch.optim.SGD([{"params": params[::-1], **hyper}])  # a different order on purpose
    for p in params:
        if p in optimizer.state:
            new.state[p] = optimizer.state[p]
    return new


@pytest.mark.parametrize("kill_at", [2, 3])
def test_killed_run_with_pruner_resumes_bitwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int
) -> None:
    applied: list[dict[str, Any]] = []

    def apply(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
        applied.append(structure)
        return model

    monkeypatch.setattr(ckpt, "describe_structure", lambda m: {"stand-in": 1})
    monkeypatch.setattr(ckpt, "apply_structure", apply)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 12, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    cfg = TrainConfig(epochs=5, batch_size=16, seed=7)

    def run(run_dir: Path, **kwargs: Any) -> tuple[FullyConnected, History]:
        model = initialize(FullyConnected([12, 10, 2]), "normal", generator=2)
        history = Trainer(
            model,
            (x, y),
            (x, y),
            cfg,
            pruner=_SvdPruner(model),
            run_dir=run_dir,
            progress=False,
            update_optimizer=_rebuild,
            **kwargs,
        ).fit()
        return model, history

    full_model, full = run(tmp_path / "a")
    with pytest.raises(Killed):
        run(tmp_path / "b", on_epoch_end=_kill_after(kill_at))
    _scramble_rngs()
    model, history = run(tmp_path / "b", resume=True)
    assert applied == [{"stand-in": 1}]  # structure restored before the weights
    assert same_weights(model, full_model) and metrics(history) == metrics(full)
    assert [r.pruning for r in history] == [
        {"changed": False, "rank": -1},
        {"changed": True, "rank": 5},
        {"changed": False, "rank": -1},
        {"changed": True, "rank": 2},
        {"changed": False, "rank": -1},
    ]


# ------------------------------------------------------- real pruner and factorized layers


def test_real_pruner_structure_survives_resume(tmp_path: Path) -> None:
    pytest.importorskip("rmtprune.storage.format")
    pruner_module = pytest.importorskip("rmtprune.pruning.pruner")
    schedules = pytest.importorskip("rmtprune.pruning.schedules")
    from rmtprune.storage.format import describe_structure

    g = torch.Generator().manual_seed(2)
    means = torch.randn(4, 40, generator=g) * 2
    y = torch.randint(0, 4, (128,), generator=g)
    x = means[y] + torch.randn(128, 40, generator=g)
    cfg = TrainConfig(epochs=4, batch_size=32, seed=1)

    def run(run_dir: Path, **kwargs: Any) -> tuple[FullyConnected, History]:
        model = initialize(FullyConnected([40, 64, 64, 4]), "normal", generator=3)
        pruner = pruner_module.SpectralPruner(
            model,
            schedule=schedules.Constant(0.0),
            every=2,
            criterion=MPCriterion(min_rank=4, fit_cutoff=1.0),
            select=Select(min_dim=10),
        )
        trainer = Trainer(
            model, (x, y), (x, y), cfg, pruner=pruner, run_dir=run_dir, progress=False, **kwargs
        )
        return trainer.model, trainer.fit()  # type: ignore[return-value]

    full_model, full = run(tmp_path / "a")
    assert describe_structure(full_model)  # pruning did factorize some layer
    assert full[-1].n_params < full[0].n_params
    with pytest.raises(Killed):
        run(tmp_path / "b", on_epoch_end=_kill_after(2))
    assert load_state(tmp_path / "b" / "checkpoint.pt").structure
    _scramble_rngs()
    model, history = run(tmp_path / "b", resume=True)
    assert describe_structure(model) == describe_structure(full_model)
    assert same_weights(model, full_model) and metrics(history) == metrics(full)
