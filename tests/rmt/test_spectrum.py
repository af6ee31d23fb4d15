"""Tests of rmtprune.rmt.spectrum: eigenvalues, singular values and input checking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmtprune.rmt.spectrum import as_matrix, eigenvalues, singular_values

SHAPES = [(30, 50), (50, 30), (40, 40), (1, 7), (7, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_eigenvalues_are_squared_singular_values_over_N(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    W = rng.standard_normal(shape)
    s = np.linalg.svd(W, compute_uv=False)  # independent LAPACK route (NumPy/OpenBLAS)
    expected = np.sort(s**2 / max(shape))
    lam = eigenvalues(W)
    assert lam.dtype == np.float64
    assert lam.shape == (min(shape),)
    assert np.all(np.diff(lam) >= 0)
    # Gram route: absolute error of a few eps * lambda_max.
    np.testing.assert_allclose(lam, expected, rtol=0, atol=1e-13 * expected[-1])
    np.testing.assert_allclose(eigenvalues(W, method="svd"), expected, rtol=1e-12)
    sv = singular_values(W)
    assert np.all(np.diff(sv) <= 0)
    np.testing.assert_allclose(sv, s, rtol=1e-12, atol=1e-7 * s[0])


def test_known_spectrum_of_rotated_diagonal() -> None:
    # W = Q diag(d) R^T (Q, R orthonormal columns) has singular values d exactly.
    rng = np.random.default_rng(1)
    d = np.array([5.0, 3.0, 2.0, 1.0, 0.5])
    Q, _ = np.linalg.qr(rng.standard_normal((12, 5)))
    R, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    W = Q @ np.diag(d) @ R.T  # 12 x 5, N = 12
    np.testing.assert_allclose(eigenvalues(W), np.sort(d**2) / 12, rtol=1e-12)
    np.testing.assert_allclose(singular_values(W), d, rtol=1e-12)


def test_rank_deficient_spectrum_clipped_at_zero() -> None:
    rng = np.random.default_rng(2)
    W = np.outer(rng.standard_normal(60), rng.standard_normal(90))  # rank 1
    lam = eigenvalues(W)
    assert np.all(lam >= 0.0)
    expected_top = np.sum(W**2) / 90  # the only non-zero eigenvalue: ||W||_F^2 / N
    assert lam[-1] == pytest.approx(expected_top, rel=1e-12)
    assert np.max(lam[:-1]) <= 1e-13 * lam[-1]


def test_transpose_gives_identical_eigenvalues() -> None:
    W = np.random.default_rng(3).standard_normal((70, 20))
    np.testing.assert_array_equal(eigenvalues(W), eigenvalues(W.T))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_input_matches_numpy_of_same_values(dtype: torch.dtype) -> None:
    T = torch.randn(40, 25, generator=torch.Generator().manual_seed(4)).to(dtype)
    T.requires_grad_(True)
    before = T.detach().clone()
    reference = T.detach().to(torch.float64).numpy()
    np.testing.assert_array_equal(eigenvalues(T), eigenvalues(reference))
    assert torch.equal(T.detach(), before)  # input untouched
    assert as_matrix(T).dtype == np.float64


def test_float32_numpy_equals_torch_float32() -> None:
    W = np.random.default_rng(5).standard_normal((30, 45)).astype(np.float32)
    np.testing.assert_array_equal(eigenvalues(W), eigenvalues(torch.from_numpy(W)))
    np.testing.assert_array_equal(singular_values(W), singular_values(torch.from_numpy(W)))


@pytest.mark.filterwarnings("error")
def test_strided_and_read_only_views() -> None:
    W = np.random.default_rng(7).standard_normal((9, 14))
    expected = np.sort(np.linalg.svd(W, compute_uv=False) ** 2 / 14)
    read_only = W.copy()
    read_only.flags.writeable = False
    for view in (W[::-1], W[:, ::-1].T, read_only, np.broadcast_to(W, (9, 14))):
        for method in ("gram", "svd"):
            lam = eigenvalues(view, method=method)  # type: ignore[arg-type]
            np.testing.assert_allclose(lam, expected, rtol=1e-10, atol=1e-13 * expected[-1])


def test_input_array_is_not_modified() -> None:
    W = np.random.default_rng(6).standard_normal((20, 30))
    copy = W.copy()
    eigenvalues(W)
    singular_values(W, method="svd")
    np.testing.assert_array_equal(W, copy)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (np.ones(5), ValueError, r"'W' parameter must be a 2-D matrix .*shape \(5,\)"),
        (np.ones((2, 3, 4)), ValueError, r"'W' parameter must be a 2-D matrix .*3 dimension"),
        (np.ones((0, 4)), ValueError, r"'W' parameter must be a non-empty .*Got shape \(0, 4\)"),
        (np.array([[1.0, np.nan], [np.inf, 0.0]]), ValueError, r"'W' .*finite values\. Got 2 "),
        (np.ones((3, 3), dtype=complex), TypeError, r"'W' .*real floating-point.*complex"),
        (np.ones((3, 3), dtype=np.int64), TypeError, r"'W' .*real floating-point.*integer"),
        (np.ones((3, 3), dtype=bool), TypeError, r"'W' .*real floating-point.*boolean"),
        (torch.ones(3, 3, dtype=torch.complex64), TypeError, r"'W' .*tensor.*complex"),
        (torch.ones(3, 3, dtype=torch.int32), TypeError, r"'W' .*tensor.*integer"),
        (torch.tensor([[1.0, float("nan")]]), ValueError, r"'W' .*finite values\. Got 1 NaN"),
        ("abc", TypeError, r"'W' .*real floating-point.*non-numeric"),
    ],
)
def test_bad_input_messages(bad: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        eigenvalues(bad)


def test_overflowing_but_finite_input_is_accepted() -> None:
    W = np.full((3, 4), 1e308)  # the sum overflows, the entries are finite
    assert as_matrix(W).shape == (3, 4)


def test_bad_method() -> None:
    with pytest.raises(ValueError, match=r"'method' parameter must be one of 'gram', 'svd'\. "):
        eigenvalues(np.ones((3, 3)), method="qr")  # type: ignore[arg-type]
