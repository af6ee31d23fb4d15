"""Writing rmtprune's safetensors files: the payload digest, the metadata, the atomic move, and a
writer that takes one tensor at a time.

:func:`rmtprune.save` (``rmtprune.storage.format``) holds the whole model and writes it with
``safetensors.torch.save_file`` (the tensors of :func:`tensors_to_store`).
:class:`SafetensorsWriter` writes the same file without holding more than one tensor:
:meth:`~SafetensorsWriter.add` appends each tensor's bytes to a temporary data file next to
the output as soon as it exists (only its name, dtype, shape and offset are kept);
:meth:`~SafetensorsWriter.commit` then writes the safetensors header (the layout safetensors
itself chooses, asked of it with empty tensors of the same names and dtypes) and copies each
tensor's bytes, in chunks, to its place in a second temporary file, feeding the SHA-256
payload digest in name order as it goes; the digest goes into the header last and the file is
moved into place atomically.  Peak disk use is twice the output.

The tensors, their order in the data and the metadata are those of ``save_file``; only the
order of the two ``__metadata__`` keys can differ, because safetensors writes them in the
iteration order of a Rust hash map, which changes from one process to the next (two
``rmtprune.save`` of the same model differ there too).  This writer puts them in sorted order.

Example
-------
>>> import os, tempfile, torch
>>> from safetensors.torch import load_file
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> with SafetensorsWriter(path) as writer:
...     writer.add("b", torch.ones(2, dtype=torch.bfloat16))
...     writer.add("a", torch.arange(3.0))
...     writer.commit({})
>>> sorted(load_file(path).items())[0]
('a', tensor([0., 1., 2.]))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO

import torch
from safetensors.torch import save as serialize
from torch import nn

from rmtprune._util.fileio import fsync_directory, temp_file
from rmtprune.storage.metadata import FORMAT_VERSION, META_KEY, SPARSE_FORMAT_VERSION

__all__ = [
    "SafetensorsWriter",
    "digest_header",
    "file_metadata",
    "move_into_place",
    "payload_digest",
    "tensors_to_store",
]

_CHUNK = 1 << 20  # bytes copied at a time


def digest_header(name: str, dtype: torch.dtype, shape: Sequence[int]) -> bytes:
    """What the payload digest hashes before a tensor's bytes: ``name``, dtype and shape."""
    head = f"{name}\0{dtype}\0{tuple(int(s) for s in shape)}\0".encode()
    return len(head).to_bytes(8, "little") + head


def payload_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each tensor, in name order.

    ``tensors`` may read each tensor on access: one is held at a time.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(digest_header(name, tensor.dtype, tensor.shape))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
        del tensor  # before the next one is read
    return digest.hexdigest()


