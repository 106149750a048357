"""Rank-selection restarts as parallel dask work: one task per (rank, restart), X shared once."""

from __future__ import annotations

import uuid

import dask

from ..kernels.selection import fit_restart


def run_restarts(X, ks, n_restarts, seed, **kw):
    """Fit every rank in ``ks`` ``n_restarts`` times (seeds ``seed + 1000 k + r``) in parallel.

    ``X`` is an in-memory numpy array or scipy.sparse matrix; it enters the graph once. Returns
    ``{k: [(S, A, rel_error), ...]}``. ``kw`` goes to :func:`~dnmf_dask.kernels.selection.fit_restart`.
    """
    Xd = dask.delayed(X, name=f"select-X-{uuid.uuid4().hex}")
    tasks = {k: [dask.delayed(fit_restart, pure=True)(Xd, k, seed + 1000 * k + r, **kw) for r in range(n_restarts)]
             for k in ks}
    (out,) = dask.compute(tasks)
    return out
