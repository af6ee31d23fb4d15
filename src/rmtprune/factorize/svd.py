"""Truncated SVDs of weight matrices, in float64 on the CPU.

:func:`truncated_svd` returns the top-``rank`` singular triplets ``(U, s, Vh)`` of an
``m × n`` matrix.  Two methods:

``method="gram"`` (default)
    Eigendecomposition of the smaller Gram matrix ``G = AᵀA`` (``A`` = the matrix or its
    transpose, whichever is tall; ``p × p``), keeping only the top ``rank`` eigenvectors
    ``V`` (LAPACK's subset solver when ``rank <= p/3``, the full divide-and-conquer solver
    otherwise), then one Rayleigh–Ritz step: the thin SVD ``A V = Q S Zᵀ`` (``m × rank``)
    gives ``U = Q``, ``s = S`` and ``Vh = (V Z)ᵀ``.  That step makes ``U`` orthonormal to
    machine precision and ``s`` as accurate as a direct SVD gives it.  Used for
    ``0 < rank <= 0.6 p``; above, the Rayleigh–Ritz SVD costs as much as the full SVD.
``method="svd"``
    The full thin SVD (``torch.linalg.svd``, LAPACK ``gesdd``), then the top ``rank``.

Precision guard.  Forming ``G`` squares the condition number: the kept right singular
subspace of the Gram route is accurate to about ``eps · s_1² / (s_r² − s_{r+1}²)`` instead of
``eps · s_1 / (s_r − s_{r+1})``.  The Gram route is therefore used only when the smallest
kept eigenvalue satisfies ``eps · λ_1 / λ_r <= GRAM_CONDITION_LIMIT`` (``1e-10``, i.e.
``s_r / s_1 >= 1.5e-3``); otherwise the full SVD is computed (the eigendecomposition is
wasted).  In pruning with ``bulk_keep=0`` the kept values are the spikes above the MP edge,
so ``s_1 / s_r`` is rarely above 100 and the Gram route applies.

On a 3000 × 3000 matrix at ``rank = 300`` the Gram route took 2.6 s against 9.2 s for
``torch.linalg.svd``, with the same factors; the measurements of every route, and why the
randomized SVD was rejected, are in docs/benchmarks_svd.md.

Example
-------
>>> import torch
>>> from rmtprune.factorize import truncated_svd
>>> W = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
>>> U, s, Vh = truncated_svd(W, rank=2)
>>> s.tolist(), U.dtype
([3.0, 2.0], torch.float64)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import torch

from rmtprune._util.validation import check_int

__all__ = ["GRAM_CONDITION_LIMIT", "svd_factors", "truncated_svd"]

#: Largest ``eps · λ_1 / λ_r`` for which the Gram route is used (see the module docstring).
GRAM_CONDITION_LIMIT = 1e-10

_EPS = float(np.finfo(np.float64).eps)
_METHODS = ("gram", "svd")
_SUBSET_FRACTION = 1.0 / 3.0  # subset eigensolver up to p/3, full solver above
_GRAM_MAX_FRACTION = 0.6  # above 0.6 p the Rayleigh–Ritz SVD makes the Gram route no faster

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _to_float64(matrix: Any, owner: str) -> torch.Tensor:
    if isinstance(matrix, np.ndarray):
        matrix = torch.from_numpy(matrix)
    if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2:
        shape = getattr(matrix, "shape", None)
        raise TypeError(
            f"The 'matrix' parameter of {owner} must be a 2-D tensor or array. "
            f"Got {type(matrix).__name__}{'' if shape is None else f' of shape {tuple(shape)}'}"
            " instead."
        )
    if not matrix.is_floating_point():
        raise TypeError(
            f"The 'matrix' parameter of {owner} must have a real floating dtype. "
            f"Got {matrix.dtype} instead."
        )
    out = matrix.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"The 'matrix' parameter of {owner} must hold finite values. Got NaN or inf instead."
        )
    return out


def _full_svd(matrix: torch.Tensor, rank: int) -> Triplets:
    U, s, Vh = torch.linalg.svd(matrix, full_matrices=False)
    return U[:, :rank].contiguous(), s[:rank].contiguous(), Vh[:rank].contiguous()


def _gram_svd(matrix: torch.Tensor, rank: int) -> Triplets | None:
    """Top-``rank`` triplets through the smaller Gram matrix, or ``None`` if ill-conditioned."""
    wide = matrix.shape[0] < matrix.shape[1]
    A = matrix.T if wide else matrix  # tall: the Gram matrix is p × p
    p = A.shape[1]
    gram = (A.T @ A).numpy()
    if rank <= _SUBSET_FRACTION * p:
        eigenvalues, V = scipy.linalg.eigh(
            gram, subset_by_index=[p - rank, p - 1], check_finite=False
        )
    else:
        eigenvalues, V = np.linalg.eigh(gram)
        eigenvalues, V = eigenvalues[p - rank :], V[:, p - rank :]
    largest, smallest = float(eigenvalues[-1]), float(eigenvalues[0])
    if not largest > 0.0 or not smallest * GRAM_CONDITION_LIMIT >= _EPS * largest:
        return None
    V = torch.from_numpy(V[:, ::-1].copy())
    # Rayleigh–Ritz: A V = Q S Zᵀ  ⇒  A ≈ Q S (V Z)ᵀ on the kept subspace.
    Q, s, Zh = torch.linalg.svd(A @ V, full_matrices=False)
    Vh = Zh @ V.T
    if wide:
        return Vh.T.contiguous(), s, Q.T.contiguous()
    return Q, s, Vh.contiguous()


def truncated_svd(
    matrix: Any, rank: int | None = None, *, method: str = "gram"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` singular triplets of ``matrix``, in float64 on the CPU.

    Parameters
    ----------
    matrix : torch.Tensor or numpy.ndarray
        An ``m × n`` real matrix, any floating dtype and device (not modified).
    rank : int or None
        Number of singular values kept, ``0 <= rank <= min(m, n)``; ``None`` keeps all.
    method : {"gram", "svd"}
        ``"gram"`` (default): eigendecomposition of the smaller Gram matrix plus one
        Rayleigh–Ritz step, for ``0 < rank <= 0.6 min(m, n)``; otherwise, or when the kept
        singular values are too small for it, the full SVD (see the module docstring).
        ``"svd"``: the full thin SVD.

    Returns
    -------
    U : torch.Tensor
        ``m × rank``, orthonormal columns.
    s : torch.Tensor
        ``(rank,)``, the largest singular values in decreasing order.
    Vh : torch.Tensor
        ``rank × n``, orthonormal rows; ``U diag(s) Vh`` is the best rank-``rank``
        approximation of ``matrix``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> W = torch.randn(50, 30, generator=g)
    >>> U, s, Vh = truncated_svd(W, rank=5)
    >>> U.shape, s.shape, Vh.shape
    (torch.Size([50, 5]), torch.Size([5]), torch.Size([5, 30]))
    >>> exact = torch.linalg.svdvals(W.double())[:5]
    >>> bool(torch.allclose(s, exact, rtol=1e-12))
    True
    """
    owner = "truncated_svd"
    A = _to_float64(matrix, owner)
    m, n = A.shape
    p = min(m, n)
    if method not in _METHODS:
        raise ValueError(
            f"The 'method' parameter of {owner} must be one of {_METHODS}. Got {method!r} instead."
        )
    rank = p if rank is None else check_int(rank, "rank", owner, low=0)
    if rank > p:
        raise ValueError(
            f"The 'rank' parameter of {owner} must be an int in [0, {p}] for a {m} × {n} "
            f"matrix. Got {rank} instead."
        )
    if rank == 0:
        zeros = torch.zeros
        return (
            zeros(m, 0, dtype=torch.float64),
            zeros(0, dtype=torch.float64),
            zeros(0, n, dtype=torch.float64),
        )
    if method == "gram" and rank <= _GRAM_MAX_FRACTION * p:
        triplets = _gram_svd(A, rank)
        if triplets is not None:
            return triplets
    return _full_svd(A, rank)


