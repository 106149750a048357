"""DeepNMF's label term with the I-divergence and the softmax cross-entropy (kernels/deep.py).

The references transcribe the updates in the paper's orientation (columns = samples, Y, L and
B S of shape classes × N) from the formulas, never calling the module under test:

    E_label = λ/2 · D_Y(Y, B S_L)
    KL: D = Σ_L [y log(y/ŷ) − y + ŷ]        ∂/∂S = λ/2 Bᵀ(L − L⊙Y⊘BS)
    CE: D = −Σ_L y log softmax(BS)          ∂/∂S = λ/2 Bᵀ(L⊙P − L⊙Y), P = softmax over classes

and the multiplicative updates split each gradient into its positive (denominator) and negative
(numerator) part, as eq. (4) does for the squared error.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from dnmf_dask.errors import DNMFValueError
from dnmf_dask.kernels.deep import (
    add_stats,
    apply_b_update,
    apply_backprop_update,
    b_stats,
    backprop_chunk_step,
    energy_parts,
    label_energy,
    label_gradient_parts,
    layer_chunk_step,
    s_update,
)

from .test_kernels_deep import (
    EPS,
    as_mask,
    make_problem,
    paper_backprop_sweep,
    paper_label_matrices,
    paper_mask,
    paper_pool,
    paper_pool_labels,
)

LOSSES = ["kullback-leibler", "cross-entropy"]


# ============================================================================ paper transcription

def softmax_columns(Z):
    E = np.exp(Z - Z.max(axis=0))
    return E / E.sum(axis=0)


def paper_label_parts(B, S, Y, Lm, lam, loss):
    """(num, den) of the label term's gradient in S, paper orientation (k × N)."""
    if loss == "frobenius":
        return lam * B.T @ (Lm * Y), lam * B.T @ (Lm * (B @ S))
    if loss == "kullback-leibler":
        return 0.5 * lam * B.T @ (Lm * Y / np.maximum(B @ S, EPS)), 0.5 * lam * B.T @ Lm
    return 0.5 * lam * B.T @ (Lm * Y), 0.5 * lam * B.T @ (Lm * softmax_columns(B @ S))


def paper_S_last(A, X, S, W, B, Y, Lm, lam, loss):
    num, den = paper_label_parts(B, S, Y, Lm, lam, loss)
    return S * (A.T @ (W * X) + num) / np.maximum(A.T @ (W * (A @ S)) + den, EPS)


def paper_B(B, S, Y, Lm, loss):
    if loss == "frobenius":
        return B * ((Lm * Y) @ S.T) / np.maximum((Lm * (B @ S)) @ S.T, EPS)
    if loss == "kullback-leibler":
        return B * ((Lm * Y / np.maximum(B @ S, EPS)) @ S.T) / np.maximum(Lm @ S.T, EPS)
    return B * ((Lm * Y) @ S.T) / np.maximum((Lm * softmax_columns(B @ S)) @ S.T, EPS)


def paper_label_energy(B, S, Y, Lm, lam, loss):
    lab = Lm[0] > 0
    Yl, Z = Y[:, lab], B @ S[:, lab]
    if loss == "frobenius":
        return 0.5 * lam * np.sum((Yl - Z) ** 2)
    if loss == "kullback-leibler":
        Zc = np.maximum(Z, EPS)
        pos = Yl > 0
        return 0.5 * lam * (np.sum(Yl[pos] * np.log(Yl[pos] / Zc[pos])) - Yl.sum() + Z.sum())
    return -0.5 * lam * np.sum(Yl * np.log(softmax_columns(Z)))


def paper_sweep(X, S_list, A_list, W, groups, p, stride, B, y, lam, loss):
    """Algorithm 3 / eq. (4) with the label loss; also the label energy at the new S_L."""
    S_new, A_new, B_new = paper_backprop_sweep(
        X, S_list, A_list, W, groups, p, stride, B, y, lam,
        s_last=lambda *a: paper_S_last(*a, loss), b_update=lambda *a: paper_B(*a, loss))
    yl = y
    for g in ([groups] if stride > 1 and p > 1 else []):
        for _ in S_list[1:]:
            yl, g = paper_pool_labels(yl, g, p, stride), paper_pool(np.zeros((1, g.size)), g, p, stride)[2]
    Y, Lm = paper_label_matrices(yl, B.shape[0])
    return S_new, A_new, B_new, paper_label_energy(B, S_new[-1], Y, Lm, lam, loss)


def last_layer(seed):
    pr = make_problem(seed)
    k = pr["B"].shape[1]
    return pr["X"], pr["W"], pr["y"], pr["B"], pr["A"][0][:, :k].copy(), pr["S"][0][:, :k].copy()


# ============================================================================ one step == paper

