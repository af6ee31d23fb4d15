"""Sparse storage of masked weights in rmtprune files: encoding, decoding, the masks on load.

A layer masked by :func:`rmtprune.factorize.masks.apply_mask` holds exact zeros where its
mask is ``False``.  :func:`rmtprune.save` stores such a weight ``K`` as two tensors instead of
the dense one (:func:`sparse_tensors`):

* ``K:sparse_values``: the kept entries in row-major order, 1-D, in the weight's dtype;
* ``K:sparse_bitmask``: the mask packed 8 entries per byte (``uint8``), row-major, the most
  significant bit first (``numpy.packbits``'s default order, :func:`pack_mask`), the spare
  low bits of the last byte zero;

and records ``{"shape": [...], "nonzero": n}`` under ``K`` in the document's ``"sparse"``
entry.  A float32 weight at 50 % sparsity takes 16 + 1 bits per entry instead of 32.
:func:`rmtprune.load` checks the records first
(:func:`rmtprune.storage.metadata.check_sparse`), rebuilds each weight bit for bit
(:func:`expand`: zeros where masked, the stored values elsewhere), loads the model, then gives
each layer the saved mask (:func:`set_masks`), not one recomputed from the zeros: a kept
weight that is exactly 0.0 stays kept.

Example
-------
>>> import torch
>>> from rmtprune.factorize.masks import apply_mask
>>> layer = torch.nn.Linear(4, 2, bias=False)
>>> apply_mask(layer, torch.tensor([[True, False, True, False], [False, False, True, True]]))
>>> stored, records = sparse_tensors(layer, layer.state_dict(), {})
>>> sorted(stored), records
(['weight:sparse_bitmask', 'weight:sparse_values'], {'weight': {'shape': [2, 4], 'nonzero': 4}})
>>> dense, masks = expand(records, stored)
>>> torch.equal(dense["weight"], layer.weight), torch.equal(masks["weight"], layer.rmtprune_mask)
(True, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune.factorize.masks import apply_mask, mask_of, masked_layers, remove_mask
from rmtprune.storage.metadata import (
    META_KEY,
    check_sparse,
    is_sparse_key,
    parse_document,
    sparse_keys,
)

__all__ = [
    "TiedMaskWarning",
    "expand",
    "expand_sparse",
    "mask_owners",
    "pack_mask",
    "set_masks",
    "sparse_tensors",
    "unpack_mask",
]

Owners = dict[str, tuple[nn.Module, "torch.Tensor | None"]]


class TiedMaskWarning(UserWarning):
    """A masked weight is tied to another entry, so it is stored densely and its mask is not in
    the file (:func:`sparse_tensors`)."""


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A ``bool`` mask packed into a 1-D ``uint8`` tensor, 8 entries per byte.

    The entries are taken in row-major order; entry ``j`` is bit ``7 - j % 8`` (the most
    significant bit first, ``numpy.packbits``'s default order) of byte ``j // 8``, and the
    spare low bits of the last byte are zero.

    >>> pack_mask(torch.tensor([[True, False, True], [True, True, True]])).tolist()
    [188]
    """
    flat = mask.detach().cpu().reshape(-1).to(torch.bool).numpy()
    return torch.from_numpy(np.packbits(flat))


