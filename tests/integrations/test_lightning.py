"""Lightning: prune on schedule, keep optimizers valid, resume into a fresh module (issue 13, 3);
sparse layers stay zero through training, checkpoints and resuming."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

import rmtprune  # noqa: E402
from rmtprune import MPCriterion, Select, schedules  # noqa: E402
from rmtprune.factorize import LowRankLinear  # noqa: E402
from rmtprune.factorize.masks import mask_of, masked_layers  # noqa: E402
from rmtprune.integrations._common import make_record  # noqa: E402
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


SPARSE = ("net.0", "net.2")


def _sparse_callback() -> SpectralPruningCallback:
    """Sparsity 0.6 reached linearly: (1 - f) * 0.6 = 0.3 at epoch 2, 0.6 at epoch 4."""
    return SpectralPruningCallback(
        schedule=schedules.Linear(total_epochs=4), every=2, criterion=rmtprune.Sparsity(0.6),
        select=Select(include=list(SPARSE)),
    )  # fmt: skip


class _Masks(pl.Callback):
    """The masks at the start of every epoch (after the pruning callback's step)."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        found = {n: mask_of(m) for n, m in masked_layers(pl_module).items()}
        self.at[trainer.current_epoch] = {n: m.clone() for n, m in found.items() if m is not None}


def _zeros(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return state[f"{name}.weight"] == 0


def test_sparsity_masks_stay_zero_in_training_checkpoints_and_resume(
    tmp_path: Path, one_thread: None
) -> None:
    every = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    reference, cb, seen = Net(), _sparse_callback(), _Masks()
    _trainer(tmp_path / "a", 5, [cb, seen, every]).fit(reference, _data())
    assert [r.epoch for r in cb.reports] == [2, 4]
    assert set(seen.at[2]) == set(SPARSE) and not seen.at[1]
    for name in SPARSE:
        numel = reference.get_submodule(name).weight.numel()
        assert int((~seen.at[2][name]).sum()) == math.floor(0.3 * numel + 0.5)
        assert int((~seen.at[4][name]).sum()) == math.floor(0.6 * numel + 0.5)
        assert not bool((seen.at[2][name] & ~seen.at[3][name]).any())  # epoch 3: no change
        assert not bool((seen.at[4][name] & ~seen.at[2][name]).any())  # never revived
    # every checkpoint holds exact zeros where the mask of its epoch is False, and nowhere else
    states = {
        e: torch.load(tmp_path / "ck" / f"epoch={e}.ckpt", weights_only=False) for e in (2, 3, 4)
    }
    assert states[2]["rmtprune"]["masked"] == list(SPARSE)
    for e, saved in states.items():
        for name in SPARSE:
            assert torch.equal(_zeros(saved["state_dict"], name), ~seen.at[e][name]), (e, name)
    kept = seen.at[2]["net.0"]  # and the kept weights trained in between
    assert not torch.equal(
        states[2]["state_dict"]["net.0.weight"][kept], states[3]["state_dict"]["net.0.weight"][kept]
    )
    final = reference.state_dict()
    assert all(torch.equal(_zeros(final, n), ~seen.at[4][n]) for n in SPARSE)

    # resumed after epoch index 2 into a fresh module: masks re-created, the run continues as
    # the uninterrupted one (a weight revived by training would change every later value)
    fresh, cb2, seen2 = Net(), _sparse_callback(), _Masks()
    _trainer(tmp_path / "b", 5, [cb2, seen2], enable_checkpointing=False).fit(
        fresh, _data(), ckpt_path=tmp_path / "ck" / "epoch=2.ckpt"
    )
    assert [r.epoch for r in cb2.reports] == [4]
    for e in (3, 4):
        assert all(torch.equal(seen2.at[e][n], seen.at[e][n]) for n in SPARSE)
    got = fresh.state_dict()
    assert list(got) == list(final) and all(torch.equal(got[k], final[k]) for k in final)

    # outside a trainer: restore_structure re-creates the masks before the weights load
    loaded = restore_structure(Net(), tmp_path / "ck" / "epoch=3.ckpt")
    assert all(torch.equal(mask_of(loaded.get_submodule(n)), seen.at[3][n]) for n in SPARSE)


def test_restore_gives_back_a_kept_weight_that_is_exactly_zero() -> None:
    """The checkpoint's record holds the kept zeros' positions: the masks come back exactly."""
    model = Net()
    rmtprune.prune(model, criterion=rmtprune.Sparsity(0.5), select=Select(include=list(SPARSE)),
                   inplace=True)  # fmt: skip
    keep = mask_of(model.net[0])
    with torch.no_grad():
        model.net[0].weight[tuple(keep.nonzero()[3].tolist())] = 0.0  # kept, trained to 0.0
    pruner = rmtprune.SpectralPruner(model, every=2, criterion=rmtprune.Sparsity(0.5))
    checkpoint = {"rmtprune": make_record(model, pruner), "state_dict": model.state_dict()}
    loaded = restore_structure(Net(), checkpoint)
    loaded.load_state_dict(checkpoint["state_dict"])
    assert all(torch.equal(mask_of(loaded.get_submodule(n)), mask_of(model.get_submodule(n)))
               for n in SPARSE)  # fmt: skip


def test_a_module_sparsified_before_fit_stays_sparse_without_the_callback(
    tmp_path: Path, one_thread: None
) -> None:
    def sparse_net() -> Net:
        model = Net()  # the same initial weights each time: the same masks
        select = Select(include=list(SPARSE))
        rmtprune.prune(model, criterion=rmtprune.Sparsity(0.5), select=select, inplace=True)
        return model

    model = sparse_net()
    masks = {n: mask_of(model.get_submodule(n)).clone() for n in SPARSE}
    before = model.net[0].weight.detach().clone()
    last = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    _trainer(tmp_path, 2, [last]).fit(model, _data())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    for name, mask in masks.items():
        assert int((~mask).sum()) == model.get_submodule(name).weight.numel() // 2
        assert torch.equal(_zeros(saved, name), ~mask)
        assert torch.equal(_zeros(model.state_dict(), name), ~mask)
    assert not torch.equal(saved["net.0.weight"][masks["net.0"]], before[masks["net.0"]])

    resumed = sparse_net()  # built as for the first run, then resumed
    _trainer(tmp_path / "b", 3, [], enable_checkpointing=False).fit(
        resumed, _data(), ckpt_path=tmp_path / "last.ckpt"
    )
    for name, mask in masks.items():
        assert torch.equal(mask_of(resumed.get_submodule(name)), mask)
        assert torch.equal(_zeros(resumed.state_dict(), name), ~mask)