@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("mask", ["none", "dense", "sparse"])
@pytest.mark.parametrize("lam", [0.7, 5.0])
def test_s_update_last_layer_matches_paper(loss, mask, lam):
    X, W, y, B, A, S = last_layer(3)
    got = s_update(X, S, A, observed=as_mask(W, mask), B=B, y=y, lam=lam, label_loss=loss)
    Y, Lm = paper_label_matrices(y, B.shape[0])
    want = paper_S_last(A, X.T, S.T, paper_mask(W, mask, X.T.shape), B, Y, Lm, lam, loss)
    np.testing.assert_allclose(got, want.T, rtol=1e-10)
    # the loss matters: each differs from the squared-error label term and from no label term
    for other in (s_update(X, S, A, observed=as_mask(W, mask), B=B, y=y, lam=lam),
                  s_update(X, S, A, observed=as_mask(W, mask))):
        assert not np.allclose(got, other)


@pytest.mark.parametrize("loss", ["frobenius"] + LOSSES)
def test_b_update_from_summed_chunk_stats_matches_paper(loss):
    pr = make_problem(4)
    y, B, S = pr["y"], pr["B"], pr["S"][0][:, :3].copy()
    st = add_stats(b_stats(S[:9], y[:9], 3, B=B, label_loss=loss), b_stats(S[9:], y[9:], 3, B=B, label_loss=loss))
    Y, Lm = paper_label_matrices(y, 3)
    np.testing.assert_allclose(apply_b_update(B, st), paper_B(B, S.T, Y, Lm, loss), rtol=1e-10)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("p,stride", [(0, 1), (3, 1), (3, 3)])
