"""Tests of dnmf_dask.kernels.pooling against independent implementations.

References used here never call the module under test: scipy.ndimage.maximum_filter1d applied
group by group (sliding windows), and slow explicit loops (tiled windows, Jacobians).
"""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.ndimage import maximum_filter1d

from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.kernels.pooling import (
    apply_pool_index,
    max_pool,
    max_pool_backward,
    pool_counts,
    pool_labels,
    pool_windows,
)

from .reference import runs


def make_groups(rng, n_groups, max_len, min_len=1):
    """Contiguous groups with arbitrary (non-sorted, non-consecutive) ids."""
    lens = rng.integers(min_len, max_len + 1, size=n_groups)
    ids = rng.permutation(10 * n_groups)[:n_groups] + 7
    return np.repeat(ids, lens), lens


def ref_sliding(S, groups, p):
    """scipy's maximum_filter1d group by group; 'nearest' only repeats in-group values."""
    return np.vstack([maximum_filter1d(S[a:b], size=p, axis=0, mode="nearest") for a, b in runs(groups)])


def ref_tiled(S, groups, p, stride, keep_size=False):
    """Explicit loops: windows [g0 + m*stride, g0 + m*stride + p) clipped to the group."""
    P, idx, og = [], [], []
    for a, b in runs(groups):
        starts = list(range(a, b, stride))
        if keep_size:
            wins = [(a + ((i - a) // stride) * stride) for i in range(a, b)]
        else:
            wins = starts
        for lo in wins:
            hi = min(lo + p, b)
            block = S[lo:hi]
            P.append(block.max(axis=0))
            idx.append(lo + np.argmax(block, axis=0))  # np.argmax: first occurrence
            og.append(groups[a])
    return np.array(P), np.array(idx), np.array(og)


def ref_sliding_index(S, groups, p):
    """Explicit loop argmax (first occurrence) for the centred sliding window."""
    idx = np.empty(S.shape, dtype=np.int64)
    for a, b in runs(groups):
        for i in range(a, b):
            lo, hi = max(a, i - p // 2), min(b, i - p // 2 + p)
            idx[i] = lo + np.argmax(S[lo:hi], axis=0)
    return idx


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("p", [2, 3, 4, 5, 7, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sliding_matches_maximum_filter1d(p, dtype):
    rng = np.random.default_rng(p)
    groups, lens = make_groups(rng, 60, max_len=3 * p)  # includes length 1 and < window
    assert (lens == 1).any() and (lens < p).any()
    S = rng.random((groups.size, 5)).astype(dtype)
    P, index, og = max_pool(S, groups, p)
    ref = ref_sliding(S, groups, p)
    assert P.dtype == dtype and P.shape == S.shape
    np.testing.assert_array_equal(P, ref)
    np.testing.assert_array_equal(og, groups)
    # the index is the argmax: it reproduces P, stays in the group and in the window
    np.testing.assert_array_equal(np.take_along_axis(S, index, axis=0), P)
    np.testing.assert_array_equal(groups[index], np.repeat(groups[:, None], 5, axis=1))
    rows = np.arange(groups.size)[:, None]
    assert ((index - rows >= -(p // 2)) & (index - rows <= (p - 1) // 2)).all()
    np.testing.assert_array_equal(index, ref_sliding_index(S, groups, p))


def test_ties_go_to_first_occurrence():
    rng = np.random.default_rng(0)
    groups, _ = make_groups(rng, 20, max_len=9)
    S = rng.integers(0, 3, size=(groups.size, 4)).astype(float)  # many ties
    for p in (3, 4, 6):
        _, index, _ = max_pool(S, groups, p)
        np.testing.assert_array_equal(index, ref_sliding_index(S, groups, p))
        _, index, _ = max_pool(S, groups, p, stride=p)
        np.testing.assert_array_equal(index, ref_tiled(S, groups, p, p)[1])


@pytest.mark.parametrize("p,stride", [(3, 3), (4, 4), (5, 2), (6, 3), (2, 2)])
@pytest.mark.parametrize("keep_size", [False, True])
def test_tiled_matches_explicit_loop(p, stride, keep_size):
    rng = np.random.default_rng(10 * p + stride)
    groups, _ = make_groups(rng, 40, max_len=3 * p)
    S = rng.random((groups.size, 3)).astype(np.float32)
    P, index, og = max_pool(S, groups, p, stride=stride, keep_size=keep_size)
    rP, ridx, rog = ref_tiled(S, groups, p, stride, keep_size)
    assert P.dtype == np.float32
    np.testing.assert_array_equal(P, rP)
    np.testing.assert_array_equal(index, ridx)
    np.testing.assert_array_equal(og, rog)
    expected_n = groups.size if keep_size else sum(-(-(b - a) // stride) for a, b in runs(groups))
    assert P.shape == (expected_n, 3)
    lo, hi, og2 = pool_windows(groups, p, stride, keep_size)
    np.testing.assert_array_equal(og2, rog)
    assert ((index >= lo[:, None]) & (index <= hi[:, None])).all()


@pytest.mark.parametrize("p", [0, 1])
def test_identity(p):
    rng = np.random.default_rng(1)
    groups, _ = make_groups(rng, 5, 4)
    S = rng.random((groups.size, 3))
    P, index, og = max_pool(S, groups, p)
    np.testing.assert_array_equal(P, S)
    np.testing.assert_array_equal(index, np.repeat(np.arange(groups.size)[:, None], 3, axis=1))
    np.testing.assert_array_equal(og, groups)


def test_whole_chunks_pool_locally_but_a_cut_group_changes_the_result():
    rng = np.random.default_rng(3)
    groups = np.repeat([4, 9, 2], [10, 12, 8])
    S = rng.random((groups.size, 4))
    p = 5
    full = max_pool(S, groups, p)[0]
    # chunks that hold whole groups: pooling chunk by chunk == pooling everything
    cut = 10  # group boundary
    parts = [max_pool(S[:cut], groups[:cut], p)[0], max_pool(S[cut:], groups[cut:], p)[0]]
    np.testing.assert_array_equal(np.vstack(parts), full)
    # a chunk boundary inside group 9 (rows 10..21): rows near the cut see a truncated window
    cut = 16
    parts = np.vstack([max_pool(S[:cut], groups[:cut], p)[0], max_pool(S[cut:], groups[cut:], p)[0]])
    differs = np.flatnonzero((parts != full).any(axis=1))
    assert differs.size > 0
    assert set(differs) <= set(range(cut - p // 2, cut + p // 2))  # only around the cut
    # and the truth here is the full-group max, which the cut version underestimates
    assert (parts <= full).all()


# ----------------------------------------------------------------------------- backward


def jacobian_dense(index, n_in, c):
    """Dense (n_out, n_in) 0/1 Jacobian of column c, from an explicit loop."""
    J = np.zeros((index.shape[0], n_in))
    for j in range(index.shape[0]):
        J[j, index[j, c]] = 1.0
    return J


@pytest.mark.parametrize("p,stride", [(1, 1), (3, 1), (4, 1), (3, 3), (5, 2)])
def test_backward_is_adjoint_and_jacobian_transpose(p, stride):
    rng = np.random.default_rng(5)
    groups, _ = make_groups(rng, 12, 9)
    n, k = groups.size, 3
    S = rng.random((n, k))
    P, index, _ = max_pool(S, groups, p, stride=stride)
    G = rng.standard_normal(P.shape)
    gS = max_pool_backward(G, index, n)
    assert gS.shape == (n, k)
    # adjoint identity <J S, G> = <S, Jᵀ G>
    np.testing.assert_allclose(np.sum(P * G), np.sum(S * gS), rtol=1e-12)
    # equals the transpose of an explicitly built Jacobian
    for c in range(k):
        J = jacobian_dense(index, n, c)
        np.testing.assert_allclose(J @ S[:, c], P[:, c])
        np.testing.assert_allclose(J.T @ G[:, c], gS[:, c])
    np.testing.assert_allclose(pool_counts(index, n), max_pool_backward(np.ones_like(G), index, n))
    np.testing.assert_array_equal(apply_pool_index(S, index), P)


@pytest.mark.parametrize("p,stride", [(3, 1), (6, 1), (4, 4)])
def test_backward_matches_finite_differences(p, stride):
    """d/dt <max_pool(S + t D), G> at t=0 equals <D, backward(G)> (continuous data: no ties)."""
    rng = np.random.default_rng(7)
    groups, _ = make_groups(rng, 10, 12)
    S = rng.random((groups.size, 4))
    P, index, _ = max_pool(S, groups, p, stride=stride)
    G = rng.standard_normal(P.shape)
    gS = max_pool_backward(G, index, groups.size)
    h = 1e-7
    for _ in range(5):
        D = rng.standard_normal(S.shape)
        f_plus = np.sum(max_pool(S + h * D, groups, p, stride=stride)[0] * G)
        f_minus = np.sum(max_pool(S - h * D, groups, p, stride=stride)[0] * G)
        np.testing.assert_allclose((f_plus - f_minus) / (2 * h), np.sum(D * gS), rtol=1e-6)


def test_backward_keeps_float32():
    index = np.array([[0, 1], [0, 1]])
    g = max_pool_backward(np.ones((2, 2), np.float32), index, 3)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, [[2, 0], [0, 2], [0, 0]])


# ----------------------------------------------------------------------------- labels


def test_pool_labels_tiled():
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    y = np.array([-1, 2, 2, 1, -1, -1, -1, 0])
    # tiles of 3: [0,1,2] -> 2 ; [3,4] -> 1 ; [5,6,7] -> 0
    np.testing.assert_array_equal(pool_labels(y, groups, 3, stride=3), [2, 1, 0])
    y2 = np.array([0, 1, -1, -1, -1, -1, -1, -1])  # conflicting labels -> -1; empty -> -1
    np.testing.assert_array_equal(pool_labels(y2, groups, 3, stride=3), [-1, -1, -1])
    np.testing.assert_array_equal(pool_labels(y, groups, 3), y)  # stride 1: same samples


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    S = np.random.default_rng(0).random((6, 2))
    g = np.array([0, 0, 1, 1, 0, 0])
    with pytest.raises(DNMFValueError, match="groups.*contiguous"):
        max_pool(S, g, 3)
    with pytest.raises(DNMFValueError, match="groups"):
        max_pool(S, None, 3)
    with pytest.raises(DNMFValueError, match="groups.*shape"):
        max_pool(S, np.zeros(5, int), 3)
    with pytest.raises(DNMFValueError, match="pool_size"):
        max_pool(S, np.zeros(6, int), -1)
    with pytest.raises(DNMFValueError, match="stride"):
        max_pool(S, np.zeros(6, int), 3, stride=4)
    with pytest.raises(DNMFTypeError, match="S"):
        max_pool(sp.csr_matrix(S), np.zeros(6, int), 3)
    with pytest.raises(DNMFTypeError, match="S"):
        max_pool(S.astype(int), np.zeros(6, int), 3)
    with pytest.raises(DNMFValueError, match="index"):
        max_pool_backward(np.ones((2, 2)), np.array([[0, 9], [0, 1]]), 3)
