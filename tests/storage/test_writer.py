"""The streaming writer writes the file :func:`rmtprune.save` writes, one tensor at a time."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.factorize import LowRankLinear
from rmtprune.storage.format import describe_structure, tensors_to_store
from rmtprune.storage.writer import SafetensorsWriter


def _split(data: bytes) -> tuple[list[tuple[str, Any]], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    meta = dict(sorted(header.pop("__metadata__").items()))
    return [("__metadata__", meta), *header.items()], data[8 + length :]


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(7, 5)
        self.b = LowRankLinear(5, 3, rank=2).to(torch.bfloat16)
        self.c = nn.Linear(5, 5).to(torch.float16)
        self.d = nn.Linear(5, 5, bias=False).to(torch.float64)
        self.d.weight = self.c.weight  # a tied entry is stored once
        self.register_buffer("steps", torch.tensor(3))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("codes", torch.arange(4, dtype=torch.uint8))
        self.register_buffer("nothing", torch.empty(0, 3))


def test_writer_matches_save_byte_for_byte(tmp_path: Path) -> None:
    model = _Mixed()
    rmtprune.save(model, tmp_path / "saved.safetensors")
    tensors, aliases = tensors_to_store(model)
    assert aliases == {"d.weight": "c.weight"}
    with SafetensorsWriter(tmp_path / "written.safetensors") as writer:
        for name in reversed(list(tensors)):  # any order
            writer.add(name, tensors.pop(name))
        writer.commit(describe_structure(model), aliases)
    saved = (tmp_path / "saved.safetensors").read_bytes()
    written = (tmp_path / "written.safetensors").read_bytes()
    assert _split(written) == _split(saved)  # header (metadata sorted) and every data byte
    assert len(written) == len(saved)
    loaded = rmtprune.load(_Mixed(), tmp_path / "written.safetensors")  # digest checked
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "saved.safetensors",
        "written.safetensors",
    ]


def test_an_unfinished_writer_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    with pytest.raises(RuntimeError, match="stop"), SafetensorsWriter(target) as writer:
        writer.add("x", torch.ones(3))
        with pytest.raises(ValueError, match="written twice"):
            writer.add("x", torch.ones(3))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_without_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="already exists"), SafetensorsWriter(target) as w:
        w.add("x", torch.ones(3))
        w.commit({})
    assert target.read_bytes() == b"mine" and len(list(tmp_path.iterdir())) == 1
    with SafetensorsWriter(target, overwrite=True) as writer:
        writer.add("x", torch.ones(3))
        writer.commit({})
    assert rmtprune.load(nn.Module(), target, strict=False) is not None
    assert target.stat().st_mode & 0o777 == 0o644
