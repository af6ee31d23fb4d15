"""Spectrum of a weight matrix: singular values and eigenvalues ``λ_i = s_i² / N``.

The eigenvalues of an ``m × n`` weight ``W`` are the ``p = min(m, n)`` non-zero
eigenvalues of ``W Wᵀ / N`` with ``N = max(m, n)`` (docs/method.md section 1), computed in
float64 on the CPU whatever the dtype and device of ``W``.

How they are computed
---------------------
The default route forms the smaller Gram matrix (``Wᵀ W`` or ``W Wᵀ``, ``p × p``)
in float64 and takes its eigenvalues with ``torch.linalg.eigvalsh``: the fastest route
measured for the large layers that dominate the cost (timings of every route in
docs/benchmarks_bema.md, section 1).

The price is precision at the bottom of the spectrum: the Gram route has an
absolute error of about ``eps · λ_max``, so an eigenvalue ``c · λ_max`` carries a
relative error of at most about ``eps / c``, and exact zeros may come out as tiny
negative numbers, which are clipped to 0.  BEMA never looks there (its bulk
window starts at the ``⌊αp⌋``-th value); pass ``method="svd"`` when the small
values themselves matter.

Torch is optional here
----------------------
This module belongs to the math layer and imports only NumPy at import time, so
:mod:`rmtprune.rmt` works without PyTorch.  Tensors are recognised through
the already-loaded ``torch`` module (a tensor cannot exist without it), and the
eigenvalues use PyTorch's LAPACK when PyTorch is installed (the fastest route, and
the one every number in this project was computed with); without it they use
NumPy's ``eigvalsh`` on the same Gram matrix.

Example
-------
>>> import numpy as np
>>> from rmtprune.rmt.spectrum import eigenvalues, singular_values
>>> W = np.diag([3.0, 4.0])
>>> eigenvalues(W)
array([4.5, 8. ])
>>> singular_values(W)
array([4., 3.])
"""

from __future__ import annotations

import sys
from functools import lru_cache
from types import ModuleType
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "SpectrumMethod",
    "as_matrix",
    "eigenvalues",
    "is_tensor",
    "numerical_rank",
    "singular_values",
]

FloatArray = NDArray[np.float64]
SpectrumMethod = Literal["gram", "svd"]
"""``"gram"``: eigenvalues of the smaller Gram matrix (default); ``"svd"``: singular values."""


def is_tensor(W: Any) -> bool:
    """Whether ``W`` is a ``torch.Tensor``, without importing torch.

    >>> is_tensor(np.zeros(2))
    False
    """
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(W, torch.Tensor)


@lru_cache(maxsize=1)
def _torch_linalg() -> ModuleType | None:
    """PyTorch if it can be imported (its LAPACK is the fastest route), else ``None``."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _given(W: Any) -> str:
    shape = getattr(W, "shape", None)
    dtype = getattr(W, "dtype", None)
    if shape is not None and dtype is not None:
        kind = "a tensor" if is_tensor(W) else "an array"
        return f"{kind} of shape {tuple(shape)} and dtype {dtype}"
    return f"an object of type {type(W).__name__}"


def _check_dtype(kind: str, W: Any, name: str) -> None:
    """``kind`` is NumPy's dtype kind letter ('f' float, 'c' complex, 'i'/'u' int, 'b' bool)."""
    if kind == "f":
        return
    what = {"c": "complex", "b": "boolean", "i": "integer", "u": "integer"}.get(kind, "non-numeric")
    raise TypeError(
        f"The {name!r} parameter must be a 2-D array or tensor of real floating-point values. "
        f"Got {_given(W)} ({what} values) instead."
    )


def as_matrix(W: Any, name: str = "W") -> FloatArray:
    """Return ``W`` as a validated 2-D float64 NumPy array on the CPU.

    Parameters
    ----------
    W : numpy.ndarray, torch.Tensor or array-like
        A real 2-D matrix of any floating dtype (float16/bfloat16/float32/float64)
        on any device.  Tensors are detached; ``W`` itself is never modified.
    name : str
        Parameter name used in error messages.

    Returns
    -------
    numpy.ndarray
        ``float64`` array of the same shape.  It may share memory with a
        float64 input, so callers must not write into it.

    Raises
    ------
    TypeError
        Complex, integer, boolean or non-numeric values.
    ValueError
        Not 2-D, empty, or containing NaN/Inf.

    Examples
    --------
    >>> import torch
    >>> as_matrix(torch.ones(2, 3, dtype=torch.float16)).dtype
    dtype('float64')
    """
    if is_tensor(W):
        torch = sys.modules["torch"]
        if W.is_complex():
            _check_dtype("c", W, name)
        if not W.dtype.is_floating_point:
            _check_dtype("b" if W.dtype == torch.bool else "i", W, name)
        A = W.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        arr = np.asarray(W)
        _check_dtype(arr.dtype.kind, W, name)
        A = arr.astype(np.float64, copy=False)
    if A.ndim != 2:
        raise ValueError(
            f"The {name!r} parameter must be a 2-D matrix (m × n). Got {_given(W)} "
            f"with {A.ndim} dimension(s) instead."
        )
    if A.size == 0:
        raise ValueError(
            f"The {name!r} parameter must be a non-empty 2-D matrix. Got shape {A.shape} instead."
        )
    # A finite sum proves every entry finite (NaN and Inf propagate); only when the
    # sum overflows or is NaN is the entrywise check needed.
    with np.errstate(over="ignore", invalid="ignore"):
        total = A.sum()
    if not np.isfinite(total) and not np.isfinite(A).all():
        bad = int(A.size - np.count_nonzero(np.isfinite(A)))
        raise ValueError(
            f"The {name!r} parameter must contain only finite values. "
            f"Got {bad} NaN or infinite entr{'y' if bad == 1 else 'ies'} instead."
        )
    return A


