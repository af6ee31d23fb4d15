"""Where the command line gets its model from.

:func:`load_model` accepts

* an rmtprune file (written by :func:`rmtprune.save`: safetensors with the
  factorized structure in its metadata),
* a plain ``.safetensors`` state dict,
* a PyTorch state dict (``.pt`` / ``.pth`` / ``.bin``), read with
  ``torch.load(weights_only=True)`` so no code is unpickled; a checkpoint dict
  with a ``"state_dict"`` or ``"model"`` entry is accepted too,

and either loads it into the exact model built by a user factory
(``--model package.module:factory``), or, without one, into a *shell* model
built from the tensors alone: every 2-D ``*.weight`` becomes an ``nn.Linear``,
every 4-D one an ``nn.Conv2d`` (``groups = 1`` assumed), factorized layers come
from the file's structure, and every other tensor (norm weights, buffers) is
carried through unchanged.  Analysis and pruning only need the weight matrices,
so the shell gives the same numbers; the layer types are inferred, which the
CLI says.

Example
-------
>>> import os, tempfile, torch
>>> import rmtprune
>>> from rmtprune.sources import load_model
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> rmtprune.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
>>> load_model(path)
ShellModel(
  (0): Linear(in_features=4, out_features=3, bias=True)
)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from rmtprune._errors import InvalidFileError
from rmtprune._fileio import check_input_file
from rmtprune._inputs import load_into, read_document, read_state_dict, resolve_factory
from rmtprune.factorize.lowrank import (
    LowRankConv1D,
    LowRankConv2d,
    LowRankEmbedding,
    LowRankLinear,
)
from rmtprune.io import load as load_rmtprune

__all__ = ["ShellModel", "build_shell", "load_model", "read_tensors"]

PathLike = str | os.PathLike[str]


class ShellModel(nn.Module):
    """A container rebuilt from tensor names; see :func:`build_shell`."""

    def forward(self, *args: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError(
            "a shell model built from a weights file has no forward pass; "
            "pass --model package.module:factory to run the real model"
        )


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_tensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors of a weights file and, for an rmtprune file, its structure document."""
    path = os.fspath(path)
    check_input_file(path, what="weights file")
    if _is_safetensors(path):
        try:
            with safe_open(path, framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except SafetensorError as exc:
            raise ValueError(f"{path} is not a valid safetensors file: {exc}") from None
        document = read_document(path, meta, tensors)
        return tensors, document
    tensors = read_state_dict(path)
    read_document(path, {}, tensors)  # checks the tensor names
    return tensors, None


def _node(root: nn.Module, dotted: str) -> nn.Module:
    node = root
    for part in dotted.split(".") if dotted else []:
        child = node._modules.get(part)
        if child is None:
            child = ShellModel()
            node.add_module(part, child)
        node = child
    return node


def _factorized(entry: Mapping[str, Any]) -> nn.Module:
    if entry["type"] == "LowRankConv2d":
        return LowRankConv2d(
            entry["in_channels"],
            entry["out_channels"],
            entry["rank"],
            kernel_size=tuple(entry["kernel_size"]),
            stride=tuple(entry["stride"]),
            padding=entry["padding"]
            if isinstance(entry["padding"], str)
            else tuple(entry["padding"]),
            dilation=tuple(entry["dilation"]),
            bias=entry["bias"],
            padding_mode=entry["padding_mode"],
        )
    if entry["type"] == "LowRankEmbedding":
        return LowRankEmbedding(
            entry["out_features"],
            entry["in_features"],
            entry["rank"],
            padding_idx=entry.get("padding_idx"),
        )
    linear = LowRankConv1D if entry["type"] == "LowRankConv1D" else LowRankLinear
    return linear(entry["in_features"], entry["out_features"], entry["rank"], bias=entry["bias"])


def build_shell(
    tensors: Mapping[str, torch.Tensor], structure: Mapping[str, Mapping[str, Any]] | None = None
) -> ShellModel:
    """A module tree whose ``state_dict`` keys and shapes are those of ``tensors``."""
    structure = structure or {}
    root = ShellModel()
    for name in sorted(structure, key=lambda s: s.count(".")):
        parent, _, leaf = name.rpartition(".")
        _node(root, parent).add_module(leaf, _factorized(structure[name]))
    inside = tuple(f"{name}." for name in structure)
    for key in sorted(tensors):
        if key.startswith(inside):
            continue
        prefix, _, leaf = key.rpartition(".")
        t = tensors[key]
        if leaf == "weight" and t.dim() in (2, 4) and prefix:
            parent, _, mod_name = prefix.rpartition(".")
            has_bias = f"{prefix}.bias" in tensors
            if t.dim() == 2:
                layer: nn.Module = nn.Linear(t.shape[1], t.shape[0], bias=has_bias, dtype=t.dtype)
            else:
                kernel = (int(t.shape[2]), int(t.shape[3]))
                layer = nn.Conv2d(t.shape[1], t.shape[0], kernel, bias=has_bias, dtype=t.dtype)
            _node(root, parent).add_module(mod_name, layer)
    for key in sorted(tensors):
        prefix, _, leaf = key.rpartition(".")
        node = _node(root, prefix)
        if key.startswith(inside) or leaf in node._parameters:
            continue
        node.register_buffer(leaf, torch.empty_like(tensors[key]))
    return root


def load_model(weights: PathLike, *, model: str | None = None) -> nn.Module:
    """Build the model the CLI works on (see the module docstring).

    Parameters
    ----------
    weights : path
        The weights file.
    model : str, optional
        ``"package.module:factory"``; the factory is called without arguments
        and must return an ``nn.Module``.
    """
    tensors, document = read_tensors(weights)
    if model is None:
        try:
            shell = build_shell(tensors, document["structure"] if document else None)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InvalidFileError(
                weights, f"{os.fspath(weights)}: its tensor names do not form a model ({exc})"
            ) from None
        if document is not None:
            return load_rmtprune(shell, weights)
        load_into(shell, tensors, os.fspath(weights), None)
        return shell
    built = resolve_factory(model)
    if document is not None:
        return load_rmtprune(built, weights)
    load_into(built, tensors, os.fspath(weights), model)
    return built
