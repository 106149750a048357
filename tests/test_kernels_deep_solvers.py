"""HALS for DeepNMF's backpropagation (kernels/deep.py, ``solver="hals"``).

The reference is a plain transcription in the paper's orientation (S: k × N) with the explicit
0/1 Jacobian matrices J_c of the pooling: for each topic t in order, the gradient of

    E = ½‖X − A S‖² + ½ Σ_c ‖J_c S_c − (A₊S₊)_c‖²   (intermediate layer, J frozen)
    E = ½‖X − A S‖² + λ/2 ‖L⊙(Y − B S)‖²            (last layer)

is formed in full, and row t of S moves to the exact nonnegative minimiser along it (curvature
(AᵀA)_tt + diag(J_tᵀJ_t), resp. (AᵀA)_tt + λ (BᵀB)_tt on labeled samples). A and B: the same on
their columns. Never calls the module under test.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from dnmf_dask.errors import DNMFValueError
from dnmf_dask.kernels.deep import (
    add_stats,
    apply_backprop_update,
    backprop_chunk_step,
    energy_parts,
)
from dnmf_dask.kernels.pooling import max_pool

from .test_kernels_deep import make_problem, paper_backprop_sweep, paper_pool, runs, surrogate


def _step(M, grad, hess):
    out = M.copy()
    hess = np.broadcast_to(hess, M.shape)
    nz = hess > 0
    out[nz] = np.maximum(M[nz] - grad[nz] / hess[nz], 0.0)
    return out


def paper_hals_mid(A, X, S, W, A1, S1, Xn, J):
    S = S.copy()
    R = A1 @ S1
    for t in range(S.shape[0]):
        grad = A.T @ (A @ S - X) + np.stack([J[c].T @ (J[c] @ S[c] - R[c]) for c in range(S.shape[0])])
        S[t] = _step(S[t], grad[t], (A.T @ A)[t, t] + np.diag(J[t].T @ J[t]))
    return S


def paper_hals_last(A, X, S, W, B, Y, Lm, lam):
    S = S.copy()
    for t in range(S.shape[0]):
        grad = A.T @ (A @ S - X) + lam * B.T @ (Lm * (B @ S - Y))
        S[t] = _step(S[t], grad[t], (A.T @ A)[t, t] + lam * (B.T @ B)[t, t] * Lm[0])
    return S


def paper_hals_A(A, X, S, W):
    A = A.copy()
    for t in range(A.shape[1]):
        A[:, t] = _step(A[:, t], ((A @ S - X) @ S.T)[:, t], (S @ S.T)[t, t])
    return A


def paper_hals_B(B, S, Y, Lm):
    B = B.copy()
    lab = Lm[0] > 0
    for t in range(B.shape[1]):
        B[:, t] = _step(B[:, t], ((B @ S[:, lab] - Y[:, lab]) @ S[:, lab].T)[:, t], (S[:, lab] @ S[:, lab].T)[t, t])
    return B


HALS = dict(s_mid=paper_hals_mid, s_last=paper_hals_last, a_update=paper_hals_A, b_update=paper_hals_B)


@pytest.mark.parametrize("p,stride", [(0, 1), (3, 1), (4, 1), (3, 3)])
def test_hals_sweep_over_two_chunks_matches_paper(p, stride):
    pr = make_problem(5, p=p, stride=stride, sparse_frac=0.3)
    X, y, groups, A, S, B = (pr[k] for k in ("X", "y", "groups", "A", "S", "B"))
    lam = 1.3
    bounds = runs(groups)
    cut = bounds[len(bounds) // 2][0]
    out_groups = [groups]
    for _ in S[1:]:
        out_groups.append(paper_pool(np.zeros((1, out_groups[-1].size)), out_groups[-1], p, stride)[2])
    total, S_out = None, [np.zeros_like(s) for s in S]
    for part in (slice(0, cut), slice(cut, None)):
        rows = [np.flatnonzero(np.isin(og, np.unique(groups[part]))) for og in out_groups]
        S_new, st = backprop_chunk_step(sp.csr_matrix(X[part]), [S[l][rows[l]] for l in range(len(S))], A,
                                        groups=groups[part], pool_size=p, stride=stride, B=B, y=y[part], lam=lam,
                                        solver="hals")
        for l in range(len(S)):
            S_out[l][rows[l]] = S_new[l]
        total = st if total is None else add_stats(total, st)
    A_new, B_new = apply_backprop_update(A, B, total, solver="hals")
    S_ref, A_ref, B_ref = paper_backprop_sweep(X.T, [s.T for s in S], A, np.ones(X.T.shape), groups, p, stride,
                                               B, y, lam, **HALS)
    for l in range(len(S)):
        np.testing.assert_allclose(S_out[l], S_ref[l].T, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(A_new[l], A_ref[l], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(B_new, B_ref, rtol=1e-9, atol=1e-12)
    # not the MU sweep
    S_mu, _ = backprop_chunk_step(X, S, A, groups=groups, pool_size=p, stride=stride, B=B, y=y, lam=lam)
    assert not np.allclose(S_mu[0], S_out[0])


def run(pr, p, iters, solver):
    X, y, groups, A, S, B = (pr[k] for k in ("X", "y", "groups", "A", "S", "B"))
    kw = dict(groups=groups, pool_size=p, B=B, y=y, lam=1.0)
    E, mids = [energy_parts(X, S, A, **kw).sum()], []
    for _ in range(iters):
        S, st = backprop_chunk_step(X, S, A, **kw, solver=solver)
        mids.append(st["energy"].sum())
        A, B = apply_backprop_update(A, B, st, solver=solver)
        kw["B"] = B
        E.append(energy_parts(X, S, A, **kw).sum())
    return np.array(E), np.array(mids), S, A, B


def test_hals_without_pooling_never_increases_the_energy():
    """J = I: every step is an exact block-coordinate minimisation of E."""
    for seed in (9, 10):
        pr = make_problem(seed, n_groups=10, p=0)
        E, mids, S, A, B = run(pr, 0, 30, "hals")
        assert np.all(mids <= E[:-1] * (1 + 1e-12)) and np.all(E[1:] <= mids * (1 + 1e-12))
        assert all((m >= 0).all() for m in S + A + [B])
        assert E[-1] < 0.5 * E[0]


def test_hals_with_pooling_decreases_the_frozen_jacobian_energy():
    pr = make_problem(21, n_groups=8, p=3, ks=(6, 4, 3))
    X, groups, A, S, y, B = pr["X"], pr["groups"], pr["A"], pr["S"], pr["y"], pr["B"]
    _, index, _ = max_pool(S[0], groups, 3)
    S_new, _ = backprop_chunk_step(X, S, A, groups=groups, pool_size=3, B=B, y=y, lam=1.0, solver="hals")
    assert surrogate(X, S, A, 0, index, S_new[0], None) < surrogate(X, S, A, 0, index, S[0], None)
    E, *_ = run(pr, 3, 60, "hals")
    assert E[-1] < 0.5 * E[0]


def test_solver_errors_name_the_allowed_values():
    pr = make_problem(13, p=3)
    X, A, S, groups, B, y, W = pr["X"], pr["A"], pr["S"], pr["groups"], pr["B"], pr["y"], pr["W"]
    kw = dict(groups=groups, pool_size=3, B=B, y=y, lam=1.0)
    with pytest.raises(DNMFValueError, match=r"solver: expected one of \['mu', 'hals'\] for the backpropagation "
                                             r"\(exact NNLS.*found 'anls'"):
        backprop_chunk_step(X, S, A, **kw, solver="anls")
    with pytest.raises(DNMFValueError, match=r"solver: expected one of \['mu', 'hals'\].*found 'sgd'"):
        backprop_chunk_step(X, S, A, **kw, solver="sgd")
    with pytest.raises(DNMFValueError, match="solver: expected 'mu' for label_loss='kullback-leibler'"):
        backprop_chunk_step(X, S, A, **kw, label_loss="kl", solver="hals")
    with pytest.raises(DNMFValueError, match="solver: expected 'mu' for data with missing entries"):
        backprop_chunk_step(X, S, A, **kw, observed=W, solver="hals")
    _, st = backprop_chunk_step(X, S, A, **kw)
    with pytest.raises(DNMFValueError, match="solver: expected one of"):
        apply_backprop_update(A, B, st, solver="anls")
