"""The compiled per-row block principal pivoting (kernels/fused.py: bpp_rows) against a plain numpy
transcription of the same rules, on problems built to force many pivoting rounds.

The compiled kernel keeps the LDLᵀ factor of the current system from one round to the next and
only adds rows when the system's index list grew (the zero set N in the complement form through
H = G⁻¹, the passive set F in the direct form through G); it refactors when the list lost an
index or the form changed, and lists the moved indices inside the exchange loop. The reference
below re-solves every round from scratch with ``np.linalg.solve(G[F, F], c[F])``, so a wrong
extension (a wrong row of the factor, a wrong appended index, a missed shrink) changes x, hence
the final passive sets and values compared here. The reference also counts the rounds that
take each of those branches, so every test checks that it exercises what it is meant to.
"""

import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from dnmf_dask.kernels import fused
from dnmf_dask.kernels.nnls import nnls

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="numba not available")

TOL = 1e-10
P_BAR = 3


def reference_bpp_row(G, c, with_H, p0, max_iter, tol=TOL, p_bar=P_BAR):
    """Kim & Park's BPP for one row, every system solved from scratch; returns
    (x, F, n_iter, n_backup, counts) with counts of the rounds whose system only grew
    ("grow", the compiled kernel extends its factor) or lost an index in the same form
    ("shrink", it refactors)."""
    k = c.size
    tiny = np.finfo(np.float64).tiny
    g = max(float(np.max(np.abs(np.diag(G)))), tiny)
    cscale = float(np.max(np.abs(c)))

    def form_of(F):  # the compiled kernel's choice: complement form when N is the smaller set
        m = int(F.sum())
        return 1 if (with_H and k - m < m) else 2

    def solve(F):
        x = np.zeros(k)
        if F.any():
            x[F] = np.linalg.solve(G[np.ix_(F, F)], c[F])
        return x

    counts = {"grow": 0, "shrink": 0}
    if p0 is not None:
        F = p0.copy()
        x = solve(F)
    elif with_H:
        F = np.ones(k, dtype=bool)
        x = solve(F)
    else:
        F = np.zeros(k, dtype=bool)
        x = np.zeros(k)
    ninf, pcount, it, n_backup = k + 1, p_bar, 0, 0
    prev_form = 0 if p0 is not None else form_of(F)
    while True:
        y = G @ x - c
        thr = -tol * max(cscale + g * max(0.0, float(x.max())), tiny)
        V = np.where(F, g * x, y) < thr
        nv = int(V.sum())
        if nv == 0:
            return np.maximum(x, 0.0), F, it, n_backup, counts
        if it >= max_iter:
            return None
        it += 1
        if nv < ninf:
            ninf, pcount = nv, p_bar
        elif pcount >= 1:
            pcount -= 1
        else:
            n_backup += 1
            j = np.flatnonzero(V)[-1]
            V = np.zeros(k, dtype=bool)
            V[j] = True
        F_new = F ^ V
        form = form_of(F_new)
        if form == prev_form:
            lost = (V & ~F).any() if form == 1 else (V & F).any()  # N (resp. F) lost an index
            counts["shrink" if lost else "grow"] += 1
        prev_form = form
        F = F_new
        x = solve(F)


def check_against_reference(G, C, with_H, P0=None, max_iter=200):
    """bpp_rows equals the reference row by row; returns the summed branch counts."""
    H = np.linalg.inv(G) if with_H else None
    if H is not None:
        H = 0.5 * (H + H.T)
    X, P, n_iter, n_backup, unfinished = fused.bpp_rows(G, H, C, P0, max_iter, TOL, P_BAR)
    assert unfinished.size == 0
    total = {"grow": 0, "shrink": 0, "iter": 0, "backup": 0}
    for i in range(C.shape[0]):
        ref = reference_bpp_row(G, C[i], with_H, None if P0 is None else P0[i], max_iter)
        assert ref is not None
        x, F, it, nb, counts = ref
        np.testing.assert_array_equal(P[i], F, err_msg=f"row {i}: passive sets differ")
        np.testing.assert_allclose(X[i], x, rtol=0, atol=1e-9 * max(1.0, np.abs(x).max()),
                                   err_msg=f"row {i}")
        total["grow"] += counts["grow"]
        total["shrink"] += counts["shrink"]
        total["iter"] = max(total["iter"], it)
        total["backup"] += nb
    assert n_iter == total["iter"]
    assert n_backup == total["backup"]
    assert np.all(X >= 0)
    return total


def _problem(rng, n, m, k, density, noise):
    A = rng.random((m, k))
    S = rng.random((n, k)) * (rng.random((n, k)) < density)
    X = S @ A.T + noise * rng.standard_normal((n, m))
    return A, X


@pytest.mark.parametrize("seed", [0, 1])
def test_complement_form_zero_set_grows_and_shrinks(seed):
    # half-zero solutions (the benchmark's hard case), H = G⁻¹ given: the zero set is solved
    # through H_NN and mostly grows from the first round to the next
    rng = np.random.default_rng(seed)
    A, X = _problem(rng, 400, 60, 20, density=0.5, noise=0.05)
    G = A.T @ A
    total = check_against_reference(G, X @ A, with_H=True)
    assert total["grow"] > 100 and total["shrink"] > 0 and total["iter"] >= 3


