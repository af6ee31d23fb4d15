"""Decoders of the files on disk: IDX (MNIST, Fashion-MNIST) and CIFAR-10 pickles.

CIFAR-10 batches are Python pickles.  Unpickling can run arbitrary code, so
they are read by an unpickler that resolves only NumPy's array reconstruction
helpers (``_reconstruct``, ``ndarray``, ``dtype``) and latin-1 byte strings
(``_codecs.encode``, how Python 3 writes bytes in protocol 2) and refuses every
other global.
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["read_cifar_batch", "read_idx"]


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(
            f"Could not decompress {path}: the file is corrupted or truncated ({exc})."
        ) from exc


def read_idx(path: str | os.PathLike[str]) -> NDArray[np.uint8]:
    """Read an IDX file of unsigned bytes (gzipped or raw) into a read-only uint8 array.

    The header is two zero bytes, the type code ``0x08`` (unsigned byte), the
    number of dimensions ``d``, then ``d`` big-endian uint32 sizes; the payload
    must hold exactly their product of bytes.  Images files have magic number
    2051 (``d = 3``), label files 2049 (``d = 1``).

    Examples
    --------
    >>> import gzip, struct, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels.gz"
    >>> _ = p.write_bytes(gzip.compress(struct.pack(">II", 2049, 3) + bytes([7, 0, 9])))
    >>> read_idx(p).tolist()
    [7, 0, 9]
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes: its header starts with "
            f"{data[:4].hex() or 'nothing'} instead of 000008xx."
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path} has a truncated or invalid IDX header ({ndim} dimensions).")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise ValueError(
            f"{path} holds {len(data) - header} data bytes but its header {dims} "
            f"announces {expected}: the file is truncated or corrupted."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("Only latin-1 encoded byte strings may be unpickled.")
    return codecs.encode(text, "latin1")


def _reconstruct_classes() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    reconstruct = multiarray._reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): _latin1_encode,
    }


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds NumPy arrays and plain containers, nothing else."""

    _allowed = _reconstruct_classes()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refusing to load the global {module}.{name} from a CIFAR-10 batch: only "
                "NumPy array reconstruction is allowed (the file is not a genuine batch)."
            ) from None


def _get(batch: Mapping[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Read one CIFAR-10 python batch into ``(images (N, 3, 32, 32) uint8, labels int64)``.

    The pickle is loaded with ``encoding="bytes"`` by an unpickler that only
    allows NumPy's array reconstruction; any other global (``os.system``,
    ``builtins.eval``, ...) raises :class:`pickle.UnpicklingError`.

    Examples
    --------
    >>> import pickle, tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "b"
    >>> batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 1]}
    >>> _ = p.write_bytes(pickle.dumps(batch))
    >>> images, labels = read_cifar_batch(p)
    >>> images.shape, labels.tolist()
    ((2, 3, 32, 32), [3, 1])
    """
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            batch = _ArrayOnlyUnpickler(fh, encoding="bytes").load()
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(f"{path}: {exc}") from None
        except Exception as exc:
            raise ValueError(f"{path} is not a readable CIFAR-10 batch ({exc}).") from exc
    try:
        if not isinstance(batch, dict):
            raise KeyError("data")
        data = _get(batch, "data")
        labels_raw = _get(batch, "labels")
    except KeyError as exc:
        raise ValueError(f"{path} is not a CIFAR-10 batch: no {exc} entry.") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: the 'data' entry must be a 2-D uint8 array.")
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: the 'data' entry has {data.shape[1]} columns, not 3072.")
    labels = np.asarray(labels_raw)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'labels' must be {data.shape[0]} integers.")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
