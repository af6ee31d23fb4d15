"""Progress bars over layers, shown with ``tqdm`` when it is installed and wanted.

The one progress mechanism of the package: :func:`track` wraps the walker's loops; the
time-left report of a checkpoint streamed from disk
(:class:`rmtprune.ondisk.progress.CheckpointProgress`) and the training loop's epoch bar take
their on/off choice from :func:`resolve` and their bar from :func:`open_bar`; :func:`say` writes
the one-line status messages of the command line and the experiments.
A bar is shown when asked for (``progress=True``), never with ``progress=False``, and by default
(``None``) only when standard error is a terminal.  Without ``tqdm`` installed (it is the
``progress`` extra: ``pip install rmtprune[progress]``) there is never a bar and nothing fails.
:func:`progress_enabled` sets the choice for everything called inside it, so a caller such as
:meth:`rmtprune.SpectralPruner.step` decides for the walker it calls.

Example
-------
>>> with progress_enabled(False):
...     list(track(range(3), desc="layers"))
[0, 1, 2]
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

__all__ = ["open_bar", "progress_enabled", "resolve", "say", "track"]

_T = TypeVar("_T")
_CHOICE: contextvars.ContextVar[bool | None] = contextvars.ContextVar("progress", default=None)


def resolve(progress: bool | None = None, stream: TextIO | None = None) -> bool:
    """Whether to show a bar: ``progress`` if given, else the enclosing choice, else whether
    ``stream`` (default: standard error) is a terminal.

    >>> resolve(False), resolve(True)
    (False, True)
    """
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(
            f"The 'progress' parameter must be True, False or None. Got {progress!r} instead."
        )
    if progress is None:
        progress = _CHOICE.get()
    if progress is None:
        stream = sys.stderr if stream is None else stream
        progress = bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
    return progress


@contextlib.contextmanager
def progress_enabled(progress: bool | None) -> Iterator[None]:
    """Within the block, :func:`track` calls without an explicit choice use ``progress``."""
    if progress is not None:
        progress = resolve(progress)
    token = _CHOICE.set(progress if progress is not None else _CHOICE.get())
    try:
        yield
    finally:
        _CHOICE.reset(token)


def track(
    iterable: Iterable[_T], *, desc: str, total: int | None = None, progress: bool | None = None
) -> Iterable[_T]:
    """``iterable`` wrapped in a ``tqdm`` bar on standard error when :func:`resolve` says so."""
    if not resolve(progress):
        return iterable
    bar = open_bar(iterable, desc=desc, total=total, unit="layer", leave=False, file=sys.stderr)
    return iterable if bar is None else bar


def open_bar(iterable: Iterable[Any] | None = None, **options: Any) -> Any:
    """A ``tqdm`` bar (``tqdm.auto``) with ``options``, or ``None`` when tqdm is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the optional extra is not installed: no bar
        return None
    return tqdm(iterable, **options)


def say(message: str, *, enabled: bool = True) -> None:
    """Write ``message`` as one status line on standard error (flushed) when ``enabled``."""
    if enabled:
        print(message, file=sys.stderr, flush=True)
