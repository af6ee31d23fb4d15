"""One validator for the metadata of rmtprune files, run before anything is built from it.

An rmtprune file carries a JSON document (``rmtprune.storage.format``) whose ``structure`` says
which
layers are factorized and with which sizes.  Building layers from those numbers before
checking them lets a 34 KB file claiming ``"rank": 1000000`` allocate gigabytes.  Here every
field is checked, and every size must equal the shape of a tensor actually present in the
file, so what is built afterwards is never larger than what was read.  Both
:func:`rmtprune.load` and the command line's reader (:mod:`rmtprune.ondisk.sources`) call
:func:`parse_document` and :func:`check_structure`.  Failures raise
:class:`rmtprune.InvalidFileError` (a ``ValueError``) naming the file, the layer and the field.

A new factorized layer type is supported by one call to :func:`register_layout`.

A sparse (masked) weight is stored as two tensors, its kept values and its packed mask
(:mod:`rmtprune.storage.sparse`); the document's optional ``"sparse"`` entry records its shape
and number of kept values, and :func:`check_sparse` checks both tensors against it (lengths,
dtype, the bits set) before the dense tensor is built.  That dense tensor is larger than what
was read, by design, but never more than 8 entries per byte of bitmask actually in the file.

Example
-------
>>> import torch
>>> doc = parse_document("m.safetensors", '{"format_version": 1, "structure": {}, '
...                      '"aliases": {}, "sha256": "' + 64 * "0" + '"}')
>>> bomb = {"fc": {"type": "LowRankLinear", "rank": 10**6, "in_features": 4,
...                "out_features": 3, "bias": False}}
>>> present = {"fc.first.weight": torch.zeros(2, 4), "fc.second.weight": torch.zeros(3, 2)}
>>> try:
...     check_structure("m.safetensors", bomb, present)
... except InvalidFileError as exc:
...     print(exc.args[0].split(", but ")[1])
the tensor in the file has shape (2, 4)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from rmtprune._util.errors import InvalidFileError

__all__ = [
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "META_KEY",
    "SPARSE_BITMASK",
    "SPARSE_FORMAT_VERSION",
    "SPARSE_VALUES",
    "check_module_names",
    "check_sparse",
    "check_structure",
    "is_sparse_key",
    "parse_document",
    "register_layout",
    "sparse_keys",
]

FORMAT_VERSION = 1
"""The format version of a file without sparse entries (every file written before them)."""
SPARSE_FORMAT_VERSION = 2
"""The format version of a file with sparse entries: a reader older than sparse storage checks
the version first and refuses the file by it, instead of failing on the unknown tensors."""
MAX_DEPTH = 16
"""Deepest nesting of JSON containers accepted in the metadata (a valid document has 4)."""
_MAX_INT = 2**31 - 1
META_KEY = "rmtprune"
"""The one key under which rmtprune records itself: the safetensors metadata entry of an rmtprune
file's JSON document, the ``config.json`` entry of :func:`rmtprune.save_pretrained` and the
Lightning checkpoint entry of :mod:`rmtprune.integrations.lightning`."""
SPARSE_VALUES = ":sparse_values"
"""Suffix of the stored tensor of a sparse weight's kept values (``<key>:sparse_values``)."""
SPARSE_BITMASK = ":sparse_bitmask"
"""Suffix of the stored tensor of a sparse weight's packed mask (``<key>:sparse_bitmask``).

No state-dict key holds a ``:`` in practice (no module path can: see
:func:`check_module_names`), and :func:`rmtprune.save` refuses a model whose keys clash."""
_PART = re.compile(r"^[A-Za-z0-9_]+$")
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

Shape = tuple[int, ...]
Layout = Callable[[Mapping[str, Any]], dict[str, Shape]]