def file_metadata(
    structure: Mapping[str, Any],
    aliases: Mapping[str, str],
    sha256: str,
    sparse: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The safetensors metadata of an rmtprune file (``rmtprune.storage.format``'s document).

    ``sparse`` (the records of the weights stored sparsely) is written only when it has
    records, so the file of a model without masks is the same as before sparse storage; a file
    with them is ``SPARSE_FORMAT_VERSION``, which older readers refuse by its version.
    """
    document: dict[str, Any] = {
        "format_version": SPARSE_FORMAT_VERSION if sparse else FORMAT_VERSION,
        "structure": structure,
        "aliases": aliases,
        "sha256": sha256,
    }
    if sparse:
        document["sparse"] = sparse
    return {"format": "pt", META_KEY: json.dumps(document, sort_keys=True)}


def tensors_to_store(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU tensors owning their memory, and the aliases of tied entries."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"state-dict entry {name!r} of the model is a {type(value).__name__}, not a "
                "tensor; rmtprune.storage.format.save stores tensors only"
            )
        value = value.detach()
        if value.numel():
            view = (
                value.device,
                value.untyped_storage().data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                tuple(value.stride()),
                value.dtype,
            )
            if view in seen:
                aliases[name] = seen[view]
                continue
            seen[view] = name
        stored = value.cpu().contiguous()
        owns_storage = stored.storage_offset() == 0 and stored.untyped_storage().nbytes() == (
            stored.numel() * stored.element_size()
        )
        if not owns_storage:
            stored = stored.clone()
        tensors[name] = stored
    return tensors, aliases


def move_into_place(tmp: str, path: str, *, overwrite: bool) -> None:
    """Flush ``tmp`` to disk, make it readable by all and move it to ``path`` atomically.

    Without ``overwrite`` an existing ``path`` (even one that appeared meanwhile) raises
    ``FileExistsError``; ``tmp`` may remain and is the caller's to remove.
    """
    with open(tmp, "r+b") as handle:
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    if overwrite:
        os.replace(tmp, path)
    else:
        _link_new(tmp, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def _link_new(tmp: str, path: str) -> None:
    """Move ``tmp`` to ``path`` atomically, failing if ``path`` appeared meanwhile."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
    except OSError:  # file systems without hard links
        if os.path.exists(path):
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True to replace it"
            ) from None
        os.replace(tmp, path)


@dataclass(frozen=True)
class _Stored:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # in the temporary data file
    nbytes: int


def _layout(entries: Mapping[str, _Stored]) -> list[tuple[str, str]]:
    """``(name, safetensors dtype)`` in the order safetensors stores them (asked of it)."""
    empty = {name: torch.empty(0, dtype=e.dtype) for name, e in entries.items()}
    raw = bytes(serialize(empty))
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header.pop("__metadata__", None)
    return [(name, entry["dtype"]) for name, entry in header.items()]


def _header(
    order: list[tuple[str, str]], entries: Mapping[str, _Stored], metadata: Mapping[str, str]
) -> tuple[bytes, dict[str, int]]:
    """The length prefix and header (padded with spaces to 8 bytes), and each data offset."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offsets: dict[str, int] = {}
    position = 0
    for name, dtype in order:
        entry = entries[name]
        offsets[name] = position
        span = [position, position + entry.nbytes]
        header[name] = {"dtype": dtype, "shape": list(entry.shape), "data_offsets": span}
        position += entry.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offsets


class SafetensorsWriter:
    """An rmtprune safetensors file written one tensor at a time (see the module docstring).

    Use as a context manager: leaving it without :meth:`commit` (an error) removes the
    temporary files and leaves ``path`` untouched.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = os.fspath(path)
        self.overwrite = overwrite
        self._directory = os.path.dirname(os.path.abspath(self.path))
        self._temps: list[str] = []
        self._data = self._temp_file(".data.tmp")
        self._entries: dict[str, _Stored] = {}
        self._size = 0

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _temp_file(self, suffix: str) -> BinaryIO:
        fd, tmp = temp_file(self._directory, suffix)  # a short name for any output name
        self._temps.append(tmp)
        return os.fdopen(fd, "w+b")

    def _failed(self, exc: OSError) -> OSError:
        """``exc`` naming the output (not the temporary file), e.g. a full disk."""
        if exc.errno is not None and exc.strerror:
            return OSError(exc.errno, exc.strerror, self.path)
        return OSError(f"could not write {self.path} ({exc}); free some space or write elsewhere")

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` (any device; its bytes as stored) under ``name``."""
        if name in self._entries:
            raise ValueError(f"tensor {name!r} is written twice to {self.path}")
        stored = tensor.detach().cpu().contiguous()
        data = stored.reshape(-1).view(torch.uint8).numpy()
        try:
            self._data.write(data.data)
        except OSError as exc:
            raise self._failed(exc) from exc
        self._entries[name] = _Stored(stored.dtype, tuple(stored.shape), self._size, data.nbytes)
        self._size += data.nbytes

    def commit(
        self,
        structure: Mapping[str, Any],
        aliases: Mapping[str, str] | None = None,
        sparse: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the header and the data in safetensors' order, then move the file into place.

        ``sparse``: the records of the weights added in sparse storage
        (:func:`rmtprune.storage.sparse.sparse_tensors`), written as :func:`file_metadata`
        writes them."""
        aliases = dict(aliases or {})
        sparse = dict(sparse or {})
        order = _layout(self._entries)
        placeholder = file_metadata(structure, aliases, "0" * 64, sparse)
        head, offsets = _header(order, self._entries, placeholder)
        digest = hashlib.sha256()
        try:
            self._data.flush()
            with self._temp_file(".tmp") as out:
                out.write(b"\0" * len(head))
                for name in sorted(self._entries):
                    entry = self._entries[name]
                    digest.update(digest_header(name, entry.dtype, entry.shape))
                    out.seek(len(head) + offsets[name])
                    self._copy(entry, out, digest)
                final, _ = _header(
                    order,
                    self._entries,
                    file_metadata(structure, aliases, digest.hexdigest(), sparse),
                )
                if len(final) != len(head):  # pragma: no cover - the digest has a fixed length
                    raise RuntimeError("the safetensors header changed length")
                out.seek(0)
                out.write(final)
                out.flush()
        except OSError as exc:
            raise self._failed(exc) from exc
        move_into_place(self._temps[-1], self.path, overwrite=self.overwrite)

    def _copy(self, entry: _Stored, out: BinaryIO, digest: Any) -> None:
        self._data.seek(entry.offset)
        left = entry.nbytes
        while left:
            chunk = self._data.read(min(left, _CHUNK))
            if not chunk:  # pragma: no cover - our own file shrank
                raise OSError(f"the temporary data file of {self.path} is truncated")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)

    def close(self) -> None:
        """Remove the temporary files (the committed file stays)."""
        self._data.close()
        for tmp in self._temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._temps.clear()
