"""Tests of dnmf_dask.kernels.deep against a plain transcription of Flenner & Hunter.

The references below are written in the paper's orientation (columns = samples, X ≈ A S) with
dense matrices and explicit 0/1 Jacobian matrices of the pooling built by loops; they never
call the module under test. Our functions work on rows = samples; we transpose at the boundary.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.kernels.deep import (
    DEFAULT_EPS,
    a_stats,
    add_stats,
    apply_a_update,
    apply_b_update,
    apply_backprop_update,
    b_stats,
    backprop_chunk_step,
    energy_parts,
    label_energy,
    layer_chunk_step,
    reconstruction_energy,
    s_update,
)
from dnmf_dask.kernels.pooling import max_pool

from .reference import runs

EPS = DEFAULT_EPS


# ============================================================================ paper transcription

def paper_windows(groups, p, stride):
    """(lo, hi_exclusive, group) of every pooled sample, by loops (DESIGN: centred for stride 1)."""
    wins = []
    for a, b in runs(groups):
        if p <= 1:
            wins += [(i, i + 1, groups[a]) for i in range(a, b)]
        elif stride == 1:
            wins += [(max(a, j - p // 2), min(b, j - p // 2 + p), groups[a]) for j in range(a, b)]
        else:
            wins += [(lo, min(b, lo + p), groups[a]) for lo in range(a, b, stride)]
    return wins


def paper_pool(Sp, groups, p, stride=1):
    """p(S) on the rows of the paper's S (k × N) and the Jacobians J[c] (N_out × N_in) per row."""
    wins = paper_windows(groups, p, stride)
    k, N = Sp.shape
    Xn = np.zeros((k, len(wins)))
    J = np.zeros((k, len(wins), N))
    for j, (lo, hi, _) in enumerate(wins):
        for c in range(k):
            best = lo
            for i in range(lo, hi):
                if Sp[c, i] > Sp[c, best]:
                    best = i
            Xn[c, j] = Sp[c, best]
            J[c, j, best] = 1.0
    return Xn, J, np.array([w[2] for w in wins])


def paper_label_matrices(y, C):
    """Y (C × N) one-hot and L (C × N) with columns 1_C for labeled samples."""
    N = len(y)
    Y = np.zeros((C, N))
    Lm = np.zeros((C, N))
    for n in range(N):
        if y[n] >= 0:
            Y[y[n], n] = 1.0
            Lm[:, n] = 1.0
    return Y, Lm


def paper_A(A, X, S, W):
    """A ← A ⊙ [W⊙X] Sᵀ / [W⊙AS] Sᵀ."""
    return A * ((W * X) @ S.T) / np.maximum((W * (A @ S)) @ S.T, EPS)


def paper_S_mid(A, X, S, W, A1, S1, Xn, J):
    """S ← S ⊙ (Aᵀ[W⊙X] + [A1 S1] J_pᵀ) / (Aᵀ[W⊙AS] + [X1] J_pᵀ), row by row of the Jacobian."""
    R = A1 @ S1
    up_num = np.stack([J[c].T @ R[c] for c in range(S.shape[0])])
    up_den = np.stack([J[c].T @ Xn[c] for c in range(S.shape[0])])
    return S * (A.T @ (W * X) + up_num) / np.maximum(A.T @ (W * (A @ S)) + up_den, EPS)


def paper_S_last(A, X, S, W, B, Y, Lm, lam):
    """S ← S ⊙ (Aᵀ[W⊙X] + λBᵀ[L⊙Y]) / (Aᵀ[W⊙AS] + λBᵀ[L⊙BS])."""
    num = A.T @ (W * X) + lam * B.T @ (Lm * Y)
    den = A.T @ (W * (A @ S)) + lam * B.T @ (Lm * (B @ S))
    return S * num / np.maximum(den, EPS)


def paper_B(B, S, Y, Lm):
    """B ← B ⊙ [L⊙Y] Sᵀ / [L⊙BS] Sᵀ."""
    return B * ((Lm * Y) @ S.T) / np.maximum((Lm * (B @ S)) @ S.T, EPS)


