"""Checked reading of the command line's inputs: state dicts, rmtprune metadata, ``--model``.

Every function here raises a documented exception naming the file or the ``--model`` target
and what to do (:mod:`rmtprune._util.errors`): :class:`~rmtprune.InvalidFileError` for a file whose
content cannot be used, :class:`~rmtprune.UserCodeError` when the user's module or factory
raises, ``TypeError``/``ValueError`` for a target of the wrong kind, and never passes on
advice meant for library authors (such as torch's ``weights_only=False``).

Example
-------
>>> import os, tempfile, torch
>>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
>>> torch.save({"fc.weight": torch.zeros(2, 3)}, path)
>>> sorted(read_state_dict(path))
['fc.weight']
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rmtprune._util.errors import InvalidFileError, UserCodeError, one_line
from rmtprune.storage.metadata import (
    META_KEY,
    check_module_names,
    check_structure,
    parse_document,
)

__all__ = ["load_into", "read_document", "read_state_dict", "resolve_factory", "torch_load_detail"]

_ADVICE = re.compile(r"weights_only|Weights only|torch\.load|file an issue|PyTorch 2\.6", re.I)


def torch_load_detail(exc: BaseException) -> str:
    """The informative part of a ``torch.load`` error, without torch's advice to users.

    >>> torch_load_detail(RuntimeError("Weights only load failed. Re-running `torch.load` "
    ...                   "with `weights_only` set to False ...\\n\\nUnsupported operand 149"))
    'Unsupported operand 149'
    """
    kept = []
    for line in str(exc).splitlines():
        sentences = [s for s in re.split(r"(?<=\.)\s+", line.strip()) if s]
        kept += [s for s in sentences if not _ADVICE.search(s)]
    return one_line(" ".join(kept[:2])) or type(exc).__name__


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict read with ``torch.load(weights_only=True)`` (no code is ever unpickled).

    A checkpoint with a ``"state_dict"``, ``"model"`` or ``"model_state"`` mapping is
    accepted too.  Raises :class:`~rmtprune.InvalidFileError` naming the file otherwise; a
    ``.safetensors`` name is never read with ``torch.load`` (it is not a safetensors file if
    it got here).
    """
    if path.endswith(".safetensors"):
        size = os.path.getsize(path)
        raise InvalidFileError(
            path,
            f"{path} is not a valid safetensors file: its {size} bytes do not start with an "
            "8-byte header length followed by a JSON header ('{'); it may be empty, truncated "
            "or another format",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidFileError(
            path,
            f"{path} could not be read as a state dict with torch.load(weights_only=True) "
            f"({torch_load_detail(exc)}); it may be truncated, not a PyTorch file, or hold "
            "Python objects, which rmtprune never unpickles. Give a .safetensors file or a "
            "file written by torch.save(model.state_dict(), path)",
        ) from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidFileError(
            path,
            f"{path} does not hold a state dict (a mapping of names to tensors); "
            f"it holds a {type(obj).__name__}",
        )
    if not all(isinstance(k, str) for k in obj):
        raise InvalidFileError(path, f"{path}: the state dict has keys that are not strings")
    return dict(obj)


def read_document(
    path: str, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]
) -> dict[str, Any] | None:
    """The checked rmtprune document of a safetensors file, or ``None`` for a plain one.

    Every tensor name and every structure record is checked against the tensors present
    before anything is built from them (:mod:`rmtprune.storage.metadata`).
    """
    check_module_names(path, tensors, "tensor name")
    if META_KEY not in metadata:
        return None
    document = parse_document(path, metadata[META_KEY])
    check_structure(path, document["structure"], tensors, document["aliases"])
    return document


def resolve_factory(model: str) -> nn.Module:
    """Import ``package.module:factory``, call it without arguments, check the result."""
    module_name, sep, factory_name = model.partition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(
            f"The 'model' parameter must look like 'package.module:factory'. Got {model!r} instead."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import the module of --model {model!r}: {exc}; check the name and that "
            "it is on PYTHONPATH"
        ) from None
    except Exception as exc:
        raise UserCodeError(
            f"importing the module of --model {model!r} raised {type(exc).__name__}: "
            f"{one_line(str(exc))}"
        ) from exc
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise ValueError(f"--model {model!r}: module {module_name!r} has no {factory_name!r}")
    if not callable(factory):
        raise TypeError(
            f"--model {model!r} names a {type(factory).__name__}, not a function or class "
            "that builds the model"
        )
    try:
        built = factory()
    except Exception as exc:
        raise UserCodeError(
            f"the model factory {model!r} raised {type(exc).__name__}: {one_line(str(exc))}"
        ) from exc
    if not isinstance(built, nn.Module):
        raise TypeError(
            f"the model factory {model!r} returned {type(built).__name__}, not a torch.nn.Module"
        )
    return built


def load_into(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], path: str, target: str | None
) -> None:
    """``model.load_state_dict(tensors)``, with a one-line error naming both sides.

    ``target`` is the ``--model`` string, or ``None`` for the model inferred from the file.
    """
    from rmtprune.storage.format import check_fit

    built_by = "inferred from its tensors" if target is None else f"built by --model {target!r}"
    try:
        check_fit(model, tensors, strict=True)
    except ValueError as exc:
        raise InvalidFileError(
            path,
            f"{path} does not fit the model {built_by}: {exc}; check that the model is the "
            "architecture the weights came from",
        ) from None
    model.load_state_dict(tensors, strict=True)
