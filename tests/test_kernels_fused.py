"""The fused numba sparse kernels (kernels/fused.py) against plain numpy references.

Each kernel is compared with (1) an independent dense-numpy transcription of the update and
(2) the library's scipy path (the same block step with the fused kernels switched off), on random
CSR blocks with empty rows and empty columns, in float32 and float64. Sizes are tiny: the first
call of each dtype combination compiles (cached on disk afterwards).
"""

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf_dask as dd
from dnmf_dask.kernels import fused
from dnmf_dask.kernels.nmf import EPS, block_step
from dnmf_dask.kernels.solvers import general_block_step

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="numba not available")


@pytest.fixture(autouse=True)
def fused_frobenius_on(monkeypatch):
    """The Frobenius kernel is off by default in block_step (no faster than scipy); test it on."""
    monkeypatch.setattr(fused, "FROBENIUS", True)

TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}


def _block(rng, dtype, n=23, f=17, k=4, density=0.3):
    X = sp.random(n, f, density=density, random_state=rng, format="csr", dtype=np.float64)
    X.data = np.round(X.data * 5) + 1  # counts
    X = X.tolil()
    X[3, :] = 0  # empty rows
    X[11, :] = 0
    X[:, 5] = 0  # empty columns
    X[:, f - 1] = 0
    X = sp.csr_matrix(X, dtype=dtype)
    S = rng.random((n, k)).astype(dtype)
    A = rng.random((f, k)).astype(dtype)
    S[7, 2] = 0  # a zero coefficient and a zero atom entry
    A[4, 1] = 0
    return X, S, A


def _without_numba(monkeypatch, fn, *args, **kw):
    with monkeypatch.context() as m:
        m.setattr(fused, "AVAILABLE", False)
        return fn(*args, **kw)