def paper_energy(X, S_list, A_list, W, groups, p, stride, B, y, lam):
    """½‖W⊙(X0 − A0 S0)‖² + ½Σ‖p(S_{l−1}) − A_l S_l‖² + λ/2‖L⊙(Y − B S_L)‖² (paper orientation)."""
    E = 0.5 * np.sum((W * (X - A_list[0] @ S_list[0])) ** 2)
    g, yl = groups, y
    for l in range(1, len(S_list)):
        Xn, _, g_next = paper_pool(S_list[l - 1], g, p, stride)
        if yl is not None and stride > 1 and p > 1:
            yl = paper_pool_labels(yl, g, p, stride)
        g = g_next
        E += 0.5 * np.sum((Xn - A_list[l] @ S_list[l]) ** 2)
    if B is not None:
        Y, Lm = paper_label_matrices(yl, B.shape[0])
        E += 0.5 * lam * np.sum((Lm * (Y - B @ S_list[-1])) ** 2)
    return E


def paper_pool_labels(y, groups, p, stride):
    out = []
    for lo, hi, _ in paper_windows(groups, p, stride):
        labs = {int(v) for v in y[lo:hi] if v >= 0}
        out.append(labs.pop() if len(labs) == 1 else -1)
    return np.array(out)


def paper_backprop_sweep(X, S_list, A_list, W, groups, p, stride, B, y, lam, s_last=None, b_update=None,
                         s_mid=None, a_update=None):
    """Algorithm 3 / eq. (4), in our order: S[0..L] bottom-up (Jacobian at the current S[l],
    X_{l+1} ← p(S[l]) after the update), then every A[l] and B at the new S's.
    ``s_last``/``b_update``/``s_mid``/``a_update``: other rules (default: eq. (4)'s MU)."""
    s_last, b_update = s_last or paper_S_last, b_update or paper_B
    s_mid, a_update = s_mid or paper_S_mid, a_update or paper_A
    L = len(A_list) - 1
    S_new = [s.copy() for s in S_list]
    Xl, g, yl = X, groups, y
    Ws = [W] + [None] * L
    inputs = []
    for l in range(L + 1):
        Wl = Ws[l] if Ws[l] is not None else np.ones_like(Xl)
        inputs.append((Xl, Wl))
        if l < L:
            Xn_old, J, _ = paper_pool(S_new[l], g, p, stride)
            S_new[l] = s_mid(A_list[l], Xl, S_new[l], Wl, A_list[l + 1], S_list[l + 1], Xn_old, J)
            Xn, _, g_next = paper_pool(S_new[l], g, p, stride)
            if stride > 1 and p > 1:
                yl = paper_pool_labels(yl, g, p, stride)
            Xl, g = Xn, g_next
        else:
            Y, Lm = paper_label_matrices(yl, B.shape[0])
            S_new[l] = s_last(A_list[l], Xl, S_new[l], Wl, B, Y, Lm, lam)
    A_new = [a_update(A_list[l], inputs[l][0], S_new[l], inputs[l][1]) for l in range(L + 1)]
    Y, Lm = paper_label_matrices(yl, B.shape[0])
    return S_new, A_new, b_update(B, S_new[L], Y, Lm)


# ============================================================================ fixtures

