"""``PresetConfig``: the one base of the paper's configuration dataclasses.

Every configuration of the paper wing (:class:`rmtprune.paper.training.TrainConfig`,
:class:`rmtprune.paper.experiments.config.ExperimentConfig` and the analysis experiments'
``RegressionConfig``, ``LandscapeConfig``, ``TheoryConfig``) is a frozen dataclass that
writes only its checks (:meth:`PresetConfig.check`) and, where it has presets, its table
(:meth:`PresetConfig.preset_table`); validation on construction, :meth:`~PresetConfig.replace`,
:meth:`~PresetConfig.from_preset`, :meth:`~PresetConfig.to_dict` and
:meth:`~PresetConfig.from_dict` come from here, the way a SciPy distribution writes only
its mathematics.

Example
-------
>>> from dataclasses import dataclass
>>> from rmtprune.paper.presets import PresetConfig
>>> @dataclass(frozen=True)
... class Toy(PresetConfig):
...     widths: tuple[int, ...]
...     seeds: int = 1
...     def check(self, owner: str) -> None:
...         if self.seeds < 1:
...             raise ValueError(f"The 'seeds' parameter of {owner} must be >= 1.")
>>> Toy((2, 3)).replace(seeds=4).to_dict()
{'widths': [2, 3], 'seeds': 4}
>>> Toy.from_dict({"widths": [2, 3]})
Toy(widths=(2, 3), seeds=1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from rmtprune._util.validation import check_int, param_error

__all__ = ["PRESETS", "PresetConfig", "check_preset", "check_seeds"]

ConfigT = TypeVar("ConfigT", bound="PresetConfig")

PRESETS = ("smoke", "small", "paper")
"""The three scales of every experiment: smoke (seconds), small (minutes), paper."""


def check_preset(preset: Any, owner: str) -> str:
    """Return ``preset`` if it is one of :data:`PRESETS`, else raise ``ValueError``.

    >>> check_preset("huge", "f")
    Traceback (most recent call last):
    ...
    ValueError: The 'preset' parameter of f must be one of ['smoke', 'small', 'paper']. Got 'huge' instead.
    """  # noqa: E501
    if preset not in PRESETS:
        raise param_error("preset", owner, f"one of {list(PRESETS)}", preset)
    return str(preset)


def check_seeds(seeds: Any, owner: str) -> int | None:
    """``None`` or an int >= 1 (the number of seeds overriding the preset's)."""
    return None if seeds is None else check_int(seeds, "seeds", owner, low=1)


class PresetConfig:
    """Base of a frozen configuration dataclass: checks, presets, plain dictionaries.

    Subclasses are ``@dataclass(frozen=True)`` and override :meth:`check` (called on
    construction and by :meth:`replace`, with the class name as owner) and, when they have
    presets, :meth:`preset_table`.  Fields named in ``runtime_only`` are left out of
    :meth:`to_dict` (values that may differ between a run and its continuation).
    """

    runtime_only: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        self.check(type(self).__name__)

    def check(self, owner: str) -> None:
        """Validate the fields; raise ``ValueError``/``TypeError`` naming the parameter."""

    @classmethod
    def preset_table(cls: type[ConfigT]) -> Mapping[str, ConfigT]:
        """The configuration of each preset (subclasses with presets override this)."""
        raise NotImplementedError(f"{cls.__name__} has no presets")

    @classmethod
    def from_preset(cls: type[ConfigT], preset: str, seeds: int | None = None) -> ConfigT:
        """The configuration of ``preset``, optionally with another number of seeds."""
        owner = f"{cls.__name__}.from_preset"
        config = cls.preset_table()[check_preset(preset, owner)]
        count = check_seeds(seeds, owner)
        return config if count is None else config.replace(seeds=count)

    def replace(self: ConfigT, **changes: Any) -> ConfigT:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dictionary (tuples as lists), without the ``runtime_only`` fields."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name in self.runtime_only:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
        """Inverse of :meth:`to_dict` (lists become tuples; unknown keys raise)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            owner = f"{cls.__name__}.from_dict"
            raise param_error("values", owner, f"keys in {sorted(names)}", unknown)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
