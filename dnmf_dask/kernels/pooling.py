"""Max pooling of the coefficient matrix S within groups, and its Jacobian (Flenner & Hunter).

Orientation (DESIGN.md §1): ``S`` is (n, k), rows = samples of one layer, columns = topics.
The paper pools each *row* of its S (one topic) along the samples; here that is each
*column* of our S, along the rows, separately inside every group (document / clip).

Readings of the paper's pooling (see docs/deep_nmf_math.md):

* ``stride=1`` (default, the paper's): a window of ``pool_size`` consecutive samples slides
  with stride 1, centred on every sample: output row ``i`` is the maximum, per column, over
  input rows ``i - pool_size//2 .. i + (pool_size-1)//2`` clipped to the group of ``i``
  (the convention of ``scipy.ndimage.maximum_filter1d(size=pool_size, origin=0)``; for an
  odd ``pool_size = 2l+1`` this is the paper's ``j-l <= k <= j+l``). The number of samples
  and the groups are unchanged.
* ``stride > 1``: windows ``[g0 + m*stride, g0 + m*stride + pool_size)`` anchored at the first
  sample ``g0`` of each group, clipped to the group, ``m = 0 .. ceil(n_g/stride)-1``;
  ``stride == pool_size`` is the usual non-overlapping tiling (the last tile of a group may be
  short). The output has fewer samples; ``out_groups`` gives their groups. With
  ``keep_size=True`` every sample of a tile receives the tile's maximum instead (the literal
  "every pixel in the window is replaced with the maximum" reading): same size, block constant.
* ``pool_size`` 0 or 1: identity.

Groups shorter than a window are pooled over what exists; a window never crosses a group
boundary. Ties are broken towards the lowest row (first occurrence).

The Jacobian of max pooling is a 0/1 selection: ``index[j, c]`` is the input row whose value
``P[j, c]`` is (``P[j, c] == S[index[j, c], c]``). ``max_pool_backward`` applies its transpose
(scatter-add), which is the adjoint: ``<P(S), G> == <S, backward(G)>`` for fixed ``index``.

Pure numpy; never imports dask. Pooling is chunk-local only because chunks hold whole groups.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

from ..errors import DNMFTypeError, DNMFValueError

__all__ = [
    "group_bounds",
    "pool_windows",
    "max_pool",
    "max_pool_backward",
    "apply_pool_index",
    "pool_counts",
    "pool_labels",
]


# --------------------------------------------------------------------------- validation

def _check_int(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DNMFValueError(f"{name}: expected an integer >= {minimum}, found {value!r}")
    return int(value)


def _check_pool_args(pool_size, stride, keep_size):
    pool_size = _check_int(pool_size, "pool_size", 0)
    if stride is None:
        stride = 1
    stride = _check_int(stride, "stride", 1)
    if pool_size <= 1:
        if stride != 1:
            raise DNMFValueError(
                f"stride: expected 1 when pool_size is {pool_size} (identity pooling), found {stride}"
            )
        return pool_size, 1, False
    if stride > pool_size:
        raise DNMFValueError(
            f"stride: expected an integer in [1, pool_size={pool_size}] (a larger stride skips samples), found {stride}"
        )
    if keep_size and stride == 1:
        keep_size = False  # sliding windows already keep the size
    return pool_size, stride, bool(keep_size)


def _check_S(S, name="S"):
    if sp.issparse(S):
        raise DNMFTypeError(f"{name}: expected a dense 2-D numpy array of coefficients, found a sparse matrix")
    S = np.asarray(S)
    if S.ndim != 2:
        raise DNMFValueError(f"{name}: expected a 2-D array (n_samples, k), found {S.ndim}-D shape {S.shape}")
    if S.dtype.kind != "f":
        raise DNMFTypeError(f"{name}: expected a floating dtype (float32 or float64), found {S.dtype}")
    return S


def group_bounds(groups, n):
    """Validate ``groups`` and return ``(run_starts, run_stops, run_ids)``.

    ``groups`` is an int vector (n,) whose equal values are contiguous; the result lists the
    runs (= groups) in order: rows ``run_starts[r] : run_stops[r]`` form group ``run_ids[r]``.
    Raises :class:`DNMFValueError` if ``groups`` has the wrong shape or a group is not contiguous.
    """
    if groups is None:
        raise DNMFValueError(
            "groups: expected an int vector (n,) of group ids (pooling never crosses a group); "
            "found None (pass np.zeros(n, int) to pool the whole block as one group)"
        )
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise DNMFValueError(f"groups: expected shape ({n},) (one group id per sample), found shape {g.shape}")
    if g.dtype.kind not in "iu":
        raise DNMFTypeError(f"groups: expected an integer dtype, found {g.dtype}")
    if n == 0:
        e = np.zeros(0, np.int64)
        return e, e, g[:0]
    change = np.flatnonzero(g[1:] != g[:-1]) + 1
    starts = np.r_[0, change].astype(np.int64)
    stops = np.r_[change, n].astype(np.int64)
    ids = g[starts]
    if np.unique(ids).size != ids.size:
        vals, counts = np.unique(ids, return_counts=True)
        bad = vals[counts > 1][0]
        raise DNMFValueError(
            f"groups: expected the samples of each group to be contiguous, found group {bad!r} "
            f"in {counts[counts > 1][0]} separate runs"
        )
    return starts, stops, ids


def pool_windows(groups, pool_size, stride=1, keep_size=False):
    """The pooling windows: ``(lo, hi, out_groups)``, each of length ``n_out``.

    Output sample ``j`` pools input rows ``lo[j] .. hi[j]`` (inclusive, inside one group);
    ``out_groups[j]`` is its group id. See the module docstring for the window rules.
    """
    g = np.asarray(groups) if groups is not None else None
    n = g.shape[0] if g is not None and g.ndim == 1 else 0
    pool_size, stride, keep_size = _check_pool_args(pool_size, stride, keep_size)
    starts, stops, ids = group_bounds(groups, n)
    return _windows(starts, stops, ids, n, pool_size, stride, keep_size)


def _windows(starts, stops, ids, n, pool_size, stride, keep_size):
    lengths = stops - starts
    if pool_size <= 1:
        rows = np.arange(n, dtype=np.int64)
        return rows, rows.copy(), np.repeat(ids, lengths)
    if stride == 1 or keep_size:
        rows = np.arange(n, dtype=np.int64)
        gs = np.repeat(starts, lengths)
        ge = np.repeat(stops, lengths) - 1
        if stride == 1:  # centred sliding window (scipy maximum_filter1d convention)
            lo = rows - pool_size // 2
        else:  # tiles anchored at the group start; every sample gets its tile's window
            lo = gs + ((rows - gs) // stride) * stride
        hi = lo + pool_size - 1
        return np.maximum(lo, gs), np.minimum(hi, ge), np.repeat(ids, lengths)
    n_win = -(-lengths // stride)  # ceil(n_g / stride)
    run = np.repeat(np.arange(starts.size), n_win)
    m = np.arange(int(n_win.sum()), dtype=np.int64) - np.repeat(np.cumsum(n_win) - n_win, n_win)
    lo = starts[run] + m * stride
    hi = np.minimum(lo + pool_size - 1, stops[run] - 1)
    return lo, hi, ids[run]


# --------------------------------------------------------------------------- forward / backward

def _range_max(S, lo, hi):
    """Per column max and first argmax of S over rows lo[j]..hi[j] (inclusive).

    Sparse-table (doubling) algorithm: level t holds, for every row r, the max over rows
    r .. r + 2**t - 1 (truncated at the last row); a window of length len is covered by the two
    level-floor(log2(len)) blocks starting at lo and ending at hi, both inside the window — so
    groups are respected as long as the windows are. Only two levels are kept in memory.
    Ties go to the lower row.
    """
    n, k = S.shape
    n_out = lo.shape[0]
    P = np.empty((n_out, k), dtype=S.dtype)
    index = np.empty((n_out, k), dtype=np.int64)
    if n_out == 0:
        return P, index
    length = hi - lo + 1
    level = np.floor(np.log2(length)).astype(np.int64)
    # guard against floating log2 rounding at exact powers of two
    level[(np.int64(1) << (level + 1)) <= length] += 1
    level[(np.int64(1) << level) > length] -= 1
    top = int(level.max())
    val = S
    arg = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], (n, k))
    for t in range(top + 1):
        q = np.flatnonzero(level == t)
        if q.size:
            a = lo[q]
            b = hi[q] - (1 << t) + 1
            va, vb = val[a], val[b]
            right = vb > va
            P[q] = np.where(right, vb, va)
            index[q] = np.where(right, arg[b], arg[a])
        if t == top:
            break
        h = 1 << t
        m = max(n - h, 0)  # rows whose block can double
        new_val = val.copy()
        new_arg = np.array(arg, copy=True)
        right = val[h:] > val[:m]
        new_val[:m] = np.where(right, val[h:], val[:m])
        new_arg[:m] = np.where(right, arg[h:], arg[:m])
        val, arg = new_val, new_arg
    return P, index


def max_pool(S, groups, pool_size, stride=1, keep_size=False):
    """Max pooling of ``S`` per column inside each group.

    Parameters
    ----------
    S : ndarray (n, k), float32/float64
    groups : int ndarray (n,), contiguous group ids (pooling never crosses a group)
    pool_size : int >= 0; 0 or 1 = identity
    stride : 1 (paper: centred sliding window) or 1 < stride <= pool_size (anchored windows)
    keep_size : with stride > 1, give every sample of a tile the tile's maximum

    Returns
    -------
    P : ndarray (n_out, k), S.dtype — the pooled matrix (n_out = n unless stride > 1 and not keep_size);
        for the identity it is ``S`` itself (not a copy).
    index : int64 ndarray (n_out, k) — ``P[j, c] == S[index[j, c], c]`` (the argmax; the Jacobian).
    out_groups : ndarray (n_out,) — group id of every output sample.
    """
    S = _check_S(S)
    n, k = S.shape
    pool_size, stride, keep_size = _check_pool_args(pool_size, stride, keep_size)
    starts, stops, ids = group_bounds(groups, n)
    if pool_size <= 1:
        index = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], (n, k))
        return S, index, np.asarray(groups).copy()
    lo, hi, out_groups = _windows(starts, stops, ids, n, pool_size, stride, keep_size)
    P, index = _range_max(S, lo, hi)
    return P, index, out_groups


def _check_index(index, n_in, k=None, name="index"):
    index = np.asarray(index)
    if index.ndim != 2:
        raise DNMFValueError(f"{name}: expected a 2-D int array (n_out, k), found shape {index.shape}")
    if index.dtype.kind not in "iu":
        raise DNMFTypeError(f"{name}: expected an integer dtype, found {index.dtype}")
    if k is not None and index.shape[1] != k:
        raise DNMFValueError(f"{name}: expected {k} columns, found shape {index.shape}")
    if index.size and (index.min() < 0 or index.max() >= n_in):
        raise DNMFValueError(
            f"{name}: expected row indices in [0, {n_in}), found range [{index.min()}, {index.max()}]"
        )
    return index


def max_pool_backward(grad_P, index, n_in):
    """Adjoint of pooling (transpose of the 0/1 Jacobian): scatter-add ``grad_P`` to rows ``index``.

    ``grad_P`` (n_out, k), ``index`` (n_out, k) from :func:`max_pool`; returns ``grad_S``
    (n_in, k) with ``grad_S[i, c] = sum_{j: index[j, c] == i} grad_P[j, c]``, dtype of grad_P
    (floating), so that ``sum(P * G) == sum(S * max_pool_backward(G, index, n))``.
    """
    n_in = _check_int(n_in, "n_in", 0)
    grad_P = np.asarray(grad_P)
    if grad_P.ndim != 2:
        raise DNMFValueError(f"grad_P: expected a 2-D array (n_out, k), found shape {grad_P.shape}")
    index = _check_index(index, n_in)
    if index.shape != grad_P.shape:
        raise DNMFValueError(f"index: expected the shape of grad_P {grad_P.shape}, found {index.shape}")
    dtype = grad_P.dtype if grad_P.dtype.kind == "f" else np.float64
    k = grad_P.shape[1]
    flat = (index * k + np.arange(k, dtype=np.int64)).ravel()
    out = np.bincount(flat, weights=grad_P.ravel(), minlength=n_in * k)
    return out.reshape(n_in, k).astype(dtype, copy=False)


def apply_pool_index(S, index):
    """``J S`` for a fixed Jacobian: ``out[j, c] = S[index[j, c], c]``, shape (n_out, k)."""
    S = _check_S(S)
    index = _check_index(index, S.shape[0], S.shape[1])
    return np.take_along_axis(S, index, axis=0)


def pool_counts(index, n_in, dtype=np.float64):
    """``J^T 1``: how many outputs select each input entry, shape (n_in, k)."""
    index = np.asarray(index)
    return max_pool_backward(np.ones(index.shape, dtype=dtype), index, n_in)


def pool_labels(y, groups, pool_size, stride=1, keep_size=False):
    """Labels of the pooled samples (needed for the label term when pooling shrinks the samples).

    Output sample ``j`` gets the label shared by the labeled rows of its window, or ``-1`` if its
    window holds no labeled row or rows with different labels. For ``stride=1`` (and for
    identity) the output sample ``j`` *is* input sample ``j``, so ``y`` is returned unchanged.
    Returns an int vector (n_out,).
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DNMFValueError(f"y: expected an int vector of labels (-1 = unlabeled), found dtype {y.dtype} shape {y.shape}")
    n = y.shape[0]
    pool_size, stride, keep_size = _check_pool_args(pool_size, stride, keep_size)
    starts, stops, ids = group_bounds(groups, n)
    if pool_size <= 1 or stride == 1:
        return y.copy()
    lo, hi, _ = _windows(starts, stops, ids, n, pool_size, stride, keep_size)
    lab = y >= 0
    yf = y.astype(np.float64)
    mx, _ = _range_max(np.where(lab, yf, -1.0)[:, None], lo, hi)
    neg_mn, _ = _range_max(np.where(lab, -yf, -np.inf)[:, None], lo, hi)
    mx, mn = mx[:, 0], -neg_mn[:, 0]
    out = np.full(lo.shape[0], -1, dtype=np.int64)
    ok = (mx >= 0) & (mx == mn)
    out[ok] = mx[ok].astype(np.int64)
    return out.astype(y.dtype)
