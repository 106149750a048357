"""kernels.nmf.observed: the observed entries of a block and their squared norm in one sweep
(the MU passes' ||X||²), against a float64 reference and split_missing's masked path."""

import numpy as np
import pytest
import scipy.sparse as sp

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