def _depth(value: Any) -> int:
    """Nesting depth of JSON containers, computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_document(path: str | os.PathLike[str], text: Any) -> dict[str, Any]:
    """Parse and check the ``"rmtprune"`` metadata string of the file at ``path``.

    Checks the JSON (with its nesting depth bounded by :data:`MAX_DEPTH`), the four
    top-level fields and their types, and the format version.
    """
    path = os.fspath(path)
    where = f"{path}: the {META_KEY!r} metadata"
    if not isinstance(text, str):
        raise InvalidFileError(path, f"{where} is not a string")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidFileError(
            path, f"{where} is not valid JSON ({exc}); the file is damaged or was edited"
        ) from None
    except RecursionError:
        raise InvalidFileError(path, f"{where} is nested more than {MAX_DEPTH} levels") from None
    if _depth(document) > MAX_DEPTH:
        raise InvalidFileError(path, f"{where} is nested more than {MAX_DEPTH} levels")
    if not isinstance(document, dict):
        raise InvalidFileError(
            path, f"{where} must be a JSON object. Got a {type(document).__name__} instead"
        )
    expected = {"format_version": int, "structure": dict, "aliases": dict, "sha256": str}
    for key, kind in expected.items():
        value = document.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidFileError(
                path,
                f"{where} has no valid {key!r} field (expected {kind.__name__}, got {value!r})",
            )
    version = document["format_version"]
    if version not in (FORMAT_VERSION, SPARSE_FORMAT_VERSION):
        raise InvalidFileError(
            path,
            f"{path}: unsupported format_version {version} (this version of rmtprune reads "
            f"{FORMAT_VERSION} and {SPARSE_FORMAT_VERSION}, the files with sparse weights)",
        )
    for alias, target in document["aliases"].items():
        if not isinstance(target, str):
            raise InvalidFileError(path, f"{where}: alias {alias!r} must name a tensor")
    sparse = document.setdefault("sparse", {})  # optional: absent in files of dense models
    if not isinstance(sparse, dict):
        raise InvalidFileError(
            path, f"{where} has no valid 'sparse' field (expected dict, got {sparse!r})"
        )
    if bool(sparse) != (version == SPARSE_FORMAT_VERSION):
        raise InvalidFileError(
            path,
            f"{where}: format_version {version} with {len(sparse)} sparse entries (sparse "
            f"weights are written as format_version {SPARSE_FORMAT_VERSION}, dense ones as "
            f"{FORMAT_VERSION}); the file is damaged or was edited",
        )
    return document


def check_module_names(path: str | os.PathLike[str], names: Any, what: str) -> None:
    """Every dotted name is made of non-empty ``[A-Za-z0-9_]`` parts that are not attributes
    of ``nn.Module`` (so it can name a submodule)."""
    from torch import nn

    probe = nn.Module()
    for name in names:
        parts = name.split(".") if isinstance(name, str) else [None]
        bad = [p for p in parts if not isinstance(p, str) or not _PART.match(p)]
        bad += [p for p in parts if isinstance(p, str) and hasattr(probe, p)]
        if bad:
            raise InvalidFileError(
                path,
                f"{os.fspath(path)}: {what} {name!r} is not a valid module path "
                "(dot-separated names of letters, digits and '_', not nn.Module attributes)",
            )


def _int(entry: Mapping[str, Any], key: str, low: int = 1) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_INT:
        raise ValueError(f"{key!r} must be an int in [{low}, {_MAX_INT}], got {value!r}")
    return value


def _pair(entry: Mapping[str, Any], key: str, low: int = 1) -> tuple[int, int]:
    value = entry.get(key)
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"{key!r} must be a list of two ints, got {value!r}")
    a, b = (_int({key: v}, key, low) for v in value)
    return a, b


def _linear_layout(entry: Mapping[str, Any]) -> dict[str, Shape]:
    rank, n, m = (_int(entry, k) for k in ("rank", "in_features", "out_features"))
    shapes: dict[str, Shape] = {"first.weight": (rank, n), "second.weight": (m, rank)}
    if entry.get("bias"):
        shapes["second.bias"] = (m,)
    return shapes


def _conv_layout(entry: Mapping[str, Any]) -> dict[str, Shape]:
    rank, c_in, c_out = (_int(entry, k) for k in ("rank", "in_channels", "out_channels"))
    kh, kw = _pair(entry, "kernel_size")
    _pair(entry, "stride")
    _pair(entry, "dilation")
    padding = entry.get("padding")
    if padding not in ("same", "valid"):
        _pair(entry, "padding", low=0)
    if entry.get("padding_mode") not in _PADDING_MODES:
        raise ValueError(f"'padding_mode' must be one of {_PADDING_MODES}")
    if _int(entry, "in_features") != c_in * kh * kw or _int(entry, "out_features") != c_out:
        raise ValueError("'in_features'/'out_features' do not match the channels and kernel")
    shapes: dict[str, Shape] = {
        "first.weight": (rank, c_in, kh, kw),
        "second.weight": (c_out, rank, 1, 1),
    }
    if entry.get("bias"):
        shapes["second.bias"] = (c_out,)
    return shapes


def _embedding_layout(entry: Mapping[str, Any]) -> dict[str, Shape]:
    """``LowRankEmbedding``: the ``vocab × r`` table ``first`` and the ``d × r`` projection
    ``second`` (no bias); ``out_features`` is the vocabulary, ``in_features`` the width."""
    rank, d, vocab = (_int(entry, k) for k in ("rank", "in_features", "out_features"))
    if entry.get("bias"):
        raise ValueError("'bias' must be false (an embedding has no bias)")
    padding_idx = entry.get("padding_idx")
    if padding_idx is not None:
        _int(entry, "padding_idx", low=0)
        if padding_idx >= vocab:
            raise ValueError(f"'padding_idx' {padding_idx} is outside the vocabulary ({vocab})")
    return {"first.weight": (vocab, rank), "second.weight": (d, rank)}


_LAYOUTS: dict[str, Layout] = {
    "LowRankLinear": _linear_layout,
    "LowRankConv1D": _linear_layout,  # a LowRankLinear that shows Conv1D's transposed weight
    "LowRankConv2d": _conv_layout,
    "LowRankEmbedding": _embedding_layout,
}


def register_layout(type_name: str, layout: Layout) -> None:
    """Declare the tensors a factorized layer type stores (for :func:`check_structure`).

    ``layout(entry)`` validates the entry's fields (raising ``ValueError`` with the field
    name) and returns ``{tensor suffix: shape}`` of every tensor the layer holds.
    """
    _LAYOUTS[type_name] = layout


def _shape(tensor: Any) -> Shape | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def check_structure(
    path: str | os.PathLike[str],
    structure: Mapping[str, Any],
    tensors: Mapping[str, Any],
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Check every record of ``structure`` against the tensors present, before building.

    Each record must be an object with a known ``type``, well-typed fields and a ``bias``
    flag, and each tensor the record implies (``<layer>.first.weight`` ...) must be in
    ``tensors`` (directly or through ``aliases``) with exactly the implied shape.
    """
    path = os.fspath(path)
    aliases = aliases or {}
    check_module_names(path, structure, "layer name")
    for name, entry in structure.items():
        if not isinstance(entry, Mapping):
            raise InvalidFileError(path, f"{path}: layer {name!r}: the record is not an object")
        kind = entry.get("type")
        layout = _LAYOUTS.get(kind) if isinstance(kind, str) else None
        if layout is None:
            raise InvalidFileError(
                path,
                f"{path}: layer {name!r}: unknown factorized type {entry.get('type')!r} "
                f"(expected one of {sorted(_LAYOUTS)})",
            )
        if not isinstance(entry.get("bias"), bool):
            raise InvalidFileError(path, f"{path}: layer {name!r}: 'bias' must be true or false")
        try:
            shapes = layout(entry)
        except ValueError as exc:
            raise InvalidFileError(path, f"{path}: layer {name!r}: {exc}") from None
        for suffix, shape in shapes.items():
            key = f"{name}.{suffix}"
            tensor = tensors.get(key, tensors.get(aliases.get(key, "")))
            if tensor is None:
                raise InvalidFileError(
                    path, f"{path}: layer {name!r} is factorized but {key!r} is missing"
                )
            if _shape(tensor) != shape:
                raise InvalidFileError(
                    path,
                    f"{path}: layer {name!r} is recorded with rank {entry['rank']} and sizes "
                    f"that imply {key!r} of shape {shape}, but the tensor in the file has "
                    f"shape {_shape(tensor)}",
                )