def test_direct_form_passive_set_grows():
    # no H (as for an ill-conditioned G): all-active start, G_FF extended as F grows
    rng = np.random.default_rng(2)
    A, X = _problem(rng, 300, 40, 12, density=0.3, noise=0.05)
    G = A.T @ A
    total = check_against_reference(G, X @ A, with_H=False)
    assert total["grow"] > 100 and total["iter"] >= 3


def test_many_pivots_far_from_the_cone_and_form_switches():
    # data far from the cone, correlated columns: many zeros, many rounds, the backup rule and
    # switches between the complement and the direct form (refactor)
    found_backup = False
    for seed in range(6):
        rng = np.random.default_rng(50 + seed)
        A = rng.random((12, 10)) + 0.5 * rng.random((12, 1))
        X = rng.standard_normal((150, 12))
        G = A.T @ A
        for with_H in (True, False):
            total = check_against_reference(G, X @ A, with_H=with_H)
            assert total["iter"] >= 3
            found_backup |= total["backup"] > 0
    assert found_backup


def test_warm_start_sets_that_grow_and_shrink():
    rng = np.random.default_rng(4)
    A, X = _problem(rng, 300, 50, 15, density=0.5, noise=0.05)
    G = A.T @ A
    C = X @ A
    P0 = rng.random(C.shape) < 0.5
    P0[0] = True
    P0[1] = False
    for with_H in (True, False):
        total = check_against_reference(G, C, with_H=with_H, P0=P0)
        assert total["grow"] > 0 and total["shrink"] > 0


def test_ties_and_exact_zeros():
    # rows equal to a column of A (solution e_j: exact zeros of u and of the gradient), copies of
    # one row, zero rows, and rows on a face of the cone
    rng = np.random.default_rng(6)
    A = rng.random((30, 8))
    rows = [A[:, j] for j in range(8)]
    rows += [A[:, 1] + A[:, 5]] * 5
    rows += [np.zeros(30)] * 3
    rows += [-A[:, 2]]
    X = np.array(rows)
    S = nnls(A, X)
    for j in range(8):
        np.testing.assert_allclose(S[j], np.eye(8)[j], atol=1e-12)
    np.testing.assert_allclose(S[8:13], np.tile(np.eye(8)[1] + np.eye(8)[5], (5, 1)), atol=1e-12)
    assert np.all(S[13:] == 0)
    R = np.array([scipy_nnls(A, x)[0] for x in X])
    np.testing.assert_allclose(S, R, atol=1e-10)


def test_compiled_equals_numpy_path_on_hard_problems(monkeypatch):
    rng = np.random.default_rng(8)
    A = rng.random((25, 14)) + rng.random((25, 1))
    X = rng.standard_normal((400, 25)) + 0.5 * rng.random((400, 25))
    S, info = nnls(A, X, return_info=True)
    assert info["n_iter"] >= 3 and info["n_fallback"] == 0
    with monkeypatch.context() as m:
        m.setattr(fused, "AVAILABLE", False)
        S_np = nnls(A, X)
    np.testing.assert_allclose(S, S_np, rtol=0, atol=1e-10 * np.abs(S).max())
    R = np.array([scipy_nnls(A, x, maxiter=100 * 14)[0] for x in X])
    np.testing.assert_allclose(S, R, rtol=0, atol=1e-9 * max(1.0, np.abs(R).max()))


@pytest.mark.parametrize("m,r0", [(1, 0), (5, 0), (5, 3), (9, 8), (9, 1)])
def test_ldl_extension_equals_a_direct_solve(m, r0):
    # the factor of Q[idx[:r0], idx[:r0]] extended to idx[:m] solves the m x m system
    rng = np.random.default_rng(m + 10 * r0)
    k = 12
    B = rng.standard_normal((20, k))
    Q = B.T @ B
    idx = rng.permutation(k)[:m].astype(np.int64)
    rhs = rng.standard_normal(k)
    M = np.full((k, k), np.nan)
    fw = np.full(k, np.nan)
    out = np.full(k, np.nan)
    assert fused._ldl_extend(Q, idx, 0, r0, rhs, M, fw)
    assert fused._ldl_extend(Q, idx, r0, m, rhs, M, fw)
    fused._ldl_back(M, m, fw, out)
    expected = np.linalg.solve(Q[np.ix_(idx, idx)], rhs[:m])
    np.testing.assert_allclose(out[:m], expected, rtol=1e-10, atol=1e-12)
    # not SPD: reported, not a wrong answer
    Q2 = Q.copy()
    Q2[idx[m - 1], idx[m - 1]] = -1.0
    assert not fused._ldl_extend(Q2, idx, 0, m, rhs, np.zeros((k, k)), np.zeros(k))


@pytest.mark.parametrize("k", [64, 70])
def test_wide_k_index_lists(k):
    # k <= 64 reads the moved indices off bit masks, k > 64 compacts them from the arrays
    rng = np.random.default_rng(k)
    A, X = _problem(rng, 300, k + 30, k, density=0.5, noise=0.05)
    G = A.T @ A
    for with_H in (True, False):
        total = check_against_reference(G, X @ A, with_H=with_H)
        assert total["grow"] > 0 and total["shrink"] > 0 and total["iter"] >= 3
