"""What the ablation produced: per arm, per seed, per data set and for the whole run.

An :class:`AblationArm` is a classification :class:`~rmtprune.paper.experiments.results.ArmResult`
(epoch-0 evaluation, initial-weight digest, per-epoch history and layer analyses) plus the
loss and accuracy of the final network evaluated on the whole training set; an
:class:`AblationSeed` holds the four arms of one seed (stored as
``<data set>/seed-<s>/ablation.json``), a :class:`DatasetResult` the seeds of one data set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.results import ArmResult, ClaimVerdict

__all__ = ["AblationArm", "AblationRun", "AblationSeed", "DatasetResult"]


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class AblationArm:
    """One arm of one seed: its training run and its final train-set evaluation.

    ``train_loss`` and ``train_accuracy`` are measured after the last epoch (and its pruning
    step) on the whole training set in eval mode; ``running_train_accuracy`` is the history's
    last-epoch value (the mean over that epoch's mini-batches while training).
    """

    arm: str
    result: ArmResult
    train_loss: float
    train_accuracy: float

    @property
    def test_accuracy(self) -> float:
        """Test accuracy after the last epoch."""
        return self.result.final_accuracy

    @property
    def test_loss(self) -> float:
        """Test loss after the last epoch."""
        history = self.result.history
        return history[-1].test_loss if history else self.result.initial.test_loss

    @property
    def n_params(self) -> int:
        """Parameter count after the last epoch."""
        return self.result.final_params

    @property
    def running_train_accuracy(self) -> float:
        """Training accuracy over the last epoch's mini-batches (the history's value)."""
        history = self.result.history
        return history[-1].train_accuracy if history else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "arm": self.arm,
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "result": self.result.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AblationArm:
        """Inverse of :meth:`to_dict` (``None`` → NaN)."""
        return cls(
            str(values["arm"]),
            ArmResult.from_dict(values["result"]),
            _float(values["train_loss"]),
            _float(values["train_accuracy"]),
        )


@dataclass(frozen=True)
class AblationSeed:
    """The four arms of one seed, in the order of :data:`~.arms.ARMS`."""

    seed: int
    arms: tuple[AblationArm, ...]

    def arm(self, name: str) -> AblationArm:
        """The arm called ``name``."""
        for a in self.arms:
            if a.arm == name:
                return a
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"seed": self.seed, "arms": [a.to_dict() for a in self.arms]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AblationSeed:
        """Inverse of :meth:`to_dict`."""
        return cls(int(values["seed"]), tuple(AblationArm.from_dict(a) for a in values["arms"]))


@dataclass(frozen=True)
class DatasetResult:
    """The seeds of one data set (``experiment``: ``fc-mnist`` or ``fc-fashion``)."""

    experiment: str
    config: ExperimentConfig
    seeds: tuple[AblationSeed, ...]

    def values(self, arm: str, key: str) -> list[float]:
        """``key`` (an :class:`AblationArm` attribute) of ``arm`` per seed, in seed order."""
        return [float(getattr(s.arm(arm), key)) for s in self.seeds]


@dataclass(frozen=True)
class AblationRun:
    """Everything an ablation run produced (what ``reproduce("ablation", ...)`` returns).

    ``answers`` maps each data set to its answers to the four questions
    (:func:`rmtprune.paper.experiments.ablation.answers.answer`), ``verdicts`` to its
    verdicts; ``metrics`` is the content of ``metrics.json``.
    """

    run_dir: Path
    preset: str
    datasets: tuple[DatasetResult, ...]
    verdicts: Mapping[str, tuple[ClaimVerdict, ...]]
    metrics: Mapping[str, Any]
    figures: tuple[Path, ...]
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary: ``metrics.json``'s content, the figures, the time."""
        return {
            "run_dir": str(self.run_dir),
            **dict(self.metrics),
            "figures": [str(p) for p in self.figures],
            "wall_time": self.wall_time,
        }