def unpack_mask(bitmask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The ``bool`` mask of ``shape`` that :func:`pack_mask` packed into ``bitmask``.

    >>> unpack_mask(torch.tensor([188], dtype=torch.uint8), (2, 3)).int().tolist()
    [[1, 0, 1], [1, 1, 1]]
    """
    numel = math.prod(int(d) for d in shape)
    bits = np.unpackbits(bitmask.detach().cpu().numpy(), count=numel)
    return torch.from_numpy(bits.astype(bool)).reshape(tuple(int(d) for d in shape))


def sparse_tensors(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], aliases: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """``tensors`` (of :func:`rmtprune.storage.format.tensors_to_store`) with the weight of
    each masked layer of ``model`` stored sparsely, and the document's ``"sparse"`` records.

    A masked weight tied to another entry (``aliases``, e.g. tied input and output
    embeddings) stays dense, with a :class:`TiedMaskWarning`: it is stored once, and
    exactness comes first.

    Raises
    ------
    ValueError
        If a masked layer's weight is not a state-dict entry of the mask's shape, or a
        state-dict key already has a name of sparse storage.
    """
    out = dict(tensors)
    sparse: dict[str, dict[str, Any]] = {}
    tied = set(aliases) | set(aliases.values())
    for name, module in masked_layers(model).items():
        key = f"{name}.weight" if name else "weight"
        mask = mask_of(module)
        assert mask is not None  # masked_layers lists the layers with a mask
        if key in tied:  # stored once, densely: its mask is not in the file
            warnings.warn(
                f"layer {name!r} has a sparsity mask but its weight {key!r} is tied to another "
                "entry, so it is stored densely and rmtprune.load does not re-create its mask; "
                f"call rmtprune.factorize.masks.restore_masks(model, [{name!r}]) after loading",
                TiedMaskWarning,
                stacklevel=3,
            )
            continue
        dense = out.get(key)
        if dense is None or tuple(dense.shape) != tuple(mask.shape):
            raise ValueError(
                f"layer {name!r} has a sparsity mask of shape {tuple(mask.shape)} but the "
                f"state dict has no weight {key!r} of that shape to store sparsely; remove the "
                "mask (rmtprune.factorize.masks.remove_mask) before saving"
            )
        names = sparse_keys(key)
        if any(n in out or n in aliases for n in names):
            raise ValueError(f"the model's state dict already has an entry named {names[0]!r}")
        keep = mask.detach().cpu().reshape(-1)
        flat = dense.reshape(-1)
        if flat[~keep].view(torch.uint8).any():  # the state-dict hook zeroes them exactly
            raise RuntimeError(f"the masked entries of {key!r} are not all exactly zero")
        del out[key]
        out[names[0]] = flat[keep].clone()
        out[names[1]] = pack_mask(keep)
        sparse[key] = {"shape": list(dense.shape), "nonzero": int(keep.sum())}
    return out, sparse


def expand(
    sparse: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The tensors with each sparse weight rebuilt dense, and the saved mask of each.

    ``sparse`` are the document's records, already checked against ``tensors`` by
    :func:`rmtprune.storage.metadata.check_sparse`.
    """
    out = {name: tensor for name, tensor in tensors.items() if not is_sparse_key(name)}
    masks: dict[str, torch.Tensor] = {}
    for key, entry in sparse.items():
        values_key, bitmask_key = sparse_keys(key)
        shape = tuple(entry["shape"])
        mask = unpack_mask(tensors[bitmask_key], shape)
        values = tensors[values_key]
        dense = torch.zeros(math.prod(shape), dtype=values.dtype)
        dense[mask.reshape(-1)] = values
        out[key] = dense.reshape(shape)
        masks[key] = mask
    return out, masks


def expand_sparse(
    path: str, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The stored ``tensors`` of the file at ``path`` with its sparse weights rebuilt dense,
    for readers that take a file's tensors as a state dict (the command line's).

    The records are checked first (:class:`rmtprune.InvalidFileError` naming the file, the
    key and the field); a file without them, or without rmtprune ``metadata``, gives its
    tensors unchanged.  The digest is not checked here (:func:`rmtprune.load` does).
    """
    if META_KEY not in metadata:
        return dict(tensors)
    document = parse_document(path, metadata[META_KEY])
    check_sparse(path, document["sparse"], tensors, document["aliases"])
    return expand(document["sparse"], tensors)[0]


def mask_owners(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> Owners:
    """``{layer name: (layer, saved mask or None)}`` of each layer of ``model`` whose weight is
    in ``tensors`` (the dense tensors of a file) and that has a mask, in the model or in
    ``masks`` (a weight the model does not have, under ``strict=False``, is left out).

    Raises
    ------
    ValueError
        If a sparse entry is not the ``weight`` of a layer of ``model``.
    """
    keys = set(model.state_dict())
    owners: Owners = {}
    for name, module in masked_layers(model).items():
        if (f"{name}.weight" if name else "weight") in tensors:
            owners[name] = (module, None)
    for key, mask in masks.items():
        if key not in keys:
            continue  # not loaded (strict=False); strict loading refused it already
        name, _, leaf = key.rpartition(".")
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
        if leaf != "weight" or not isinstance(weight, torch.Tensor):
            raise ValueError(f"{key!r} is stored sparsely but is not the weight of a layer")
        owners[name] = (module, mask)
    return owners


def set_masks(owners: Owners) -> None:
    """Give each layer of :func:`mask_owners` its saved mask, or none (never an older mask
    intersected with it, as :func:`~rmtprune.factorize.masks.apply_mask` would)."""
    for module, mask in owners.values():
        remove_mask(module)
        if mask is not None:
            apply_mask(module, mask)
