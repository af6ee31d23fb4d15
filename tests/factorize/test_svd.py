"""truncated_svd against matrices with known singular values and against torch.linalg.svd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmtprune.factorize import svd as svd_module
from rmtprune.factorize import svd_factors, truncated_svd


def known_matrix(m: int, n: int, singular_values: np.ndarray, seed: int) -> tuple:
    """``W = Q1 diag(s) Q2ᵀ`` with random orthonormal ``Q1``, ``Q2``: singular values known."""
    rng = np.random.default_rng(seed)
    p = min(m, n)
    Q1 = np.linalg.qr(rng.standard_normal((m, p)))[0]
    Q2 = np.linalg.qr(rng.standard_normal((n, p)))[0]
    return (Q1 * singular_values) @ Q2.T, Q1, Q2


def orthonormality_error(Q: torch.Tensor) -> float:
    return float((Q.T @ Q - torch.eye(Q.shape[1], dtype=Q.dtype)).abs().max())


def subspace_error(Vh: torch.Tensor, Q2: np.ndarray) -> float:
    """Spectral norm of the part of span(Q2) outside the row span of Vh."""
    V = Vh.T.numpy()
    return float(np.linalg.norm(Q2 - V @ (V.T @ Q2), 2))


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("shape", [(60, 40), (40, 60), (50, 50)])
@pytest.mark.parametrize("rank", [1, 5, 20, 40])  # subset eigh, full eigh, full SVD
def test_known_singular_values(method: str, shape: tuple[int, int], rank: int) -> None:
    m, n = shape
    p = min(m, n)
    s_true = np.geomspace(10.0, 0.1, p)  # distinct, condition number 100
    W, Q1, Q2 = known_matrix(m, n, s_true, seed=m + n + rank)
    U, s, Vh = truncated_svd(torch.from_numpy(W), rank, method=method)
    assert U.dtype == s.dtype == Vh.dtype == torch.float64
    assert U.shape == (m, rank) and s.shape == (rank,) and Vh.shape == (rank, n)
    np.testing.assert_allclose(s.numpy(), s_true[:rank], rtol=1e-12)
    assert orthonormality_error(U) < 1e-13 and orthonormality_error(Vh.T) < 1e-13
    # the best rank-r approximation is Q1_r diag(s_r) Q2_rᵀ (Eckart–Young, distinct values)
    best = (Q1[:, :rank] * s_true[:rank]) @ Q2[:, :rank].T
    approx = ((U * s) @ Vh).numpy()
    assert np.linalg.norm(approx - best) / np.linalg.norm(best) < 1e-12
    assert subspace_error(Vh, Q2[:, :rank]) < 1e-12
    assert subspace_error(U.T, Q1[:, :rank]) < 1e-12


def test_float32_input_any_rank_matches_torch_svd() -> None:
    g = torch.Generator().manual_seed(0)
    W32 = torch.randn(80, 30, generator=g)
    original = W32.clone()
    U, s, Vh = truncated_svd(W32)  # rank None: all 30
    assert torch.equal(W32, original)  # input untouched
    exact = torch.linalg.svdvals(W32.double())
    torch.testing.assert_close(s, exact, rtol=1e-12, atol=0)
    torch.testing.assert_close((U * s) @ Vh, W32.double(), rtol=0, atol=1e-12)
    # numpy input works as well
    _, s_np, _ = truncated_svd(W32.numpy(), 3)
    torch.testing.assert_close(s_np, exact[:3], rtol=1e-12, atol=0)


def test_gram_route_used_when_well_conditioned(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("full SVD called")

    monkeypatch.setattr(svd_module, "_full_svd", refuse)
    W, _, _ = known_matrix(70, 50, np.linspace(5.0, 1.0, 50), seed=3)
    _, s, _ = truncated_svd(W, 10)
    np.testing.assert_allclose(s.numpy(), np.linspace(5.0, 1.0, 50)[:10], rtol=1e-12)


def test_guard_falls_back_to_svd_for_small_kept_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # a cliff: 3 values near 1, the rest near 1e-6, keep 6 (eps·s_1²/s_6² ≈ 2e-4 > 1e-10)
    s_true = np.r_[[1.0, 0.9, 0.8], np.geomspace(1e-6, 1e-7, 57)]
    W, _, Q2 = known_matrix(60, 60, s_true, seed=4)
    calls: list[int] = []
    original = svd_module._full_svd

    def counting(matrix: torch.Tensor, rank: int) -> tuple:
        calls.append(rank)
        return original(matrix, rank)

    monkeypatch.setattr(svd_module, "_full_svd", counting)
    U, s, Vh = truncated_svd(W, 6)
    assert calls == [6]
    np.testing.assert_allclose(s.numpy(), s_true[:6], rtol=1e-8)
    # the full SVD resolves the small kept directions; the Gram route alone would not
    assert subspace_error(Vh, Q2[:, :6]) < 1e-8
    assert orthonormality_error(U) < 1e-13
    # just above the guard the Gram route is kept: eps · λ1/λr = 2.2e-16 · 1e4 < 1e-10
    s_ok = np.r_[[1.0, 0.9, 0.8], np.geomspace(1e-2, 1e-3, 57)]
    W_ok, _, Q2_ok = known_matrix(60, 60, s_ok, seed=5)
    calls.clear()
    _, s, Vh = truncated_svd(W_ok, 6)
    assert calls == []
    np.testing.assert_allclose(s.numpy(), s_ok[:6], rtol=1e-11)
    assert subspace_error(Vh, Q2_ok[:, :6]) < 1e-9


def test_edge_cases_and_errors() -> None:
    W = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    U, s, Vh = truncated_svd(W, 0)
    assert U.shape == (5, 0) and s.shape == (0,) and Vh.shape == (0, 3)
    U, s, Vh = truncated_svd(torch.zeros(4, 6), 2)  # zero matrix: falls back, no NaN
    assert torch.equal(s, torch.zeros(2)) and orthonormality_error(U) < 1e-14
    with pytest.raises(ValueError, match=r"'rank'.*\[0, 3\]"):
        truncated_svd(W, 4)
    with pytest.raises(ValueError, match="'rank'"):
        truncated_svd(W, -1)
    with pytest.raises(ValueError, match="'method'"):
        truncated_svd(W, 1, method="eig")
    with pytest.raises(TypeError, match="'matrix'"):
        truncated_svd(torch.ones(3), 1)
    with pytest.raises(TypeError, match="'matrix'"):
        truncated_svd(torch.ones(3, 3, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="finite"):
        truncated_svd(torch.full((3, 3), float("nan")), 1)


def test_svd_factors_square_root_split() -> None:
    s_true = np.array([9.0, 4.0, 1.0, 0.25])
    W, _, _ = known_matrix(6, 4, s_true, seed=7)
    U, s, Vh = truncated_svd(W, method="svd")
    W1, W2 = svd_factors(U, s, Vh, 2)
    assert W1.shape == (2, 4) and W2.shape == (6, 2)
    torch.testing.assert_close(W2 @ W1, (U[:, :2] * s[:2]) @ Vh[:2], rtol=0, atol=1e-13)
    # both factors carry √s: row norms of W1 and column norms of W2 are 3 and 2
    torch.testing.assert_close(W1.norm(dim=1), torch.tensor([3.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(W2.norm(dim=0), torch.tensor([3.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="'rank'"):
        svd_factors(U, s, Vh, 5)
    with pytest.raises(ValueError, match="'s'"):
        svd_factors(U, -s, Vh, 2)
