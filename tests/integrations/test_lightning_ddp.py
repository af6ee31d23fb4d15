"""Lightning under DDP: 2 CPU processes (gloo, 127.0.0.1), strategies "ddp" and "ddp_spawn".

This file is also the training script: each test runs ``python <this file> STRATEGY OUT`` in a
subprocess (Lightning's "ddp" launcher re-runs the script for rank 1; "ddp_spawn" spawns two
workers per ``fit``).  The script trains a reference run of 5 epochs that writes a checkpoint
after every epoch, then resumes a freshly built module from the checkpoint written after
epoch 3 (pruned once, at the start of epoch index 2) and trains it to epoch 5 (the state of a
run killed after a pruning step).
Each rank records, after every pruning step, a digest of its parameters gathered from all ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from rmtprune import MPCriterion, Select, schedules  # noqa: E402
from rmtprune.integrations.lightning import SpectralPruningCallback  # noqa: E402


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 4)
        )
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(float(loss))
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        return [opt], [sched]


def digest(module: nn.Module) -> str:
    """A hash of every parameter's name, shape and bytes: equal digests, bitwise-equal weights."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


class Probe(pl.Callback):
    """After the pruning callback: gathers every rank's digest at each epoch's start and end."""

    def __init__(self, out: str, run: str) -> None:
        self.out, self.run = out, run
        self.epochs: list[dict[str, Any]] = []

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        torch.set_num_threads(1)

    def _gather(self, pl_module: Any) -> list[str]:
        mine = [digest(pl_module)]
        got: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(got, mine[0])
        return got

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        params = sum(p.numel() for p in pl_module.parameters())
        self.epochs.append(
            {"epoch": trainer.current_epoch, "params": params, "start": self._gather(pl_module)}
        )
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.epochs[-1]["end"] = self._gather(pl_module)
        self.epochs[-1]["unchanged"] = [
            n for n, p in pl_module.named_parameters() if torch.equal(p, self.before[n])
        ]

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        rank = trainer.global_rank
        pruning = next(c for c in trainer.callbacks if isinstance(c, SpectralPruningCallback))
        wrapper = trainer.strategy.model
        result = {
            "epochs": self.epochs,
            "pruned": [r.epoch for r in pruning.reports],
            "losses": pl_module.losses,
            "wrapper_params": [id(p) for p in wrapper.parameters()],
            "module_params": [id(p) for p in pl_module.parameters()],
            "optimizer_params": [
                id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]
            ],
            "ddp": type(wrapper).__name__,
        }
        Path(self.out, f"{self.run}-rank{rank}.json").write_text(json.dumps(result))
        torch.save(pl_module.state_dict(), Path(self.out, f"{self.run}-rank{rank}.pt"))


def _pruning() -> SpectralPruningCallback:
    return SpectralPruningCallback(
        schedule=schedules.Linear(total_epochs=4), every=2, criterion=MPCriterion(min_rank=8),
        select=Select(include=["net.0", "net.2"]), split=True,
    )  # fmt: skip


def _data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 64, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fit(strategy: str, out: str, run: str, epochs: int, ckpt: str | None = None) -> Net:
    if strategy == "ddp_spawn":  # each fit spawns new workers: a fresh port for each
        os.environ["MASTER_PORT"] = str(_free_port())
    callbacks: list[Any] = [_pruning(), Probe(out, run)]
    if ckpt is None:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=Path(out, "ck"), filename="{epoch}", save_top_k=-1, every_n_epochs=1
            )
        )
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=2, strategy=strategy, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=out, callbacks=callbacks, enable_checkpointing=ckpt is None,
    )  # fmt: skip
    module = Net()
    trainer.fit(module, _data(), ckpt_path=ckpt)
    return module


def main(strategy: str, out: str) -> Net:
    """The reference run (checkpoints after every epoch), then a resume from epoch 3's."""
    reference = _fit(strategy, out, "reference", 5)
    _fit(strategy, out, "resumed", 5, ckpt=str(Path(out, "ck", "epoch=2.ckpt")))
    return reference


