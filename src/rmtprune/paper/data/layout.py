"""Where the data sets live: their specifications, the data root and the expected files.

A *data root* holds each data set exactly as the usual PyTorch-ecosystem loaders
expect it::

    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}

(IDX files may also be stored uncompressed, without the ``.gz`` suffix.)  The
root is the ``data_dir`` argument, else the environment variable
``RMTPRUNE_DATA``, else a per-user cache folder (``$XDG_CACHE_HOME/rmtprune`` or
``~/.cache/rmtprune``).

Example
-------
>>> from rmtprune.paper.data.layout import DATASETS
>>> DATASETS["cifar10"].shape
(3, 32, 32)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmtprune._util.validation import param_error

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "DatasetNotFoundError",
    "DatasetSpec",
    "check_split",
    "existing",
    "expected_files",
    "missing_files_message",
    "resolve_data_dir",
    "spec_of",
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


def spec_of(name: Any, owner: str) -> DatasetSpec:
    if not isinstance(name, str) or name not in DATASETS:
        raise param_error("name", owner, f"one of {sorted(DATASETS)}", name)
    return DATASETS[name]


def check_split(split: Any, owner: str) -> str:
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
    spec = spec_of(name, "expected_files")
    splits = _SPLITS if split is None else (check_split(split, "expected_files"),)
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
    spec = spec_of(name, "missing_files_message")
    root = Path(os.path.abspath(resolve_data_dir(data_dir)))
    lines = [f"The {name!r} data set is not available under the data root {root}."]
    if reason:
        lines.append(reason)
    lines.append("Expected files:")
    for path in expected_files(name, None, root):
        found = existing(path) is not None
        lines.append(f"  {path}{'' if found else '   (missing)'}")
    if spec.kind == "idx":
        lines.append("(IDX files may also be stored uncompressed, without the .gz suffix.)")
    lines.append(
        "Put the files there, or point the environment variable "
        f"{DATA_ENV} (CLI: --data-dir) at a folder with this layout, "
        "or let rmtprune fetch them from the official sources (SHA-256 verified): "
        "download=True in Python, --download on the command line."
    )
    return "\n".join(lines)


def existing(path: Path) -> Path | None:
    """``path`` if it exists, else its uncompressed twin for ``.gz`` names, else None."""
    if path.is_file():
        return path
    if path.suffix == ".gz":
        raw = path.with_suffix("")
        if raw.is_file():
            return raw
    return None
