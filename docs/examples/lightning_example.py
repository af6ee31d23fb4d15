"""Pruning with Lightning: one callback; resume a killed run with ``fit(ckpt_path=...)``.

Run: ``python docs/examples/lightning_example.py [OUT_DIR]`` (``pip install rmtprune[lightning]``).
tests/integrations/test_examples.py runs ``main``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

import rmtprune
from rmtprune.integrations.lightning import SpectralPruningCallback


class Classifier(pl.LightningModule):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, 4))  # fmt: skip

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.8)]


def data(n: int = 256) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 64, generator=g), torch.randint(0, 4, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)


def trainer(out: Path, epochs: int, callback: SpectralPruningCallback) -> pl.Trainer:
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=out, save_last=True, save_top_k=0)
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=out, callbacks=[callback, checkpoints])  # fmt: skip


def callback() -> SpectralPruningCallback:
    return SpectralPruningCallback(
        schedule=rmtprune.schedules.Linear(total_epochs=6),
        every=2,
        criterion=rmtprune.MPCriterion(min_rank=8),
    )


def main(out: str | Path, width: int = 64, n: int = 256) -> dict[str, Any]:
    out = Path(out)
    first = callback()
    trainer(out, 3, first).fit(Classifier(width), data(n))  # stopped after epoch 3
    model, second = Classifier(width), callback()  # a fresh process would start here
    run = trainer(out, 5, second)
    run.fit(model, data(n), ckpt_path=out / "last.ckpt")  # the structure is rebuilt first
    return {"model": model, "reports": first.reports + second.reports,
            "seconds": first.seconds + second.seconds, "trainer": run}  # fmt: skip


if __name__ == "__main__":
    result = main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    print([r.params_after for r in result["reports"]])