def test_backprop_sweep_over_two_chunks_matches_paper(loss, p, stride):
    pr = make_problem(5, p=p, stride=stride, sparse_frac=0.3)
    X, W, y, groups, A, S, B = (pr[k] for k in ("X", "W", "y", "groups", "A", "S", "B"))
    lam = 1.7
    # chunks at a group boundary: rows of the deeper layers follow their groups
    cut = np.flatnonzero(np.diff(groups))[len(np.unique(groups)) // 2] + 1
    sizes = [s.shape[0] for s in S]
    out_groups = [groups]
    for _ in S[1:]:
        out_groups.append(paper_pool(np.zeros((1, out_groups[-1].size)), out_groups[-1], p, stride)[2])
    total, S_out = None, [np.zeros_like(s) for s in S]
    for part in (slice(0, cut), slice(cut, None)):
        gs = np.unique(groups[part])
        rows = [np.flatnonzero(np.isin(og, gs)) for og in out_groups]
        S_new, st = backprop_chunk_step(sp.csr_matrix(X[part]), [S[l][rows[l]] for l in range(len(S))], A,
                                        groups=groups[part], pool_size=p, stride=stride, observed=W[part],
                                        B=B, y=y[part], lam=lam, label_loss=loss)
        for l in range(len(S)):
            S_out[l][rows[l]] = S_new[l]
        total = st if total is None else add_stats(total, st)
    assert [s.shape[0] for s in S_out] == sizes
    A_new, B_new = apply_backprop_update(A, B, total)
    S_ref, A_ref, B_ref, E_label = paper_sweep(X.T, [s.T for s in S], A, W.T.astype(float), groups, p, stride,
                                               B, y, lam, loss)
    for l in range(len(S)):
        np.testing.assert_allclose(S_out[l], S_ref[l].T, rtol=1e-10)
        np.testing.assert_allclose(A_new[l], A_ref[l], rtol=1e-10)
    np.testing.assert_allclose(B_new, B_ref, rtol=1e-10)
    np.testing.assert_allclose(total["energy"][-1], E_label, rtol=1e-10)


@pytest.mark.parametrize("loss", ["frobenius"] + LOSSES)
def test_energy_parts_label_term_matches_paper(loss):
    pr = make_problem(6, p=3)
    X, W, y, groups, A, S, B = (pr[k] for k in ("X", "W", "y", "groups", "A", "S", "B"))
    parts = energy_parts(X, S, A, groups=groups, pool_size=3, observed=W, B=B, y=y, lam=1.3, label_loss=loss)
    Y, Lm = paper_label_matrices(y, B.shape[0])
    np.testing.assert_allclose(parts[-1], paper_label_energy(B, S[-1].T, Y, Lm, 1.3, loss), rtol=1e-10)
    unlabeled = energy_parts(X, S, A, groups=groups, pool_size=3, observed=W, label_loss=loss)
    np.testing.assert_allclose(parts[:-1], unlabeled[:-1], rtol=1e-12)


# ============================================================================ gradients (finite differences)

def fd_grad(f, M, h=1e-6):
    G = np.zeros_like(M)
    for idx in np.ndindex(M.shape):
        Mp, Mm = M.copy(), M.copy()
        Mp[idx] += h
        Mm[idx] -= h
        G[idx] = (f(Mp) - f(Mm)) / (2 * h)
    return G


@pytest.mark.parametrize("loss", ["frobenius"] + LOSSES)
def test_mu_split_is_the_gradient_of_the_label_energy(loss):
    """den − num of the S step (and of the B step, times λ/2·c_Y) = ∂E_label by central differences."""
    rng = np.random.default_rng(7)
    n, k, C, lam = 9, 4, 3, 1.9
    S, B = rng.random((n, k)) + 0.1, rng.random((C, k)) + 0.1
    y = rng.integers(0, C, n)
    y[[1, 5]] = -1
    num, den = label_gradient_parts(S, B, y, lam, loss)
    G = fd_grad(lambda M: label_energy(M, B, y, lam, loss), S)
    np.testing.assert_allclose(den - num, G, rtol=1e-6, atol=1e-8)
    assert np.all(num[y < 0] == 0) and np.all(den[y < 0] == 0)
    st = b_stats(S, y, C, B=B, label_loss=loss)
    if loss == "frobenius":
        bnum, bden = st["YtS"], B @ st["StS"]
    elif loss == "kullback-leibler":
        bnum, bden = st["RYtS"], np.broadcast_to(st["S_L_sum"], B.shape)
    else:
        bnum, bden = st["YtS"], st["PtS"]
    c = 0.5 * lam * (2.0 if loss == "frobenius" else 1.0)
    GB = fd_grad(lambda M: label_energy(S, M, y, lam, loss), B)
    np.testing.assert_allclose(c * (bden - bnum), GB, rtol=1e-6, atol=1e-8)


# ============================================================================ energy behaviour

def run(pr, p, iters, loss, lam):
    X, W, y, groups, A, S, B = (pr[k] for k in ("X", "W", "y", "groups", "A", "S", "B"))
    kw = dict(groups=groups, pool_size=p, observed=W, B=B, y=y, lam=lam, label_loss=loss)
    E, mids = [energy_parts(X, S, A, **kw).sum()], []
    for _ in range(iters):
        S, st = backprop_chunk_step(X, S, A, **kw)
        mids.append(st["energy"].sum())
        A, B = apply_backprop_update(A, B, st)
        kw["B"] = B
        E.append(energy_parts(X, S, A, **kw).sum())
    return np.array(E), np.array(mids), S, A, B


def test_kl_label_backprop_without_pooling_never_increases_the_energy():
    """J = I: every step is a Lee–Seung MU (squared error + I-divergence, as ssnmf's KL models)."""
    for seed in (9, 10, 11):
        E, mids, S, A, B = run(make_problem(seed, n_groups=10, p=0), 0, 80, "kullback-leibler", 3.0)
        assert np.all(mids <= E[:-1] * (1 + 1e-12))  # S sweep
        assert np.all(E[1:] <= mids * (1 + 1e-12))   # A and B
        assert E[-1] < 0.5 * E[0]
        assert all((m >= 0).all() for m in S + A + [B])


def test_cross_entropy_label_backprop_descends():
    """The softmax cross-entropy has no Lee–Seung auxiliary function: its split-gradient MU (as in
    ssnmf and the Neural NMF authors' code) is a heuristic. Asserted: the energy descends overall,
    the A steps (label-free) never increase it, factors stay ≥ 0 and finite."""
    E, mids, S, A, B = run(make_problem(12, n_groups=10, p=0), 0, 80, "cross-entropy", 3.0)
    assert E[-1] < 0.5 * E[0]
    assert all(np.isfinite(m).all() and (m >= 0).all() for m in S + A + [B])


def test_layerwise_ssnmf_step_with_label_losses():
    X, W, y, B, A, S = last_layer(14)
    for loss in LOSSES:
        S1, st = layer_chunk_step(X, S, A, observed=W, B=B, y=y, lam=2.0, label_loss=loss)
        np.testing.assert_allclose(S1, s_update(X, S, A, observed=W, B=B, y=y, lam=2.0, label_loss=loss))
        assert set(st["B"]) == ({"RYtS", "S_L_sum"} if loss == "kullback-leibler" else {"YtS", "PtS"})
        np.testing.assert_allclose(st["energy"][1], label_energy(S1, B, y, 2.0, loss))


def test_aliases_and_errors():
    X, W, y, B, A, S = last_layer(15)
    np.testing.assert_array_equal(s_update(X, S, A, B=B, y=y, lam=1.0, label_loss="kl"),
                                  s_update(X, S, A, B=B, y=y, lam=1.0, label_loss="kullback-leibler"))
    np.testing.assert_array_equal(s_update(X, S, A, B=B, y=y, lam=1.0, label_loss="ce"),
                                  s_update(X, S, A, B=B, y=y, lam=1.0, label_loss="cross-entropy"))
    for bad in ("hinge", None, 3):
        with pytest.raises(DNMFValueError, match=r"label_loss: expected one of \[.*'cross-entropy'.*found"):
            s_update(X, S, A, B=B, y=y, lam=1.0, label_loss=bad)
    with pytest.raises(DNMFValueError, match="label_loss"):
        label_energy(S, B, y, 1.0, "hinge")
    with pytest.raises(DNMFValueError, match="B: expected the current classifier"):
        b_stats(S, y, B.shape[0], label_loss="kl")
    with pytest.raises(DNMFValueError, match="stats"):
        apply_b_update(B, {"RYtS": B})
