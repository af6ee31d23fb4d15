"""Download MNIST, Fashion-MNIST and CIFAR-10 from their official locations, verified.

Every file is streamed into a hidden temporary file *inside the target folder*,
checked, and only then renamed into place with :func:`os.replace`, so a
corrupted, truncated or interrupted download never leaves a file that a reader
could mistake for data.

What is verified
----------------
* MNIST and Fashion-MNIST: the SHA-256 of the *decompressed* IDX content of
  each ``.gz`` file (the digests of the shared data README; they identify the
  content, so a mirror that recompressed the files is still accepted).  A
  truncated gzip stream, a bad CRC or a different content is rejected.  For
  MNIST these are the digests of the official files as published by
  yann.lecun.com (the shared copy is a lossless rebuild); for Fashion-MNIST
  they are the digests of Zalando's original files.
* CIFAR-10: the SHA-256 of the official archive ``cifar-10-python.tar.gz``
  (``6d958be0…``, the digest Keras and others publish).  Only the regular
  files ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` are
  extracted, each by name, so no archive member can write outside the folder.

Base URLs can be replaced by a mirror (the ``mirror`` argument or the
environment variable ``RMTPRUNE_MIRROR``): files are then fetched from
``<mirror>/<name>/<file>``, e.g. ``<mirror>/mnist/train-images-idx3-ubyte.gz``.

Example
-------
>>> from rmtprune.paper.data import download_dataset
>>> download_dataset("mnist", "/tmp/data")  # doctest: +SKIP
PosixPath('/tmp/data/MNIST/raw')
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rmtprune._util.validation import check_real, param_error
from rmtprune.paper.data.layout import (
    DATASETS,
    DatasetNotFoundError,
    existing,
    expected_files,
    missing_files_message,
    resolve_data_dir,
)

__all__ = [
    "MIRROR_ENV",
    "OFFICIAL_SOURCES",
    "DataSource",
    "DownloadError",
    "RemoteFile",
    "download_dataset",
]

MIRROR_ENV = "RMTPRUNE_MIRROR"
_CHUNK = 1 << 20
_log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A downloaded file was truncated, corrupted or not what was expected."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch and the SHA-256 it must have.

    Attributes
    ----------
    filename : str
        Name on the server, also the name it gets on disk.
    sha256 : str
        Expected hexadecimal SHA-256.
    digest_of : {"decompressed", "file"}
        Whether ``sha256`` is that of the gzip-decompressed content or of the
        file as downloaded.

    Examples
    --------
    >>> OFFICIAL_SOURCES["cifar10"].files[0].sha256[:8]
    '6d958be0'
    """

    filename: str
    sha256: str
    digest_of: str = "file"

    def __post_init__(self) -> None:
        if self.digest_of not in ("decompressed", "file"):
            raise param_error("digest_of", "RemoteFile", "'decompressed' or 'file'", self.digest_of)

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {"filename": self.filename, "sha256": self.sha256, "digest_of": self.digest_of}


@dataclass(frozen=True)
class DataSource:
    """Where a data set is published and how its files are checked.

    Attributes
    ----------
    base_urls : tuple of str
        Base URLs tried in order (each ends with ``/``).
    files : tuple of RemoteFile
        The files; for an archive, the single ``.tar.gz``.
    archive : bool
        True when ``files`` is one tar.gz archive holding the data set folder.
    """

    base_urls: tuple[str, ...]
    files: tuple[RemoteFile, ...]
    archive: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {
            "base_urls": list(self.base_urls),
            "files": [f.to_dict() for f in self.files],
            "archive": self.archive,
        }


def _idx_files(digests: tuple[str, str, str, str]) -> tuple[RemoteFile, ...]:
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    return tuple(RemoteFile(n, d, "decompressed") for n, d in zip(names, digests, strict=True))


# SHA-256 of the decompressed IDX files (train images, train labels, test images, test labels).
OFFICIAL_SOURCES: Mapping[str, DataSource] = {
    "mnist": DataSource(
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        _idx_files(
            (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            )
        ),
    ),
    "fashion-mnist": DataSource(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        _idx_files(
            (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            )
        ),
    ),
    "cifar10": DataSource(
        ("https://www.cs.toronto.edu/~kriz/",),
        (
            RemoteFile(
                "cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                "file",
            ),
        ),
        archive=True,
    ),
}

