import warnings

import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

import dnmf_dask as dd
from dnmf_dask.errors import ConvergenceWarning, DNMFValueError
from dnmf_dask.kernels.nmf import semi_block_step

warnings.filterwarnings("ignore", category=ConvergenceWarning)


def _hier_data(rng, n=90, f=40):
    return rng.random((n, 4)) @ rng.random((4, 9)) @ rng.random((9, f)) + 0.05 * rng.random((n, f))


def test_layers_equal_chained_nmf(rng):
    X = _hier_data(rng)
    kw = dict(max_iter=60, tol=0, init="nndsvda", scheduler="threads")
    h = dd.HierarchicalNMF((6, 3), random_state=7, chunk_rows=25, **kw).fit(X)
    m0 = dd.NMF(6, random_state=7, chunk_rows=25, **kw)
    S0 = m0.fit_transform(X)
    m1 = dd.NMF(3, random_state=8, chunk_rows=25, **kw)
    S1 = m1.fit_transform(S0)
    np.testing.assert_allclose(h.A_[0], m0.A_[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h.A_[1], m1.A_[0], rtol=1e-8, atol=1e-10)
    P = h.A_[0] @ h.A_[1]
    expect = np.linalg.norm(X - S1 @ P.T) / np.linalg.norm(X)
    assert h.layer_rel_error_[1] == pytest.approx(expect, rel=1e-8)
    assert h.layer_rel_error_[0] <= h.layer_rel_error_[1]
    assert h.n_iter_ == 120 and h.layer_n_iter_ == [60, 60]


def test_same_on_cluster_and_other_chunking(rng, local_cluster):
    X = _hier_data(rng)
    y = rng.integers(0, 3, len(X))
    y[rng.random(len(X)) < 0.5] = -1
    kw = dict(max_iter=40, tol=0, random_state=1)
    a = dd.HierarchicalNMF((5, 2), chunk_rows=90, scheduler="threads", **kw).fit(X, y)
    b = dd.HierarchicalNMF((5, 2), chunk_rows=17, scheduler=local_cluster, **kw).fit(X, y)
    for Aa, Ab in zip(a.A_ + [a.B_], b.A_ + [b.B_]):
        np.testing.assert_allclose(Ab, Aa, rtol=1e-8, atol=1e-10)


def test_transform_is_exact_forward_nnls(rng):
    X = _hier_data(rng, n=30)
    h = dd.HierarchicalNMF((5, 2), max_iter=50, random_state=0, scheduler="threads").fit(X)
    S1 = h.transform(X, layer=1)
    S0 = np.array([scipy_nnls(h.A_[0], x)[0] for x in X])
    S1_ref = np.array([scipy_nnls(h.A_[1], s)[0] for s in S0])
    np.testing.assert_allclose(h.transform(X, layer=0), S0, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(S1, S1_ref, rtol=1e-6, atol=1e-9)
    with pytest.raises(DNMFValueError, match="layer"):
        h.transform(X, layer=2)


def test_semi_nmf_step_matches_formula(rng):
    X = rng.standard_normal((20, 7))
    S = rng.random((20, 3)) + 0.1
    A = rng.standard_normal((7, 3))
    S_new, st = semi_block_step(X, S, A)
    # Ding, Li & Jordan (2010), papers' orientation X_p (7×20) ≈ F Gᵀ, F = A, G = S
    Xp, F, G = X.T, A, S
    XtF, FtF = Xp.T @ F, F.T @ F
    pos = lambda M: (np.abs(M) + M) / 2  # noqa: E731
    neg = lambda M: (np.abs(M) - M) / 2  # noqa: E731
    G_ref = G * np.sqrt((pos(XtF) + G @ neg(FtF)) / (neg(XtF) + G @ pos(FtF)))
    np.testing.assert_allclose(S_new, G_ref, rtol=1e-12)
    np.testing.assert_allclose(st["XtS"], X.T @ S_new, rtol=1e-12)
    assert st["loss_X"] == pytest.approx(np.sum((X - S @ A.T) ** 2), rel=1e-10)


def test_semi_nmf_fits_signed_data(rng):
    X = _hier_data(rng)
    Xc = X - X.mean(axis=0)
    with pytest.raises(DNMFValueError, match="nonnegative"):
        dd.HierarchicalNMF((9, 4), scheduler="threads").fit(Xc)
    m = dd.HierarchicalNMF((9, 4), semi=True, max_iter=300, tol=0, random_state=0, scheduler="threads").fit(Xc)
    h = np.array(m.layer_history_[0]["objective"])
    assert np.all(np.diff(h) <= 1e-9 * h[:-1])
    assert m.A_[0].min() < 0 and m.A_[1].min() >= 0
    assert m.layer_rel_error_[0] < 0.1


def test_semi_supervised_last_layer(rng):
    n_per, classes = 40, 3
    centers = np.zeros((classes, 30))
    for c in range(classes):
        centers[c, c * 10:(c + 1) * 10] = 1
    y = np.repeat(np.arange(classes), n_per)
    X = centers[y] + 0.1 * rng.random((len(y), 30))
    ym = y.copy()
    ym[rng.random(len(y)) < 0.8] = -1
    ym[[0, n_per, 2 * n_per]] = [0, 1, 2]
    m = dd.HierarchicalNMF((6, 3), lam=1.0, max_iter=300, random_state=0, scheduler="threads").fit(X, ym)
    assert m.B_.shape == (3, 3) and list(m.classes_) == [0, 1, 2]
    assert m.score(X, y) >= 0.95


def test_rank_validation(rng):
    X = rng.random((10, 5))
    for bad in [(), (0,), (3, -1), "ab"]:
        with pytest.raises(DNMFValueError, match="ranks"):
            dd.HierarchicalNMF(bad, scheduler="threads").fit(X)
    with pytest.raises(DNMFValueError, match="k0"):
        dd.HierarchicalNMF((6,), scheduler="threads").fit(X)
