"""The walker's modules import one another in one direction only (no circle, not even a
typing-only one): the guards use :class:`Candidate` from its own module."""

from __future__ import annotations

import ast
from pathlib import Path

import rmtprune.pruning._guards as guards
import rmtprune.pruning.layers as layers
from rmtprune.pruning.candidate import Candidate


def _imported(module: object) -> set[str]:
    """Every module imported, those under ``if TYPE_CHECKING:`` too."""
    tree = ast.parse(Path(str(getattr(module, "__file__", ""))).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_guards_do_not_import_the_layers_module() -> None:
    assert "rmtprune.pruning._guards" in _imported(layers)
    assert "rmtprune.pruning.layers" not in _imported(guards)
    assert layers.Candidate is Candidate  # still importable where it was
