"""A spy on checkpoint reads: every tensor goes through it, and no two layers are held at once."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import pytest
import torch

from rmtprune.storage.reader import Checkpoint


def one_layer_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
    layer_of: Callable[[str], str] = lambda name: name.rpartition(".")[0],
) -> list[str]:
    """Patch :meth:`Checkpoint.read` to fail when a tensor of another layer (``layer_of`` of
    its name) is still alive; returns the list of names read, in order, filled as it goes."""
    live: list[tuple[str, weakref.ref[torch.Tensor]]] = []
    reads: list[str] = []
    original = Checkpoint.read

    def read(self: Checkpoint, name: str) -> torch.Tensor:
        layer = layer_of(name)
        held = [n for n, ref in live if ref() is not None and layer_of(n) != layer]
        assert held == [], f"reading {name} while {held} are still held"
        tensor = original(self, name)
        live.append((name, weakref.ref(tensor)))
        reads.append(name)
        return tensor

    monkeypatch.setattr(Checkpoint, "read", read)
    return reads
