"""Safetensors checkpoints on disk, read one tensor at a time.

:func:`open_checkpoint` accepts a ``.safetensors`` file, a sharded index
(``model.safetensors.index.json``) or a Hugging Face model directory holding
either of them, and returns a :class:`Checkpoint`: the name, dtype, shape and
file of every tensor, read from the safetensors headers only.  No tensor data
is read until :meth:`Checkpoint.read` asks for one tensor; each read opens the
file with ``safetensors.safe_open``, copies that one tensor out and closes the
file again, so nothing stays mapped and the memory held is that of the
tensors the caller keeps.

Everything the headers and the index claim is checked before any tensor is
read, and a bad checkpoint raises one line naming the file: a shard the index
names but that is missing, an index naming a file outside its directory, a
tensor listed twice (in the index or in two shards), a tensor in a shard that
the index does not list or places elsewhere, a header whose offsets or sizes
do not match the dtype, the shape or the file's length.

This is the one reader of safetensors files in rmtprune: :func:`rmtprune.load`
(:func:`open_file`, one file), the command line (:mod:`rmtprune.ondisk`), and
:func:`rmtprune.from_pretrained` of a directory saved by Hugging Face (its
``model.safetensors`` or shards) all read through a :class:`Checkpoint`, so every
route makes these checks.  :meth:`Checkpoint.read_all` hands tensors to a model:
each on a 64-byte boundary (:func:`realign`).

Example
-------
>>> import os, tempfile, torch
>>> from safetensors.torch import save_file
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> save_file({"fc.weight": torch.ones(3, 4), "fc.bias": torch.zeros(3)}, path)
>>> ckpt = open_checkpoint(path)
>>> ckpt.names()
['fc.bias', 'fc.weight']
>>> ckpt.info("fc.weight").shape, ckpt.read("fc.weight").sum().item()
((3, 4), 12.0)
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

__all__ = [
    "INDEX_NAME",
    "PRUNED_NAME",
    "SAFETENSORS_DTYPE",
    "SINGLE_NAME",
    "Checkpoint",
    "TensorInfo",
    "checkpoint_file",
    "is_safetensors_file",
    "open_checkpoint",
    "open_file",
    "realign",
]

SINGLE_NAME = "model.safetensors"
"""File name of an unsharded Hugging Face checkpoint."""
INDEX_NAME = "model.safetensors.index.json"
"""File name of the index of a sharded Hugging Face checkpoint."""
PRUNED_NAME = "rmtprune.safetensors"  # rmtprune.hf.pretrained.WEIGHTS_NAME is this name
"""File name of the weights in a model directory written by rmtprune (factorized layers).

It is not ``model.safetensors`` on purpose: ``from_pretrained`` of such a directory then fails
instead of silently re-initialising the factorized layers."""

PathLike = str | os.PathLike[str]

_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "C64": 8,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
_TORCH_DTYPE = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "C64": torch.complex64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_DTYPE = {dtype: name for name, dtype in _TORCH_DTYPE.items()}
"""The safetensors dtype string of each torch dtype it stores (``torch.bfloat16: "BF16"``)."""


_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, safetensors dtype string (``"BF16"``, ...) and shape."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of entries."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the stored data in bytes."""
        return self.numel * _ITEMSIZE[self.dtype]

    def meta(self) -> torch.Tensor:
        """A ``meta``-device tensor of this dtype and shape (no memory, no data read)."""
        return torch.empty(self.shape, dtype=_TORCH_DTYPE[self.dtype], device="meta")