def sparse_keys(key: str) -> tuple[str, str]:
    """The names of the two tensors that store the sparse weight ``key``: values, bitmask."""
    return key + SPARSE_VALUES, key + SPARSE_BITMASK


def is_sparse_key(name: str) -> bool:
    """Whether ``name`` is one of the two stored tensors of a sparse weight."""
    return name.endswith((SPARSE_VALUES, SPARSE_BITMASK))


_POPCOUNT = [bin(byte).count("1") for byte in range(256)]


def _bits_set(bitmask: Any) -> int:
    """The number of bits set in a ``uint8`` tensor."""
    import numpy as np

    table = np.array(_POPCOUNT, dtype=np.uint8)
    return int(table[bitmask.detach().cpu().numpy()].sum(dtype=np.int64))


def _sparse_entry(entry: Any) -> tuple[Shape, int]:
    """The checked ``shape`` and ``nonzero`` of one ``"sparse"`` record."""
    if not isinstance(entry, Mapping):
        raise ValueError("the record is not an object")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_INT for d in shape
    ):
        raise ValueError(f"'shape' must be a list of ints in [0, {_MAX_INT}], got {shape!r}")
    numel = math.prod(shape)
    nonzero = entry.get("nonzero")
    if isinstance(nonzero, bool) or not isinstance(nonzero, int) or not 0 <= nonzero <= numel:
        raise ValueError(
            f"'nonzero' must be an int in [0, {numel}] (the entries of 'shape' {shape}), "
            f"got {nonzero!r}"
        )
    return tuple(shape), nonzero


