"""Initial S blocks and A for a row-blocked X: 'random', 'nndsvd', 'nndsvda' (and 'custom')."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import scipy.linalg

from ..kernels.init import NNDSVD_EPS, nndsvd_choice, nndsvd_rows, random_matrix, random_rows
from .blocks import Blocks
from .mapreduce import map_reduce, one_blas_thread


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


def _svd_compressed(Xd, k, n_power_iter, seed, stream):
    """dask's ``svd_compressed(Xd, k, iterator="QR", compute=stream)`` with its one product by X
    that follows the sketch taken as (Xᵀ Q)ᵀ instead of Qᵀ X: with X's blocks as the right-hand
    operand and sparse, dask's tensordot concatenates every block of X into a single task (all of
    the corpus in one task's memory). Same singular triplets, up to rounding."""
    comp = da.linalg.compression_matrix(Xd, k, iterator="QR", n_power_iter=n_power_iter, seed=seed, compute=stream)
    if stream:
        comp = comp.persist()
    v, s, u = da.linalg.tsqr(Xd.T.dot(comp.T), compute_svd=True)  # (Qᵀ X)ᵀ = V Σ Uᵀ
    u, v = da.linalg.svd_flip(comp.T.dot(u.T)[:, :k], v.T[:k, :])
    return u, s[:k], v


def _randomized_svd(blocks: Blocks, k: int, seed: int, n_power_iter: int):
    if blocks.sparse:
        Xd = _sparse_dask(blocks)
    else:  # missing entries (NaN) count as 0 for the initial SVD
        Xd = blocks.to_dask(blocks.X, blocks.n_features, blocks.dtype).map_blocks(np.nan_to_num)
    # iterator="QR" re-orthonormalises after every product: dask's default "power" iterator
    # multiplies by (X Xᵀ)^n_power_iter before one QR, which overflows float32 once
    # s_max^(2 n_power_iter + 1) > 3e38 (s_max ≈ 1e4 for a 5,000-row count block) and then the
    # SVD of the NaN-filled sketch raised "SVD did not converge"
    # the sketch's QRs and products are small GEMMs: on the threaded scheduler each task calling
    # multithreaded BLAS beside the other tasks made the init ~15x slower (63 s of task time
    # instead of 4 on a 6M-nonzero corpus, 2 cores)
    with one_blas_thread():
        # X streamed from its store (not persisted): compute=True runs each of the 2 n_power_iter + 2
        # products as its own graph, which reads X once and lets its blocks go. As one graph
        # (compute=False) the scheduler kept every block of X in memory from the first product to
        # the last, i.e. all of an out-of-core corpus.
        u, s, vt = _svd_compressed(Xd, k, n_power_iter, seed, stream=not blocks.persisted)
        upn = da.sqrt((da.maximum(u, 0) ** 2).sum(axis=0))
        unn = da.sqrt((da.minimum(u, 0) ** 2).sum(axis=0))
        # u (n × k, the size of S) is kept with the small results: computed apart from them, the S
        # blocks made from u ran the whole sketch, all its passes over X, a second time
        U_blocks = list(u.rechunk({0: tuple(blocks.sizes.tolist()), 1: -1}).to_delayed().ravel())
        *U_blocks, s, vt, upn, unn = dask.persist(*U_blocks, s, vt, upn, unn)
        s, vt, upn, unn = dask.compute(s, vt, upn, unn)
    return list(U_blocks), s, vt.T, upn, unn


def nndsvd_init(blocks: Blocks, k: int, seed: int, mean_X: float, dtype, variant="nndsvd", n_power_iter=7):
    """NNDSVD(a) (Boutsidis & Gallopoulos) from a truncated SVD of X computed blockwise.

    The SVD is exact (eigendecomposition of the XᵀX summed over blocks) when n_features ≤
    :data:`GRAM_SVD_MAX_FEATURES`, else randomized (dask's ``svd_compressed``, ``n_power_iter``
    power iterations), whose result can differ across chunkings at the level of rounding
    amplified by the singular-value gaps.
    """
    if blocks.n_features <= GRAM_SVD_MAX_FEATURES:
        U_blocks, s, V, upn, unn = _exact_svd(blocks, k)
    else:
        U_blocks, s, V, upn, unn = _randomized_svd(blocks, k, seed, n_power_iter)
    use_pos, u_scale, A = nndsvd_choice(s, V, upn, unn)
    A[A < NNDSVD_EPS] = 0
    fill = mean_X if variant == "nndsvda" else None
    if fill is not None:
        A[A == 0] = fill
    S = [dask.delayed(_rows, pure=True)(ub, use_pos, u_scale, fill, dtype) for ub in U_blocks]
    return list(dask.persist(*S)), A.astype(dtype)


def _rows(U, use_pos, u_scale, fill, dtype):
    return nndsvd_rows(U, use_pos, u_scale, fill).astype(dtype)


def _sparse_dask(blocks: Blocks):
    import scipy.sparse as sp

    meta = sp.csr_matrix((0, 0), dtype=blocks.dtype)
    arrs = [da.from_delayed(p, shape=(int(n), blocks.n_features), dtype=blocks.dtype, meta=meta) for p, n in zip(blocks.X, blocks.sizes)]
    return da.concatenate(arrs, axis=0) if len(arrs) > 1 else arrs[0]
