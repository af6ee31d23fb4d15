"""The measurements of the landscape experiment: losses along lines and on planes.

Losses are the mean NLL (data term only) of a model on fixed evaluation data; directions
are filter-normalised (Li et al., 2018) so that planes around different solutions are
comparable.  Used by :mod:`rmtprune.paper.experiments.analysis.landscape`, which re-exports the
public
functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.training import evaluate

__all__ = [
    "barrier_height",
    "convexity",
    "filter_normalized_direction",
    "interpolation_losses",
    "loss",
    "surface_losses",
]


def loss(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean NLL of ``model`` on ``data`` in one batch."""
    return evaluate(model, data, batch_size=len(data[1])).loss


def _set_params(model: nn.Module, values: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), values, strict=True):
            p.copy_(v)


def interpolation_losses(
    model_a: nn.Module, model_b: nn.Module, data: Any, ts: Sequence[float]
) -> np.ndarray:
    """``L((1 − t) θ_a + t θ_b)`` for each ``t`` (two models of the same architecture).

    The mixture is computed as ``(1 − t)·θ_a + t·θ_b`` entry by entry, so ``t = 0`` and
    ``t = 1`` give ``θ_a`` and ``θ_b`` bit for bit.  Neither model is modified.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        Models returning log-probabilities, with parameters of the same shapes (pass
        :func:`~rmtprune.paper.experiments.analysis.common.dense_copy` of pruned networks).
    data : TensorDataset or (inputs, labels)
        Evaluation data; the loss is the mean NLL over it.
    ts : sequence of float
        Positions on the line.

    Returns
    -------
    numpy.ndarray
        One loss per ``t``.

    Examples
    --------
    >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> net_a, net_b = (torch.nn.Sequential(m, torch.nn.LogSoftmax(1)) for m in (a, b))
    >>> data = (torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    >>> losses = interpolation_losses(net_a, net_b, data, [0.0, 1.0])
    >>> bool(losses[0] == evaluate(net_a, data, batch_size=8).loss)
    True
    """
    x, y = getattr(data, "tensors", data)
    scratch = common.dense_copy(model_a)
    pa = [p.detach().clone() for p in model_a.parameters()]
    pb = [p.detach().clone() for p in model_b.parameters()]
    if [p.shape for p in pa] != [p.shape for p in pb]:
        raise ValueError(
            "The 'model_a' and 'model_b' parameters of interpolation_losses must have the same "
            "parameter shapes (convert factorized layers with dense_copy first)."
        )
    losses = []
    for t in ts:
        _set_params(scratch, [(1.0 - t) * a + t * b for a, b in zip(pa, pb, strict=True)])
        losses.append(loss(scratch, (x, y)))
    return np.array(losses)


def barrier_height(losses: Any) -> tuple[float, float]:
    """``(barrier, barrier_max)`` of losses on evenly spaced ``t`` from 0 to 1.

    ``barrier = max_t [L(t) − ((1 − t) L(0) + t L(1))]``;
    ``barrier_max = max_t L(t) − max(L(0), L(1))``.  Both are ``>= 0``.

    >>> barrier_height([3.0, 1.0, 2.0])
    (0.0, 0.0)
    """
    values = np.asarray(losses, dtype=np.float64)
    t = np.linspace(0.0, 1.0, values.size)
    chord = (1.0 - t) * values[0] + t * values[-1]
    return float(np.max(values - chord)), float(values.max() - max(values[0], values[-1]))


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """A random direction in parameter space, filter-normalised (Li et al., 2018).

    One tensor per parameter of ``model``: Gaussian for weights with two or more
    dimensions, each row (output unit) rescaled to the norm of the same row of the weight;
    zeros for biases and other 1-D parameters.

    >>> layer = torch.nn.Linear(3, 2)
    >>> d = filter_normalized_direction(layer, torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(d[0].norm(dim=1), layer.weight.detach().norm(dim=1)))
    True
    """
    out = []
    for p in model.parameters():
        w = p.detach()
        if w.dim() < 2:
            out.append(torch.zeros_like(w))
            continue
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype)
        rows_w = w.reshape(w.shape[0], -1).norm(dim=1)
        rows_d = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-30)
        scale = (rows_w / rows_d).reshape(-1, *([1] * (w.dim() - 1)))
        out.append(d * scale)
    return out


def surface_losses(
    model: nn.Module, data: Any, directions: Sequence[Sequence[torch.Tensor]], coords: np.ndarray
) -> np.ndarray:
    """``L(θ + a·d₁ + b·d₂)`` for ``a`` (rows) and ``b`` (columns) in ``coords``.

    Parameters
    ----------
    model : torch.nn.Module
        The solution ``θ`` (not modified), returning log-probabilities.
    data : TensorDataset or (inputs, labels)
        Evaluation data; the loss is the mean NLL over it.
    directions : pair of lists of torch.Tensor
        ``d₁`` and ``d₂``, one tensor per parameter of ``model``
        (:func:`filter_normalized_direction`).
    coords : numpy.ndarray
        Lattice coordinates used for both axes.

    Returns
    -------
    numpy.ndarray
        ``len(coords) × len(coords)`` losses.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LogSoftmax(1))
    >>> g = torch.Generator().manual_seed(0)
    >>> d = [filter_normalized_direction(net, g) for _ in range(2)]
    >>> data = (torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    >>> surface_losses(net, data, d, np.linspace(-1, 1, 3)).shape
    (3, 3)
    """
    x, y = getattr(data, "tensors", data)
    scratch = common.dense_copy(model)
    base = [p.detach().clone() for p in model.parameters()]
    d1, d2 = directions
    grid = np.empty((coords.size, coords.size))
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            _set_params(
                scratch,
                [p + float(a) * u + float(b) * v for p, u, v in zip(base, d1, d2, strict=True)],
            )
            grid[i, j] = loss(scratch, (x, y))
    return grid


def convexity(grid: np.ndarray) -> float:
    """Fraction of the inner grid points where both second differences are non-negative."""
    inner = grid[1:-1, 1:-1]
    along_a = grid[2:, 1:-1] + grid[:-2, 1:-1] - 2 * inner
    along_b = grid[1:-1, 2:] + grid[1:-1, :-2] - 2 * inner
    return float(np.mean((along_a >= 0) & (along_b >= 0)))


# ----------------------------------------------------------------------------- run
