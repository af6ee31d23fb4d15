"""One selected weight layer as the walker holds it: :class:`Candidate`.

Its own module because two modules use it: :mod:`rmtprune.pruning.layers` makes
candidates (with the guards' helpers) and :mod:`rmtprune.pruning._guards` applies a rank to
one; with the type here the guards need not import the module that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rmtprune.factorize.registry import LayerAdapter
from rmtprune.pruning.criteria import LayerView

__all__ = ["Candidate"]


@dataclass(frozen=True, eq=False)
class Candidate:
    """One selected weight layer: its view when eligible, else the reason it is skipped.

    ``rank`` is the current rank (0 when unknown); ``view`` is ``None`` exactly when
    ``reason`` is set.  ``note`` says what the fitted matrix leaves out (the base layer of a
    LoRA layer is fitted without the adapters' update, :mod:`rmtprune.factorize.peft_guard`).
    """

    name: str
    module: nn.Module
    adapter: LayerAdapter | None
    shape: tuple[int, int]
    params: int
    ratio: float
    rank: int
    reason: str = ""
    view: LayerView | None = None
    note: str = ""

    @property
    def layer_type(self) -> str:
        """The module's class name."""
        return type(self.module).__name__
