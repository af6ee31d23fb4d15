"""Readers for MNIST, Fashion-MNIST and CIFAR-10 in their standard on-disk layouts.

A *data root* holds each data set exactly as the usual PyTorch-ecosystem loaders
expect it::

    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}

(IDX files may also be stored uncompressed, without the ``.gz`` suffix.)  The
root is the ``data_dir`` argument, else the environment variable
``RMTPRUNE_DATA``, else a per-user cache folder (``$XDG_CACHE_HOME/rmtprune`` or
``~/.cache/rmtprune``).

Images come back as float32 tensors of shape ``(N, C, H, W)``, scaled to
``[0, 1]`` and then normalised ``(x - 0.5) / 0.5`` (SPEC section 6), labels as
int64.  The decoded uint8 arrays are cached in-process, keyed on the files'
paths, sizes and modification times, because experiments load the same data
many times.

CIFAR-10 batches are Python pickles.  Unpickling can run arbitrary code, so
they are read by an unpickler that resolves only NumPy's array reconstruction
helpers (``_reconstruct``, ``ndarray``, ``dtype``) and latin-1 byte strings
(``_codecs.encode``, how Python 3 writes bytes in protocol 2) and refuses every
other global.

Example
-------
>>> from rmtprune.data import load_dataset
>>> train = load_dataset("mnist", "train", subset=1000)  # doctest: +SKIP
>>> images, labels = train.tensors  # doctest: +SKIP
>>> images.shape, labels.dtype  # doctest: +SKIP
(torch.Size([1000, 1, 28, 28]), torch.int64)
"""

from __future__ import annotations

import codecs
import functools
import gzip
import os
import pickle
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import TensorDataset

from rmtprune._validation import check_int, param_error

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "DatasetNotFoundError",
    "DatasetSpec",
    "clear_cache",
    "expected_files",
    "load_arrays",
    "load_dataset",
    "missing_files_message",
    "normalize_pixels",
    "read_cifar_batch",
    "read_idx",
    "resolve_data_dir",
]

DATA_ENV = "RMTPRUNE_DATA"
_SPLITS = ("train", "test")
PathArg = str | os.PathLike[str] | None


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set lives under a data root and what its samples look like.

    Attributes
    ----------
    name : str
        Public name (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``).
    folder : str
        Folder under the data root holding the files.
    kind : str
        ``"idx"`` (gzipped or raw IDX files) or ``"cifar"`` (pickled batches).
    train_files, test_files : tuple of str
        File names inside ``folder``; for IDX data sets ``(images, labels)``
        without the ``.gz`` suffix.
    shape : tuple of int
        ``(C, H, W)`` of one image.
    num_classes : int
        Number of classes.
    """

    name: str
    folder: str
    kind: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    shape: tuple[int, int, int]
    num_classes: int

    def files(self, split: str) -> tuple[str, ...]:
        """File names of ``split`` (``"train"`` or ``"test"``)."""
        return self.train_files if split == "train" else self.test_files

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {
            "name": self.name,
            "folder": self.folder,
            "kind": self.kind,
            "train_files": list(self.train_files),
            "test_files": list(self.test_files),
            "shape": list(self.shape),
            "num_classes": self.num_classes,
        }


_IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

DATASETS: Mapping[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "MNIST/raw", "idx", _IDX_TRAIN, _IDX_TEST, (1, 28, 28), 10),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "FashionMNIST/raw", "idx", _IDX_TRAIN, _IDX_TEST, (1, 28, 28), 10
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        "cifar-10-batches-py",
        "cifar",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        (3, 32, 32),
        10,
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where the data root says they should be."""


def _spec(name: Any, owner: str) -> DatasetSpec:
    if not isinstance(name, str) or name not in DATASETS:
        raise param_error("name", owner, f"one of {sorted(DATASETS)}", name)
    return DATASETS[name]


