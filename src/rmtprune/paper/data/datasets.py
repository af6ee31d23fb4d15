"""Loading MNIST, Fashion-MNIST and CIFAR-10 as normalised tensors, with an in-process cache.

Where the files live is :mod:`rmtprune.paper.data.layout`, how they are decoded
:mod:`rmtprune.paper.data.readers`.  Images come back as float32 tensors of shape
``(N, C, H, W)``, scaled to ``[0, 1]`` and then normalised ``(x - 0.5) / 0.5``
(docs/method.md section 6), labels as int64.  The decoded uint8 arrays are cached in-process,
keyed on the files' paths, sizes and modification times, because experiments load
the same data many times.

Example
-------
>>> from rmtprune.paper.data import load_dataset
>>> train = load_dataset("mnist", "train", subset=1000)  # doctest: +SKIP
>>> images, labels = train.tensors  # doctest: +SKIP
>>> images.shape, labels.dtype  # doctest: +SKIP
(torch.Size([1000, 1, 28, 28]), torch.int64)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import TensorDataset

from rmtprune._util.validation import check_int, param_error
from rmtprune.paper.data.download import download_dataset
from rmtprune.paper.data.layout import (
    DATA_ENV,
    DATASETS,
    DatasetNotFoundError,
    DatasetSpec,
    PathArg,
    check_split,
    existing,
    expected_files,
    missing_files_message,
    resolve_data_dir,
    spec_of,
)
from rmtprune.paper.data.readers import read_cifar_batch, read_idx

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
    spec = spec_of(name, "load_arrays")
    split = check_split(split, "load_arrays")
    found: list[Path] = []
    for path in expected_files(name, split, data_dir):
        actual = existing(path)
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
        with :func:`rmtprune.paper.data.download_dataset`.
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
    spec = spec_of(name, "load_dataset")
    split = check_split(split, "load_dataset")
    seed = check_int(seed, "seed", "load_dataset", low=0)
    if subset is not None:
        subset = check_int(subset, "subset", "load_dataset", low=1)
    try:
        images, labels = load_arrays(name, split, data_dir=data_dir)
    except DatasetNotFoundError:
        if not download:
            raise
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
