"""Atomic file writes shared by reports, checkpoints and run directories, and output checks.

:func:`atomic_write_bytes` writes under a temporary name in the target's directory and moves
the file into place, so a reader never sees half a file.  Files are created with mode
``0o644`` (readable by all, like the models :func:`rmtprune.save` writes).

:func:`check_output_file` and :func:`check_output_dir` are called before any work starts, so
an output that cannot be written is reported at once, naming the path and what to do.

Example
-------
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "report.json")
>>> atomic_write_bytes(path, lambda fh: fh.write(b"{}"))
>>> oct(os.stat(path).st_mode & 0o777)
'0o644'
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "FILE_MODE",
    "atomic_write_bytes",
    "check_input_file",
    "check_output_dir",
    "check_output_file",
]

FILE_MODE = 0o644
"""Permissions of every file rmtprune writes."""


def atomic_write_bytes(path: str | os.PathLike[str], writer: Any) -> None:
    """Call ``writer(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _probe_directory(directory: Path, what: str) -> None:
    """Create and remove a file in ``directory``; raise a named ``OSError`` if that fails."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".rmtprune-probe.", suffix=".tmp")
    except OSError as exc:
        kind = PermissionError if exc.errno in (errno.EACCES, errno.EPERM) else OSError
        raise kind(
            f"cannot write {what} into the directory {directory} ({exc.strerror or exc}); "
            "choose a writable location"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_output_file(
    path: str | os.PathLike[str], *, what: str, overwrite: bool, overwrite_hint: str
) -> None:
    """Raise a named ``OSError`` unless a file can be written at ``path``.

    Parameters
    ----------
    path : path
        The output file.
    what : str
        How the user gave it, for the message (e.g. ``"-o/--output"``).
    overwrite : bool
        Whether an existing regular file may be replaced.
    overwrite_hint : str
        What to do to replace an existing file (e.g. ``"pass --overwrite"``).
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            f"{what} {target} is a directory; give a file path such as "
            f"{target / 'model.safetensors'}"
        )
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{what} {target} exists; {overwrite_hint} to replace it")
        if not target.is_file():
            raise FileExistsError(f"{what} {target} exists and is not a regular file; not replaced")
    parent = target.parent
    if not parent.exists():
        raise FileNotFoundError(
            f"the directory {parent} of {what} {target} does not exist; create it first"
        )
    if not parent.is_dir():
        raise NotADirectoryError(f"{what} {target}: {parent} is not a directory")
    _probe_directory(parent, f"{what} {target.name}")


def check_output_dir(path: str | os.PathLike[str], *, what: str) -> None:
    """Raise a named ``OSError`` unless ``path`` is, or can be created as, a writable directory."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{what} {target} is a file, not a directory; give a directory")
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise NotADirectoryError(f"{what} {target}: {existing} is a file, not a directory")
    _probe_directory(existing, what)


def check_input_file(path: str | os.PathLike[str], *, what: str) -> None:
    """Raise a named ``OSError`` unless ``path`` is a regular file this process can read.

    ``what`` says what the file is for (e.g. ``"weights file"``).
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{what} {target} is a directory; give the file inside it")
    if not target.exists():
        raise FileNotFoundError(f"{what} not found: {target}")
    try:
        with open(target, "rb") as fh:
            fh.read(1)
    except PermissionError:
        raise PermissionError(
            f"{what} {target} exists but cannot be read (permission denied); check its permissions"
        ) from None
    except OSError as exc:
        raise OSError(f"{what} {target} exists but cannot be read: {exc.strerror or exc}") from None