def _check_split(split: Any, owner: str) -> str:
    if split not in _SPLITS:
        raise param_error("split", owner, "'train' or 'test'", split)
    return str(split)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``data_dir``, else ``$RMTPRUNE_DATA``, else the user cache.

    The per-user cache is ``$XDG_CACHE_HOME/rmtprune`` when ``XDG_CACHE_HOME``
    is set, else ``~/.cache/rmtprune``.  Nothing is created.

    Examples
    --------
    >>> resolve_data_dir("/tmp/data")
    PosixPath('/tmp/data')
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(
                "The 'data_dir' parameter of resolve_data_dir must be a path or None. "
                f"Got {data_dir!r} of type {type(data_dir).__name__} instead."
            )
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "rmtprune"


def expected_files(
    name: str, split: str | None = None, data_dir: PathArg = None
) -> tuple[Path, ...]:
    """Paths a data set's files must have (IDX files listed with their ``.gz`` suffix).

    Parameters
    ----------
    name : str
        ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
    split : {"train", "test"} or None
        One split, or both when None.
    data_dir : path or None
        Data root (see :func:`resolve_data_dir`).

    Examples
    --------
    >>> [p.name for p in expected_files("mnist", "test", "/d")]
    ['t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']
    """
    spec = _spec(name, "expected_files")
    splits = _SPLITS if split is None else (_check_split(split, "expected_files"),)
    folder = resolve_data_dir(data_dir) / spec.folder
    suffix = ".gz" if spec.kind == "idx" else ""
    return tuple(folder / (f + suffix) for s in splits for f in spec.files(s))


def missing_files_message(name: str, data_dir: PathArg = None, reason: str | None = None) -> str:
    """A message that says exactly where a data set's files must be put.

    Examples
    --------
    >>> print(missing_files_message("cifar10", "/d").splitlines()[2])
      /d/cifar-10-batches-py/data_batch_1   (missing)
    """
    spec = _spec(name, "missing_files_message")
    root = Path(os.path.abspath(resolve_data_dir(data_dir)))
    lines = [f"The {name!r} data set is not available under the data root {root}."]
    if reason:
        lines.append(reason)
    lines.append("Expected files:")
    for path in expected_files(name, None, root):
        found = _existing(path) is not None
        lines.append(f"  {path}{'' if found else '   (missing)'}")
    if spec.kind == "idx":
        lines.append("(IDX files may also be stored uncompressed, without the .gz suffix.)")
    lines.append(
        "Put the files there, or point the environment variable "
        f"{DATA_ENV} (CLI: --data-dir) at a folder with this layout, "
        "or pass download=True to fetch them from the official sources."
    )
    return "\n".join(lines)


