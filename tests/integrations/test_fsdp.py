"""FSDP2 (``fully_shard``): pruning on 2 real gloo processes, resuming from a DCP checkpoint;
sparse layers refused under FSDP2.  The same 2 processes also run DDP with a Sparsity criterion
(``integrations.ddp.prune_step``: every rank gets rank 0's masks and keeps them through training).
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import rmtprune
from rmtprune.storage.format import apply_structure

fsdp_api = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp_api, "fully_shard"):
    pytest.skip("this torch has no FSDP2 (fully_shard)", allow_module_level=True)

from rmtprune.factorize.masks import mask_of, masked_layers  # noqa: E402
from rmtprune.integrations import ddp, fsdp  # noqa: E402

EPOCHS, SAVE_AT = 5, 2

# What holds a process group stays alive until the worker leaves with os._exit: freeing the last
# holder runs ~ProcessGroupGloo with the GIL held while it joins gloo's threads, and a thread
# that must take the GIL to free a finished work item then waits forever (seen here once, after
# FSDP2 in the same process; pytorch/pytorch#56297).  A test must not hang on a torch teardown.
_HOLDERS: list[Any] = []
OPTIONS: dict[str, Any] = {"every": 2, "split": True}


def _options() -> dict[str, Any]:
    return {
        **OPTIONS,
        "schedule": rmtprune.schedules.Linear(6),
        "criterion": rmtprune.MPCriterion(min_rank=8),
    }


def build() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 4)
    )


def shard(model: nn.Module) -> None:
    for i in ("0", "2"):  # a unit per hidden layer (split or not), and the root
        fsdp_api.fully_shard(model.get_submodule(i))
    fsdp_api.fully_shard(model)


def _full(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: _local(p) for n, p in model.named_parameters()}


def _train(model: nn.Module, optimizer: Any, epoch: int, rank: int) -> float:
    loss = torch.tensor(0.0)
    for step in range(2):
        data = torch.Generator().manual_seed(1000 * epoch + 10 * rank + step)
        x, y = torch.randn(16, 64, generator=data), torch.randint(0, 4, (16,), generator=data)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def _local(t: torch.Tensor) -> torch.Tensor:
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return full.detach().clone()


def _adam_state(model: nn.Module, optimizer: Any) -> dict[str, dict[str, torch.Tensor]]:
    """The optimizer state by parameter name, as full tensors (a collective under FSDP)."""
    return {
        n: {k: _local(v) for k, v in optimizer.state[p].items()}
        for n, p in model.named_parameters()
        if p in optimizer.state
    }


def _reference(
    structure: dict[str, Any],
    weights: dict[str, torch.Tensor],
    adam: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    epoch: int,
) -> dict[str, Any]:
    """One process, full weights: the SpectralPruner step with its Adam, and plain ``prune``."""
    plain, other = build(), build()
    for model in (plain, other):
        apply_structure(model, structure)
        model.load_state_dict(weights)
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-2)
    for name, p in plain.named_parameters():
        if name in adam:
            optimizer.state[p] = {k: v.clone() for k, v in adam[name].items()}
    pruner = rmtprune.SpectralPruner(plain, **_options())
    pruner.load_state_dict(state)
    pruner.step(epoch, optimizer=optimizer)
    known: dict[str, int] = {}
    for entry in state["history"]:
        known.update(entry["ranks"])
    criterion = pruner.criterion_at(epoch)
    rmtprune.prune(other, criterion=criterion, split=True, inplace=True, ranks=known)
    return {
        "pruner": _full_plain(plain),
        "prune": _full_plain(other),
        "adam": _adam_state(plain, optimizer),
    }


def _full_plain(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _session(rank: int, port: int, out: str, resume: bool) -> dict[str, Any]:
    """A run from scratch (checkpointed after the pruning step at SAVE_AT), or its resumption
    from that checkpoint into a freshly built model, in a fresh process group."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ckpt = os.path.join(out, "ckpt")
    result: dict[str, Any] = {"steps": [], "losses": []}
    model: nn.Module = build()
    if resume:
        fsdp.restore_structure(model, ckpt)
    shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = rmtprune.SpectralPruner(model, **_options())
    first = 1
    if resume:
        fsdp.load_checkpoint(ckpt, model, pruner, optimizer)
        first = SAVE_AT + 1
    for epoch in range(first, EPOCHS + 1):
        result["losses"].append(_train(model, optimizer, epoch, rank))
        before, adam = _full(model), _adam_state(model, optimizer)
        state, structure = pruner.state_dict(), fsdp._structure(model)
        model, report = fsdp.prune_step(
            pruner, epoch, model, optimizer=optimizer, build=build, shard=shard
        )
        assert pruner.model is model
        if report.changed:
            step: dict[str, Any] = {"epoch": epoch, "report": report, "after": _full(model)}
            step["adam"] = _adam_state(model, optimizer)
            step["adam_before"] = adam
            if rank == 0:
                step["reference"] = _reference(structure, before, adam, state, epoch)
            held = [p for g in optimizer.param_groups for p in g["params"]]
            step["optimizer_holds_model"] = [id(p) for p in held] == [
                id(p) for p in model.parameters()
            ]
            result["steps"].append(step)
        if epoch == SAVE_AT and not resume:
            fsdp.save_checkpoint(ckpt, model, pruner, optimizer)
    result["final"] = _full(model)
    result["params"] = sum(p.numel() for p in model.parameters())
    _HOLDERS.append(model)
    dist.destroy_process_group()
    return result


