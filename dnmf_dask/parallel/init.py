"""Initial S blocks and A for a row-blocked X: 'random', 'nndsvd', 'nndsvda' (and 'custom')."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from ..kernels.init import NNDSVD_EPS, nndsvd_choice, nndsvd_rows, random_matrix, random_rows
from .blocks import Blocks


def random_init(blocks: Blocks, k: int, seed: int, mean_X: float, dtype):
    """(S blocks as Delayed, A) with scikit-learn's 'random' scale sqrt(mean(X)/k)."""
    scale = np.sqrt(max(mean_X, 0.0) / k)
    A = random_matrix(seed, (blocks.n_features, k), scale, dtype, stream=2)
    S = [
        dask.delayed(random_rows, pure=True)(seed, int(blocks.offsets[i]), int(blocks.offsets[i + 1]), k, scale, dtype)
        for i in range(blocks.n_blocks)
    ]
    return list(dask.persist(*S)), A


def nndsvd_init(blocks: Blocks, k: int, seed: int, mean_X: float, dtype, variant="nndsvd", n_power_iter=7):
    """NNDSVD(a) from a randomized truncated SVD computed blockwise with dask (svd_compressed)."""
    if blocks.sparse:
        Xd = _sparse_dask(blocks)
    else:  # missing entries (NaN) count as 0 for the initial SVD
        Xd = blocks.to_dask(blocks.X, blocks.n_features, blocks.dtype).map_blocks(np.nan_to_num)
    u, s, vt = da.linalg.svd_compressed(Xd, k, n_power_iter=n_power_iter, seed=seed, compute=False)
    upn = da.sqrt((da.maximum(u, 0) ** 2).sum(axis=0))
    unn = da.sqrt((da.minimum(u, 0) ** 2).sum(axis=0))
    s, vt, upn, unn = dask.compute(s, vt, upn, unn)
    use_pos, u_scale, A = nndsvd_choice(s, vt.T, upn, unn)
    A[A < NNDSVD_EPS] = 0
    fill = mean_X if variant == "nndsvda" else None
    if fill is not None:
        A[A == 0] = fill
    u_blocks = u.rechunk({0: tuple(blocks.sizes.tolist()), 1: -1}).to_delayed().ravel()
    S = [dask.delayed(_rows, pure=True)(ub, use_pos, u_scale, fill, dtype) for ub in u_blocks]
    return list(dask.persist(*S)), A.astype(dtype)


def _rows(U, use_pos, u_scale, fill, dtype):
    return nndsvd_rows(U, use_pos, u_scale, fill).astype(dtype)


def _sparse_dask(blocks: Blocks):
    import scipy.sparse as sp

    meta = sp.csr_matrix((0, 0), dtype=blocks.dtype)
    arrs = [da.from_delayed(p, shape=(int(n), blocks.n_features), dtype=blocks.dtype, meta=meta) for p, n in zip(blocks.X, blocks.sizes)]
    return da.concatenate(arrs, axis=0) if len(arrs) > 1 else arrs[0]