def _run(strategy: str, out: Path) -> dict[str, list[dict[str, Any]]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env["MASTER_PORT"] = str(_free_port())
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])
    done = subprocess.run(
        [sys.executable, __file__, strategy, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return _results(out)


def _results(out: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        run: [json.loads(Path(out, f"{run}-rank{r}.json").read_text()) for r in range(2)]
        for run in ("reference", "resumed")
        if Path(out, f"{run}-rank0.json").exists()
    }


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_pruning_under_ddp_equal_ranks_and_resume(
    strategy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if strategy == "ddp":  # Lightning re-runs the script for rank 1: run it as a script
        results = _run(strategy, tmp_path)
    else:  # the spawned workers import this module by name (the parent's sys.path)
        for name, value in {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        launcher = main(strategy, str(tmp_path)).net  # each fit spawns two fresh workers
        results = _results(tmp_path)
        # The launching process: Lightning loads rank 0's weights with strict=False, so the
        # layers pruned in the workers keep their values from before fit (docs/integrations.md).
        trained = torch.load(tmp_path / "reference-rank0.pt")
        assert type(launcher[0]) is nn.Linear and "net.0.weight" not in trained
        assert torch.equal(launcher[0].weight, Net().net[0].weight)
        assert torch.equal(launcher[4].weight, trained["net.4.weight"])
    reference = results["reference"]
    for rank in reference:
        assert rank["pruned"] == [2, 4]  # every rank reports rank 0's decisions
        assert rank["ddp"] == "DistributedDataParallel"
        # the wrapper, the module and the optimizer hold the same (pruned) parameters
        assert rank["wrapper_params"] == rank["module_params"] == rank["optimizer_params"]
        assert all(loss == loss and abs(loss) < 1e3 for loss in rank["losses"])  # finite
    epochs = reference[0]["epochs"]
    assert epochs == reference[1]["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3, 4]
    params = [e["params"] for e in epochs]
    assert params[0] == params[1] > params[2] == params[3] > params[4]  # pruned at 2 and 4
    for e in epochs:
        assert len(set(e["start"])) == 1, e  # after pruning: both ranks bitwise equal
        assert len(set(e["end"])) == 1, e  # after training on
        assert e["unchanged"] == []  # the epoch trained every parameter, new factors included
    # resumed from the checkpoint written after epoch index 2: pruned once more, at 4
    resumed = results["resumed"]
    assert [r["pruned"] for r in resumed] == [[4], [4]]
    assert [e["epoch"] for e in resumed[0]["epochs"]] == [3, 4]
    assert resumed[0]["epochs"] == reference[0]["epochs"][3:]  # same digests, every rank
    want = torch.load(tmp_path / "reference-rank0.pt")
    for rank in range(2):
        got = torch.load(tmp_path / f"resumed-rank{rank}.pt")
        assert list(got) == list(want)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_ddp_strategy_on_one_process_is_rewrapped_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """World size 1, but Lightning still wraps the module in DDP: its reducer must be rebuilt."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    module, pruning = Net(), _pruning()
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, strategy="ddp", logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tmp_path, callbacks=[pruning],
    )  # fmt: skip
    try:
        trainer.fit(module, _data())  # before: "parameters that were not used" from DDP
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert [r.epoch for r in pruning.reports] == [2]
    assert all(loss == loss for loss in module.losses) and len(module.losses) == 12


def test_rewrap_in_place_keeps_the_wrapper_and_refuses_comm_hooks() -> None:
    """The mechanism both callbacks use, in one process (gloo, world size 1)."""
    from torch.nn.parallel import DistributedDataParallel

    from rmtprune.factorize import LowRankLinear
    from rmtprune.integrations.ddp import rewrap

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
        ddp = DistributedDataParallel(module, find_unused_parameters=True)
        module[0] = LowRankLinear(8, 6, rank=3)  # what a split does: new parameters
        assert rewrap(ddp, in_place=True) is ddp
        assert [id(p) for p in ddp.parameters()] == [id(p) for p in module.parameters()]
        assert ddp.find_unused_parameters  # the options are kept
        ddp(torch.randn(4, 8)).sum().backward()
        assert all(p.grad is not None for p in module.parameters())
        ddp.register_comm_hook(None, lambda state, bucket: bucket.buffer())
        with pytest.raises(ValueError, match="communication hooks or mixed_precision"):
            rewrap(ddp, in_place=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