class Checkpoint:
    """The tensors of one checkpoint (see :func:`open_checkpoint`); reads them on demand."""

    def __init__(self, path: str, tensors: dict[str, TensorInfo], metadata: dict[str, str]):
        self.path = path
        self.metadata = metadata
        self._tensors = tensors

    def __repr__(self) -> str:
        files = len({t.file for t in self._tensors.values()})
        return f"Checkpoint({self.path!r}, {len(self._tensors)} tensors in {files} file(s))"

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def names(self) -> list[str]:
        """Every tensor name, sorted."""
        return sorted(self._tensors)

    def files(self) -> list[str]:
        """The files the checkpoint consists of: its index (if sharded) and its shards."""
        shards = {t.file for t in self._tensors.values()}
        return sorted(shards | {self.path})

    def info(self, name: str) -> TensorInfo:
        """Dtype, shape and file of one tensor (no data read)."""
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None

    def read(self, name: str) -> torch.Tensor:
        """Read one tensor from disk (a CPU tensor of the stored dtype that owns its memory)."""
        tensors: dict[str, torch.Tensor] = {}
        self._read_file(self.info(name).file, [name], tensors, align=False)
        return tensors[name]

    def iter_tensors(
        self, names: Sequence[str] | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` one at a time; keep no reference to hold one tensor at a time."""
        for name in self.names() if names is None else names:
            yield name, self.read(name)

    def read_all(self) -> dict[str, torch.Tensor]:
        """Every tensor, each on a 64-byte boundary (:func:`realign`): what a model is given.

        Each file is opened once; the memory held is that of the tensors, plus one tensor
        while it is moved to an aligned address.
        """
        by_file: dict[str, list[str]] = {}
        for name in self.names():
            by_file.setdefault(self._tensors[name].file, []).append(name)
        tensors: dict[str, torch.Tensor] = {}
        for file, names in by_file.items():
            self._read_file(file, names, tensors, align=True)
        return tensors

    def _read_file(
        self, file: str, names: Sequence[str], out: dict[str, torch.Tensor], *, align: bool
    ) -> None:
        """Read ``names`` (all stored in ``file``) into ``out``, opening the file once."""
        name = names[0]
        try:
            with safe_open(file, framework="pt") as handle:
                for name in names:
                    out[name] = handle.get_tensor(name)
                    if tuple(out[name].shape) != self._tensors[name].shape:  # pragma: no cover
                        raise ValueError(f"{file}: tensor {name!r} changed shape while being read")
                    if align:
                        realign(out, name)
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"cannot read tensor {name!r} from {file}: {exc}") from None


def realign(tensors: dict[str, torch.Tensor], *names: str) -> None:
    """Copy each tensor (of ``names``, default all) not on a 64-byte boundary, in place.

    A file's offsets are arbitrary, and CPU kernels chosen by alignment need not give the
    saved layer's bits: a model loaded from unaligned tensors can compute other bits.

    >>> tensors = {"w": torch.arange(20.0)[1:]}  # 4 bytes past an aligned start
    >>> realign(tensors)
    >>> tensors["w"].data_ptr() % 64, tensors["w"][0].item()
    (0, 1.0)
    """
    for key in names or list(tensors):
        tensor = tensors[key]
        if tensor.numel() and tensor.data_ptr() % 64:
            tensors[key] = tensor.clone()


def is_safetensors_file(path: PathLike) -> bool:
    """Whether ``path`` is a file that starts like safetensors (length prefix, then ``{``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _fail(path: str, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _header_entries(
    path: str, raw: bytes, data_size: int
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates(path, "header"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(path, "the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _fail(path, "the safetensors __metadata__ is not a JSON object")
    entries: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise _fail(path, f"tensor {name!r} has a malformed entry in the header")
        dtype: Any = entry.get("dtype")
        shape: Any = entry.get("shape")
        offsets: Any = entry.get("data_offsets")
        if dtype not in _ITEMSIZE:
            raise _fail(path, f"tensor {name!r} has an unknown dtype {dtype!r}")
        if not _int_list(shape) or not _int_list(offsets, length=2):
            raise _fail(
                path, f"tensor {name!r} has a malformed shape or data_offsets in the header"
            )
        begin, end = offsets
        expected = math.prod(shape) * _ITEMSIZE[dtype]
        if end - begin != expected:
            raise _fail(
                path,
                f"tensor {name!r}: the header claims {end - begin} bytes but a {dtype} tensor "
                f"of shape {tuple(shape)} takes {expected}",
            )
        if end > data_size:
            raise _fail(
                path,
                f"tensor {name!r} ends at byte {end} of the data but the file holds only "
                f"{data_size} bytes of data (truncated?)",
            )
        entries[name] = TensorInfo(name, path, dtype, tuple(int(s) for s in shape))
        spans.append((begin, end, name))
    _check_spans(path, spans, data_size)
    return entries, {str(k): str(v) for k, v in meta.items()}


def _int_list(value: Any, length: int | None = None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        and (length is None or value[0] <= value[1])
    )


def _check_spans(path: str, spans: list[tuple[int, int, str]], data_size: int) -> None:
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps the previous one" if begin < position else "leaves a gap before it"
            raise _fail(path, f"tensor {name!r} {what} in the data (offset {begin})")
        position = end
    if position != data_size:
        raise _fail(
            path,
            f"the header accounts for {position} bytes of data but the file holds {data_size}",
        )


def _read_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Every tensor a safetensors file declares, checked against the file's size."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"safetensors file not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _fail(path, f"not a safetensors file ({size} bytes, no header)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER, size - 8):
            raise _fail(
                path,
                f"the safetensors header claims {length} bytes but the file has {size - 8} "
                "after the length prefix",
            )
        raw = fh.read(length)
    return _header_entries(path, raw, size - 8 - length)


def _no_duplicates(path: str, where: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise _fail(path, f"{key!r} is listed twice in the {where}")
            seen[key] = value
        return seen

    return hook


def _hub_blob(real_dir: str, real_path: str) -> bool:
    """Whether ``real_path`` is a blob of the Hugging Face hub cache repository whose snapshot
    holds ``real_dir``: ``models--org--name/snapshots/<revision>[/subfolder]`` links its files
    to ``models--org--name/blobs/<hash>`` (the one place a shard may live outside its index's
    directory)."""
    folder = Path(real_dir)
    for snapshot in (folder, *folder.parents):
        if snapshot.parent.name == "snapshots":
            repo = snapshot.parent.parent
            return repo.name.startswith("models--") and Path(real_path).parent == repo / "blobs"
    return False


def _shard_path(index_path: str, directory: str, filename: Any) -> str:
    if (
        not isinstance(filename, str)
        or not filename
        or os.path.isabs(filename)
        or os.path.basename(filename) != filename
        or filename in (".", "..")
    ):
        raise _fail(
            index_path,
            f"the index names the file {filename!r}, which is not a plain file name "
            "inside the index's directory",
        )
    path = os.path.join(directory, filename)
    real_dir, real_path = os.path.realpath(directory), os.path.realpath(path)
    if os.path.dirname(real_path) != real_dir and not _hub_blob(real_dir, real_path):
        raise _fail(
            index_path,
            f"the shard {filename!r} is a link to a file outside {directory} ({real_path}); "
            "only links into the blobs of the same Hugging Face cache repository "
            "(models--*/blobs) are followed: copy the shards into one directory",
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{index_path}: the shard {filename!r} it names is missing")
    return path


def _read_index(index_path: str) -> dict[str, str]:
    try:
        with open(index_path, "rb") as fh:
            document = json.loads(fh.read(), object_pairs_hook=_no_duplicates(index_path, "index"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(index_path, f"the index is not valid JSON ({exc})") from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _fail(index_path, "the index has no 'weight_map' (tensor name → shard file)")
    return weight_map


def _open_sharded(index_path: str) -> Checkpoint:
    directory = os.path.dirname(os.path.abspath(index_path))
    weight_map = _read_index(index_path)
    shards = {f: _shard_path(index_path, directory, f) for f in sorted(set(weight_map.values()))}
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for filename, path in shards.items():
        entries, meta = _read_header(path)
        metadata = metadata or meta
        for name, info in entries.items():
            if name in tensors:
                raise _fail(path, f"tensor {name!r} is also stored in {tensors[name].file}")
            if weight_map.get(name) != filename:
                where = weight_map.get(name)
                said = "does not list it" if where is None else f"places it in {where!r}"
                raise _fail(path, f"holds tensor {name!r} but the index {said}")
            tensors[name] = info
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise _fail(
            shards[weight_map[missing[0]]],
            f"tensor {missing[0]!r} listed in the index is not in this shard",
        )
    return Checkpoint(index_path, tensors, metadata)


def open_checkpoint(path: PathLike) -> Checkpoint:
    """Read and check the headers of a safetensors checkpoint (file, index or model directory).

    Parameters
    ----------
    path : path
        A ``.safetensors`` file, a ``*.safetensors.index.json`` index, or a
        directory holding ``model.safetensors.index.json`` (sharded),
        ``model.safetensors`` or ``rmtprune.safetensors`` (written by ``rmtprune.save_pretrained``).

    Returns
    -------
    Checkpoint

    Raises
    ------
    FileNotFoundError
        The path, or a shard the index names, does not exist.
    ValueError
        A header or the index is inconsistent (see the module docstring); the
        message names the file.
    """
    path = checkpoint_file(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".index.json"):
        return _open_sharded(path)
    return open_file(path)


def checkpoint_file(path: PathLike) -> str:
    """The file :func:`open_checkpoint` starts from: a directory's index, ``model.safetensors``
    or ``rmtprune.safetensors`` (in this order of preference), else ``path`` itself.

    Nothing is read; a directory holding none of them raises ``FileNotFoundError``.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    for name in (INDEX_NAME, SINGLE_NAME, PRUNED_NAME):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(
        f"{path} holds none of {SINGLE_NAME}, {INDEX_NAME}, {PRUNED_NAME} "
        "(only safetensors checkpoints are read from a directory)"
    )


def open_file(path: PathLike) -> Checkpoint:
    """Read and check the header of ONE safetensors file (no index, no directory).

    Raises ``FileNotFoundError`` when ``path`` is not a file and ``ValueError`` naming the
    file when its header does not match its size (see :func:`open_checkpoint`).
    """
    path = os.fspath(path)
    tensors, metadata = _read_header(path)
    return Checkpoint(path, tensors, metadata)
