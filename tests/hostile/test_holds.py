"""The families of issue 10 that already held, kept under test.

Pickles never execute (see also test_api_errors.py), tampered and truncated safetensors are
refused by the digest and concurrent saves leave one valid file.  (A ``reproduce`` run killed
with SIGKILL resumes to identical metrics: tests/paper/experiments/test_rundir.py.)
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import rmtprune


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def test_tampered_and_truncated_safetensors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    rmtprune.save(_model(0), path)
    data = bytearray(path.read_bytes())
    tampered = tmp_path / "tampered.safetensors"
    data[-5] ^= 0xFF  # one bit pattern in the last tensor's bytes
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        rmtprune.load(_model(1), tampered)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        rmtprune.load(_model(1), truncated)


def test_concurrent_saves_leave_one_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    models = [_model(seed) for seed in range(4)]
    errors: list[BaseException] = []

    def writer(model: nn.Module) -> None:
        try:
            for _ in range(5):
                rmtprune.save(model, path, overwrite=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    loaded = rmtprune.load(_model(99), path)
    matches = [
        all(
            torch.equal(a, b)
            for a, b in zip(loaded.state_dict().values(), m.state_dict().values(), strict=True)
        )
        for m in models
    ]
    assert matches.count(True) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left
