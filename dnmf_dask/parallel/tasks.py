"""The per-block task functions of the estimators' passes (what a dask worker runs).

They live here, not next to the estimators in :mod:`dnmf_dask.models`, so that a worker that
unpickles one imports only :mod:`dnmf_dask.kernels` and this package: the estimators' modules
import scikit-learn (~55 MB of every worker process's memory, counted by distributed as
unmanaged memory against the worker's ``memory_limit``; BENCHMARKS.md, "Out of core").
Each returns ``(block_output, stats)`` for :func:`~dnmf_dask.parallel.mapreduce.map_reduce`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..kernels.deep import backprop_chunk_step, energy_parts
from ..kernels.masked import nnls_rows_missing
from ..kernels.neural import Supports, chunk_cost_grad
from ..kernels.nmf import block_step, semi_block_step, split_missing, transform_block
from ..kernels.pooling import max_pool
from ..kernels.solvers import transform_block_general


# --------------------------------------------------------------------------- data summary (models/base.py)

def summary_block(X, W):
    """Per-block sums for the summary pass: entries, count, min, nnz, squared norm."""
    if sp.issparse(X):
        d = X.data
        if W is not None:
            d = X.multiply(sp.csr_matrix(W, dtype=bool)).data
            count = int(sp.csr_matrix(W).nnz)
        else:
            count = X.shape[0] * X.shape[1]
        finite = bool(np.isfinite(d).all())
        return None, {
            "sum": float(d.sum(dtype=np.float64)) if finite else 0.0,
            "abs_sum": float(np.abs(d).sum(dtype=np.float64)) if finite else 0.0,
            "count": count,
            "min": [float(d.min()) if d.size and finite else 0.0],
            "nonfinite": int(0 if finite else (~np.isfinite(d)).sum()),
            "nan": 0,
            "nnz": int(X.nnz),
        }
    X = np.asarray(X)
    nan = np.isnan(X)
    obs = ~nan if W is None else (~nan & np.asarray(W, bool))
    vals = X[obs]
    return None, {
        "sum": float(vals.sum(dtype=np.float64)),
        "abs_sum": float(np.abs(vals).sum(dtype=np.float64)),
        "count": int(obs.sum()),
        "min": [float(vals.min()) if vals.size else 0.0],
        "nonfinite": int(np.isinf(X).sum()),
        "nan": int(nan.sum()),
        "nnz": int(np.count_nonzero(vals)),
    }


# --------------------------------------------------------------------------- NMF / SSNMF (models/nmf.py)

def nmf_transform_task(X, W, *, A, scale, max_iter, tol, dtype, opts=None):
    S0 = np.full((X.shape[0], A.shape[1]), scale, dtype=dtype)
    if opts is None:
        S, _ = transform_block(X, A, S0, max_iter=max_iter, tol=tol, W=W)
    else:
        S, _ = transform_block_general(X, A, S0, max_iter=max_iter, tol=tol, W=W, loss=opts.loss,
                                       solver=opts.solver, l1_S=opts.l1_S, l2_S=opts.l2_S)
    return S, {}


def nmf_score_task(X, W, *, A, **transform_kw):
    """||W⊙(X − S Aᵀ)||² of a block for its S from :func:`nmf_transform_task` (one pass, X never densified)."""
    S, _ = nmf_transform_task(X, W, A=A, **transform_kw)
    _, st = block_step(X, S, A, W=W, update_S=False)
    return None, {"loss_X": st["loss_X"]}


# --------------------------------------------------------------------------- HierarchicalNMF (models/hierarchical.py)

def forward_task(X, *, As, layer):
    """Exact forward pass S(l) = q(A(l), S(l−1)) (NNLS) of a block, up to ``layer``."""
    S = X
    for A in As[: layer + 1]:
        S = nnls_rows_missing(S, A)  # NaN (missing) entries of X are left out of the fit
    return S.astype(X.dtype, copy=False), {}  # solved in float64, returned in the input's dtype


def layers_score_task(X, *, As):
    """||X − S_L (A0 … AL)ᵀ||² of a block, S_L by the exact forward pass (X never densified)."""
    S, _ = forward_task(X, As=As, layer=len(As) - 1)
    P = As[0]
    for A in As[1:]:
        P = P @ A
    return recon_task(X, S.astype(np.float64), P=P)


def semi_stats_task(X, S):
    _, st = semi_block_step(X, S, np.zeros((X.shape[1], S.shape[1]), S.dtype), update_S=False)
    return None, st


def recon_task(X, S, *, P):
    """||X − S Pᵀ||² and ||X||² of a block (P = A0 … Al)."""
    _, st = block_step(X, S, P, update_S=False)
    return None, {"loss_X": st["loss_X"], "norm_X": st["norm_X"]}


# --------------------------------------------------------------------------- NeuralNMF (models/neural.py)

def neural_block_stats(res, y):
    """The statistics dict of one block from its :func:`chunk_cost_grad` result ``res``."""
    c, gA, gB, ex = res
    st = {"cost": c, "recon_sq": ex["recon_sq"], "x_sq": ex["x_sq"], "label_loss": ex["label_loss"],
          "n_labeled": ex["n_labeled"], "n_correct": ex["n_correct"]}
    for l, g in enumerate(gA):
        st[f"gA{l}"] = np.asarray(g, dtype=np.float64)
    if gB is not None:
        st["gB"] = np.asarray(gB, dtype=np.float64)
        lab = np.flatnonzero(y >= 0) if y is not None else np.zeros(0, dtype=np.int64)
        # the labeled rows' last-layer codes (lists concatenate in the tree reduction, in block
        # order): the driver refits B to them without another pass over X
        st["SL_lab"] = [np.asarray(ex["S"][-1][lab], dtype=np.float64)]
        st["y_lab"] = [np.asarray(y[lab], dtype=np.int64)]
    return st


def cost_grad_task(X, y, warm=None, *, As, B, lam, cost, label_loss):
    """The block's cost, gradients and statistics; a dask task's output: the supports of the
    block's forward pass (:class:`~dnmf_dask.kernels.neural.Supports`, one bit per code: 19 KB
    per 5,000 rows for ranks (20, 10)), and the statistics.

    ``warm``: the supports of this block's previous pass (or None: a cold start); they start the
    NNLS of every layer where the previous pass ended (the same solutions, fewer pivots). The
    layer energies, which the statistics do not use, are not computed."""
    res = chunk_cost_grad(X, list(As), B, y, lam, cost, label_loss=label_loss, return_S=True, S0=warm,
                          layer_energies=False)
    return Supports.of(res[3]["S"]), neural_block_stats(res, y)


# --------------------------------------------------------------------------- DeepNMF (models/deep.py)

def pool_task(S, g, *, pool_size, stride):
    P, _, _ = max_pool(S, g, pool_size, stride)
    return P, {}


def flatten_stats(stats):
    """Kernel stats (nested) → a flat dict of arrays that ``add_stats`` can sum."""
    flat = {"energy": np.asarray(stats["energy"], dtype=np.float64)}
    for l, st in enumerate(stats["A"]):
        for key, v in st.items():
            flat[f"A{l}/{key}"] = v
    if stats.get("B") is not None:
        for key, v in stats["B"].items():
            flat[f"B/{key}"] = v
    return flat


def backprop_task(X, W, y, g, S_list, *, As, B, lam, label_loss, solver, pool_size, stride):
    X, W = split_missing(X, W)  # NaN entries of dense X are missing: into the mask the kernels take
    S_new, stats = backprop_chunk_step(
        X, list(S_list), list(As), groups=g, pool_size=pool_size, stride=stride, observed=W,
        B=B, y=y if B is not None else None, lam=lam, label_loss=label_loss, solver=solver,
    )
    return S_new, flatten_stats(stats)


def energy_task(X, W, y, g, S_list, *, As, B, lam, label_loss, pool_size, stride):
    X, W = split_missing(X, W)
    parts = energy_parts(X, list(S_list), list(As), groups=g, pool_size=pool_size, stride=stride, observed=W,
                         B=B, y=y if B is not None else None, lam=lam, label_loss=label_loss)
    return None, {"energy": parts}


def deep_forward_task(X, g, *, As, layer, pool_size, stride):
    """Exact forward pass S(0) = q(A0, X), S(l) = q(A(l), p(S(l−1))) of a block, up to ``layer``."""
    S = X
    for l, A in enumerate(As[: layer + 1]):
        if l > 0:
            S, _, g = max_pool(S, g, pool_size, stride)
        S = nnls_rows_missing(S, A)  # NaN (missing) entries of X are left out of the fit
    return S.astype(X.dtype, copy=False), {}  # solved in float64, returned in the input's dtype