def _close(a, b, dtype):
    np.testing.assert_allclose(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frobenius_kernel_equals_dense_reference(rng, dtype):
    X, S, A = _block(rng, dtype)
    Xd = X.toarray().astype(np.float64)
    S64, A64 = S.astype(np.float64), A.astype(np.float64)
    den = S64 @ (A64.T @ A64)
    num_add = rng.random(S.shape)
    S_new, XA, XtS = fused.frobenius_step(X, S, A, den, num_add=num_add)
    ref_S = S64 * (Xd @ A64 + num_add) / np.where(den == 0, EPS, den)
    _close(XA, Xd @ A64, dtype)
    _close(S_new, ref_S, dtype)
    _close(XtS, Xd.T @ ref_S, dtype)
    assert S_new.dtype == dtype and XtS.dtype == np.float64
    assert np.all(XtS[[5, -1]] == 0)  # empty columns get no contribution
    # evaluation pass: S unchanged, XᵀS at S
    S_same, _, XtS0 = fused.frobenius_step(X, S, A, den, update_S=False)
    np.testing.assert_array_equal(S_same, S)
    _close(XtS0, Xd.T @ S64, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("labels", [False, True])
def test_block_step_fused_equals_scipy_path(rng, monkeypatch, dtype, labels):
    X, S, A = _block(rng, dtype)
    kw = {}
    if labels:
        y = np.arange(X.shape[0]) % 3
        y[::4] = -1
        kw = dict(B=rng.random((3, S.shape[1])).astype(dtype), y=y, lam=0.7)
    for update_S in (True, False):
        S1, st1 = block_step(X, S, A, update_S=update_S, **kw)
        S0, st0 = _without_numba(monkeypatch, block_step, X, S, A, update_S=update_S, **kw)
        _close(S1, S0, dtype)
        assert S1.dtype == S0.dtype
        assert st1.keys() == st0.keys()
        for key in st0:
            _close(np.asarray(st1[key], float), np.asarray(st0[key], float), dtype)


def _kl_dense(Xd, S, A, num_add, den_add):
    xh = np.maximum(S @ A.T, EPS)
    pos = Xd > 0
    xlog = float(np.sum(Xd[pos] * np.log(Xd[pos] / xh[pos])))
    num = (Xd / xh) @ A + num_add
    den = A.sum(axis=0) + den_add
    S_new = S * num / np.where(den == 0, EPS, den)
    RtS = (Xd / np.maximum(S_new @ A.T, EPS)).T @ S_new
    return S_new, RtS, xlog


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kl_kernel_equals_dense_reference(rng, dtype):
    X, S, A = _block(rng, dtype)
    Xd, S64, A64 = X.toarray().astype(np.float64), S.astype(np.float64), A.astype(np.float64)
    na, da = rng.random(S.shape), rng.random(S.shape)
    S_new, RtS, xlog = fused.kl_step(X, S, A, num_add=na, den_add=da)
    rS, rR, rlog = _kl_dense(Xd, S64, A64, na, da)
    _close(S_new, rS, dtype)
    _close(RtS, rR, dtype)
    assert xlog == pytest.approx(rlog, rel=TOL[dtype]["rtol"] * 10)
    S_same, R0, _ = fused.kl_step(X, S, A, update_S=False, with_loss=False)
    np.testing.assert_array_equal(S_same, S)
    _close(R0, (Xd / np.maximum(S64 @ A64.T, EPS)).T @ S64, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extras", ["none", "labels+penalties"])
def test_general_block_step_kl_fused_equals_numpy_path(rng, monkeypatch, dtype, extras):
    X, S, A = _block(rng, dtype)
    kw = dict(loss="kullback-leibler")
    if extras != "none":
        y = np.arange(X.shape[0]) % 3
        y[::4] = -1
        kw.update(B=rng.random((3, S.shape[1])).astype(dtype), y=y, lam=0.5, label_loss="kullback-leibler",
                  l1_S=0.01, l2_S=0.02)
    for update_S, a_stats in ((True, True), (False, True), (True, False)):
        S1, st1 = general_block_step(X, S, A, update_S=update_S, a_stats=a_stats, **kw)
        S0, st0 = _without_numba(monkeypatch, general_block_step, X, S, A, update_S=update_S, a_stats=a_stats, **kw)
        _close(S1, S0, dtype)
        assert st1.keys() == st0.keys()
        for key in st0:
            _close(np.asarray(st1[key], float), np.asarray(st0[key], float), dtype)


@pytest.mark.parametrize("beta_loss", ["frobenius", "kullback-leibler"])
def test_sparse_fit_same_with_and_without_numba_and_across_chunkings(rng, monkeypatch, beta_loss):
    X, _, _ = _block(rng, np.float64, n=60, f=15)
    kw = dict(init="random", random_state=3, max_iter=12, tol=0, beta_loss=beta_loss)
    ref = _without_numba(monkeypatch, dd.NMF(3, scheduler="synchronous", chunk_rows=60, **kw).fit, X)
    for chunk_rows, scheduler in ((60, "synchronous"), (17, "threads"), (8, "synchronous")):
        m = dd.NMF(3, scheduler=scheduler, chunk_rows=chunk_rows, **kw).fit(X)
        np.testing.assert_allclose(m.A_[0], ref.A_[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(m.history_["objective"], ref.history_["objective"], rtol=1e-9)
        assert m.n_iter_ == ref.n_iter_ and m.stop_reason_ == ref.stop_reason_


def test_spectrum_inverse_matches_numpy(rng):
    """The compiled spectrum and inverse of the NNLS's Gram matrix are numpy's eigvalsh and
    solve(G, I) (the same LAPACK routines), and a singular G still gives its spectrum."""
    A = rng.random((30, 7))
    G = A.T @ A
    w0, wmax, H = fused.spectrum_inverse(G)
    w = np.linalg.eigvalsh(G)
    assert w0 == pytest.approx(w[0], rel=1e-12) and wmax == pytest.approx(w[-1], rel=1e-12)
    np.testing.assert_allclose(H, np.linalg.solve(G, np.eye(7)), rtol=1e-10, atol=1e-14)
    Gs = np.zeros((3, 3))
    Gs[0, 0] = 2.0
    w0, wmax, _ = fused.spectrum_inverse(Gs)
    assert (w0, wmax) == (0.0, 2.0)
