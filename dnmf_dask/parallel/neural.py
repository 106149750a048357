"""NeuralNMF's passes through a dask graph: the block task mapped over the row blocks, each
block's NNLS warm-started from the supports its previous full pass ended with.

A full pass (the full-batch gradient, every Armijo trial, the B refit's pass) keeps what each
block task returns, the supports of the block's forward pass packed one bit per code
(:class:`~dnmf_dask.kernels.neural.Supports`, ~19 KB per 5,000 rows for ranks (20, 10)), where
it was computed (persisted, as NMF keeps its S blocks) and hands it to the next full pass's task
of the same block. The NNLS solutions are those of a cold start (a support that is already
right ends the block principal pivoting at once); the pivoting is what it saves: the block task
costs 14.5–15 instead of 19–20 ns/nz CPU when the supports carry over, and as much as cold ones
after a step of 25% of the factors' norms (BENCHMARKS.md, "NeuralNMF dask path"). Any support
is a valid start, so the most recent pass's, accepted trial or not, is the one kept.

Mini-batch passes (one block each) stay cold and leave the state alone, and NeuralNMF's SGD
runs every pass cold (``warm=False``): its fits are not reproducible to rounding. Warm and cold
passes agree to ~1e-15 in the codes, but a code at zero to within rounding can be in one's
support and not in the other's, which selects another piece of the piecewise-smooth gradient
(one block's gradient 23% apart at the same point, toy data, 6 blocks); SGD's large steps carry
such differences on: 8 epochs warm vs cold differed by 5e-4 in the cost (frobenius, 6 blocks)
and 3e-3 (cross-entropy, 3 blocks), as much as two cold fits of X and X·(1 + 1e-15) (2.5e-4,
2e-3). PGD's warm and cold fits agree to 1e-10 (tests/test_neural_model.py).
Mini-batches would also hold their own factors in each block's lineage (below).

Lineage on a distributed cluster: a persisted result stays recomputable, so the scheduler keeps
the task of every pass the warm state descends from, with the factors each was given (a
(n_features, k0) array per pass). A chain of warm passes is therefore cut, by one cold pass,
once it holds :data:`WARM_LINEAGE_BYTES` of factors (at most :data:`WARM_CHAIN_MAX` passes).
dask's own schedulers keep only the persisted values, and never cut the chain.
"""

from __future__ import annotations

import dask
import numpy as np

from .mapreduce import map_reduce
from .scheduler import local_scheduler
from .tasks import cost_grad_task

#: full passes warm-start (the default of :class:`NeuralPasses`; False: every pass cold, as before)
WARM_STARTS = True
#: on a distributed cluster, the factors the scheduler may hold in the warm state's lineage
WARM_LINEAGE_BYTES = 64 * 2**20
#: and at most this many passes in one chain of warm starts (one cold pass, then warm ones)
WARM_CHAIN_MAX = 32


def max_chain(As, B=None, *, local=None):
    """Passes per chain of warm starts: unlimited (None) on dask's own schedulers, else as many
    as :data:`WARM_LINEAGE_BYTES` of the factors fit, between 2 and :data:`WARM_CHAIN_MAX`."""
    if local_scheduler() if local is None else local:
        return None
    nbytes = sum(np.asarray(A).nbytes for A in As) + (0 if B is None else np.asarray(B).nbytes)
    return int(min(WARM_CHAIN_MAX, max(2, WARM_LINEAGE_BYTES // max(nbytes, 1))))


class NeuralPasses:
    """``passes(As, B, idx=None)``: the summed statistics of
    :func:`~dnmf_dask.parallel.tasks.cost_grad_task` over all blocks (``idx`` None, a full pass)
    or over the blocks ``idx`` (a mini-batch, cold).

    Parameters
    ----------
    per_block : list of ``(X_block, y_block)``: a Delayed or
        :class:`~dnmf_dask.store.corpus.StoredBlock`, and a numpy array or None
    warm : bool, default :data:`WARM_STARTS` (True) — full passes start each block's NNLS from
        its previous full pass's supports (the first pass is cold)
    **task_kw : ``lam``, ``cost``, ``label_loss`` of the task
    """

    def __init__(self, per_block, *, warm=None, **task_kw):
        self.per_block = list(per_block)
        self.task_kw = task_kw
        self.use_warm = bool(WARM_STARTS if warm is None else warm)
        self.state = [None] * len(self.per_block)  # per block: persisted Supports of its last full pass
        self.chain = 0  # full passes the state descends from since the last cold one

    def __call__(self, As, B, idx=None):
        As_d = dask.delayed(list(As))
        if idx is not None or not self.use_warm:  # a mini-batch, or a cold full pass: keeps nothing
            items = self.per_block if idx is None else [self.per_block[i] for i in idx]
            _, st = map_reduce(cost_grad_task, items, keep_outputs=False, As=As_d, B=B, **self.task_kw)
            return st
        limit = max_chain(As, B)
        if self.state[0] is not None and limit is not None and self.chain >= limit:
            self.state = [None] * len(self.per_block)  # a cold pass: the old lineage is forgotten
        if self.state[0] is None:
            self.chain = 0
        items = [(*pb, w) for pb, w in zip(self.per_block, self.state)]
        out, st = map_reduce(cost_grad_task, items, keep_outputs=True, As=As_d, B=B, **self.task_kw)
        self.state = out
        self.chain += 1
        return st

    def release(self):
        """Drop the kept supports (a cluster frees them and forgets their lineage)."""
        self.state = [None] * len(self.per_block)
        self.chain = 0
