"""The training state that lets an interrupted training run resume bit for bit.

A :class:`TrainingState` holds everything the next epoch depends on: the model's layer
structure (factorized layers, from :func:`rmtprune.storage.format.describe_structure`), its
``state_dict``, the optimizer state keyed by *parameter name* (so it survives
optimizers rebuilt in a different parameter order), the pruner state, the
random number generator states (torch global and shuffling generators, Python
``random``, NumPy's global generator), the epoch, the history so far and the
configuration.  It is written with :func:`torch.save` to a temporary file and
moved into place with :func:`os.replace`, so a run killed while saving keeps
its previous state (the file keeps its historical name ``checkpoint.pt``, so older run
directories resume); it is read back with ``torch.load(weights_only=True)``,
so it may only contain tensors and plain Python values.

Example
-------
>>> import torch, tempfile, pathlib
>>> from rmtprune.paper.training.state import optimizer_state_by_name, optimizer_from_state
>>> model = torch.nn.Linear(3, 2)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> model(torch.ones(1, 3)).sum().backward(); opt.step()
>>> state = optimizer_state_by_name(opt, model)
>>> sorted(state["state"])
['bias', 'weight']
>>> optimizer_from_state(state, model).param_groups[0]["lr"]
0.1
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune._util.errors import InvalidFileError, one_line
from rmtprune._util.fileio import atomic_write_bytes, check_input_file
from rmtprune.storage.format import apply_structure, describe_structure
from rmtprune.storage.inputs import torch_load_detail

__all__ = [
    "STATE_FILE",
    "TrainingState",
    "apply_model_structure",
    "atomic_write_bytes",
    "capture_rng_state",
    "describe_model_structure",
    "load_state",
    "optimizer_from_state",
    "optimizer_state_by_name",
    "restore_rng_state",
    "save_state",
    "state_path",
]

STATE_FILE = "checkpoint.pt"
_FORMAT = "rmtprune-checkpoint"
_VERSION = 1


@dataclass(frozen=True)
class TrainingState:
    """Everything needed to continue a training run after ``epoch``.

    Attributes
    ----------
    epoch : int
        Last completed epoch (1-based).
    config : dict
        ``TrainConfig.to_dict()`` of the run.
    structure : dict or None
        ``rmtprune.storage.format.describe_structure(model)``, or None while no pruning
        step has changed the model.
    model_state : dict
        ``model.state_dict()``.
    optimizer_state : dict
        :func:`optimizer_state_by_name` of the optimizer.
    pruner_state : dict or None
        ``pruner.state_dict()``, None without a pruner.
    rng_state : dict
        :func:`capture_rng_state`.
    history : dict
        ``History.to_dict()`` up to ``epoch``.
    """

    epoch: int
    config: dict[str, Any]
    structure: dict[str, Any] | None
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    pruner_state: dict[str, Any] | None
    rng_state: dict[str, Any]
    history: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The content written to disk (with a format tag and version)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "epoch": self.epoch,
            "config": self.config,
            "structure": self.structure,
            "model_state": self.model_state,
            "optimizer_state": self.optimizer_state,
            "pruner_state": self.pruner_state,
            "rng_state": self.rng_state,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> TrainingState:
        """Inverse of :meth:`to_dict`; checks the format tag and version."""
        if not isinstance(content, dict) or content.get("format") != _FORMAT:
            raise ValueError("Not an rmtprune training checkpoint.")
        if content.get("version") != _VERSION:
            raise ValueError(
                f"Checkpoint version {content.get('version')!r} is not supported "
                f"(this rmtprune reads version {_VERSION})."
            )
        return cls(
            epoch=int(content["epoch"]),
            config=content["config"],
            structure=content["structure"],
            model_state=content["model_state"],
            optimizer_state=content["optimizer_state"],
            pruner_state=content["pruner_state"],
            rng_state=content["rng_state"],
            history=content["history"],
        )


def state_path(run_dir: str | os.PathLike[str]) -> Path:
    """Path of the (latest) training state of a run directory (``checkpoint.pt``)."""
    return Path(run_dir) / STATE_FILE


def save_state(path: str | os.PathLike[str], state: TrainingState) -> None:
    """Write ``state`` atomically (temporary file + :func:`os.replace`).

    Raises ``OSError`` naming ``path`` when the write fails (disk full, permissions); the
    previous state, if any, is left in place.
    """
    content = state.to_dict()
    try:
        atomic_write_bytes(path, lambda fh: torch.save(content, fh))
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
    except RuntimeError as exc:  # torch's zip writer reports I/O failures this way
        raise OSError(
            f"could not write the checkpoint {os.fspath(path)} ({one_line(str(exc))}); the disk "
            "may be full: free some space and rerun with the same output directory to continue"
        ) from None


def load_state(path: str | os.PathLike[str]) -> TrainingState:
    """Read a training state with ``torch.load(weights_only=True)`` onto the CPU.

    Raises :class:`rmtprune.InvalidFileError` naming the file when it is truncated, damaged,
    holds Python objects other than tensors and plain values (never unpickled), or is not an
    rmtprune training state (the messages call the file a checkpoint, its name).

    Examples
    --------
    >>> load_state("runs/fc-mnist/seed0/checkpoint.pt").epoch  # doctest: +SKIP
    12
    """
    check_input_file(path, what="checkpoint")
    advice = "delete it to start this run over, or restore it from a copy"
    try:
        content = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidFileError(
            path,
            f"the checkpoint {os.fspath(path)} cannot be read ({torch_load_detail(exc)}); it is "
            f"truncated, damaged or not a checkpoint: {advice}",
        ) from None
    try:
        return TrainingState.from_dict(content)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidFileError(
            path, f"the checkpoint {os.fspath(path)} is not usable ({exc}): {advice}"
        ) from None


def describe_model_structure(model: nn.Module) -> dict[str, Any]:
    """JSON-able description of ``model``'s factorized layers (``rmtprune.storage.format``)."""
    describe = describe_structure
    return dict(describe(model))