def _existing(path: Path) -> Path | None:
    """``path`` if it exists, else its uncompressed twin for ``.gz`` names, else None."""
    if path.is_file():
        return path
    if path.suffix == ".gz":
        raw = path.with_suffix("")
        if raw.is_file():
            return raw
    return None


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


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _decode(
    kind: str, files: tuple[tuple[str, int, int], ...], num_classes: int
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    paths = [Path(f[0]) for f in files]
    if kind == "idx":
        images = read_idx(paths[0])
        labels = read_idx(paths[1]).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(f"{paths[0]} / {paths[1]} do not hold images (3-D) and labels (1-D).")
        if len(images) != len(labels):
            raise ValueError(
                f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels."
            )
        images = images[:, None, :, :]
    else:
        parts = [read_cifar_batch(p) for p in paths]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Labels outside [0, {num_classes}) in {paths[-1]}.")
    images = np.ascontiguousarray(images)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_arrays(
    name: str, split: str, *, data_dir: PathArg = None
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Decoded, read-only ``(images (N, C, H, W) uint8, labels int64)`` of one split.

    Results are cached in-process on the files' paths, sizes and modification
    times.  Raises :class:`DatasetNotFoundError` when a file is missing.

    Examples
    --------
    >>> images, labels = load_arrays("mnist", "test")  # doctest: +SKIP
    >>> images.shape  # doctest: +SKIP
    (10000, 1, 28, 28)
    """
    spec = _spec(name, "load_arrays")
    split = _check_split(split, "load_arrays")
    found: list[Path] = []
    for path in expected_files(name, split, data_dir):
        actual = _existing(path)
        if actual is None:
            raise DatasetNotFoundError(missing_files_message(name, data_dir))
        found.append(actual)
    return _decode(spec.kind, tuple(_file_key(p) for p in found), spec.num_classes)


def _pixel_table() -> NDArray[np.float32]:
    # ((k / 255) - 0.5) / 0.5 computed in float64, rounded once to float32.
    k = np.arange(256, dtype=np.float64)
    table = ((k / 255.0 - 0.5) / 0.5).astype(np.float32)
    table.flags.writeable = False
    return table


_PIXELS = _pixel_table()
_PIXEL_CHUNK = 1 << 20


def normalize_pixels(images: NDArray[np.uint8] | torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels ``k`` to float32 ``(k/255 - 0.5)/0.5`` (a new tensor).

    Each value is the float32 rounding of the exact ``2k/255 - 1``.  The
    lookup runs in chunks, so no index array of the full size is built.

    Examples
    --------
    >>> import numpy as np
    >>> normalize_pixels(np.array([0, 255], np.uint8)).tolist()
    [-1.0, 1.0]
    """
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(
            "The 'images' parameter of normalize_pixels must hold uint8 pixels. "
            f"Got dtype {array.dtype} instead."
        )
    flat = np.ascontiguousarray(array).reshape(-1)
    out = np.empty(flat.size, dtype=np.float32)
    for start in range(0, flat.size, _PIXEL_CHUNK):
        stop = start + _PIXEL_CHUNK
        out[start:stop] = _PIXELS[flat[start:stop]]
    return torch.from_numpy(out.reshape(array.shape))


def load_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> TensorDataset:
    """Load one split as an in-memory ``TensorDataset(images, labels)``.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "cifar10"}
        Data set.
    split : {"train", "test"}
        Which split.
    data_dir : path or None
        Data root; default ``$RMTPRUNE_DATA``, else the per-user cache.
    download : bool
        Fetch missing files from the official sources (verified by SHA-256)
        with :func:`rmtprune.data.download_dataset`.
    subset : int or None
        Keep ``subset`` samples chosen uniformly at random without replacement
        with ``numpy.random.default_rng(seed)``, kept in file order.  The same
        ``(subset, seed)`` always gives the same samples.  ``None`` keeps all.
    seed : int
        Seed of the subset draw.

    Returns
    -------
    torch.utils.data.TensorDataset
        ``tensors = (images, labels)``: float32 ``(N, C, H, W)`` normalised
        ``(x/255 - 0.5)/0.5``, and int64 labels.

    Examples
    --------
    >>> test = load_dataset("fashion-mnist", "test", subset=500, seed=1)  # doctest: +SKIP
    >>> len(test)  # doctest: +SKIP
    500
    """
    spec = _spec(name, "load_dataset")
    split = _check_split(split, "load_dataset")
    seed = check_int(seed, "seed", "load_dataset", low=0)
    if subset is not None:
        subset = check_int(subset, "subset", "load_dataset", low=1)
    try:
        images, labels = load_arrays(name, split, data_dir=data_dir)
    except DatasetNotFoundError:
        if not download:
            raise
        from rmtprune.data.download import download_dataset

        download_dataset(spec.name, data_dir)
        images, labels = load_arrays(name, split, data_dir=data_dir)
    if subset is not None:
        if subset > len(labels):
            raise param_error(
                "subset", "load_dataset", f"an int <= {len(labels)} (the split's size)", subset
            )
        index = np.sort(np.random.default_rng(seed).choice(len(labels), subset, replace=False))
        images, labels = images[index], labels[index]
    return TensorDataset(normalize_pixels(images), torch.from_numpy(np.array(labels, np.int64)))


def clear_cache() -> None:
    """Forget every decoded array held by the in-process cache.

    Examples
    --------
    >>> clear_cache()
    """
    _decode.cache_clear()
