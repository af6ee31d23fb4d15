"""Hugging Face Trainer under DDP: ``torchrun --nproc_per_node 2`` on CPU (gloo, 127.0.0.1).

This file is also the training script that the test launches with ``python -m
torch.distributed.run``.  Each rank trains a tiny BERT for 8 steps (pruning at steps 4 and 8,
``checkpoint-4`` and ``checkpoint-8`` written), then resumes a freshly built model from
``checkpoint-4`` (``restore_structure``, the one documented call) and trains it to step 8.  After
every step each rank gathers a digest of every rank's parameters.
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

transformers = pytest.importorskip("transformers")

from rmtprune import MPCriterion, Select, schedules  # noqa: E402
from rmtprune.integrations.transformers import (  # noqa: E402
    SpectralPruningCallback,
    restore_structure,
)


def _model() -> Any:
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.ids = torch.randint(0, 64, (32, 16), generator=g)
        self.labels = torch.randint(0, 2, (32,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def digest(module: torch.nn.Module) -> str:
    """A hash of every parameter's name, shape and bytes: equal digests, bitwise-equal weights."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


class Probe(transformers.TrainerCallback):  # type: ignore[misc]
    """After the pruning callback: every rank's digest after each step, the losses logged."""

    def __init__(self, pruning: SpectralPruningCallback) -> None:
        self.pruning = pruning
        self.steps: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.before: dict[str, torch.Tensor] = {}

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.before = {n: p.detach().clone() for n, p in kw["model"].named_parameters()}

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        model, optimizer = kw["model"], kw["optimizer"]
        got: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(got, digest(model))
        wrapper = self.pruning._wrapper() if self.pruning._wrapper is not None else None
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.steps.append(
            {
                "step": state.global_step,
                "params": sum(p.numel() for p in model.parameters()),
                "factors": sum(".first." in n for n, _ in model.named_parameters()),
                "digests": got,
                "wrapped": wrapper is not None
                and [id(p) for p in wrapper.parameters()] == [id(p) for p in model.parameters()],
                "optimizer": held == {id(p) for p in model.parameters()},
                "unchanged": [  # by this step's update (compared before its pruning, if any)
                    n
                    for n, p in model.named_parameters()
                    if n in self.before and torch.equal(p, self.before[n])
                ],
            }
        )

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def _pruning() -> SpectralPruningCallback:
    return SpectralPruningCallback(
        interval="step", schedule=schedules.Linear(total_epochs=6), every=4,
        criterion=MPCriterion(min_rank=8), select=Select(include="bert.encoder.*"), split=True,
    )  # fmt: skip


def _train(model: Any, out: Path, resume: Path | None = None) -> dict[str, Any]:
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, max_steps=8, save_strategy="steps",
        save_steps=4, logging_strategy="steps", logging_steps=1, report_to=[],
        disable_tqdm=True, use_cpu=True, seed=0, learning_rate=1e-3, weight_decay=0.01,
        warmup_steps=2, lr_scheduler_type="linear", dataloader_num_workers=0,
    )  # fmt: skip
    pruning = _pruning()
    probe = Probe(pruning)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_Tokens(), callbacks=[pruning, probe]
    )
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return {
        "world_size": args.world_size,
        "pruned": [r.epoch for r in pruning.reports],
        "steps": probe.steps,
        "losses": probe.losses,
    }


def main(out: str) -> None:
    """The reference run, then the resume of its ``checkpoint-4`` into a fresh model."""
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    runs = {"reference": _model(), "resumed": None}
    results = {"reference": _train(runs["reference"], Path(out, "reference"))}
    checkpoint = Path(out, "reference", "checkpoint-4")
    runs["resumed"] = restore_structure(_model(), checkpoint)  # the one documented call
    results["resumed"] = _train(runs["resumed"], Path(out, "resumed"), resume=checkpoint)
    for run, model in runs.items():
        torch.save(model.state_dict(), Path(out, f"{run}-rank{rank}.pt"))
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torchrun_prunes_identically_on_every_rank_and_resumes(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    check_ranks(tmp_path)


def check_ranks(out: Path) -> None:
    """What every launcher must leave in ``out`` (also run on ``accelerate launch``'s output
    by hand: docs/integrations.md)."""
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        reference, resumed = rank["reference"], rank["resumed"]
        assert reference["world_size"] == 2
        assert reference["pruned"] == [4, 8] and resumed["pruned"] == [8]
        steps = reference["steps"]
        assert [s["step"] for s in steps] == list(range(1, 9))
        for s in steps:
            assert len(set(s["digests"])) == 1, s  # every rank bitwise equal after every step
            assert s["wrapped"] and s["optimizer"]  # DDP and the optimizer hold the new params
        params = [s["params"] for s in steps]
        assert params[0] == params[2] > params[3] == params[6] > params[7]  # pruned at 4 and 8
        # the step after pruning trained every parameter, the new factors included
        assert steps[4]["factors"] > 0 and steps[4]["unchanged"] == []
        assert len(reference["losses"]) == 8
        assert all(loss == loss and abs(loss) < 1e3 for loss in reference["losses"])  # finite
        assert resumed["steps"] == steps[4:]  # same parameter counts, same digests
    assert ranks[0] == ranks[1]
    want = torch.load(out / "reference-rank0.pt")
    for rank_id in range(2):
        got = torch.load(out / f"resumed-rank{rank_id}.pt")
        assert list(got) == list(want)
        assert all(torch.equal(got[k], want[k]) for k in want)


if __name__ == "__main__":
    main(sys.argv[1])
