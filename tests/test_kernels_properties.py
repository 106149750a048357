"""Property-based tests (hypothesis) of the per-block kernels: MU steps keep factors nonnegative and
never increase their objective, NNLS solutions satisfy the KKT conditions, max pooling selects
window maxima inside groups. Examples are few and small (CI stays fast) and deadline-free."""

import numpy as np
import scipy.sparse as sp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dnmf_dask.kernels.nmf import block_step, transform_block, update_factor
from dnmf_dask.kernels.nnls import nnls_gram
from dnmf_dask.kernels.solvers import transform_block_general
from dnmf_dask.kernels.pooling import max_pool, max_pool_backward, pool_windows

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# entries in [0, 10] with many exact zeros (zero rows/columns are the delicate cases for MU)
_entry = st.one_of(st.just(0.0), st.floats(0.0, 10.0, allow_subnormal=False))


@st.composite
def mu_problem(draw, dtype=np.float64):
    n, f, k = draw(st.integers(1, 8)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    X = draw(hnp.arrays(dtype, (n, f), elements=_entry))
    S = draw(hnp.arrays(dtype, (n, k), elements=_entry))
    A = draw(hnp.arrays(dtype, (f, k), elements=_entry))
    W = draw(st.one_of(st.none(), hnp.arrays(bool, (n, f))))
    return X, S, A, W


def _loss(X, S, A, W=None):
    R = X - S @ A.T
    if W is not None:
        R = R * W
    return float(np.sum(R.astype(np.float64) ** 2))


def _tol(*mats):
    """Round-off allowance of a squared-error comparison (relative to the data's size)."""
    return 1e-9 * (1.0 + sum(float(np.sum(np.abs(M.astype(np.float64)) ** 2)) for M in mats))


_UNDERFLOW = (  # a column of A whose squared norm underflows to 0 while X A is positive (found by hypothesis)
    np.ones((1, 2)), np.ones((1, 2)), np.array([[4.12431946e-079, 2.41192773e-231], [1.0, 0.0]]), None,
)


@SETTINGS
@given(mu_problem(), st.sampled_from([np.float32, np.float64]), st.booleans())
@example(_UNDERFLOW, np.float64, False)
@example((np.ones((1, 1)), np.array([[1.40129846e-45]]), np.ones((1, 1)), None), np.float32, False)  # subnormal S row
def test_mu_steps_keep_factors_nonnegative_and_finite(problem, dtype, sparse):
    X, S, A, W = (None if M is None else M.astype(dtype) if M.dtype != bool else M for M in problem)
    Xin = sp.csr_matrix(X) if sparse and W is None else X
    S1, stats = block_step(Xin, S, A, W=W)
    assert S1.dtype == dtype and np.all(np.isfinite(S1)) and S1.min(initial=0) >= 0
    A1 = update_factor(A, stats["XtS"], den_gram=stats.get("StS"), den_full=stats.get("WSAtS"))
    assert np.all(np.isfinite(A1)) and A1.min(initial=0) >= 0
    St, _ = transform_block(Xin, A, S, max_iter=5, tol=0, W=W)
    assert np.all(np.isfinite(St)) and St.min(initial=0) >= 0
    Sg, _ = transform_block_general(Xin, A, S, max_iter=5, tol=0, W=W)  # the MU path of kernels/solvers.py
    assert np.all(np.isfinite(Sg)) and Sg.min(initial=0) >= 0


@SETTINGS
@given(mu_problem())
def test_mu_objective_non_increasing(problem):
    """Lee–Seung: the S step (A fixed) and the A step (S fixed) never increase ||W ⊙ (X − S Aᵀ)||²."""
    X, S, A, W = problem
    f0 = _loss(X, S, A, W)
    S1, stats = block_step(X, S, A, W=W)
    f1 = _loss(X, S1, A, W)
    assert f1 <= f0 + _tol(X, S @ A.T)
    assert abs(stats["loss_X"] - f0) <= _tol(X, S @ A.T)  # the reported loss is the incoming one
    A1 = update_factor(A, stats["XtS"], den_gram=stats.get("StS"), den_full=stats.get("WSAtS"))
    f2 = _loss(X, S1, A1, W)
    assert f2 <= f1 + _tol(X, S1 @ A.T)


@SETTINGS
@given(mu_problem(), st.integers(1, 3), st.floats(0.1, 10.0), st.integers(0, 2**31 - 1))
def test_ssnmf_s_step_non_increasing(problem, n_classes, lam, seed):
    """With the label term: ||W⊙(X − SAᵀ)||² + λ||L⊙(Y − SBᵀ)||² does not increase in the S step."""
    X, S, A, W = problem
    rng = np.random.default_rng(seed)
    y = rng.integers(-1, n_classes, X.shape[0])
    B = rng.random((n_classes, A.shape[1])) * rng.integers(0, 2, (n_classes, A.shape[1]))
    _, st0 = block_step(X, S, A, B=B, y=y, lam=lam, W=W)
    S1, _ = block_step(X, S, A, B=B, y=y, lam=lam, W=W)
    _, st1 = block_step(X, S1, A, B=B, y=y, lam=lam, W=W, update_S=False)
    f0 = st0["loss_X"] + lam * st0["loss_Y"]
    f1 = st1["loss_X"] + lam * st1["loss_Y"]
    assert f1 <= f0 + _tol(X, S @ A.T, S @ B.T) * (1 + lam)


@SETTINGS
@given(st.integers(1, 10), st.integers(1, 7), st.integers(1, 5), st.integers(0, 2**31 - 1), st.booleans())
def test_nnls_kkt(n, f, k, seed, rank_deficient):
    """nnls_gram returns S with S ≥ 0, gradient S G − C ≥ 0 and S ⊙ gradient = 0 (KKT of min ½sᵀGs − cᵀs)."""
    rng = np.random.default_rng(seed)
    A = rng.random((f, k)) * (rng.random((f, k)) < 0.7)
    if rank_deficient and k > 1:
        A[:, -1] = A[:, 0]  # duplicated column: G singular
    X = rng.random((n, f)) * (rng.random((n, f)) < 0.7)
    G, C = A.T @ A, X @ A
    S = nnls_gram(G, C)
    grad = S @ G - C
    scale = np.abs(C).max(initial=0) + np.diag(G).max(initial=0) * S.max(initial=0) + 1e-12
    assert S.shape == (n, k) and S.min(initial=0) >= 0
    assert grad.min(initial=0) >= -1e-8 * scale
    assert np.abs(S * grad).max(initial=0) <= 1e-8 * scale * max(1.0, S.max(initial=0))


@st.composite
def pooling_problem(draw):
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    groups = np.repeat(np.arange(len(lengths)) * 7 + 3, lengths)  # arbitrary ids, contiguous runs
    k = draw(st.integers(1, 3))
    S = draw(hnp.arrays(np.float64, (len(groups), k), elements=_entry))
    pool_size = draw(st.integers(0, 5))
    stride = draw(st.integers(1, pool_size)) if pool_size > 1 else 1
    keep_size = draw(st.booleans())
    return S, groups, pool_size, stride, keep_size


@SETTINGS
@given(pooling_problem())
def test_pooling_invariants(problem):
    S, groups, pool_size, stride, keep_size = problem
    n, k = S.shape
    P, index, out_groups = max_pool(S, groups, pool_size, stride, keep_size)
    lo, hi, og = pool_windows(groups, pool_size, stride, keep_size) if pool_size > 1 else (
        np.arange(n), np.arange(n), groups)
    assert P.shape == (len(out_groups), k) and np.array_equal(out_groups, og)
    cols = np.arange(k)[None, :]
    assert np.array_equal(P, S[index, cols])  # every output is an input value (the Jacobian selects it)
    for j in range(P.shape[0]):
        win = S[lo[j]:hi[j] + 1]
        assert np.all(groups[lo[j]:hi[j] + 1] == out_groups[j])  # never across a group
        assert np.all((index[j] >= lo[j]) & (index[j] <= hi[j]))
        np.testing.assert_array_equal(P[j], win.max(axis=0))
    if stride == 1:  # sliding windows: same samples, each inside its own window
        assert P.shape == S.shape and np.array_equal(out_groups, groups) and np.all(P >= S)
    # shift-equivariant (max(S + c) = max(S) + c), and the backward pass is the adjoint of the selection
    P2, _, _ = max_pool(S + 1.0, groups, pool_size, stride, keep_size)
    np.testing.assert_allclose(P2, P + 1.0)
    Gr = np.random.default_rng(0).standard_normal(P.shape)
    np.testing.assert_allclose(np.sum(P * Gr), np.sum(S * max_pool_backward(Gr, index, n)), rtol=1e-12, atol=1e-12)
