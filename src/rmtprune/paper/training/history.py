"""Per-epoch records of a training run, as JSON and CSV.

Example
-------
>>> from rmtprune.paper.training import EpochRecord, History
>>> History((EpochRecord(1, 0.02, 0.5, 0.8, 0.4, 0.85, 100, 1.0),)).column("n_params")
[100]
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmtprune._util.fileio import atomic_write_bytes
from rmtprune._util.validation import param_error

__all__ = ["EpochRecord", "History"]


@dataclass(frozen=True)
class EpochRecord:
    """Metrics of one epoch.

    ``train_loss`` / ``train_accuracy`` are running means over the epoch's
    mini-batches in training mode (data term only, without the penalties);
    ``test_*`` and ``n_params`` are measured after the pruning step.
    ``wall_time`` is the seconds spent training, pruning and evaluating (not
    checkpointing).  ``pruning`` is the pruner report's ``to_dict()`` (None
    without pruner).
    """

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    n_params: int
    wall_time: float
    pruning: dict[str, Any] | None = field(default=None, compare=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_COLUMNS = tuple(f.name for f in dataclasses.fields(EpochRecord))


@dataclass(frozen=True)
class History:
    """Per-epoch records of a run, in epoch order.

    Examples
    --------
    >>> h = History((EpochRecord(1, 0.02, 0.5, 0.8, 0.4, 0.85, 100, 1.0),))
    >>> h.column("test_accuracy")
    [0.85]
    """

    records: tuple[EpochRecord, ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EpochRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> EpochRecord:
        return self.records[index]

    def column(self, name: str) -> list[Any]:
        """Values of one field over the epochs."""
        if name not in _COLUMNS:
            raise param_error("name", "History.column", f"one of {list(_COLUMNS)}", name)
        return [getattr(r, name) for r in self.records]

    def to_dict(self) -> dict[str, Any]:
        """``{"records": [record dicts]}``."""
        return {"records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(EpochRecord(**r) for r in values["records"]))

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of :meth:`to_dict`; also written atomically to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        if path is not None:
            atomic_write_bytes(path, lambda fh: fh.write(text.encode()))
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV text, one row per epoch (``pruning`` as a JSON string)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_COLUMNS)
        for r in self.records:
            row = r.to_dict()
            row["pruning"] = (
                "" if r.pruning is None else json.dumps(r.pruning, default=_json_default)
            )
            writer.writerow([row[c] for c in _COLUMNS])
        text = buffer.getvalue()
        if path is not None:
            atomic_write_bytes(path, lambda fh: fh.write(text.encode()))
        return text


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