_CIFAR_MEMBERS = frozenset(
    [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta", "readme.html"]
)


class _Unreachable(Exception):
    """The server could not be reached or did not serve the file."""


def _decompressed_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except EOFError as exc:
        raise DownloadError(
            f"the gzip stream ends early: the download is truncated ({exc})"
        ) from exc
    except (OSError, zlib.error) as exc:
        raise DownloadError(
            f"the file is not a valid gzip stream: it is corrupted ({exc})"
        ) from exc
    return digest.hexdigest()


def _fetch(url: str, folder: Path, remote: RemoteFile, timeout: float) -> Path:
    """Download ``url`` to a hidden temporary file in ``folder`` and verify it.

    Returns the verified temporary path; on any failure the temporary file is
    removed.  Network failures raise :class:`_Unreachable`, bad content
    :class:`DownloadError`.
    """
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{remote.filename}.", suffix=".part")
    tmp = Path(name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    announced = response.headers.get("Content-Length")
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            except http.client.IncompleteRead as exc:
                raise DownloadError(
                    f"{url}: the connection closed early, the download is truncated ({exc!r})."
                ) from exc
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                raise _Unreachable(f"{url}: {exc}") from exc
        if announced is not None and received != int(announced):
            raise DownloadError(
                f"{url}: received {received} bytes but the server announced {announced}: "
                "the download is truncated."
            )
        if remote.digest_of == "file":
            got = digest.hexdigest()
        else:
            try:
                got = _decompressed_sha256(tmp)
            except DownloadError as exc:
                raise DownloadError(f"{url}: {exc}.") from exc
        if got != remote.sha256:
            what = "decompressed content" if remote.digest_of == "decompressed" else "file"
            raise DownloadError(
                f"{url}: the SHA-256 of the {what} is {got}, expected {remote.sha256}: "
                "the download is corrupted or is not the expected file. Nothing was kept."
            )
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fetch_any(urls: list[str], folder: Path, remote: RemoteFile, timeout: float) -> Path:
    """Try each URL in turn; return the first verified temporary file."""
    unreachable: list[str] = []
    corrupted: list[str] = []
    for url in urls:
        _log.info("downloading %s", url)
        try:
            return _fetch(url, folder, remote, timeout)
        except _Unreachable as exc:
            unreachable.append(str(exc))
        except DownloadError as exc:
            corrupted.append(str(exc))
    if corrupted:
        raise DownloadError("\n".join(["Download rejected:", *corrupted, *unreachable]))
    raise _Unreachable("; ".join(unreachable))


def _extract_cifar(archive: Path, folder: Path) -> None:
    """Extract the known batch files of the archive into ``folder``, atomically each."""
    top = folder.name
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if (
                    not member.isfile()
                    or len(parts) != 2
                    or parts[0] != top
                    or parts[1] not in _CIFAR_MEMBERS
                ):
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                fd, name = tempfile.mkstemp(dir=folder, prefix=f".{parts[1]}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as out, source:
                        while chunk := source.read(_CHUNK):
                            out.write(chunk)
                    os.replace(name, folder / parts[1])
                except BaseException:
                    Path(name).unlink(missing_ok=True)
                    raise
                seen.add(parts[1])
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DownloadError(f"Could not extract {archive}: {exc}") from exc
    needed = _CIFAR_MEMBERS - {"batches.meta", "readme.html"}
    if not needed <= seen:
        raise DownloadError(
            f"The archive has no {sorted(needed - seen)} under {top}/: not a CIFAR-10 archive."
        )


def download_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    mirror: str | None = None,
    source: DataSource | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch the missing files of a data set into the data root and verify them.

    Files already present are left alone.  Each download goes to a temporary
    file in the target folder, is checked against its SHA-256 and is then
    renamed into place; a truncated or corrupted download raises
    :class:`DownloadError` and leaves nothing behind.  When no server can be
    reached, :class:`~rmtprune.paper.data.DatasetNotFoundError` says where to put
    the files by hand.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "cifar10"}
        Data set.
    data_dir : path or None
        Data root (see :func:`rmtprune.paper.data.resolve_data_dir`).
    mirror : str or None
        Base URL replacing the official ones; files are fetched from
        ``<mirror>/<name>/<file>``.  Default: ``$RMTPRUNE_MIRROR`` if set.
    source : DataSource or None
        Replaces the official table (URLs and digests); for tests and private
        copies.
    timeout : float
        Socket timeout in seconds.

    Returns
    -------
    pathlib.Path
        The data set's folder.

    Examples
    --------
    >>> download_dataset("fashion-mnist", "/tmp/data")  # doctest: +SKIP
    PosixPath('/tmp/data/FashionMNIST/raw')
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise param_error("name", "download_dataset", f"one of {sorted(DATASETS)}", name)
    timeout = check_real(timeout, "timeout", "download_dataset", low=0.0, low_open=True)
    spec = DATASETS[name]
    root = resolve_data_dir(data_dir)
    folder = root / spec.folder
    table = OFFICIAL_SOURCES[name] if source is None else source
    base = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    bases = [f"{base.rstrip('/')}/{name}/"] if base else list(table.base_urls)
    if all(existing(p) is not None for p in expected_files(name, None, root)):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for remote in table.files:
            dest = folder / remote.filename
            if not table.archive and existing(dest) is not None:
                continue
            urls = [b + remote.filename for b in bases]
            tmp = _fetch_any(urls, folder, remote, timeout)
            if table.archive:
                try:
                    _extract_cifar(tmp, folder)
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                os.replace(tmp, dest)
    except _Unreachable as exc:
        raise DatasetNotFoundError(
            missing_files_message(name, root, reason=f"Downloading failed: {exc}")
        ) from exc
    return folder
