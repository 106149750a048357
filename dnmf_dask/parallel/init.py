"""Initial S blocks and A for a row-blocked X: 'random', 'nndsvd', 'nndsvda' (and 'custom')."""

from __future__ import annotations

import dask
import numpy as np
import scipy.linalg

from ..kernels.init import NNDSVD_EPS, nndsvd_choice, nndsvd_rows, random_matrix, random_rows
from .blocks import Blocks
from .mapreduce import map_reduce


def random_init(blocks: Blocks, k: int, seed: int, mean_X: float, dtype):
    """(S blocks as Delayed, A) with scikit-learn's 'random' scale sqrt(mean(X)/k)."""
    scale = np.sqrt(max(mean_X, 0.0) / k)
    A = random_matrix(seed, (blocks.n_features, k), scale, dtype, stream=2)
    S = [
        dask.delayed(random_rows, pure=True)(seed, int(blocks.offsets[i]), int(blocks.offsets[i + 1]), k, scale, dtype)
        for i in range(blocks.n_blocks)
    ]
    return list(dask.persist(*S)), A


#: up to this many features the SVD for NNDSVD is exact (top-k eigenpairs of XᵀX, one pass over X).
#: The eigensolver's O(f³) tridiagonalisation sets the cut: ~1 s at 2048 features on one core,
#: ~20 s at 4096, where the randomized SVD takes a few passes over X instead.
GRAM_SVD_MAX_FEATURES = 2048


def _gram_block(X):
    if hasattr(X, "toarray"):  # sparse: the product stays sparse, only the (f, f) Gram is dense
        X = X.astype(np.float64)
        return None, {"G": (X.T @ X).toarray()}
    X = np.nan_to_num(X).astype(np.float64, copy=False)
    return None, {"G": X.T @ X}


def _u_block(X, V, s):
    X = X if hasattr(X, "toarray") else np.nan_to_num(X)
    U = np.asarray(X @ V) / np.where(s > 0, s, 1.0)
    return U, {"pos": (np.maximum(U, 0) ** 2).sum(0), "neg": (np.minimum(U, 0) ** 2).sum(0)}


def _exact_svd(blocks: Blocks, k: int):
    """Top-k SVD from the Gram matrix XᵀX (n_features small): U blocks, s, V, U part norms."""
    _, st = map_reduce(_gram_block, [(b,) for b in blocks.X], keep_outputs=False)
    f = st["G"].shape[0]
    evals, evecs = scipy.linalg.eigh(st["G"], subset_by_index=[max(f - k, 0), f - 1])  # the top k only
    order = np.argsort(evals)[::-1][:k]
    s = np.sqrt(np.maximum(evals[order], 0))
    V = evecs[:, order]
    U_blocks, st = map_reduce(_u_block, [(b,) for b in blocks.X], V=V, s=s)
    return U_blocks, s, V, np.sqrt(st["pos"]), np.sqrt(st["neg"])


#: oversampling of the randomized SVD's sketch (Halko et al.; dask's and scikit-learn's default)
N_OVERSAMPLES = 10

#: directions of the sketch whose Gram eigenvalue is below this share of the largest are dropped
#: (X of lower rank than the sketch): a Cholesky QR through them would divide by ~0
SKETCH_RCOND = 1e-10


def _sketch_block(X, M, keep_dtype=np.float64):
    """One block's share of a sketch pass: ``Y_i = X_i M`` (kept by the last pass, in
    ``keep_dtype``) and the sums ``X_iᵀ Y_i`` and ``Y_iᵀ Y_i`` (float64), both from the one read
    of the block."""
    X = X if hasattr(X, "toarray") else np.nan_to_num(X)
    Y = np.asarray(X @ M, dtype=np.float64)
    return Y.astype(keep_dtype, copy=False), {"XtY": np.asarray(X.T @ Y, dtype=np.float64), "YtY": Y.T @ Y}


def _u_rows(Y, TW):
    """U's rows of one block from its kept sketch: ``U_i = Y_i (T W)`` (float64)."""
    return np.asarray(Y, dtype=np.float64) @ TW


def _orthonormalizer(YtY):
    """T (c × c') with ``Y T`` orthonormal, from Y's Gram (a Cholesky QR through the
    eigendecomposition, which drops the directions of Y that are numerically zero)."""
    w, W = np.linalg.eigh(YtY)
    keep = w > SKETCH_RCOND * max(w[-1], 0.0)
    return W[:, keep] / np.sqrt(w[keep])


