"""Pruning with the Hugging Face Trainer: one callback; resume with one call.

Run: ``python docs/examples/transformers_example.py [OUT_DIR]`` (``pip install rmtprune[hf]``).
A tiny BERT is built from a config (nothing is downloaded).
tests/integrations/test_examples.py runs ``main``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

import rmtprune
from rmtprune.integrations.transformers import (
    SpectralPruningCallback,
    restore_structure,
)


def build(hidden: int = 64) -> transformers.BertForSequenceClassification:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=128, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 128, (n, 16), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def trainer(model: Any, out: Path, steps: int, callback: SpectralPruningCallback) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=16, save_steps=4,
        learning_rate=1e-3, weight_decay=0.01, warmup_steps=2, report_to=[],
        logging_strategy="no", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    return transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                callbacks=[callback])  # fmt: skip


def callback() -> SpectralPruningCallback:
    return SpectralPruningCallback(
        interval="step",
        schedule=rmtprune.schedules.Linear(12),
        every=4,
        criterion=rmtprune.MPCriterion(min_rank=8),
        select=rmtprune.Select(include="bert.encoder.*"),
    )


def main(out: str | Path, hidden: int = 64) -> dict[str, Any]:
    out = Path(out)
    first = callback()
    trainer(build(hidden), out, 4, first).train()  # a run that ended at step 4
    model = restore_structure(build(hidden), out / "checkpoint-4")  # the one extra call
    second = callback()
    run = trainer(model, out, 8, second)
    run.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    return {"model": model, "reports": first.reports + second.reports,
            "seconds": first.seconds + second.seconds, "trainer": run}  # fmt: skip


if __name__ == "__main__":
    result = main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    print([r.params_after for r in result["reports"]])