def apply_model_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Give the base ``model`` the layer structure ``structure``; returns the model."""
    apply = apply_structure
    result = apply(model, structure)
    return result if isinstance(result, nn.Module) else model


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """The optimizer's groups and per-parameter state, keyed by parameter name.

    Unlike ``optimizer.state_dict()``, which numbers parameters in the
    optimizer's own order, this survives an optimizer rebuilt over the same
    model with its parameters in another order.
    """
    names = _param_names(model)

    def name_of(p: torch.Tensor) -> str:
        try:
            return names[id(p)]
        except KeyError:
            raise ValueError(
                "The optimizer holds a parameter that is not in the model; rebuild the "
                "optimizer after changing the model."
            ) from None

    groups = [
        {
            "hyper": {k: v for k, v in group.items() if k != "params"},
            "params": [name_of(p) for p in group["params"]],
        }
        for group in optimizer.param_groups
    ]
    state = {name_of(p): dict(s) for p, s in optimizer.state.items()}
    return {
        "class": type(optimizer).__name__,
        "defaults": dict(optimizer.defaults),
        "groups": groups,
        "state": state,
    }


def optimizer_from_state(state: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer described by :func:`optimizer_state_by_name` over ``model``."""
    cls = getattr(torch.optim, str(state["class"]), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"Unknown optimizer class {state['class']!r} in the checkpoint.")
    params = dict(model.named_parameters())
    missing = [n for g in state["groups"] for n in g["params"] if n not in params]
    if missing:
        raise ValueError(
            f"The checkpoint's optimizer refers to parameters {missing[:5]} that the model "
            "does not have; was the model structure restored?"
        )
    groups = [{"params": [params[n] for n in g["params"]], **g["hyper"]} for g in state["groups"]]
    optimizer = cls(groups, **state["defaults"])
    for name, values in state["state"].items():
        p = params[name]
        optimizer.state[p] = {
            k: v.to(p.device) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
            for k, v in values.items()
        }
    return optimizer


def capture_rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    """States of the torch (global, CUDA, ``shuffle``), Python and NumPy generators."""
    version, internal, gauss = random.getstate()
    # The legacy global generator is what third-party code may draw from.
    _, key, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "shuffle": shuffle.get_state(),
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }


def restore_rng_state(state: dict[str, Any], shuffle: torch.Generator) -> None:
    """Put back the generator states captured by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle.set_state(state["shuffle"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    key = npy["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, npy["pos"], npy["has_gauss"], npy["cached"]))  # noqa: NPY002
