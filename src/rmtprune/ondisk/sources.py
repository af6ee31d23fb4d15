"""Reading weights files into a model: a user factory's model, or a shell that guesses nothing.

:func:`load_model` accepts

* an rmtprune file (written by :func:`rmtprune.save`: safetensors with the
  factorized structure in its metadata; its sparsely stored weights are read dense and
  their layers get the saved masks),
* a plain ``.safetensors`` state dict, a sharded checkpoint (its
  ``*.safetensors.index.json``) or a model directory holding either
  (headers and index checked by :func:`rmtprune.storage.reader.open_checkpoint`),
* a PyTorch state dict (``.pt`` / ``.pth`` / ``.bin``), read with
  ``torch.load(weights_only=True)`` so no code is unpickled; a checkpoint dict
  with a ``"state_dict"`` or ``"model"`` entry is accepted too,

and either loads it into the exact model built by a user factory
(``--model package.module:factory``), or, without one, into a *shell* model
built from the tensors alone.  The shell guesses no layer type: its layers are
the factorized layers of the file's structure and the layers the caller names
as Linear or Conv2d (``dense=``); every other tensor is a buffer carried
through unchanged.  Which weights may be named is decided in
:mod:`rmtprune.ondisk.inputs` (never embeddings or norms).

Example
-------
>>> import os, tempfile, torch
>>> import rmtprune
>>> from rmtprune.ondisk.sources import load_model
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> rmtprune.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
>>> shell = load_model(path)
>>> sorted(shell.state_dict()), any(isinstance(m, torch.nn.Linear) for m in shell.modules())
(['0.bias', '0.weight'], False)
>>> load_model(path, dense={"0": "Linear"})
ShellModel(
  (0): Linear(in_features=4, out_features=3, bias=True)
)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from rmtprune._util.errors import InvalidFileError
from rmtprune._util.fileio import check_input_file
from rmtprune.factorize.lowrank import (
    LowRankConv1D,
    LowRankConv2d,
    LowRankEmbedding,
    LowRankLinear,
)
from rmtprune.storage.format import load as load_rmtprune
from rmtprune.storage.inputs import load_into, read_document, read_state_dict, resolve_factory
from rmtprune.storage.reader import (
    SAFETENSORS_DTYPE,
    checkpoint_file,
    is_safetensors_file,
    open_checkpoint,
)
from rmtprune.storage.sparse import expand_sparse

__all__ = [
    "ShellModel",
    "build_factory_model",
    "build_shell",
    "carried_values",
    "load_model",
    "load_shell",
    "module_aliases",
    "outside_modules",
    "read_tensors",
    "tensor_dtypes",
]

PathLike = str | os.PathLike[str]


class ShellModel(nn.Module):
    """A container rebuilt from tensor names; see :func:`build_shell`."""

    def forward(self, *args: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError(
            "a shell model built from a weights file has no forward pass; "
            "pass --model package.module:factory to run the real model"
        )


def read_tensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors of a weights file, index or model directory, and an rmtprune structure document.

    The sparsely stored weights of an rmtprune file are rebuilt dense (their records checked
    first, :func:`rmtprune.storage.sparse.expand_sparse`).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        check_input_file(path, what="weights file")  # missing or unreadable: named, one line
    if os.path.isdir(path) or path.endswith(".index.json") or is_safetensors_file(path):
        checkpoint = open_checkpoint(path)  # the one checked reader: headers and index first
        tensors = expand_sparse(checkpoint.path, checkpoint.metadata, checkpoint.read_all())
        # the one metadata validator (rmtprune.storage.metadata): names and structure records
        return tensors, read_document(checkpoint.path, checkpoint.metadata, tensors)
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


def _dense_layer(kind: str, weight: torch.Tensor, has_bias: bool) -> nn.Module:
    if kind == "Linear" and weight.dim() == 2:
        return nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, dtype=weight.dtype)
    if kind == "Conv2d" and weight.dim() == 4:
        kernel = (int(weight.shape[2]), int(weight.shape[3]))
        return nn.Conv2d(
            weight.shape[1], weight.shape[0], kernel, bias=has_bias, dtype=weight.dtype
        )
    raise ValueError(f"a {weight.dim()}-D weight cannot be built as {kind}")


def module_aliases(
    keys: Iterable[str], aliases: Mapping[str, str], structure: Iterable[str]
) -> dict[str, str]:
    """``{module name: name of the module it is}`` for factorized modules saved under two names.

    A module reachable under two names (``model.y = model.x``) appears in a state dict
    under both; an rmtprune file stores its tensors once and records the second name's
    entries as tied (``aliases``: ``{entry: stored entry}``).  A name ``P`` is the module
    ``Q`` when ``P.`` and ``Q.`` prefix the same entry suffixes, each pair is one stored
    tensor, and the file's ``structure`` (its factorized layer names) records a layer at or
    inside ``Q`` but none at or inside ``P``: the structure lists each module once, so a
    second factorized module holding the same tensors would be recorded too.  Dense layers
    sharing every tensor look the same in a file whether they are one module or two (an
    ``Embedding`` and a ``Linear`` tied together), so they are not merged.  Only the
    outermost such names are returned.

    >>> tied = {"y.first.weight": "x.first.weight", "y.second.weight": "x.second.weight"}
    >>> module_aliases(["x.first.weight", "x.second.weight"], tied, ["x"])
    {'y': 'x'}
    >>> module_aliases(["x.weight"], {"y.weight": "x.weight"}, [])  # dense: undecidable
    {}
    """
    names = set(keys) | set(aliases)
    recorded = tuple(f"{name}." for name in structure)
    if not aliases or not recorded:
        return {}
    children: dict[str, set[str]] = {}
    for key in names:
        parts = key.split(".")
        for cut in range(1, len(parts)):
            children.setdefault(".".join(parts[:cut]), set()).add(".".join(parts[cut:]))

    def stored(key: str) -> str:
        return aliases.get(key, key)

    found: dict[str, str] = {}
    for alias in sorted(aliases, key=lambda k: (k.count("."), k)):
        a, t = alias.split("."), aliases[alias].split(".")
        for tail in range(min(len(a), len(t)) - 1, 0, -1):  # the outermost module first
            if a[-tail:] != t[-tail:]:
                continue
            first, second = ".".join(a[:-tail]), ".".join(t[:-tail])
            if any(f"{n}.".startswith(f"{m}.") for n in (first, second) for m in found):
                break  # inside a module already found
            if f"{first}.".startswith(f"{second}.") or f"{second}.".startswith(f"{first}."):
                continue
            if any(f"{first}.".startswith(r) or r.startswith(f"{first}.") for r in recorded):
                continue  # a factorized layer of its own at or inside P, or P inside one
            if not any(r.startswith(f"{second}.") for r in recorded):
                continue  # nothing proves that P and Q are one module
            suffixes = children[first]
            if suffixes == children[second] and all(
                stored(f"{first}.{x}") == stored(f"{second}.{x}") for x in suffixes
            ):
                found[first] = second
                break
    return found


def outside_modules(names: Iterable[str], hidden: Iterable[str]) -> list[str]:
    """The ``names`` that are neither one of the modules ``hidden`` nor inside one."""
    prefixes = tuple(f"{h}." for h in hidden)
    return [n for n in names if not f"{n}.".startswith(prefixes)]


def build_shell(
    tensors: Mapping[str, torch.Tensor],
    structure: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    dense: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> ShellModel:
    """A module tree whose ``state_dict`` keys and shapes are those of ``tensors``.

    The factorized layers of ``structure`` and the layers named in ``dense``
    (``{layer name: "Linear" or "Conv2d"}``, weight at ``NAME.weight``) become
    real layers; every other tensor becomes a buffer, so it is carried through
    unchanged and no layer type is guessed.

    ``aliases`` (an rmtprune file's tied entries, ``{entry: stored tensor}``) hold the
    very tensor object of their target, as in the saved model: loading fills both, saving
    stores one, and the walker skips a layer whose weight is tied (a parameter when either
    side is one, registered as a buffer on an untyped side).  A module whose every entry
    is tied to another module's (:func:`module_aliases`) is that module, under both names.
    """
    structure = structure or {}
    dense = dense or {}
    aliases = dict(aliases or {})
    missing = sorted(a for a, t in aliases.items() if t not in tensors)
    if missing:
        raise ValueError(f"tied entry {missing[0]!r} refers to a missing tensor")
    tensors = {**tensors, **{a: tensors[t] for a, t in aliases.items()}}
    same = module_aliases(tensors, aliases, structure)  # built once, under both names
    if same:
        tensors = {k: tensors[k] for k in outside_modules(tensors, same)}
        aliases = {a: aliases[a] for a in outside_modules(aliases, same)}
        structure = {k: structure[k] for k in outside_modules(structure, same)}
        dense = {k: dense[k] for k in outside_modules(dense, same)}
    root = ShellModel()
    for name in sorted(structure, key=lambda s: s.count(".")):
        parent, _, leaf = name.rpartition(".")
        stored = tensors.get(f"{name}.first.weight")
        layer = _factorized(structure[name])
        if stored is not None and stored.is_floating_point():
            layer = layer.to(stored.dtype)  # a bf16 file stays bf16 when pruned again
        _node(root, parent).add_module(leaf, layer)
    inside = tuple(f"{name}." for name in structure)
    for name in sorted(dense):
        weight = tensors.get(f"{name}.weight")
        if weight is None or not name:
            raise ValueError(f"no weight tensor {name}.weight for the layer {name!r}")
        parent, _, leaf = name.rpartition(".")
        layer = _dense_layer(dense[name], weight, f"{name}.bias" in tensors)
        _node(root, parent).add_module(leaf, layer)
    for key in sorted(tensors):
        prefix, _, leaf = key.rpartition(".")
        node = _node(root, prefix)
        if key.startswith(inside) or leaf in node._parameters:
            continue
        node.register_buffer(leaf, torch.empty_like(tensors[key]))
    for name in sorted(same, key=lambda s: s.count(".")):
        parent, _, leaf = name.rpartition(".")
        _node(root, parent).add_module(leaf, root.get_submodule(same[name]))
    _tie(root, aliases)
    return root


def _slot(root: nn.Module, key: str) -> tuple[nn.Module, str, torch.Tensor]:
    """The module, attribute name and tensor (parameter or buffer) at state-dict ``key``."""
    prefix, _, leaf = key.rpartition(".")
    node = root.get_submodule(prefix)
    held: torch.Tensor | None = node._parameters.get(leaf)
    held = node._buffers.get(leaf) if held is None else held
    if held is None:
        raise ValueError(f"no place for the tied entry {key!r}")
    return node, leaf, held


def _tie(root: nn.Module, aliases: Mapping[str, str]) -> None:
    """Make each tied entry hold the same tensor object as its target (see build_shell)."""
    groups: dict[str, list[str]] = {}
    for alias, target in aliases.items():
        groups.setdefault(target, [target]).append(alias)
    for keys in groups.values():
        slots = [_slot(root, key) for key in keys]
        params = [held for _, _, held in slots if isinstance(held, nn.Parameter)]
        shared = params[0] if params else slots[0][2]
        for (node, leaf, held), key in zip(slots, keys, strict=True):
            if (held.shape, held.dtype) != (shared.shape, shared.dtype):
                raise ValueError(
                    f"the tied entry {key!r} is built as {tuple(held.shape)} {held.dtype} but "
                    f"its tensor is {tuple(shared.shape)} {shared.dtype}"
                )
            if leaf in node._parameters:
                node._parameters[leaf] = shared  # type: ignore[assignment]  # a Parameter
            else:
                node._buffers[leaf] = shared


def load_model(
    weights: PathLike, *, model: str | None = None, dense: Mapping[str, str] | None = None
) -> nn.Module:
    """Load a weights file into the model built by a factory, or into a shell model.

    Parameters
    ----------
    weights : path
        The weights file (see the module docstring), a sharded index, or a
        model directory (its safetensors checkpoint).
    model : str, optional
        ``"package.module:factory"``; the factory is called without arguments
        and must return an ``nn.Module``.
    dense : mapping, optional
        Without ``model``: the layers of the shell that are Linear or Conv2d
        (see :func:`build_shell`); every other tensor is carried as a buffer.
    """
    tensors, document = read_tensors(weights)
    path = checkpoint_file(weights)  # a directory's checkpoint, its headers read once
    if model is None:
        return load_shell(tensors, document, path, dense=dense)
    built = build_factory_model(model)
    if document is not None:
        return load_rmtprune(built, path)
    load_into(built, tensors, os.fspath(weights), model)
    return built


def load_shell(
    tensors: Mapping[str, torch.Tensor],
    document: Mapping[str, Any] | None,
    path: PathLike,
    *,
    dense: Mapping[str, str] | None = None,
) -> ShellModel:
    """:func:`build_shell` filled with ``tensors`` (from :func:`read_tensors` of ``path``)."""
    try:
        shell = build_shell(
            tensors,
            document["structure"] if document else None,
            dense=dense,
            aliases=document["aliases"] if document else None,
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InvalidFileError(
            path, f"{os.fspath(path)}: its tensor names do not form a model ({exc})"
        ) from None
    if document is not None:
        loaded = load_rmtprune(shell, os.fspath(path))
        assert isinstance(loaded, ShellModel)
        return loaded
    load_into(shell, tensors, os.fspath(path), None)
    return shell


def build_factory_model(model: str) -> nn.Module:
    """Call the factory named ``"package.module:factory"`` and check it returns a module."""
    return resolve_factory(model)


def tensor_dtypes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, safetensors dtype string)}`` of in-memory tensors, as
    :func:`rmtprune.ondisk.analysis.checkpoint_shapes` gives them for a file (the dtype decides
    what is a floating-point weight)."""
    return {
        name: (tuple(t.shape), SAFETENSORS_DTYPE.get(t.dtype, "?")) for name, t in tensors.items()
    }


def carried_values(shell: nn.Module) -> int:
    """The floating-point values ``shell`` carries as buffers (a tied entry held as a buffer
    beside its parameter counts once, as a parameter)."""
    params = {id(p) for p in shell.parameters()}
    return sum(b.numel() for b in shell.buffers() if b.is_floating_point() and id(b) not in params)
