"""Progress of a checkpoint analysis on stderr: a bar with the time left, or one line per layer.

The work of a layer is counted as its cost in floating-point operations
(``p² N`` for the Gram matrix plus ``p³`` for its eigenvalues), so the time
left is estimated from the work done, not from the number of layers: a
checkpoint whose last layers are the large ones gets an honest estimate.
``tqdm`` draws the bar when it is installed; otherwise one plain line per
layer says how far the run is and how long it should still take.  Whether it is
shown, and the bar itself, come from the package's one progress mechanism
(:mod:`rmtprune._util.progress`): off when stderr is not a terminal (or inside
``progress_enabled(False)``), unless forced with ``enabled=True``.

Example
-------
>>> import io
>>> stream = io.StringIO()
>>> with CheckpointProgress([4.0, 4.0], enabled=True, stream=stream, use_tqdm=False) as bar:
...     bar.advance("fc1", 4.0)
...     bar.advance("fc2", 4.0)
>>> stream.getvalue().splitlines()[0].startswith("[1/2]  50% fc1")
True
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TextIO

from rmtprune._util.progress import open_bar, resolve

__all__ = ["CheckpointProgress", "layer_cost"]


def layer_cost(shape: Sequence[int]) -> float:
    """Relative cost of fitting one weight: ``p² N + p³`` for its ``m × n`` matrix."""
    if len(shape) < 2:
        return 0.0
    m = int(shape[0])
    n = 1
    for s in shape[1:]:
        n *= int(s)
    p, big = min(m, n), max(m, n)
    return float(p) * p * big + float(p) ** 3


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes:02d}:{sec:02d}"


class CheckpointProgress:
    """Reports each finished layer; see the module docstring.

    Parameters
    ----------
    costs : sequence of float
        The cost of every layer to come (:func:`layer_cost`).
    enabled : bool, optional
        ``None`` (default): as :func:`rmtprune._util.progress.resolve` decides for
        ``stream`` (on when it is a terminal); ``True`` forces it.
    stream : text stream, optional
        Where to write (default ``sys.stderr``).
    use_tqdm : bool, optional
        ``None`` (default): the tqdm bar when tqdm is installed.
    clock : callable
        Seconds from an arbitrary origin (default ``time.perf_counter``).
    """

    def __init__(
        self,
        costs: Sequence[float],
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        use_tqdm: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._clock = clock
        self._stream = sys.stderr if stream is None else stream
        self.enabled = resolve(enabled, self._stream)
        self._total = float(sum(costs)) or 1.0
        self._count = len(costs)
        self._done = 0.0
        self._layers = 0
        self._start = clock()
        self._bar: Any = None
        if self.enabled and use_tqdm is not False:
            self._bar = open_bar(
                total=self._count,
                file=self._stream,
                unit="layer",
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} layers [{elapsed}{postfix}]",
            )

    def advance(self, name: str, cost: float) -> None:
        """One more layer is done (``cost`` as given to the constructor)."""
        self._layers += 1
        self._done += cost
        if not self.enabled:
            return
        elapsed = self._clock() - self._start
        left = elapsed * (self._total - self._done) / self._done if self._done > 0 else 0.0
        if self._bar is not None:
            self._bar.set_postfix_str(f"~{_clock(left)} left, {name}", refresh=False)
            self._bar.update(1)
            return
        share = 100.0 * self._done / self._total
        print(
            f"[{self._layers}/{self._count}] {share:3.0f}% {name}: "
            f"{_clock(elapsed)} elapsed, ~{_clock(left)} left",
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        """Finish the bar (no-op for plain lines)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> CheckpointProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
