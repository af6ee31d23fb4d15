"""Data sets of the paper's experiments: MNIST, Fashion-MNIST and CIFAR-10.

Readers for the standard on-disk layouts, an in-process cache, normalisation
``(x/255 - 0.5)/0.5`` and verified downloads.

Example
-------
>>> from rmtprune.paper.data import resolve_data_dir
>>> resolve_data_dir("/data").name
'data'
"""

from __future__ import annotations

from rmtprune.paper.data.datasets import (
    DATA_ENV,
    DATASETS,
    DatasetNotFoundError,
    DatasetSpec,
    clear_cache,
    expected_files,
    load_arrays,
    load_dataset,
    missing_files_message,
    normalize_pixels,
    read_cifar_batch,
    read_idx,
    resolve_data_dir,
)
from rmtprune.paper.data.download import (
    MIRROR_ENV,
    OFFICIAL_SOURCES,
    DataSource,
    DownloadError,
    RemoteFile,
    download_dataset,
)

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "MIRROR_ENV",
    "OFFICIAL_SOURCES",
    "DataSource",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "RemoteFile",
    "clear_cache",
    "download_dataset",
    "expected_files",
    "load_arrays",
    "load_dataset",
    "missing_files_message",
    "normalize_pixels",
    "read_cifar_batch",
    "read_idx",
    "resolve_data_dir",
]
