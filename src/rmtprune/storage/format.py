"""Saving and loading models whose layers may have been factorized.

On disk a model is ONE safetensors file (no pickle).  Its tensors are the model's
``state_dict()``; its string metadata holds, under the key ``"rmtprune"``, a JSON document::

    {"format_version": 1,
     "structure": {layer name: {"type": "LowRankLinear", "rank": r, ...}, ...},
     "aliases": {state-dict key: key of the stored tensor it shares memory with},
     "sparse": {state-dict key: {"shape": [...], "nonzero": n}, ...},   (optional)
     "sha256": hex digest of the tensor payload}

``structure`` is :func:`describe_structure` of the model: which layers are factorized, at
what rank, with which hyperparameters.  :func:`load` rebuilds that structure on a freshly
constructed base model with :func:`apply_structure`, then loads the tensors.  Tied tensors
(two state-dict keys sharing memory) are stored once and recorded in ``aliases``.  The digest
covers every stored tensor (name, dtype, shape and bytes, in name order) and is checked on
load, so a truncated or altered file raises ``ValueError`` instead of loading wrong weights.

The weight ``K`` of a masked layer (:mod:`rmtprune.factorize.masks`) is stored as its kept
values ``K:sparse_values`` and its packed mask ``K:sparse_bitmask``, recorded in ``sparse``
(layout: :mod:`rmtprune.storage.sparse`); :func:`load` rebuilds it bit for bit and gives its
layer the saved mask.  A file without ``sparse`` reads as before.

Writes are atomic: the file is written under a temporary name in the same directory, flushed
to disk, then moved into place; an existing file is replaced only with ``overwrite=True``.

Example
-------
>>> import os, tempfile, torch
>>> from rmtprune.storage import format as io
>>> from rmtprune.factorize import LowRankLinear
>>> model = torch.nn.Sequential(LowRankLinear(4, 3, rank=2), torch.nn.ReLU())
>>> io.describe_structure(model)["0"]["rank"]
2
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> io.save(model, path)
>>> fresh = io.load(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), path)
>>> type(fresh[0]).__name__, torch.equal(fresh[0].first.weight, model[0].first.weight)
('LowRankLinear', True)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from rmtprune._util.fileio import check_input_file, temp_file
from rmtprune.factorize.lowrank import (
    LowRankConv1D,
    LowRankConv2d,
    LowRankEmbedding,
    LowRankLinear,
    LowRankModule,
)
from rmtprune.factorize.registry import get_adapter, set_submodule
from rmtprune.storage.metadata import (
    FORMAT_VERSION,
    META_KEY,
    check_sparse,
    check_structure,
    parse_document,
)
from rmtprune.storage.reader import open_file
from rmtprune.storage.sparse import expand, mask_owners, set_masks, sparse_tensors
from rmtprune.storage.writer import (
    file_metadata,
    move_into_place,
    payload_digest,
    tensors_to_store,
)

__all__ = [
    "FORMAT_VERSION",
    "apply_structure",
    "check_materialized",
    "check_payload",
    "describe_structure",
    "load",
    "load_tensors",
    "save",
    "tensors_to_store",
]

PathLike = str | os.PathLike[str]


def _describe_layer(module: LowRankModule) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": type(module).__name__,
        "rank": int(module.rank),
        "in_features": int(module.in_features),
        "out_features": int(module.out_features),
        "bias": module.bias is not None,
    }
    if isinstance(module, LowRankEmbedding):
        entry.update(padding_idx=module.padding_idx)
    if isinstance(module, LowRankConv2d):
        first = module.first
        padding = first.padding
        entry.update(
            in_channels=int(module.in_channels),
            out_channels=int(module.out_channels),
            kernel_size=[int(k) for k in first.kernel_size],
            stride=[int(k) for k in first.stride],
            padding=padding if isinstance(padding, str) else [int(k) for k in padding],
            dilation=[int(k) for k in first.dilation],
            padding_mode=str(first.padding_mode),
        )
    return entry


def describe_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The factorized layers of ``model``: ``{layer name: {"type", "rank", ...}}`` (JSON-able).

    Dense layers are not listed.  Each entry holds the class name, the rank, the matrix shape
    (``in_features``, ``out_features``), whether there is a bias, for embeddings the padding
    index and, for convolutions, the channels, kernel size, stride, padding, dilation and
    padding mode.

    Examples
    --------
    >>> import torch
    >>> from rmtprune.factorize import LowRankLinear
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), LowRankLinear(3, 2, rank=1))
    >>> describe_structure(model)
    {'1': {'type': 'LowRankLinear', 'rank': 1, 'in_features': 3, 'out_features': 2, 'bias': True}}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "The 'model' parameter of describe_structure must be an nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    return {
        name: _describe_layer(module)
        for name, module in model.named_modules()
        if isinstance(module, LowRankModule) and name
    }


def _placeholder(module: nn.Module, name: str, entry: Mapping[str, Any]) -> LowRankModule:
    """A factorized layer of the recorded rank built from the base layer at ``name``."""
    adapter = get_adapter(module)
    if adapter is None:
        raise ValueError(
            f"layer {name!r} is recorded as {entry.get('type')!r} but the model's layer "
            f"there is a {type(module).__name__}, which cannot be factorized"
        )
    reason = adapter.unsupported_reason(module)
    if reason is not None:
        raise ValueError(f"layer {name!r} cannot be factorized: {reason}")
    rank = entry.get("rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"layer {name!r}: the recorded rank must be an int >= 1, got {rank!r}")
    if isinstance(module, LowRankModule) and _describe_layer(module) == dict(entry):
        return module
    m, n = adapter.matrix_shape(module)
    zeros = torch.zeros
    new = adapter.rebuild(
        module,
        zeros(m, rank, dtype=torch.float64),
        zeros(rank, dtype=torch.float64),
        zeros(rank, n, dtype=torch.float64),
        split=True,
    )
    assert isinstance(new, LowRankModule)
    built = _describe_layer(new)
    for key in ["type", "rank", *sorted((set(built) | set(entry)) - {"type", "rank"})]:
        if built.get(key) != entry.get(key):
            raise ValueError(
                f"layer {name!r}: the recorded {key!r} is {entry.get(key)!r} but the model's "
                f"layer gives {built.get(key)!r}"
            )
    return new


def apply_structure(model: nn.Module, structure: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Factorize the layers named in ``structure`` (from :func:`describe_structure`), in place.

    Each named layer (a dense ``Linear``/``Conv2d``/registered layer of the base model, or an
    already factorized one) is replaced by a factorized layer of the recorded rank, with the
    base layer's hyperparameters, dtype and device.  The new factors are zero placeholders
    (the bias is kept): load a state dict afterwards.

    Returns
    -------
    nn.Module
        ``model`` itself, modified.

    Raises
    ------
    ValueError
        If a named layer is missing, cannot be factorized, or does not match the record;
        every record is checked before any layer is replaced.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(5, 4))
    >>> structure = {"0": {"type": "LowRankLinear", "rank": 2, "in_features": 5,
    ...                    "out_features": 4, "bias": True}}
    >>> apply_structure(model, structure)[0].rank
    2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "The 'model' parameter of apply_structure must be an nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    if not isinstance(structure, Mapping):
        raise TypeError(
            "The 'structure' parameter of apply_structure must be a mapping from layer names to "
            f"layer records. Got {type(structure).__name__} instead."
        )
    _replace_layers(model, structure)
    return model


def _replace_layers(model: nn.Module, structure: Mapping[str, Any]) -> dict[str, nn.Module]:
    """Check every record, then swap the layers in; return the replaced modules by name."""
    known = {
        cls.__name__: cls for cls in (LowRankLinear, LowRankConv1D, LowRankConv2d, LowRankEmbedding)
    }
    replacements: dict[str, nn.Module] = {}
    for name, entry in structure.items():
        if not isinstance(name, str) or not name or not isinstance(entry, Mapping):
            raise ValueError(
                "The 'structure' parameter of apply_structure must map layer names to records. "
                f"Got the item {name!r}: {entry!r} instead."
            )
        if entry.get("type") not in known:
            raise ValueError(
                f"layer {name!r}: unknown factorized type {entry.get('type')!r} "
                f"(expected one of {sorted(known)})"
            )
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"layer {name!r} is recorded but the model has no such layer"
            ) from None
        new = _placeholder(module, name, entry)
        if new is not module:
            replacements[name] = new
    return {name: set_submodule(model, name, new) for name, new in replacements.items()}


def check_fit(model: nn.Module, tensors: Mapping[str, torch.Tensor], strict: bool) -> None:
    """Raise ``ValueError`` unless ``load_state_dict(tensors, strict)`` will succeed."""
    expected = model.state_dict()
    problems = []
    if strict:
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing:
            problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            more = " ..." if len(unexpected) > 5 else ""
            problems.append(f"unexpected keys {unexpected[:5]}{more}")
    for key in sorted(set(expected) & set(tensors)):
        if tuple(expected[key].shape) != tuple(tensors[key].shape):
            problems.append(
                f"{key!r} has shape {tuple(tensors[key].shape)} in the file but "
                f"{tuple(expected[key].shape)} in the model"
            )
    if problems:
        raise ValueError("; ".join(problems))


def load_tensors(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], *, strict: bool
) -> tuple[list[str], list[str]]:
    """``model.load_state_dict(tensors, strict)``, also for a model built on the ``meta`` device.

    A model with ``meta`` parameters (built without allocating its weights, see
    :func:`rmtprune.hf.pretrained.from_pretrained`) takes the tensors themselves (``assign=True``);
    the
    parameters one module shares with another (tied weights) are tied again afterwards, each
    group to the tensor loaded for one of its names.  Returns the missing keys (a tied name
    filled through its group is not missing) and the unexpected ones.
    """
    meta = any(p.is_meta for p in model.parameters())
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    missing, unexpected = model.load_state_dict(tensors, strict=strict, assign=meta)
    filled = set()
    for names in groups.values():
        source = next((n for n in names if n in tensors), None)
        if source is None:
            continue
        filled.update(names)
        if meta and len(names) > 1:
            shared = model.get_parameter(source)
            for name in names:
                owner, _, leaf = name.rpartition(".")
                model.get_submodule(owner)._parameters[leaf] = shared
    return [k for k in missing if k not in filled], list(unexpected)


def check_materialized(model: nn.Module, where: str) -> None:
    """Raise ``ValueError`` naming the tensors of ``model`` still on the ``meta`` device."""
    left = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_meta
    ]
    if left:
        more = " ..." if len(left) > 5 else ""
        raise ValueError(
            f"{where} holds no values for {left[:5]}{more}: the model was built without "
            "allocating its weights and these were not loaded"
        )


def save(model: nn.Module, path: PathLike, *, overwrite: bool = False) -> None:
    """Write ``model``'s tensors and factorized structure to ONE safetensors file, atomically.

    Parameters
    ----------
    model : nn.Module
        The model (not modified).
    path : str or os.PathLike
        Destination file (conventionally ``*.safetensors``).  Its directory must exist.
    overwrite : bool
        Replace an existing file.  Without it an existing file raises ``FileExistsError``.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save(torch.nn.Linear(2, 2), path)
    >>> try:
    ...     save(torch.nn.Linear(2, 2), path)
    ... except FileExistsError:
    ...     print("kept")
    kept
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter of save must be an nn.Module. Got {type(model).__name__} "
            "instead."
        )
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    tensors, aliases = tensors_to_store(model)
    tensors, sparse = sparse_tensors(model, tensors, aliases)
    metadata = file_metadata(describe_structure(model), aliases, payload_digest(tensors), sparse)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = temp_file(directory)  # a short name for any output name
    os.close(fd)
    try:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as exc:  # e.g. disk full: name the file, keep it an OSError
            raise OSError(
                f"could not write {path} ({exc}); free some space or write elsewhere"
            ) from exc
        move_into_place(tmp, path, overwrite=overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """The tensors (64-byte aligned, dense), the checked document and the saved masks of a file."""
    check_input_file(path, what="model file")
    try:  # the one checked reader: header against the file's size, then one tensor at a time
        checkpoint = open_file(path)
        tensors = checkpoint.read_all()
    except ValueError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        if detail.startswith("not a safetensors file ("):  # "(7 bytes, no header)"
            detail = detail.removeprefix("not a safetensors file (").removesuffix(")")
        raise ValueError(f"{path} is not a valid safetensors file: {detail}") from None
    document = check_payload(path, checkpoint.metadata, tensors)
    tensors, masks = expand(document["sparse"], tensors)
    for alias, target in document["aliases"].items():
        tensors[alias] = tensors[target]
    return tensors, document, masks


def check_payload(
    path: str, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """The parsed rmtprune document of the file at ``path``, checked against its ``tensors``.

    Checks the metadata, the SHA-256 digest of the tensors (``tensors`` may read each one on
    access: one is held at a time), that each tied entry names a stored tensor and that the
    tensors of each sparse weight fit its record (:func:`~rmtprune.storage.metadata.check_sparse`).
    """
    if META_KEY not in metadata:
        raise ValueError(
            f"{path} was not written by rmtprune.storage.format.save (no {META_KEY!r} metadata)"
        )
    document = parse_document(path, metadata[META_KEY])
    if payload_digest(tensors) != document["sha256"]:
        raise ValueError(
            f"{path}: SHA-256 checksum mismatch, the tensor data is corrupted or was modified"
        )
    for alias, target in document["aliases"].items():
        if target not in tensors or alias in tensors:
            raise ValueError(f"{path}: tied entry {alias!r} refers to a missing tensor {target!r}")
    check_sparse(path, document["sparse"], tensors, document["aliases"])
    return document


def load(model: nn.Module, path: PathLike, *, strict: bool = True) -> nn.Module:
    """Load a file written by :func:`save` into a freshly built base model (in place).

    The layers recorded as factorized are first replaced by factorized layers of the recorded
    rank (:func:`apply_structure`), then the tensors are loaded.  A layer whose weight the file
    holds gets the file's sparsity mask (the saved one, not the zeros'), or none if stored dense.

    Parameters
    ----------
    model : nn.Module
        The base model, e.g. a newly constructed instance of the saved architecture (dense
        or already factorized).  Modified in place; left unchanged when a ``ValueError``
        is raised.
    path : str or os.PathLike
        A file written by :func:`save`.
    strict : bool
        Passed to ``load_state_dict``: require the keys to match exactly.

    Returns
    -------
    nn.Module
        ``model``, with the saved structure and tensors.

    Raises
    ------
    ValueError
        Naming the file and the problem: not a safetensors file (bad header, truncated),
        missing or malformed metadata, checksum mismatch, a structure that does not fit the
        model or the tensors, missing or unexpected keys (``strict``), wrong sizes.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save(torch.nn.Linear(2, 2), path)
    >>> load(torch.nn.Linear(2, 2), path).weight.shape
    torch.Size([2, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter of load must be an nn.Module. Got {type(model).__name__} "
            "instead."
        )
    path = os.fspath(path)
    tensors, document, masks = _read(path)
    structure = document["structure"]
    check_structure(path, structure, tensors)
    try:
        replaced = _replace_layers(model, structure)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        check_fit(model, tensors, strict)
        owners = mask_owners(model, tensors, masks)
    except ValueError as exc:
        for name, old in replaced.items():  # leave the model as it was given
            set_submodule(model, name, old)
        raise ValueError(f"{path} does not fit the model: {exc}") from None
    load_tensors(model, tensors, strict=strict)
    check_materialized(model, path)
    set_masks(owners)
    return model
