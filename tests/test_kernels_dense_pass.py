"""The MU pass of a dense block: kernels.nmf.observed (the observed entries and their squared
norm in one sweep) and the piecewise sweep of block_step (_dense_mu_sweep), against float64
references written out with numpy and split_missing's masked path."""

import numpy as np
import pytest
import scipy.sparse as sp

from dnmf_dask.kernels import nmf
from dnmf_dask.kernels.nmf import block_step, observed, split_missing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_of_a_dense_block_equals_float64_sum(rng, dtype):
    for shape in ((0, 5), (1, 1), (7, 3), (300, 1001)):
        X = (rng.random(shape) * 100).astype(dtype)
        Xo, W, norm = observed(X)
        assert Xo is X and W is None
        ref = float(np.sum(X.astype(np.float64) ** 2))
        # float32 rows are summed in float32 (~1e-9 here), float64 exactly to rounding
        np.testing.assert_allclose(norm, ref, rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_nan_entries_take_the_masked_path(rng):
    X = rng.random((40, 30)).astype(np.float32)
    X[3, 4] = X[10, 0] = np.nan
    Xo, W, norm = observed(X)
    Xr, Wr = split_missing(X)
    np.testing.assert_array_equal(W, Wr)
    np.testing.assert_array_equal(Xo, Xr)
    assert not W[3, 4] and not W[10, 0] and W.sum() == X.size - 2
    np.testing.assert_allclose(norm, float(np.nansum(X.astype(np.float64) ** 2)), rtol=1e-12)


def test_squares_beyond_float32_fall_back_to_float64():
    """a float32 row whose squares overflow float32 must not make the norm inf"""
    X = np.full((3, 4), 3e19, np.float32)
    _, W, norm = observed(X)
    assert W is None and np.isfinite(norm)
    np.testing.assert_allclose(norm, 12 * float(np.float32(3e19)) ** 2, rtol=1e-12)


def test_a_given_mask_and_sparse_blocks_keep_their_paths(rng):
    X = rng.random((20, 10))
    mask = rng.random((20, 10)) > 0.3
    Xo, W, norm = observed(X, mask)
    np.testing.assert_array_equal(W, mask)
    np.testing.assert_allclose(norm, float(np.sum((X * mask) ** 2)), rtol=1e-12)
    Xs = sp.random(50, 40, density=0.2, format="csr", random_state=1, dtype=np.float32)
    Xo, W, norm = observed(Xs)
    assert W is None and Xo is Xs
    np.testing.assert_allclose(norm, float(np.sum(Xs.toarray().astype(np.float64) ** 2)), rtol=1e-12)


def test_block_step_loss_of_a_float32_block_matches_float64(rng):
    """the loss the MU pass reports from the one-sweep norm equals ||X − S Aᵀ||² in float64"""
    X = rng.random((200, 150)).astype(np.float32)
    S = rng.random((200, 6)).astype(np.float32)
    A = rng.random((150, 6)).astype(np.float32)
    _, st = block_step(X, S, A)
    R = X.astype(np.float64) - S.astype(np.float64) @ A.astype(np.float64).T
    np.testing.assert_allclose(st["loss_X"], float(np.sum(R * R)), rtol=1e-5)
    np.testing.assert_allclose(st["norm_X"], float(np.sum(X.astype(np.float64) ** 2)), rtol=1e-7)


def _reference_pass(X, S, A, B=None, y=None, lam=0.0):
    """One Frobenius (SS)NMF MU pass of a block in float64, written out: S ← S ⊙ (X A + λ Y B) /
    (S AᵀA + λ (L⊙S Bᵀ) B), then the sums for the A update at the new S."""
    X, S, A = (np.asarray(M, np.float64) for M in (X, S, A))
    num, den = X @ A, S @ (A.T @ A)
    if B is not None:
        L = (y >= 0)[:, None]
        Y = np.zeros((len(y), B.shape[0]))
        Y[y >= 0, y[y >= 0]] = 1.0
        num, den = num + lam * Y @ B, den + lam * (L * (S @ B.T)) @ B
    S_new = S * num / den
    return S_new, {"XtS": X.T @ S_new, "StS": S_new.T @ S_new, "norm_X": float(np.sum(X * X)),
                   "loss_X": float(np.sum((X - S @ A.T) ** 2))}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("labels", [False, True])
def test_piecewise_dense_pass_equals_the_written_out_update(rng, monkeypatch, dtype, labels):
    """pieces of 8 rows (not a multiple of the 61 rows): same S_new and sums as one pass of the
    formulas; with labels the λ terms are sliced per piece"""
    monkeypatch.setattr(nmf, "SWEEP_PIECE_BYTES", 1)
    n, f, k = 61, 40, 5
    X = rng.random((n, f)).astype(dtype)
    S = (rng.random((n, k)) + 0.1).astype(dtype)
    A = (rng.random((f, k)) + 0.1).astype(dtype)
    B = y = None
    if labels:
        B = (rng.random((3, k)) + 0.1).astype(dtype)
        y = rng.integers(-1, 3, n)
    S_new, st = block_step(X, S, A, B=B, y=y, lam=0.7 if labels else 0.0)
    S_ref, ref = _reference_pass(X, S, A, B, y, 0.7 if labels else 0.0)
    rtol = 1e-5 if dtype == np.float32 else 1e-11
    assert S_new.dtype == dtype
    if dtype == np.float32:  # summed in float32 as one GEMM: it travels between workers as float32
        np.testing.assert_array_equal(st["XtS"].astype(np.float32), st["XtS"])
    np.testing.assert_allclose(S_new, S_ref, rtol=rtol)
    for key in ("XtS", "StS", "norm_X", "loss_X"):
        np.testing.assert_allclose(st[key], ref[key], rtol=rtol * (10 if key == "loss_X" else 1), err_msg=key)
    # and the same as the pass with the block in one piece
    monkeypatch.setattr(nmf, "SWEEP_PIECE_BYTES", 1 << 30)
    S_one, st_one = block_step(X, S, A, B=B, y=y, lam=0.7 if labels else 0.0)
    np.testing.assert_allclose(S_new, S_one, rtol=rtol)
    np.testing.assert_allclose(st["XtS"], st_one["XtS"], rtol=rtol)


def test_evaluation_pass_keeps_s(rng, monkeypatch):
    monkeypatch.setattr(nmf, "SWEEP_PIECE_BYTES", 1)
    X, S, A = rng.random((30, 12)), rng.random((30, 3)) + 0.1, rng.random((12, 3)) + 0.1
    S_same, st = block_step(X, S, A, update_S=False)
    assert S_same is S
    np.testing.assert_allclose(st["XtS"], X.T @ S, rtol=1e-12)
    np.testing.assert_allclose(st["loss_X"], float(np.sum((X - S @ A.T) ** 2)), rtol=1e-10)


def test_nan_in_a_later_piece_gives_the_masked_pass(rng, monkeypatch):
    """the sweep has already done pieces when it meets the NaN: its partial sums must not leak
    into the masked pass it hands over to"""
    monkeypatch.setattr(nmf, "SWEEP_PIECE_BYTES", 1)
    X = rng.random((40, 10))
    X[35, 2] = np.nan
    S, A = rng.random((40, 3)) + 0.1, rng.random((10, 3)) + 0.1
    S_new, st = block_step(X, S, A)
    W = ~np.isnan(X)
    X0 = np.where(W, X, 0.0)
    WSA = W * (S @ A.T)
    S_ref = S * (X0 @ A) / (WSA @ A)
    np.testing.assert_allclose(S_new, S_ref, rtol=1e-12)
    np.testing.assert_allclose(st["loss_X"], float(np.sum((X0 - WSA) ** 2)), rtol=1e-12)
    np.testing.assert_allclose(st["norm_X"], float(np.sum(X0 ** 2)), rtol=1e-12)
    assert "WSAtS" in st and "StS" not in st


def test_fit_with_pieces_equals_fit_with_whole_blocks(rng, monkeypatch):
    """a dense NMF fit (threads, several blocks) is the same when every block goes in 8-row pieces"""
    import dnmf_dask as dd

    X = rng.random((300, 50)) @ rng.random((50, 40)) + 0.01 * rng.random((300, 40))
    fits = []
    for piece_bytes in (1 << 30, 1):
        monkeypatch.setattr(nmf, "SWEEP_PIECE_BYTES", piece_bytes)
        m = dd.NMF(5, init="random", max_iter=30, tol=0, random_state=0, chunk_rows=70, scheduler="threads").fit(X)
        fits.append((m.components_, m.transform(X), m.history_["objective"]))
    np.testing.assert_allclose(fits[1][0], fits[0][0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fits[1][1], fits[0][1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fits[1][2], fits[0][2], rtol=1e-11)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix itself
def test_matrix_and_fortran_blocks_give_the_same_pass(rng):
    X, S, A = rng.random((40, 12)), rng.random((40, 3)) + 0.1, rng.random((12, 3)) + 0.1
    S_ref, ref = block_step(X, S, A)
    for Xin in (np.asmatrix(X), np.asfortranarray(X)):
        S_new, st = block_step(Xin, S, A)
        assert type(S_new) is np.ndarray
        np.testing.assert_allclose(S_new, S_ref, rtol=1e-13)
        np.testing.assert_allclose(st["XtS"], ref["XtS"], rtol=1e-13)