def _randomized_svd(blocks: Blocks, k: int, seed: int, n_power_iter: int, keep_dtype=np.float64):
    """Top-k SVD of X by Halko et al.'s randomized range finder with a re-orthonormalisation
    after every product (dask's ``svd_compressed(iterator="QR")``), in ``n_power_iter + 1``
    map-reduce passes over X's blocks.

    Every pass reads each block once and forms both products with it: ``Y = X M`` (tall, n × c,
    orthonormalised as ``Q = Y T`` from the summed Gram ``YᵀY``) and ``Xᵀ Q = (Σ X_iᵀ Y_i) T``
    (small, n_features × c, QR'd on the driver into the next M). The last pass's ``Xᵀ Q`` is
    ``Bᵀ`` of ``X ≈ Q B``, whose SVD gives s and V; U's blocks are ``Y_i (T W)``.

    Memory: between the last pass and the S blocks the workers hold only the sketch ``Y``
    (n × (k + 10), in ``keep_dtype``: float32 for a float32 fit, where U's rounding is below
    S's own); U's blocks are returned lazy, one small GEMM each, computed again inside the tasks
    that need them, never all held (a 1.2M-row corpus's float64 Y and U were 290 + 190 MB on
    two 400 MB workers, which spilled). dask's own
    ``svd_compressed`` reads X twice per power iteration, and on sparse blocks its products
    concatenate every block of X into one task (dask's tensordot does so for sparse operands);
    as one graph it also held all of X from the first product to the last.
    """
    f = blocks.n_features
    c = min(k + N_OVERSAMPLES, f, blocks.n_samples)
    M = np.random.default_rng(seed).standard_normal((f, c))
    for it in range(n_power_iter + 1):
        last = it == n_power_iter
        Y_blocks, st = map_reduce(_sketch_block, [(b,) for b in blocks.X], keep_outputs=last, M=M,
                                  keep_dtype=keep_dtype)
        T = _orthonormalizer(st["YtY"])
        XtQ = st["XtY"] @ T
        if not last:
            M, _ = np.linalg.qr(XtQ)
    V, s, Wt = np.linalg.svd(XtQ, full_matrices=False)  # Xᵀ Q = V Σ Wᵀ, so X ≈ Q W Σ Vᵀ
    V, s, W = V[:, :k], s[:k], Wt.T[:, :k]
    sign = np.where(V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])] < 0, -1.0, 1.0)  # largest |v| positive
    V, W = V * sign, W * sign
    if s.size < k:  # X's rank (as the sketch sees it) is below k: zero singular pairs
        pad = k - s.size
        V, s, W = np.pad(V, ((0, 0), (0, pad))), np.pad(s, (0, pad)), np.pad(W, ((0, 0), (0, pad)))
    TW = T @ W  # U = Q W = Y (T W)
    _, st = map_reduce(_u_block, [(y,) for y in Y_blocks], keep_outputs=False, V=TW, s=np.ones(k))
    U_blocks = [dask.delayed(_u_rows, pure=True)(y, TW) for y in Y_blocks]
    return U_blocks, s, V, np.sqrt(st["pos"]), np.sqrt(st["neg"])


def nndsvd_init(blocks: Blocks, k: int, seed: int, mean_X: float, dtype, variant="nndsvd", n_power_iter=7):
    """NNDSVD(a) (Boutsidis & Gallopoulos) from a truncated SVD of X computed blockwise.

    The SVD is exact (eigendecomposition of the XᵀX summed over blocks) when n_features ≤
    :data:`GRAM_SVD_MAX_FEATURES`, else randomized (:func:`_randomized_svd`, ``n_power_iter``
    power iterations, ``n_power_iter + 1`` passes over X), whose result can differ across
    chunkings at the level of rounding amplified by the singular-value gaps.
    """
    if blocks.n_features <= GRAM_SVD_MAX_FEATURES:
        U_blocks, s, V, upn, unn = _exact_svd(blocks, k)
    else:
        keep = np.float32 if np.dtype(dtype) == np.float32 else np.float64
        U_blocks, s, V, upn, unn = _randomized_svd(blocks, k, seed, n_power_iter, keep_dtype=keep)
    use_pos, u_scale, A = nndsvd_choice(s, V, upn, unn)
    A[A < NNDSVD_EPS] = 0
    fill = mean_X if variant == "nndsvda" else None
    if fill is not None:
        A[A == 0] = fill
    S = [dask.delayed(_rows, pure=True)(ub, use_pos, u_scale, fill, dtype) for ub in U_blocks]
    return list(dask.persist(*S)), A.astype(dtype)


def _rows(U, use_pos, u_scale, fill, dtype):
    return nndsvd_rows(U, use_pos, u_scale, fill).astype(dtype)
