"""Hugging Face Trainer: prune on schedule, decay groups, resume from checkpoint-N (issue 13, 4);
sparse layers stay zero through training, checkpoints and resuming."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import rmtprune  # noqa: E402
from rmtprune import MPCriterion, Select, schedules  # noqa: E402
from rmtprune.factorize import LowRankLinear  # noqa: E402
from rmtprune.factorize.masks import mask_of, masked_layers  # noqa: E402
from rmtprune.integrations.transformers import (  # noqa: E402
    SpectralPruningCallback,
    restore_structure,
)

pytestmark = pytest.mark.slow


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


class _StopAt(transformers.TrainerCallback):  # type: ignore[misc]
    """Stops training after ``step`` (the kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def _callback() -> SpectralPruningCallback:
    return SpectralPruningCallback(
        interval="step", schedule=schedules.Linear(total_epochs=12), every=4,
        criterion=MPCriterion(min_rank=8), select=Select(include="bert.encoder.*"), split=True,
    )  # fmt: skip


def _trainer(model: Any, out: Path, callbacks: list[Any]) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, max_steps=8, save_strategy="steps",
        save_steps=4, logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
        seed=0, learning_rate=1e-3, weight_decay=0.01, warmup_steps=2,
        lr_scheduler_type="linear", dataloader_num_workers=0,
    )  # fmt: skip
    return transformers.Trainer(
        model=model, args=args, train_dataset=_Tokens(), callbacks=callbacks
    )


def test_stopped_after_a_pruning_step_and_resumed_equals_the_uninterrupted_run(
    tmp_path: Path, one_thread: None
) -> None:
    reference, cb = _model(), _callback()
    trainer = _trainer(reference, tmp_path / "a", [cb])
    trainer.train()
    assert [r.epoch for r in cb.reports] == [4, 8]
    query = reference.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, LowRankLinear)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    assert id(query.first.weight) in ids[0] and id(query.second.weight) in ids[0]
    assert id(query.second.bias) in ids[1]  # the new bias is not decayed
    held = ids[0] | ids[1]
    assert held == {id(p) for p in reference.parameters()}

    first = _trainer(_model(), tmp_path / "b", [_callback(), _StopAt(4)])
    first.train()
    checkpoint = tmp_path / "b" / "checkpoint-4"
    assert (checkpoint / "rmtprune.json").is_file()
    with pytest.raises(ValueError, match="quant"):  # a plain load must not re-initialise
        type(reference).from_pretrained(checkpoint)

    fresh = restore_structure(_model(), checkpoint)
    cb2 = _callback()
    _trainer(fresh, tmp_path / "b", [cb2]).train(resume_from_checkpoint=str(checkpoint))
    assert [r.epoch for r in cb2.reports] == [8]
    want, got = reference.state_dict(), fresh.state_dict()
    assert list(got) == list(want)
    assert sum(p.numel() for p in fresh.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_resuming_without_restore_structure_fails_loudly(tmp_path: Path) -> None:
    _trainer(_model(), tmp_path, [_callback(), _StopAt(4)]).train()
    with pytest.raises((RuntimeError, ValueError)):
        _trainer(_model(), tmp_path, [_callback()]).train(
            resume_from_checkpoint=str(tmp_path / "checkpoint-4")
        )
    with pytest.raises(FileNotFoundError, match="'checkpoint_dir' parameter of restore_structure"):
        restore_structure(_model(), tmp_path)


def _sparse_callback() -> SpectralPruningCallback:
    """Sparsity 0.5 reached linearly: (1 - f) * 0.5 = 0.25 at step 4, 0.5 at step 8."""
    return SpectralPruningCallback(
        interval="step", schedule=schedules.Linear(total_epochs=8), every=4,
        criterion=rmtprune.Sparsity(0.5), select=Select(include="bert.encoder.*"),
    )  # fmt: skip


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def test_sparsity_masks_stay_zero_in_training_checkpoints_and_resume(
    tmp_path: Path, one_thread: None
) -> None:
    reference, cb = _model(), _sparse_callback()
    _trainer(reference, tmp_path / "a", [cb]).train()
    assert [r.epoch for r in cb.reports] == [4, 8]
    masks = {n: mask_of(m) for n, m in masked_layers(reference).items()}
    assert len(masks) == 12  # q, k, v, output, intermediate, output dense of both layers
    four, eight = tmp_path / "a" / "checkpoint-4", tmp_path / "a" / "checkpoint-8"
    assert json.loads((four / "rmtprune.json").read_text())["masked"] == list(masks)
    at4, at8 = _weights(four), _weights(eight)
    for name, mask in masks.items():
        assert mask is not None
        key, numel = f"{name}.weight", mask.numel()
        # checkpoint-N holds the model as pruned at step N: exact zeros, counted by the target
        assert int((at4[key] == 0).sum()) == math.floor(0.25 * numel + 0.5), name
        assert torch.equal(at8[key] == 0, ~mask), name  # at 8: the final mask, nothing else
        assert not bool(((at4[key] == 0) & mask).any()), name  # zeros of step 4 stayed zeros
        kept = (at4[key] != 0) & mask
        assert not torch.equal(at4[key][kept], at8[key][kept]), name  # the rest trained
    # resumed from checkpoint-4 into a freshly built model: the masks are re-created from the
    # loaded zeros, and the run continues as the uninterrupted one bitwise
    fresh, cb2 = restore_structure(_model(), four), _sparse_callback()
    _trainer(fresh, tmp_path / "b", [cb2]).train(resume_from_checkpoint=str(four))
    assert [r.epoch for r in cb2.reports] == [8]
    assert list(masked_layers(fresh)) == list(masks)
    want, got = reference.state_dict(), fresh.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_a_model_sparsified_before_training_stays_sparse_without_the_callback(
    tmp_path: Path, one_thread: None
) -> None:
    def sparse_model() -> Any:
        model = _model()  # the same initial weights each time: the same masks
        select = Select(include="bert.encoder.*")
        rmtprune.prune(model, criterion=rmtprune.Sparsity(0.5), select=select, inplace=True)
        return model

    model = sparse_model()
    masks = {n: mask_of(layer).clone() for n, layer in masked_layers(model).items()}
    assert len(masks) == 12
    before = {n: model.get_submodule(n).weight.detach().clone() for n in masks}
    _trainer(model, tmp_path, [_StopAt(4)]).train()
    saved = _weights(tmp_path / "checkpoint-4")
    for name, mask in masks.items():
        assert int((~mask).sum()) == mask.numel() // 2
        assert torch.equal(saved[f"{name}.weight"] == 0, ~mask), name
        assert torch.equal(model.state_dict()[f"{name}.weight"] == 0, ~mask), name
        assert not torch.equal(saved[f"{name}.weight"][mask], before[name][mask]), name

    resumed = sparse_model()  # built as for the first run, then resumed to step 8
    _trainer(resumed, tmp_path, []).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    for name, mask in masks.items():
        assert torch.equal(mask_of(resumed.get_submodule(name)), mask), name
        weight = resumed.state_dict()[f"{name}.weight"]
        assert torch.equal(weight == 0, ~mask), name
        assert not torch.equal(weight[mask], saved[f"{name}.weight"][mask]), name  # trained on