def _tensor(torch: ModuleType, A: FloatArray) -> Any:
    """Zero-copy view of ``A`` as a tensor; a copy when PyTorch cannot view it (negative
    strides, read-only memory)."""
    if not A.flags.writeable or any(stride < 0 for stride in A.strides):
        A = A.copy()
    return torch.from_numpy(A)


def _gram_eigenvalues(A: FloatArray) -> FloatArray:
    """Ascending eigenvalues of the smaller Gram matrix of ``A`` (unscaled, clipped at 0)."""
    torch = _torch_linalg()
    if torch is None:
        G = A.T @ A if A.shape[0] >= A.shape[1] else A @ A.T
        values = np.linalg.eigvalsh(G)
    else:
        T = _tensor(torch, A)
        G = T.T @ T if A.shape[0] >= A.shape[1] else T @ T.T
        values = torch.linalg.eigvalsh(G).numpy().astype(np.float64, copy=False)
    return np.maximum(values, 0.0)


def _svd_squares(A: FloatArray) -> FloatArray:
    """Ascending squared singular values of ``A``."""
    torch = _torch_linalg()
    if torch is None:
        s = np.linalg.svd(A, compute_uv=False)
    else:
        s = torch.linalg.svdvals(_tensor(torch, A)).numpy().astype(np.float64, copy=False)
    return np.ascontiguousarray(s[::-1] ** 2)


def _check_method(method: Any) -> None:
    if method not in ("gram", "svd"):
        raise ValueError(
            f"The 'method' parameter must be one of 'gram', 'svd'. Got {method!r} instead."
        )


def eigenvalues(W: Any, *, method: SpectrumMethod = "gram") -> FloatArray:
    """Eigenvalues ``λ_i = s_i² / N`` of a weight matrix, ascending.

    Parameters
    ----------
    W : numpy.ndarray or torch.Tensor
        Real ``m × n`` matrix, any floating dtype, any device.
    method : {"gram", "svd"}
        ``"gram"`` (default): eigenvalues of the smaller Gram matrix in float64,
        the fastest route measured; absolute error a few ``eps · λ_max``, tiny
        negatives clipped to 0.  ``"svd"``: squares of the singular values,
        slower but relatively accurate for the smallest values too.

    Returns
    -------
    numpy.ndarray
        ``float64`` array of length ``p = min(m, n)``, ascending, non-negative.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.random.default_rng(0).standard_normal((300, 600))
    >>> lam = eigenvalues(W)
    >>> lam.shape, bool(np.all(np.diff(lam) >= 0))
    ((300,), True)
    >>> bool(abs(lam.mean() - 1.0) < 0.02)  # mean of MP(ratio, 1) is 1
    True
    """
    _check_method(method)
    A = as_matrix(W)
    N = max(A.shape)
    values = _gram_eigenvalues(A) if method == "gram" else _svd_squares(A)
    return values / N


def singular_values(W: Any, *, method: SpectrumMethod = "gram") -> FloatArray:
    """Singular values of a weight matrix, descending, float64.

    Computed as ``sqrt(N · λ_i)`` from :func:`eigenvalues` (same ``method``),
    so ``s_i > s₊ ⇔ λ_i > λ₊`` exactly.  With the Gram route the absolute error
    is about ``sqrt(eps) · s_max`` for the smallest values.

    Examples
    --------
    >>> import numpy as np
    >>> singular_values(np.array([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]]))
    array([2., 1.])
    """
    A = as_matrix(W)
    lam = eigenvalues(A, method=method)
    return np.sqrt(lam[::-1] * max(A.shape))


def numerical_rank(eigenvalues: Any, n_rows: int) -> int:
    """Number of eigenvalues whose singular values exceed the rank tolerance.

    The tolerance is ``s_max · max(N · eps(float64), 1e-6)``: it follows the precision the
    spectrum is computed in (always float64 here; ``1e-6`` is the relative precision of
    singular values obtained from float64 Gram-matrix eigenvalues), never the dtype the weight
    is stored in.  A float16 or bfloat16 weight therefore gets the rank of the same values
    in float32 (the low storage precision says nothing about the matrix's rank: an honest
    256 × 256 random matrix has ``s_min / s_max ≈ 1/512``, above bfloat16's ``eps``).

    Parameters
    ----------
    eigenvalues : array-like
        Ascending eigenvalues ``λ_i = s_i² / N`` (as returned by :func:`eigenvalues`).
    n_rows : int
        ``N = max(m, n)`` of the matrix.

    Examples
    --------
    >>> import numpy as np
    >>> numerical_rank(np.array([0.0, 1e-20, 0.5, 2.0]), 4)
    2
    >>> W = np.random.default_rng(0).standard_normal((256, 256))
    >>> numerical_rank(eigenvalues(W), 256)
    256
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.size == 0 or values[-1] <= 0:
        return 0
    s = np.sqrt(np.maximum(values, 0.0))
    rel = max(int(n_rows) * float(np.finfo(np.float64).eps), 1e-6)
    return int(np.count_nonzero(s > rel * s[-1]))