def make_problem(seed, n_groups=7, d=11, ks=(5, 4, 3), C=3, p=3, stride=1, dtype=np.float64,
                 sparse_frac=0.0, mask_frac=0.25):
    """Random nonnegative problem in OUR orientation (rows = samples)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 9, size=n_groups)
    lens[0] = 1  # a group of length 1
    groups = np.repeat(rng.permutation(100)[:n_groups], lens)
    n = groups.size
    X = rng.random((n, d))
    if sparse_frac:
        X[rng.random((n, d)) < sparse_frac] = 0
    W = rng.random((n, d)) > mask_frac
    y = rng.integers(0, C, size=n)
    y[rng.random(n) < 0.4] = -1
    # layer sizes of the samples
    sizes, g = [n], groups
    for _ in ks[1:]:
        g = np.array([w[2] for w in paper_windows(g, p, stride)])
        sizes.append(g.size)
    A = [rng.random((d, ks[0]))] + [rng.random((ks[l - 1], ks[l])) for l in range(1, len(ks))]
    S = [rng.random((sizes[l], ks[l])) for l in range(len(ks))]
    B = rng.random((C, ks[-1]))
    cast = lambda M: M.astype(dtype)
    return dict(X=cast(X), W=W, y=y, groups=groups, A=[cast(a) for a in A], S=[cast(s) for s in S],
                B=cast(B), rng=rng)


MASKS = ["none", "dense", "sparse"]


def as_mask(W, kind):
    return None if kind == "none" else (W if kind == "dense" else sp.csr_matrix(W))


def paper_mask(W, kind, shape):
    return np.ones(shape) if kind == "none" else W.T.astype(float)


# ============================================================================ one step == paper

@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("sparse_X", [False, True])
def test_a_update_from_summed_chunk_stats_matches_paper(mask, sparse_X):
    pr = make_problem(1, sparse_frac=0.5)
    X, W, A, S = pr["X"], pr["W"], pr["A"][0], pr["S"][0]
    Xin = sp.csr_matrix(X) if sparse_X else X
    cut = X.shape[0] // 2
    Wm = as_mask(W, mask)
    st = add_stats(a_stats(Xin[:cut], S[:cut], A, observed=None if Wm is None else Wm[:cut]),
                   a_stats(Xin[cut:], S[cut:], A, observed=None if Wm is None else Wm[cut:]))
    got = apply_a_update(A, st)
    want = paper_A(A, X.T, S.T, paper_mask(W, mask, X.T.shape))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert (got >= 0).all()


@pytest.mark.parametrize("p,stride", [(0, 1), (3, 1), (4, 1), (3, 3), (5, 2)])
@pytest.mark.parametrize("mask", ["none", "dense", "sparse"])
def test_s_update_intermediate_layer_matches_paper(p, stride, mask):
    pr = make_problem(2, p=p, stride=stride)
    X, W, A, S, groups = pr["X"], pr["W"], pr["A"], pr["S"], pr["groups"]
    _, index, _ = max_pool(S[0], groups, p, stride=stride)
    got = s_update(X, S[0], A[0], observed=as_mask(W, mask), pool_index=index, S_up=S[1], A_up=A[1])
    Xn, J, _ = paper_pool(S[0].T, groups, p, stride)
    want = paper_S_mid(A[0], X.T, S[0].T, paper_mask(W, mask, X.T.shape), A[1], S[1].T, Xn, J)
    np.testing.assert_allclose(got, want.T, rtol=1e-10)
    # a middle layer (input = pooled S, unmasked) as well
    Xmid = max_pool(S[0], groups, p, stride=stride)[0]
    g1 = max_pool(S[0], groups, p, stride=stride)[2]
    _, index1, _ = max_pool(S[1], g1, p, stride=stride)
    got = s_update(Xmid, S[1], A[1], pool_index=index1, S_up=S[2], A_up=A[2])
    Xn1, J1, _ = paper_pool(S[1].T, g1, p, stride)
    want = paper_S_mid(A[1], Xn, S[1].T, np.ones_like(Xn), A[2], S[2].T, Xn1, J1)
    np.testing.assert_allclose(got, want.T, rtol=1e-10)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("lam", [0.0, 0.7, 5.0])
def test_s_update_last_layer_ssnmf_matches_paper(mask, lam):
    pr = make_problem(3)
    X, W, y, B = pr["X"], pr["W"], pr["y"], pr["B"]
    A, S = pr["A"][0], pr["S"][0][:, :B.shape[1]].copy()
    A = A[:, :B.shape[1]].copy()
    got = s_update(X, S, A, observed=as_mask(W, mask), B=B, y=y, lam=lam)
    Y, Lm = paper_label_matrices(y, B.shape[0])
    want = paper_S_last(A, X.T, S.T, paper_mask(W, mask, X.T.shape), B, Y, Lm, lam)
    np.testing.assert_allclose(got, want.T, rtol=1e-10)
    if lam > 0:  # the label term really enters
        plain = s_update(X, S, A, observed=as_mask(W, mask))
        assert not np.allclose(plain, got)


def test_b_update_from_summed_chunk_stats_matches_paper():
    pr = make_problem(4)
    y, B, S = pr["y"], pr["B"], pr["S"][0][:, :3].copy()
    cut = 9
    st = add_stats(b_stats(S[:cut], y[:cut], 3), b_stats(S[cut:], y[cut:], 3))
    got = apply_b_update(B, st)
    Y, Lm = paper_label_matrices(y, 3)
    np.testing.assert_allclose(got, paper_B(B, S.T, Y, Lm), rtol=1e-10)


@pytest.mark.parametrize("p,stride", [(0, 1), (3, 1), (6, 1), (3, 3)])
@pytest.mark.parametrize("mask", ["none", "dense"])
def test_backprop_sweep_over_chunks_matches_paper(p, stride, mask):
    """Two chunks cut at a group boundary, stats summed, driver update == paper on all data."""
    pr = make_problem(5, p=p, stride=stride, sparse_frac=0.3)
    X, W, y, groups, A, S, B = (pr[k] for k in ("X", "W", "y", "groups", "A", "S", "B"))
    lam = 0.8
    # cut between groups; row cuts of the deeper layers follow the groups
    bounds = runs(groups)
    cut_group = groups[bounds[len(bounds) // 2][0]]
    first = np.flatnonzero(groups == cut_group)[0]
    chunks = []
    for sel in (np.arange(first), np.arange(first, groups.size)):
        g = groups[sel]
        rows_per_layer, gl = [sel], groups
        for l in range(1, len(S)):
            og = np.array([w[2] for w in paper_windows(gl, p, stride)])
            rows_per_layer.append(np.flatnonzero(np.isin(og, g)))
            gl = og
        chunks.append((sel, rows_per_layer))
    total, S_out = None, [np.zeros_like(s) for s in S]
    for sel, rows in chunks:
        Xc = sp.csr_matrix(X[sel])
        Wc = None if mask == "none" else W[sel]
        S_c = [S[l][rows[l]] for l in range(len(S))]
        S_new, st = backprop_chunk_step(Xc, S_c, A, groups=groups[sel], pool_size=p, stride=stride,
                                        observed=Wc, B=B, y=y[sel], lam=lam)
        for l in range(len(S)):
            S_out[l][rows[l]] = S_new[l]
        total = st if total is None else add_stats(total, st)
    A_new, B_new = apply_backprop_update(A, B, total)

    Wp = paper_mask(W, mask, X.T.shape)
    S_ref, A_ref, B_ref = paper_backprop_sweep(X.T, [s.T for s in S], A, Wp, groups, p, stride, B, y, lam)
    for l in range(len(S)):
        np.testing.assert_allclose(S_out[l], S_ref[l].T, rtol=1e-10)
        np.testing.assert_allclose(A_new[l], A_ref[l], rtol=1e-10)
    np.testing.assert_allclose(B_new, B_ref, rtol=1e-10)
    # the energy emitted with the stats = energy at the new S and the old A, B
    E_ref = paper_energy(X.T, S_ref, A, Wp, groups, p, stride, B, y, lam)
    np.testing.assert_allclose(total["energy"].sum(), E_ref, rtol=1e-10)


@pytest.mark.parametrize("p,stride", [(0, 1), (3, 1), (4, 4)])
@pytest.mark.parametrize("sparse_X", [False, True])
@pytest.mark.parametrize("mask", MASKS)
def test_energy_parts_match_paper(p, stride, sparse_X, mask):
    pr = make_problem(6, p=p, stride=stride, sparse_frac=0.4)
    X, W, y, groups, A, S, B = (pr[k] for k in ("X", "W", "y", "groups", "A", "S", "B"))
    Xin = sp.csr_matrix(X) if sparse_X else X
    parts = energy_parts(Xin, S, A, groups=groups, pool_size=p, stride=stride,
                         observed=as_mask(W, mask), B=B, y=y, lam=1.3)
    assert parts.shape == (len(S) + 1,) and parts.dtype == np.float64
    E = paper_energy(X.T, [s.T for s in S], A, paper_mask(W, mask, X.T.shape), groups, p, stride, B, y, 1.3)
    np.testing.assert_allclose(parts.sum(), E, rtol=1e-10)
    np.testing.assert_allclose(parts[0], reconstruction_energy(Xin, S[0], A[0], as_mask(W, mask)))
    E_unsup = paper_energy(X.T, [s.T for s in S], A, paper_mask(W, mask, X.T.shape), groups, p, stride,
                           None, None, 0.0)
    np.testing.assert_allclose(parts[-1], E - E_unsup, rtol=1e-9)
    E0 = 0.5 * np.sum((paper_mask(W, mask, X.T.shape) * (X.T - A[0] @ S[0].T)) ** 2)
    np.testing.assert_allclose(parts[0], E0, rtol=1e-10)


# ============================================================================ energy behaviour

def fit_layer(X, S, A, iters, observed=None, B=None, y=None, lam=0.0):
    """Layer-wise MU (Algorithms 1/2) of one layer, one chunk; energy after every full step."""
    Es = []
    for _ in range(iters):
        S, st = layer_chunk_step(X, S, A, observed=observed, B=B, y=y, lam=lam)
        A = apply_a_update(A, st["A"])
        if st["B"] is not None:
            B = apply_b_update(B, st["B"])
        e = reconstruction_energy(X, S, A, observed)
        if B is not None:
            e += label_energy(S, B, y, lam)
        Es.append(e)
    return S, A, B, np.array(Es)


def test_layerwise_mu_energy_nonincreasing_with_pooling_and_masks():
    pr = make_problem(8, n_groups=10, p=3)
    X, W, y, groups, A, S, B = (pr[k] for k in ("X", "W", "y", "groups", "A", "S", "B"))
    Xl, g = sp.csr_matrix(X), groups
    for l in range(len(S)):
        last = l == len(S) - 1
        S_l, A_l, B_l, Es = fit_layer(Xl, S[l], A[l], 60, observed=W if l == 0 else None,
                                      B=B if last else None, y=y if last else None, lam=2.0)
        assert np.all(np.diff(Es) <= 1e-12 * Es[:-1]), f"layer {l}: energy increased"
        assert Es[-1] < 0.9 * Es[0]
        assert (S_l >= 0).all() and (A_l >= 0).all()
        Xl, _, g = max_pool(S_l, g, 3)  # X_{l+1} = p(S_l)


def run_backprop(pr, p, iters, lam=1.0):
    X, W, y, groups, A, S, B = (pr[k] for k in ("X", "W", "y", "groups", "A", "S", "B"))
    E = [energy_parts(X, S, A, groups=groups, pool_size=p, observed=W, B=B, y=y, lam=lam).sum()]
    mids = []
    for _ in range(iters):
        S, st = backprop_chunk_step(X, S, A, groups=groups, pool_size=p, observed=W, B=B, y=y, lam=lam)
        mids.append(st["energy"].sum())  # after the S sweep, before A/B
        A, B = apply_backprop_update(A, B, st)
        E.append(energy_parts(X, S, A, groups=groups, pool_size=p, observed=W, B=B, y=y, lam=lam).sum())
    return np.array(E), np.array(mids), S, A, B


def test_backprop_without_pooling_is_monotone():
    """pool_size 0 (J = I): every S, A, B step is a Lee–Seung MU of a quadratic → E never grows."""
    pr = make_problem(9, n_groups=10, p=0)
    E, mids, S, A, B = run_backprop(pr, 0, 80)
    assert np.all(mids <= E[:-1] * (1 + 1e-12))  # S sweep
    assert np.all(E[1:] <= mids * (1 + 1e-12))   # A, B
    assert E[-1] < 0.5 * E[0]
    assert all((s >= 0).all() for s in S) and all((a >= 0).all() for a in A) and (B >= 0).all()


def surrogate(X, S_list, A_list, l, index, S_l, W):
    """Energy terms of S[l] with the pooling Jacobian frozen at `index` (what the MU majorizes)."""
    e = reconstruction_energy(X, S_l, A_list[l], W)
    P = np.take_along_axis(S_l, index, axis=0)
    return e + reconstruction_energy(P, S_list[l + 1], A_list[l + 1])


def test_backprop_with_pooling_decreases_the_frozen_jacobian_energy_but_not_always_E():
    """With pooling the S step majorizes E with the Jacobian frozen at the current S; the true
    E can rise when the argmax moves. Measured here (documented in docs/deep_nmf_math.md)."""
    p = 3
    increases = 0
    for seed in range(4):
        pr = make_problem(20 + seed, n_groups=8, p=p, ks=(6, 4, 3))
        X, W, groups, A, S = pr["X"], pr["W"], pr["groups"], pr["A"], pr["S"]
        # frozen-Jacobian surrogate of S[0] decreases at a step (guaranteed)
        _, index, _ = max_pool(S[0], groups, p)
        S0 = s_update(X, S[0], A[0], observed=W, pool_index=index, S_up=S[1], A_up=A[1])
        assert surrogate(X, S, A, 0, index, S0, W) <= surrogate(X, S, A, 0, index, S[0], W)
        E, mids, *_ = run_backprop(pr, p, 150)
        assert np.all(E[1:] <= mids * (1 + 1e-12))  # A and B steps never increase E
        increases += int(np.sum(mids > E[:-1] * (1 + 1e-12)))
        assert E[-1] < 0.5 * E[0]  # it still descends overall on these problems
    assert increases > 0  # the S sweep with pooling is NOT monotone in E


# ============================================================================ guards, dtypes, errors

def test_zero_columns_give_no_nan_and_stay_nonnegative():
    pr = make_problem(10, p=3)
    X, groups, A, S, B, y = pr["X"], pr["groups"], pr["A"], pr["S"], pr["B"], pr["y"]
    S = [s.copy() for s in S]
    A = [a.copy() for a in A]
    S[0][:, 1] = 0.0
    A[0][:, 2] = 0.0  # 0/0 in the A and S updates of those columns
    A[1][1, :] = 0.0
    S_new, st = backprop_chunk_step(X, S, A, groups=groups, pool_size=3, B=B, y=y, lam=1.0)
    A_new, B_new = apply_backprop_update(A, B, st)
    for M in S_new + A_new + [B_new]:
        assert np.isfinite(M).all() and (M >= 0).all()
    assert (S_new[0][:, 1] == 0).all() and (A_new[0][:, 2] == 0).all()
    z = apply_a_update(np.zeros((3, 2)), {"XtS": np.zeros((3, 2)), "StS": np.zeros((2, 2))})
    assert np.isfinite(z).all() and (z == 0).all()


def test_float32_is_kept():
    pr = make_problem(11, p=3, dtype=np.float32)
    X, groups, A, S, B, y = pr["X"], pr["groups"], pr["A"], pr["S"], pr["B"], pr["y"]
    S_new, st = backprop_chunk_step(sp.csr_matrix(X), S, A, groups=groups, pool_size=3, B=B, y=y,
                                    lam=1.0, observed=pr["W"])
    A_new, B_new = apply_backprop_update(A, B, st)
    assert all(s.dtype == np.float32 for s in S_new)
    assert all(a.dtype == np.float32 for a in A_new) and B_new.dtype == np.float32
    pr64 = make_problem(11, p=3)
    S64, _ = backprop_chunk_step(sp.csr_matrix(pr64["X"]), pr64["S"], pr64["A"], groups=groups,
                                 pool_size=3, B=pr64["B"], y=y, lam=1.0, observed=pr64["W"])
    for a, b in zip(S_new, S64):
        np.testing.assert_allclose(a, b, rtol=2e-4)


class NoDenseCSR(sp.csr_matrix):
    """A CSR matrix that refuses to be densified."""

    def toarray(self, *a, **k):
        raise AssertionError("sparse X was densified")

    todense = toarray

    def __array__(self, *a, **k):
        raise AssertionError("sparse X was densified")


@pytest.mark.parametrize("mask", MASKS)
def test_sparse_X_is_never_densified_and_matches_dense(mask):
    pr = make_problem(12, p=3, sparse_frac=0.6)
    X, W, groups, A, S, B, y = (pr[k] for k in ("X", "W", "groups", "A", "S", "B", "y"))
    Xs = NoDenseCSR(X)
    Wm = as_mask(W, mask)
    S_s, st_s = backprop_chunk_step(Xs, S, A, groups=groups, pool_size=3, observed=Wm, B=B, y=y, lam=1.0)
    S_d, st_d = backprop_chunk_step(X, S, A, groups=groups, pool_size=3, observed=Wm, B=B, y=y, lam=1.0)
    for a, b in zip(S_s, S_d):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(st_s["energy"], st_d["energy"], rtol=1e-9)
    for a, b in zip(st_s["A"], st_d["A"]):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12)


def test_errors_name_the_argument():
    pr = make_problem(13, p=3)
    X, A, S, groups, B = pr["X"], pr["A"], pr["S"], pr["groups"], pr["B"]
    with pytest.raises(DNMFValueError, match="A"):
        s_update(X, S[0], A[1])
    with pytest.raises(DNMFValueError, match="observed"):
        s_update(X, S[0], A[0], observed=np.ones((2, 2), bool))
    with pytest.raises(DNMFValueError, match="pool_index"):
        s_update(X, S[0], A[0], pool_index=np.zeros((X.shape[0], 5), int))
    with pytest.raises(DNMFValueError, match="y"):
        s_update(X, S[0][:, :3], A[0][:, :3], B=B, y=np.full(X.shape[0], 7), lam=1.0)
    with pytest.raises(DNMFTypeError, match="y"):
        b_stats(S[0][:, :3], np.zeros(X.shape[0]), 3)
    with pytest.raises(DNMFValueError, match="lam"):
        s_update(X, S[0], A[0], lam=-1.0)
    with pytest.raises(DNMFValueError, match="eps"):
        apply_a_update(A[0], {"XtS": A[0], "StS": np.eye(5)}, eps=0.0)
    with pytest.raises(DNMFValueError, match="groups"):
        backprop_chunk_step(X, S, A, groups=None, pool_size=3)
    with pytest.raises(DNMFValueError, match="S, A"):
        backprop_chunk_step(X, S, A[:2], groups=groups, pool_size=3)
    with pytest.raises(DNMFTypeError, match="S"):
        s_update(X, S[0].astype(int), A[0])