def _check_sparse_tensors(key: str, shape: Shape, nonzero: int, tensors: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless the two stored tensors of ``key`` fit its record."""
    import torch

    values_key, bitmask_key = sparse_keys(key)
    for name in (values_key, bitmask_key):
        if name not in tensors:
            raise ValueError(f"its tensor {name!r} is missing")
    values, bitmask = tensors[values_key], tensors[bitmask_key]
    if _shape(values) != (nonzero,):
        raise ValueError(
            f"'nonzero' is {nonzero} but the values tensor {values_key!r} has shape "
            f"{_shape(values)} (expected ({nonzero},))"
        )
    numel = math.prod(shape)
    nbytes = -(-numel // 8)
    if getattr(bitmask, "dtype", None) != torch.uint8 or _shape(bitmask) != (nbytes,):
        raise ValueError(
            f"'shape' {list(shape)} has {numel} entries, which take a uint8 bitmask of shape "
            f"({nbytes},), but the bitmask tensor {bitmask_key!r} is "
            f"{getattr(bitmask, 'dtype', None)} of shape {_shape(bitmask)}"
        )
    spare = 8 * nbytes - numel  # the unused low bits of the last byte
    if spare and int(bitmask[-1]) & ((1 << spare) - 1):
        raise ValueError(
            f"the bitmask tensor {bitmask_key!r} has bits set beyond the {numel} entries of "
            f"'shape' {list(shape)}"
        )
    count = _bits_set(bitmask)
    if count != nonzero:
        raise ValueError(
            f"'nonzero' is {nonzero} but the bitmask tensor {bitmask_key!r} has {count} bits set"
        )


def check_sparse(
    path: str | os.PathLike[str],
    sparse: Mapping[str, Any],
    tensors: Mapping[str, Any],
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Shape]:
    """Check the ``"sparse"`` records of a file against its stored ``tensors``, before building.

    Each record ``{key: {"shape": [...], "nonzero": n}}`` needs the tensors
    ``key + SPARSE_VALUES`` (1-D, ``n`` values) and ``key + SPARSE_BITMASK`` (``uint8``,
    ``ceil(numel / 8)`` bytes, ``n`` bits set, the spare bits clear); ``key`` itself must be
    neither a stored tensor nor a tied entry, and every stored tensor named like sparse storage
    must belong to a record.  ``tensors`` must hold the values (not ``meta`` tensors): the
    bitmask's bits are counted.

    Returns
    -------
    dict
        ``{key: shape}`` of every sparse weight.

    Raises
    ------
    InvalidFileError
        Naming the file, the key and the field.

    Examples
    --------
    >>> import torch
    >>> bitmask = torch.tensor([0b10010000], dtype=torch.uint8)  # entries 0 and 3 of 4 kept
    >>> stored = {"w:sparse_values": torch.ones(2), "w:sparse_bitmask": bitmask}
    >>> check_sparse("m.safetensors", {"w": {"shape": [4], "nonzero": 2}}, stored)
    {'w': (4,)}
    >>> try:
    ...     check_sparse("m.safetensors", {"w": {"shape": [4], "nonzero": 3}}, stored)
    ... except InvalidFileError as exc:
    ...     print(str(exc).split(": ", 2)[2])
    'nonzero' is 3 but the values tensor 'w:sparse_values' has shape (2,) (expected (3,))
    """
    path = os.fspath(path)
    aliases = aliases or {}
    shapes: dict[str, Shape] = {}
    for key, entry in sparse.items():
        where = f"{path}: sparse entry {key!r}"
        if not isinstance(key, str) or not key or is_sparse_key(key):
            raise InvalidFileError(path, f"{where}: the key is not a state-dict key")
        if key in tensors or key in aliases:
            raise InvalidFileError(
                path, f"{where}: the key is also stored densely or as a tied entry"
            )
        try:
            shape, nonzero = _sparse_entry(entry)
            _check_sparse_tensors(key, shape, nonzero, tensors)
        except ValueError as exc:
            raise InvalidFileError(path, f"{where}: {exc}") from None
        shapes[key] = shape
    claimed = {name for key in shapes for name in sparse_keys(key)}
    stray = sorted(name for name in tensors if is_sparse_key(name) and name not in claimed)
    if stray:
        raise InvalidFileError(
            path,
            f"{path}: the tensor {stray[0]!r} is named as sparse storage but no 'sparse' "
            "entry of the metadata records it",
        )
    return shapes
