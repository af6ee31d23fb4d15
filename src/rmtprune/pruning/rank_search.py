"""Allocating ranks across layers under one output-change budget (pure functions, no torch).

Each candidate layer ``l`` offers ranks ``r`` with a parameter cost ``x_l(r)`` and an
estimated squared output change ``y_l(r)`` (decreasing in ``r``; zero for the unchanged
layer).  For a multiplier ``μ ≥ 0`` the Lagrangian choice ``argmin_r x_l(r) + μ y_l(r)``
moves, as ``μ`` grows, along the vertices of the lower convex hull of the layer's points.
Merging every layer's hull moves in increasing ``μ`` gives one sequence of configurations,
from the most pruned (every layer at its lowest rank) to the original model (every layer
unchanged), in which each step buys the most error reduction per parameter still available:
a greedy with the convexity that makes it the exact Lagrangian path.  The caller bisects that
sequence on the *measured* output change of each whole configuration, so the per-layer
estimates only order the moves; they are never summed into the answer.

Example
-------
>>> lower_hull([(0, 4.0), (1, 1.0), (2, 0.9), (3, 0.0)])
[0, 1, 3]
>>> moves = hull_moves([[(0, 4.0), (1, 1.0), (3, 0.0)], [(0, 1.0), (5, 0.0)]])
>>> [(layer, vertex) for _, layer, vertex in moves]
[(0, 1), (0, 2), (1, 1)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["first_passing", "hull_moves", "lower_hull"]


def lower_hull(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the lower convex hull of ``points`` sorted by increasing ``x``.

    ``points`` must be sorted by ``x`` (strictly increasing); the first and last points are
    always on the hull.
    """
    hull: list[int] = []
    for i, (x, y) in enumerate(points):
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = points[hull[-2]], points[hull[-1]]
            if (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) <= 0.0:
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def hull_moves(layers: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, int, int]]:
    """All hull moves ``(μ, layer, vertex)`` of every layer, sorted by ``μ`` (then layer).

    ``layers[l]`` is the hull of layer ``l`` (vertices by increasing cost); the move to
    vertex ``k`` costs ``Δx`` and removes ``Δy`` squared change, so it happens at
    ``μ = Δx / Δy`` (``inf`` when ``Δy = 0``).  Moves of one layer come out in vertex order
    because hull slopes are monotone.
    """
    moves: list[tuple[float, int, int]] = []
    for layer, vertices in enumerate(layers):
        for k in range(1, len(vertices)):
            dx = vertices[k][0] - vertices[k - 1][0]
            dy = vertices[k - 1][1] - vertices[k][1]
            mu = dx / dy if dy > 0 else math.inf
            moves.append((mu, layer, k))
    moves.sort(key=lambda move: (move[0], move[1], move[2]))
    return moves


def first_passing(low: int, high: int, passes: Callable[[int], bool]) -> int:
    """Smallest ``j`` in ``[low, high]`` with ``passes(j)``, by bisection (``passes(high)`` is
    assumed true and is not evaluated; the sequence is assumed to pass from some point on).

    >>> first_passing(0, 10, lambda j: j >= 7)
    7
    """
    while low < high:
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid + 1
    return low
