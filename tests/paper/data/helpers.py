"""Writers of tiny data-set files in the standard layouts, for the data tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array (magic 0x0000 08 ndim, big-endian sizes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx_split(
    rng: np.random.Generator, n: int, *, size: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_idx_dataset(
    root: Path,
    folder: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    compress: bool = True,
) -> None:
    """Write ``splits[split] = (images, labels)`` as IDX files under ``root/folder``."""
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        for name, array in zip(IDX_NAMES[split], (images, labels), strict=True):
            data = idx_bytes(array)
            if compress:
                (target / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (target / name).write_bytes(data)


def cifar_batch_bytes(data: np.ndarray, labels: list[int], protocol: int = 2) -> bytes:
    return pickle.dumps({b"batch_label": b"fixture", b"data": data, b"labels": labels}, protocol)


def write_cifar_dataset(
    root: Path, rng: np.random.Generator, per_batch: int = 4
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write 5 training batches and a test batch of ``per_batch`` random images each."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        (folder / name).write_bytes(cifar_batch_bytes(data, labels))
        batches[name] = (data, labels)
    return batches