def svd_factors(
    U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square-root split ``(W1, W2)`` of the top-``rank`` triplets: ``W2 W1 = U_r S_r Vh_r``.

    ``W1 = diag(√s_r) Vh_r`` (``rank × n``) and ``W2 = U_r diag(√s_r)`` (``m × rank``),
    docs/method.md section 4.  Computed in the dtype of the inputs.

    Examples
    --------
    >>> import torch
    >>> U, s, Vh = torch.eye(2), torch.tensor([4.0, 1.0]), torch.eye(2)
    >>> W1, W2 = svd_factors(U, s, Vh, rank=1)
    >>> W1.tolist(), W2.tolist()
    ([[2.0, 0.0]], [[2.0], [0.0]])
    """
    owner = "svd_factors"
    if not (isinstance(s, torch.Tensor) and s.ndim == 1):
        raise TypeError(f"The 's' parameter of {owner} must be a 1-D tensor. Got {s!r} instead.")
    rank = check_int(rank, "rank", owner, low=0)
    if rank > s.shape[0] or U.shape[1] < rank or Vh.shape[0] < rank:
        raise ValueError(
            f"The 'rank' parameter of {owner} must be at most the number of triplets "
            f"{min(s.shape[0], U.shape[1], Vh.shape[0])}. Got {rank} instead."
        )
    if rank and bool((s[:rank] < 0).any()):
        raise ValueError(f"The 's' parameter of {owner} must be non-negative. Got {s[:rank]}.")
    root = s[:rank].sqrt()
    return root[:, None] * Vh[:rank], U[:, :rank] * root[None, :]
