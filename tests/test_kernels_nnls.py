"""Tests of the exact batched NNLS kernel (block principal pivoting)."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls as scipy_nnls

from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.kernels import nnls as nnls_mod
from dnmf_dask.kernels.nnls import nnls, nnls_gram, solve_passive


@pytest.fixture(autouse=True, params=["numba", "numpy"])
def bpp_path(request, monkeypatch):
    """Every test runs on both pivoting paths: compiled row by row (kernels/fused.py, used when
    numba is importable) and the batched numpy one (no numba, or a singular G)."""
    from dnmf_dask.kernels import fused

    if request.param == "numba" and not fused.AVAILABLE:
        pytest.skip("numba not available")
    if request.param == "numpy":
        monkeypatch.setattr(fused, "AVAILABLE", False)
    return request.param


def make_problem(rng, n, m, k, density=0.4, noise=0.05):
    A = rng.random((m, k))
    S_true = rng.random((n, k)) * (rng.random((n, k)) < density)
    X = S_true @ A.T + noise * rng.standard_normal((n, m))
    return A, X


def kkt_violation(A, X, S):
    """Largest relative violation of the KKT conditions, row-wise scaled."""
    A = np.asarray(A, dtype=np.float64)
    G = A.T @ A
    C = np.asarray(X @ A, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    grad = S @ G - C
    scale = np.abs(C).max(axis=1) + np.abs(G).max() * np.abs(S).max(axis=1)
    scale = np.maximum(scale, np.finfo(float).tiny)[:, None]
    neg = np.max(np.maximum(-S, 0) / scale, initial=0.0)
    dual = np.max(np.where(S == 0, np.maximum(-grad, 0), 0) / scale, initial=0.0)
    comp = np.max(np.where(S > 0, np.abs(grad), 0) / scale, initial=0.0)
    return max(neg, dual, comp)


def scipy_rows(A, X):
    X = X.toarray() if sp.issparse(X) else X
    A = np.asarray(A, dtype=np.float64)
    return np.array([scipy_nnls(A, np.asarray(x, dtype=np.float64), maxiter=100 * A.shape[1])[0] for x in X])


def objective(A, X, S):
    X = X.toarray() if sp.issparse(X) else X
    return float(np.sum((X - S @ A.T) ** 2))


@pytest.mark.parametrize(
    "n,m,k,density",
    [(200, 30, 5, 0.4), (300, 50, 20, 0.3), (150, 100, 40, 0.5), (100, 10, 10, 0.5), (120, 25, 8, 1.0)],
)
def test_kkt_and_equal_to_scipy(n, m, k, density):
    rng = np.random.default_rng(n + m + k)
    A, X = make_problem(rng, n, m, k, density)
    S, info = nnls(A, X, return_info=True)
    assert S.shape == (n, k) and S.dtype == np.float64
    assert np.all(S >= 0)
    assert kkt_violation(A, X, S) <= 1e-9
    assert info["n_fallback"] == 0
    R = scipy_rows(A, X)
    np.testing.assert_allclose(S, R, rtol=0, atol=1e-8 * max(1.0, np.abs(R).max()))
    if density < 1:
        assert np.mean(S == 0) > 0.1  # the problems do exercise the constraints


def test_many_zeros_in_solution():
    rng = np.random.default_rng(7)
    A = rng.random((40, 12))
    # many data rows are far from the cone: most coordinates are 0 at the optimum
    X = rng.standard_normal((300, 40))
    S = nnls(A, X)
    assert np.mean(S == 0) > 0.5
    assert kkt_violation(A, X, S) <= 1e-9
    np.testing.assert_allclose(S, scipy_rows(A, X), atol=1e-9)


def test_float32_input_gives_float32_and_matches():
    rng = np.random.default_rng(3)
    A, X = make_problem(rng, 200, 30, 8)
    A32, X32 = A.astype(np.float32), X.astype(np.float32)
    S = nnls(A32, X32)
    assert S.dtype == np.float32
    assert np.all(S >= 0)
    R = scipy_rows(A32.astype(np.float64), X32.astype(np.float64))
    np.testing.assert_allclose(S, R, atol=2e-4 * np.abs(R).max())
    # float32 Gram input to nnls_gram also gives float32
    G32 = (A32.T @ A32).astype(np.float32)
    S2 = nnls_gram(G32, X32 @ A32)
    assert S2.dtype == np.float32
    # mixed precision promotes
    assert nnls(A32, X).dtype == np.float64


def test_sparse_X_equals_dense():
    rng = np.random.default_rng(11)
    A = rng.random((60, 7))
    Xs = sp.random(250, 60, density=0.1, format="csr", random_state=1)
    S_sparse = nnls(A, Xs)
    S_dense = nnls(A, Xs.toarray())
    np.testing.assert_allclose(S_sparse, S_dense, atol=1e-12)
    assert kkt_violation(A, Xs, S_sparse) <= 1e-9
    # other sparse formats are accepted too
    np.testing.assert_allclose(nnls(A, Xs.tocsc()), S_dense, atol=1e-12)


def test_shared_passive_sets_grouped_path():
    # many identical rows (same passive set) go through the grouped multi-RHS solve
    rng = np.random.default_rng(5)
    A = rng.random((30, 6))
    base = rng.standard_normal((4, 30))
    X = np.repeat(base, 50, axis=0) * rng.uniform(0.5, 2.0, size=(200, 1))
    S = nnls(A, X)
    assert kkt_violation(A, X, S) <= 1e-9
    np.testing.assert_allclose(S, scipy_rows(A, X), atol=1e-9)


def test_large_k_uses_byte_codes():
    rng = np.random.default_rng(2)
    A, X = make_problem(rng, 60, 90, 70, density=0.5)
    S = nnls(A, X)
    assert kkt_violation(A, X, S) <= 1e-9
    np.testing.assert_allclose(S, scipy_rows(A, X), atol=1e-8 * max(1, np.abs(S).max()))


def test_ill_conditioned_full_rank_uses_direct_path():
    rng = np.random.default_rng(9)
    A = rng.random((50, 6))
    A[:, 5] = A[:, 4] + 1e-4 * rng.standard_normal(50)  # cond(G) ~ 4e8: no complement formula
    solver = nnls_mod._PassiveSolver(A.T @ A)
    assert not solver.singular and solver.H is None
    X = rng.random((200, 50))
    S = nnls(A, X)
    assert kkt_violation(A, X, S) <= 1e-9
    assert objective(A, X, S) <= objective(A, X, scipy_rows(A, X)) * (1 + 1e-10)


@pytest.mark.parametrize("kind", ["duplicate", "combination", "wide"])
def test_rank_deficient(kind):
    rng = np.random.default_rng(13)
    if kind == "duplicate":
        A = rng.random((30, 6))
        A[:, 3] = A[:, 1]
    elif kind == "combination":
        A = rng.random((30, 6))
        A[:, 5] = A[:, 0] + A[:, 2]
    else:  # more columns than features
        A = rng.random((8, 12))
    X = rng.random((300, A.shape[0])) + 0.1 * rng.standard_normal((300, A.shape[0]))
    S, info = nnls(A, X, return_info=True)
    assert info["singular"]
    assert np.all(np.isfinite(S)) and np.all(S >= 0)
    # a minimiser: KKT holds, and the (unique) optimal value equals scipy's
    assert kkt_violation(A, X, S) <= 1e-9
    R = scipy_rows(A, X)
    res_ours = np.sum((X - S @ A.T) ** 2, axis=1)
    res_ref = np.sum((X - R @ A.T) ** 2, axis=1)
    np.testing.assert_allclose(res_ours, res_ref, rtol=1e-9, atol=1e-12)
    if kind == "duplicate":
        # defined behaviour: minimum norm on the support, so two passive copies share equally
        both = (S[:, 1] > 0) & (S[:, 3] > 0)
        np.testing.assert_allclose(S[both, 1], S[both, 3], rtol=1e-9)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
@pytest.mark.parametrize("rank_deficient", [False, True])
def test_scale_invariance(scale, rank_deficient):
    rng = np.random.default_rng(17)
    A, X = make_problem(rng, 400, 30, 10)
    if rank_deficient:
        A[:, 7] = A[:, 2]
    S = nnls(A, X)
    # q(s A, t X) = (t / s) q(A, X)
    S_scaled = nnls(scale * A, X / scale)
    np.testing.assert_allclose(S_scaled * scale**2, S, atol=1e-9 * np.abs(S).max())
    assert kkt_violation(scale * A, X / scale, S_scaled) <= 1e-9


def test_n_zero_rows_and_k_one():
    rng = np.random.default_rng(0)
    A = rng.random((10, 3))
    S = nnls(A, np.zeros((0, 10)))
    assert S.shape == (0, 3)
    S = nnls(A, sp.csr_matrix((0, 10)))
    assert S.shape == (0, 3)
    # k = 1: closed form max(0, a.x / a.a)
    a = rng.random((10, 1))
    X = rng.standard_normal((50, 10))
    S = nnls(a, X)
    expected = np.maximum(0, X @ a / float(a[:, 0] @ a[:, 0]))
    np.testing.assert_allclose(S, expected, atol=1e-14)
    assert np.any(S == 0) and np.any(S > 0)
    # zero data rows give zero solutions
    assert np.all(nnls(A, np.zeros((4, 10))) == 0)


def test_warm_start_and_info():
    rng = np.random.default_rng(4)
    A, X = make_problem(rng, 300, 40, 10)
    S, info = nnls(A, X, return_info=True)
    assert info["n_iter"] >= 1
    S2, info2 = nnls(A, X, S0=S, return_info=True)
    assert info2["n_iter"] == 0
    np.testing.assert_allclose(S2, S, atol=1e-12)
    # a bad warm start still ends at the optimum
    S3 = nnls(A, X, S0=rng.random(S.shape) * (rng.random(S.shape) < 0.5))
    np.testing.assert_allclose(S3, S, atol=1e-10)


def test_fallback_after_max_iter():
    rng = np.random.default_rng(6)
    A, X = make_problem(rng, 100, 20, 12, density=0.3)
    S, info = nnls(A, X, max_iter=1, return_info=True)
    assert info["n_fallback"] > 0
    assert kkt_violation(A, X, S) <= 1e-8
    np.testing.assert_allclose(S, scipy_rows(A, X), atol=1e-8)


def test_backup_rule_terminates():
    # small, badly conditioned problems exercise Kim & Park's backup (single exchange) rule
    found_backup = False
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        A = rng.random((10, 10))
        X = rng.standard_normal((100, 10))
        S, info = nnls(A, X, return_info=True)
        found_backup |= info["n_backup"] > 0
        assert info["n_fallback"] == 0
        assert kkt_violation(A, X, S) <= 1e-9
    assert found_backup


@pytest.mark.parametrize("n", [10, 120, 3000])  # tiny-batch, stacked and grouped paths
def test_solve_passive_matches_per_row_solves(n):
    rng = np.random.default_rng(8)
    A = rng.random((25, 9))
    G = A.T @ A
    C = rng.standard_normal((n, 9))
    P = rng.random((n, 9)) < 0.5
    P[0] = True
    P[1] = False
    X = solve_passive(G, C, P)
    for i in range(min(n, 300)):
        F = np.flatnonzero(P[i])
        expected = np.zeros(9)
        if F.size:
            expected[F] = np.linalg.solve(G[np.ix_(F, F)], C[i, F])
        np.testing.assert_allclose(X[i], expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max(initial=1))


def test_matches_gram_form():
    rng = np.random.default_rng(12)
    A, X = make_problem(rng, 100, 30, 6)
    np.testing.assert_array_equal(nnls(A, X), nnls_gram(A.T @ A, X @ A))


def test_bad_inputs():
    rng = np.random.default_rng(0)
    A = rng.random((10, 3))
    X = rng.random((5, 10))
    G = A.T @ A
    with pytest.raises(DNMFValueError, match="G"):
        nnls_gram(rng.random((3, 4)), X @ A)
    with pytest.raises(DNMFValueError, match="C"):
        nnls_gram(G, rng.random((5, 4)))
    with pytest.raises(DNMFValueError, match="X"):
        nnls(A, rng.random((5, 9)))
    with pytest.raises(DNMFValueError, match="G"):
        nnls_gram(-G, X @ A)  # not positive semidefinite
    with pytest.raises(DNMFValueError, match="G"):
        nnls_gram(G + np.triu(np.ones((3, 3)), 1), X @ A)  # not symmetric
    with pytest.raises(DNMFValueError, match="tol"):
        nnls(A, X, tol=-1.0)
    with pytest.raises(DNMFValueError, match="max_iter"):
        nnls(A, X, max_iter=0)
    with pytest.raises(DNMFTypeError, match="max_iter"):
        nnls(A, X, max_iter=2.5)
    with pytest.raises(DNMFTypeError):
        nnls(A.astype(complex), X)
    with pytest.raises(DNMFValueError, match="finite"):
        nnls(A, np.full((2, 10), np.nan))
    with pytest.raises(DNMFValueError, match="S0"):
        nnls(A, X, S0=np.zeros((4, 3)))
    with pytest.raises(DNMFTypeError, match="A"):
        nnls(sp.csr_matrix(A), X)
    with pytest.raises(DNMFValueError, match="A"):
        nnls(rng.random(10), X)
    with pytest.raises(DNMFTypeError, match="P"):
        solve_passive(G, X @ A, np.ones((5, 3)))
    # errors are also the built-in exceptions
    with pytest.raises(ValueError):
        nnls(A, X, tol=-1.0)