def _ddp_sparse(rank: int, port: int) -> dict[str, Any]:
    """DDP with a Sparsity schedule ((1 - f) * 0.5: 0.25 at epoch 1, 0.5 at epoch 2), each rank
    training on its own batches, then an epoch more; the masks and the weights of each rank."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = DistributedDataParallel(build())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = rmtprune.SpectralPruner(
        model.module, schedule=rmtprune.schedules.Linear(2), every=1,
        criterion=rmtprune.Sparsity(0.5), select=rmtprune.Select(include=["0", "2"]),
    )  # fmt: skip
    pruned = []
    for epoch in (1, 2, 3):
        _train(model, optimizer, epoch, rank)
        if epoch < 3:
            model, report = ddp.prune_step(pruner, epoch, model, optimizer=optimizer)
            pruned.append(report.changed)
    found = {n: mask_of(m) for n, m in masked_layers(model.module).items()}
    result = {
        "pruned": pruned,
        "masks": {n: m.clone() for n, m in found.items() if m is not None},
        "raw": _full_plain(model.module),  # after the last optimizer step
        "state": {k: v.clone() for k, v in model.module.state_dict().items()},
    }
    _HOLDERS.append(model)
    dist.destroy_process_group()
    return result


def worker(rank: int, ports: tuple[int, int, int], out: str) -> None:
    torch.set_num_threads(1)  # bitwise comparisons need the same thread count in both runs
    run = _session(rank, ports[0], out, resume=False)
    resumed = _session(rank, ports[1], out, resume=True)
    sparse = _ddp_sparse(rank, ports[2])
    torch.save(
        {"run": run, "resume": resumed, "ddp_sparse": sparse}, os.path.join(out, f"rank{rank}.pt")
    )
    os._exit(0)  # without freeing _HOLDERS (above); the parent reads the files


def _free_ports() -> tuple[int, int, int]:
    with socket.socket() as a, socket.socket() as b, socket.socket() as c:  # distinct ports
        for s in (a, b, c):
            s.bind(("127.0.0.1", 0))
        return int(a.getsockname()[1]), int(b.getsockname()[1]), int(c.getsockname()[1])


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """One launch of 2 processes for the FSDP2 and the DDP tests of this module."""
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(worker, args=(_free_ports(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_fsdp2_prune_step_and_dcp_resume(spawned: list[dict[str, Any]]) -> None:
    results = spawned
    run = [r["run"] for r in results]
    resumed = [r["resume"] for r in results]  # a fresh process group, a freshly built model
    assert [s["epoch"] for s in run[0]["steps"]] == [s["epoch"] for s in run[1]["steps"]] == [2, 4]
    assert [s["epoch"] for r in resumed for s in r["steps"]] == [4, 4]
    pairs = [
        *zip(run[0]["steps"], run[1]["steps"], strict=True),
        *zip(resumed[0]["steps"], resumed[1]["steps"], strict=True),
    ]
    for zero, one in pairs:
        assert _equal(zero["after"], one["after"])  # every rank holds the same full weights
        reference = zero["reference"]  # one process, the same full weights, the same decision
        assert _equal(zero["after"], reference["pruner"])
        assert _equal(zero["after"], reference["prune"])
        assert zero["optimizer_holds_model"] and one["optimizer_holds_model"]
        # the optimizer state is what single-process update_optimizer leaves, name by name
        assert list(zero["adam"]) == list(reference["adam"]) == list(one["adam"])
        for name, expected in reference["adam"].items():
            assert _equal(zero["adam"][name], expected) and _equal(one["adam"][name], expected)
    first, second = run[0]["steps"]
    assert "0.first.weight" in first["after"] and "2.first.weight" in first["after"]  # split
    # the untouched head and the copied biases kept their Adam moments through the rebuild
    assert {"4.weight", "4.bias", "0.second.bias", "2.second.bias"} <= set(first["adam"])
    assert _equal(first["adam"]["4.weight"], first["adam_before"]["4.weight"])
    assert _equal(first["adam"]["0.second.bias"], first["adam_before"]["0.bias"])
    assert "0.first.weight" not in first["adam"]  # new factors start fresh
    # training goes on: the weights move after the pruning step, the loss stays finite
    assert not torch.equal(first["after"]["4.weight"], run[0]["final"]["4.weight"])
    assert all(math.isfinite(x) for r in run + resumed for x in r["losses"])
    assert _equal(run[0]["final"], run[1]["final"])
    assert run[0]["params"] == second["report"].params_after < first["report"].params_before
    for r in range(2):  # resumed == uninterrupted: parameter count and every weight
        assert resumed[r]["params"] == run[r]["params"]
        assert _equal(resumed[r]["final"], run[r]["final"])


def test_prune_step_checks_its_arguments() -> None:
    model = build()
    pruner = rmtprune.SpectralPruner(model, every=2)
    with pytest.raises(TypeError, match="'model' parameter of prune_step"):
        fsdp.prune_step(pruner, 2, model, build=build, shard=shard)
    with pytest.raises(TypeError, match="'model' parameter of restore_structure"):
        fsdp.restore_structure("model", ".")  # type: ignore[arg-type]


@pytest.mark.slow
def test_ddp_prune_step_with_sparsity_gives_every_rank_the_masks(
    spawned: list[dict[str, Any]],
) -> None:
    zero, one = (r["ddp_sparse"] for r in spawned)
    assert zero["pruned"] == one["pruned"] == [True, True]
    assert list(zero["masks"]) == list(one["masks"]) == ["0", "2"]
    model = build()
    for name, mask in zero["masks"].items():
        numel = model.get_submodule(name).weight.numel()
        assert int((~mask).sum()) == math.floor(0.5 * numel + 0.5)
        assert torch.equal(mask, one["masks"][name])  # rank 1 holds rank 0's mask
        for rank in (zero, one):  # exact zeros after an epoch more of training, nowhere else
            assert torch.equal(rank["state"][f"{name}.weight"] == 0, ~mask)
    # every rank trained the same weights, even the raw values an optimizer step leaves at
    # masked entries (the next forward pass zeroes them on every rank)
    assert _equal(zero["raw"], one["raw"]) and _equal(zero["state"], one["state"])


def test_sparse_layers_are_refused_under_fsdp2(tmp_path: Path) -> None:
    """Masks cannot be kept on sharded weights: refused with the layer's (or criterion's) name.
    World size 1 in this process: FSDP2 needs a process group, not a second process."""
    port = _free_ports()[0]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        dense = build()
        shard(dense)
        pruner = rmtprune.SpectralPruner(dense, every=2, criterion=rmtprune.Sparsity(0.5))
        with pytest.raises(
            ValueError, match=r"not supported under FSDP2: the criterion .*Sparsity"
        ):
            fsdp.prune_step(pruner, 2, dense, build=build, shard=shard)
        sparse = build()
        select = rmtprune.Select(include=["2"])
        rmtprune.prune(sparse, criterion=rmtprune.Sparsity(0.5), select=select, inplace=True)
        shard(sparse)
        pruner = rmtprune.SpectralPruner(sparse, **_options())
        layer = "not supported under FSDP2: layer '2' of the 'model' parameter of {}"
        with pytest.raises(ValueError, match=layer.format("prune_step")):
            fsdp.prune_step(pruner, 2, sparse, build=build, shard=shard)
        with pytest.raises(ValueError, match=layer.format("save_checkpoint")):
            fsdp.save_checkpoint(tmp_path, sparse, pruner)
        with pytest.raises(ValueError, match=layer.format("load_checkpoint")):
            fsdp.load_checkpoint(tmp_path, sparse, pruner)
        # a plain state_dict of the sharded masked model: the mask's own refusal, not
        # DTensor's "got mixed torch.Tensor and DTensor"
        with pytest.raises(RuntimeError, match="Linear with a sparsity mask holds a sharded"):
            sparse.state_dict()
    finally:
        dist.destroy_process_group()
