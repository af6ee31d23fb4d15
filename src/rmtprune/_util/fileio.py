"""Atomic file writes shared by reports, checkpoints and run directories, and output checks.

:func:`atomic_write_bytes` writes under a temporary name in the target's directory and moves
the file into place, so a reader never sees half a file.  Files are created with mode
``0o644`` (readable by all, like the models :func:`rmtprune.save` writes).
:func:`replace_directory` does the same for a whole directory (a Hugging Face model directory):
the new content is written beside the old one, which stays until the new one is complete.

Every temporary file or directory is named by :func:`temp_file` / :func:`temp_directory`:
``.rmtprune-XXXXXXXX.tmp`` (a hidden name of 22 characters, whatever the target's name, so
it stays within the file system's limit of 255 bytes for any legal output name), and is
removed on any failure, ``KeyboardInterrupt`` included.

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
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "FILE_MODE",
    "TEMP_PREFIX",
    "atomic_write_bytes",
    "check_input_file",
    "check_output_dir",
    "check_output_file",
    "fsync_directory",
    "replace_directory",
    "temp_directory",
    "temp_file",
]

FILE_MODE = 0o644
"""Permissions of every file rmtprune writes."""
TEMP_PREFIX = ".rmtprune-"
"""How the name of every temporary file and directory rmtprune makes begins."""


def temp_file(directory: str | os.PathLike[str], suffix: str = ".tmp") -> tuple[int, str]:
    """A new temporary file in ``directory``: ``(descriptor, path)`` as ``tempfile.mkstemp``.

    Its name, ``.rmtprune-XXXXXXXX<suffix>``, does not depend on the file it stands for, so
    it is short for any target name.
    """
    return tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=suffix)


def temp_directory(directory: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A new empty temporary directory in ``directory`` (named as by :func:`temp_file`)."""
    return Path(tempfile.mkdtemp(dir=directory, prefix=TEMP_PREFIX, suffix=suffix))


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries to disk (where the file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], writer: Any) -> None:
    """Call ``writer(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(target.parent)
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


def _fsync_tree(root: Path) -> None:
    """Flush every regular file under ``root`` and every directory entry to disk."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(folder)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target, follow_symlinks=False)


def _carry(old: Path, new: Path, keep: Callable[[str], bool]) -> None:
    """Put in ``new`` the entries of ``old`` that ``new`` lacks and ``keep`` accepts (hard
    links where possible, so nothing is copied; symbolic links stay links)."""
    written = set(os.listdir(new))
    for entry in os.scandir(old):
        name = entry.name
        if name in written or name.startswith(TEMP_PREFIX) or not keep(name):
            continue
        source, target = os.path.join(old, name), os.path.join(new, name)
        if entry.is_symlink():
            os.symlink(os.readlink(source), target)
        elif entry.is_dir():
            shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _swap(stage: Path, target: Path) -> None:
    """Put ``stage`` in the place of the directory ``target`` by two renames; on any failure
    (``KeyboardInterrupt`` included) ``target`` is the old directory again."""
    backup = temp_directory(target.parent, suffix=".old")  # empty: the rename replaces it
    try:
        try:
            os.rename(target, backup)
            os.rename(stage, target)
        except BaseException:
            if not os.path.lexists(target):  # the old one is at the backup name: put it back
                os.rename(backup, target)
            raise
    finally:
        if os.path.lexists(target):  # the old content (or the empty placeholder) goes
            shutil.rmtree(backup, ignore_errors=True)
    fsync_directory(target.parent)


def _move_in(stage: Path, target: Path, keep: Callable[[str], bool]) -> None:
    """Where no sibling directory can be made: move the files of ``stage`` (inside ``target``)
    into ``target`` one by one, each atomically, then remove the old entries not kept."""
    written = sorted(os.listdir(stage))
    for name in written:
        destination = target / name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(stage / name, destination)
    for entry in list(target.iterdir()):
        name = entry.name
        if name not in written and entry != stage and not name.startswith(TEMP_PREFIX):
            if not keep(name):
                _remove(entry)
    stage.rmdir()
    fsync_directory(target)


@contextlib.contextmanager
def replace_directory(
    path: str | os.PathLike[str], *, keep: Callable[[str], bool] = lambda name: True
) -> Iterator[Path]:
    """Replace the directory ``path`` by what the ``with`` body writes, atomically.

    The body writes the new content into the yielded (empty, hidden) directory beside
    ``path``.  When it returns, the entries of the old ``path`` the body did not write and
    that ``keep(name)`` accepts are carried over (hard links), every file is flushed to disk,
    and the new directory takes the place of the old one by two renames (old → a hidden
    backup name, new → ``path``), after which the old one is deleted.  Until then ``path``
    is untouched; on any failure, ``KeyboardInterrupt`` included, the new directory is
    removed and ``path`` is as it was.  ``path`` need not exist; a symbolic link to a
    directory keeps pointing there (the directory it names is replaced).

    Where no directory can be made beside ``path`` (its parent is not writable, or ``path``
    is a mount point) the new content is staged inside ``path`` and moved in file by file:
    each file is replaced atomically and the old ones stay until the new ones are complete.

    Example
    -------
    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "out")
    >>> with replace_directory(out) as stage:
    ...     _ = (stage / "config.json").write_text("{}")
    >>> os.listdir(out)
    ['config.json']
    """
    target = Path(os.path.realpath(path))
    existed = target.is_dir()
    if target.exists() and not existed:
        raise NotADirectoryError(f"{path} is a file, not a directory; give a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    in_place = existed and os.path.ismount(target)
    stage: Path | None = None
    if not in_place:
        try:
            stage = temp_directory(target.parent)
        except OSError as exc:
            if not existed or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            in_place = True
    if stage is None:
        stage = temp_directory(target)
    try:
        yield stage
        if in_place:
            _fsync_tree(stage)
            _move_in(stage, target, keep)
            return
        if existed:
            _carry(target, stage, keep)
            mode = stat.S_IMODE(target.stat().st_mode)
        else:  # a new directory's mode under the umask (os.umask would race other threads)
            probe = temp_directory(stage, suffix=".mode")
            probe.rmdir()
            os.mkdir(probe)
            mode = stat.S_IMODE(probe.stat().st_mode)
            probe.rmdir()
        _fsync_tree(stage)
        os.chmod(stage, mode)
        if existed:
            _swap(stage, target)
        else:
            os.rename(stage, target)
            fsync_directory(target.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _probe_directory(directory: Path, what: str) -> None:
    """Create and remove a file in ``directory``; raise a named ``OSError`` if that fails."""
    try:
        fd, tmp = temp_file(directory, suffix=".probe")
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
