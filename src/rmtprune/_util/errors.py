"""The exception types rmtprune documents, and the one-line messages of the command line.

The public API raises the built-in types users already catch (``ValueError`` and
``TypeError`` for bad arguments, ``OSError`` subclasses for the file system) plus three
documented subclasses defined here:

* :class:`InvalidFileError` (a ``ValueError``): a file exists but its content cannot be
  used (not a weights file, damaged, tampered, metadata that does not fit its tensors).
  ``path`` names the file.
* :class:`UserCodeError` (a ``RuntimeError``): code the user supplied (the module or factory
  of ``--model``) raised; the original exception is its ``__cause__``.
* :class:`DegenerateSpectrumWarning` (a ``RuntimeWarning``): a fit that runs but means little,
  e.g. BEMA on an exactly low-rank matrix whose "bulk" is rounding noise.

:class:`Terminated` (a ``KeyboardInterrupt``) is what the command line raises on SIGTERM.

:func:`describe_error` turns any exception into the one line the command line prints and its
exit status; ``rmtprune.cli.app.main`` is the only place that catches broadly.

Example
-------
>>> import errno
>>> describe_error(OSError(errno.ENOSPC, "No space left on device", "out.safetensors"))[0]
'no space left on device while writing out.safetensors; free some space or write elsewhere'
"""

from __future__ import annotations

import errno
import os
from typing import Any

__all__ = [
    "DegenerateSpectrumWarning",
    "InvalidFileError",
    "Terminated",
    "UserCodeError",
    "describe_error",
    "one_line",
]

EXIT_ERROR = 2
"""Exit status of an expected failure (bad input, file system, user code)."""
EXIT_INTERNAL = 1
"""Exit status of an unexpected exception (a bug: rerun with ``--debug`` and report it)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""
EXIT_TERMINATED = 143
"""Exit status after SIGTERM (128 + SIGTERM)."""

_MAX_LINE = 1000


class InvalidFileError(ValueError):
    """A file exists but its content cannot be used; ``path`` names the file.

    Examples
    --------
    >>> err = InvalidFileError("m.safetensors", "m.safetensors: checksum mismatch")
    >>> isinstance(err, ValueError), err.path
    (True, 'm.safetensors')
    """

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(message)
        self.path = os.fspath(path)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM): raised by the command line's signal handler so
    that every ``finally`` and cleanup runs, as after Ctrl-C (hence a ``KeyboardInterrupt``)."""


class UserCodeError(RuntimeError):
    """Code supplied by the user (a ``--model`` module or factory) raised an exception."""


class DegenerateSpectrumWarning(RuntimeWarning):
    """A spectral fit ran on input for which its result means little (e.g. exact low rank)."""


def one_line(text: str) -> str:
    """``text`` on one line: lines joined by ``" | "``, other control characters escaped, a
    long middle cut (the end says what to do).

    >>> one_line("first\\n\\n  second  ")
    'first | second'
    """
    parts = [line.strip() for line in str(text).splitlines() if line.strip()]
    joined = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " | ".join(parts))
    if len(joined) <= _MAX_LINE:
        return joined
    half = _MAX_LINE // 2
    return f"{joined[:half]} ... {joined[-half:]}"


def _os_message(exc: OSError) -> str:
    """A message for an ``OSError``, naming the file and what to do."""
    if exc.errno is None or not exc.strerror:
        return str(exc)  # raised by rmtprune with a full message
    name = exc.filename if exc.filename is not None else "a file"
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"no space left on device while writing {name}; free some space or write elsewhere"
    if code == errno.EROFS:
        return f"{name} is on a read-only file system; choose a writable location"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {name}; check its permissions or choose another path"
    if code == errno.EISDIR:
        return f"{name} is a directory; give a file path"
    if code == errno.ENOTDIR:
        return f"{name}: a part of this path is a file, not a directory"
    if code == errno.ENOENT:
        return f"{name} does not exist; check the path"
    if code == errno.EEXIST:
        return f"{name} already exists; choose another path"
    return f"{exc.strerror} ({name})"


def _named(exc: BaseException) -> str | None:
    """Messages for exception types that do not derive from the built-in families."""
    kind = type(exc).__name__
    text = one_line(str(exc))
    if kind == "SafetensorError":
        if "No space left" in text or "os error 28" in text:
            return "no space left on device while writing a safetensors file; free some space"
        return f"safetensors: {text}"
    if kind == "UnpicklingError":
        return f"refused to unpickle: {text}"
    return None


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one-line message and the exit status the command line gives for ``exc``.

    Examples
    --------
    >>> describe_error(ValueError("The 'alpha' parameter of BEMA must be ..."))
    ("The 'alpha' parameter of BEMA must be ...", 2)
    >>> describe_error(KeyboardInterrupt())[1]
    130
    """
    if isinstance(exc, Terminated):
        return (
            "terminated (SIGTERM); files are written atomically, so none is left half-written "
            "and no temporary file remains",
            EXIT_TERMINATED,
        )
    if isinstance(exc, KeyboardInterrupt):
        return (
            "interrupted; files are written atomically, so none is left half-written "
            "(rerun `reproduce` with the same --out to continue)",
            EXIT_INTERRUPTED,
        )
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller model or free memory", EXIT_ERROR
    if isinstance(exc, RecursionError):
        return f"input nested too deeply ({one_line(str(exc))})", EXIT_ERROR
    if isinstance(exc, OSError):
        return one_line(_os_message(exc)), EXIT_ERROR
    if isinstance(exc, (ValueError, TypeError, UserCodeError)):
        return one_line(str(exc)), EXIT_ERROR
    named = _named(exc)
    if named is not None:
        return named, EXIT_ERROR
    detail: Any = one_line(str(exc)) or "(no message)"
    return (
        f"unexpected {type(exc).__name__}: {detail}; rerun with --debug for the traceback "
        "and please report it",
        EXIT_INTERNAL,
    )
