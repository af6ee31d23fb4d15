"""Lightning: prune on schedule, keep optimizers valid, resume into a fresh module (issue 13, 3)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from rmtprune import MPCriterion, Select, schedules  # noqa: E402
from rmtprune.factorize import LowRankLinear  # noqa: E402
from rmtprune.integrations.lightning import (  # noqa: E402
    SpectralPruningCallback,
    restore_structure,
)

pytestmark = pytest.mark.slow


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        return [opt], [sched]


def _data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 64, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _callback(**kw: Any) -> SpectralPruningCallback:
    return SpectralPruningCallback(
        schedule=schedules.Linear(total_epochs=6), every=2, criterion=MPCriterion(min_rank=8),
        select=Select(include=["net.0", "net.2"]), split=True, **kw,
    )  # fmt: skip


def _trainer(tmp: Path, epochs: int, callbacks: list[Any], **kw: Any) -> Any:
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp, callbacks=callbacks, **kw,
    )  # fmt: skip


def _ids(params: Any) -> list[int]:
    return [id(p) for p in params]


def test_killed_after_a_pruning_step_and_resumed_equals_the_uninterrupted_run(
    tmp_path: Path, one_thread: None
) -> None:
    reference, cb = Net(), _callback()
    trainer = _trainer(tmp_path / "a", 5, [cb], enable_checkpointing=False)
    trainer.fit(reference, _data())
    assert [r.epoch for r in cb.reports] == [2, 4]
    assert isinstance(reference.net[0], LowRankLinear)
    opt = trainer.optimizers[0]  # the factors are in the optimizer and have trained
    assert _ids(opt.param_groups[0]["params"]) == _ids(reference.parameters())
    assert all(p in opt.state for p in reference.parameters())
    assert trainer.lr_scheduler_configs[0].scheduler.optimizer is opt
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.7**5)

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    first = _trainer(tmp_path / "b", 3, [_callback(), ckpt])
    first.fit(Net(), _data())  # "killed" after epoch 3, pruned once at the start of epoch 2
    last = os.path.join(tmp_path / "ck", "last.ckpt")
    saved = torch.load(last, weights_only=False)
    assert saved["rmtprune"]["structure"]["net.0"]["type"] == "LowRankLinear"

    fresh, cb2 = Net(), _callback()
    _trainer(tmp_path / "c", 5, [cb2], enable_checkpointing=False).fit(
        fresh, _data(), ckpt_path=last
    )
    assert [r.epoch for r in cb2.reports] == [4]  # epoch 2 was restored, not redone
    assert cb2.pruner is not None and len(cb2.pruner.history) == 2
    got, want = fresh.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    assert sum(p.numel() for p in fresh.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_restore_structure_for_load_from_checkpoint(tmp_path: Path) -> None:
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    model = Net()
    _trainer(tmp_path, 3, [_callback(), ckpt]).fit(model, _data())
    path = tmp_path / "last.ckpt"
    with pytest.raises(RuntimeError, match="Missing key"):  # the failure issue 13 reports
        Net().load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    fresh = restore_structure(Net(), path)
    fresh.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    with pytest.raises(ValueError, match="not written with SpectralPruningCallback"):
        restore_structure(Net(), {"state_dict": {}})


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="'interval' parameter of SpectralPruningCallback"):
        _callback(interval="batch")
    with pytest.raises(TypeError, match="bad pruner options"):
        SpectralPruningCallback(every=2, no_such_option=1)
