"""Row-blocked data as a list of dask tasks: the unit every parallel pass maps over.

:class:`Blocks` holds one dask ``Delayed`` per row block of X (and of the data mask), the
block offsets, and what the kernels need to know (dtype, sparsity). It is built from a numpy
array, a scipy.sparse matrix, a dask array or an opened :class:`~dnmf_dask.store.Corpus`; a
block never splits a group.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp

from .._validation import check_groups, check_not_empty, check_matrix, check_observed
from ..store.corpus import Corpus, StoredBlock, auto_chunk_rows, row_blocks, stored_blocks
from .mapreduce import _reading
from .memory import block_bytes_budget, in_memory_block_count, warn_if_blocks_exceed
from .scheduler import local_scheduler


def _literal(value, prefix):
    """A Delayed holding ``value`` under a fresh key (no hashing of large arrays)."""
    return dask.delayed(value, name=f"{prefix}-{uuid.uuid4().hex}")


@dataclass
class Blocks:
    """Row blocks of X: ``X[i]`` holds rows ``offsets[i]:offsets[i+1]``.

    ``X[i]`` is a Delayed of the block, or, for a corpus streamed from its store, a
    :class:`~dnmf_dask.store.corpus.StoredBlock` that the pass's own task reads
    (:func:`~dnmf_dask.parallel.mapreduce.map_reduce` takes either).
    """

    X: list
    offsets: np.ndarray
    n_features: int
    dtype: np.dtype
    sparse: bool
    W: list | None = None
    persisted: bool = False
    #: the blocks are values in this process (numpy / scipy.sparse input), not tasks to compute
    in_memory: bool = False

    @property
    def streamed(self) -> bool:
        """Every pass reads the blocks from their store inside its own tasks (:class:`StoredBlock`)."""
        return any(isinstance(x, StoredBlock) for x in self.X)

    @property
    def n_samples(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_blocks(self) -> int:
        return len(self.X)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def split(self, v):
        """Split a per-sample vector (or None) into per-block numpy pieces."""
        if v is None:
            return [None] * self.n_blocks
        return [v[self.offsets[i] : self.offsets[i + 1]] for i in range(self.n_blocks)]

    def to_dask(self, parts, n_cols, dtype):
        """Concatenate per-block (n_i, n_cols) Delayed results into a dask array."""
        arrs = [da.from_delayed(p, shape=(int(s), n_cols), dtype=dtype) for p, s in zip(parts, self.sizes)]
        return da.concatenate(arrs, axis=0) if len(arrs) > 1 else arrs[0]

    def persist(self, n_blocks=None) -> "Blocks":
        """Load the blocks into (cluster) memory once, so later passes do not re-read the store.

        In-memory blocks on one of dask's own schedulers are already where that scheduler takes
        its inputs from: they are only marked persisted (dask.persist of their literal tasks cost
        ~0.7 ms per fit, a third of a small Neural NMF fit's set-up, and gave back the same
        arrays). On a distributed Client they are sent to the workers once.

        ``n_blocks`` (fewer than there are) merges runs of consecutive blocks into that many
        larger ones as they are loaded, each by one task on the cluster (rows balanced; a merged
        block holds whole blocks, so it still never splits a group): see
        :func:`~dnmf_dask.parallel.memory.persisted_block_count`."""
        if self.persisted:
            return self
        if self.in_memory and local_scheduler():
            return replace(self, persisted=True)
        blocks = self
        if n_blocks is not None and n_blocks < self.n_blocks:
            blocks = self._merged(n_blocks)
        X = [x.delayed() if isinstance(x, StoredBlock) else x for x in blocks.X]
        Xp = list(dask.persist(*X))
        Wp = None if blocks.W is None else list(dask.persist(*blocks.W))
        return replace(blocks, X=Xp, W=Wp, persisted=True)

    def _merged(self, n_blocks) -> "Blocks":
        """These blocks as ``n_blocks`` runs of consecutive ones, each a task concatenating its run
        (a stored block is read inside that task: no separate read task, as in a pass)."""
        cuts = merge_bounds(self.offsets, n_blocks)

        def runs(parts):
            return [dask.delayed(_reading, pure=True)(_concat_rows, *parts[a:b], dask_key_name=f"merge-blocks-{uuid.uuid4().hex}")
                    for a, b in zip(cuts[:-1], cuts[1:])]

        W = None if self.W is None else runs(self.W)
        return replace(self, X=runs(self.X), W=W, offsets=self.offsets[cuts], in_memory=False)

    def nbytes_estimate(self, nnz=None) -> int:
        item = np.dtype(self.dtype).itemsize
        if self.sparse:
            return int((nnz or 0) * (item + 4) + 8 * (self.n_samples + self.n_blocks))
        return int(self.n_samples * self.n_features * item)


def merge_bounds(offsets, n_blocks) -> np.ndarray:
    """Indices into ``offsets`` (first 0, last ``len(offsets) - 1``) that cut its blocks into
    ``n_blocks`` runs of consecutive blocks with as equal row counts as the block boundaries allow
    (fewer runs when there are fewer blocks)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    m = len(offsets) - 1
    n_blocks = max(1, min(int(n_blocks), m))
    targets = offsets[-1] * np.arange(1, n_blocks) / n_blocks
    cuts = [0]
    for t in targets:
        j = int(np.argmin(np.abs(offsets - t)))
        j = min(max(j, cuts[-1] + 1), m - (n_blocks - len(cuts)))  # each run keeps at least one block
        cuts.append(j)
    cuts.append(m)
    return np.asarray(cuts, dtype=np.int64)


def _concat_rows(*parts):
    """Stack row blocks (scipy CSR or numpy) into one block."""
    if len(parts) == 1:
        return parts[0]
    if sp.issparse(parts[0]):
        return sp.vstack(parts, format="csr")
    return np.concatenate(parts, axis=0)


def _split_in_memory(X, offsets, prefix):
    return [_literal(X[offsets[i] : offsets[i + 1]], prefix) for i in range(len(offsets) - 1)]


def _dask_blocks(X, groups):
    X = X.rechunk({1: -1})
    offsets = np.r_[0, np.cumsum(X.chunks[0])].astype(np.int64)
    if groups is not None and len(offsets) > 2:
        g = np.asarray(groups)
        cut = offsets[1:-1]
        if np.any(g[cut] == g[cut - 1]):
            # a block boundary splits a group: rechunk to group-respecting blocks
            new = row_blocks(len(g), max(1, int(np.median(np.diff(offsets)))), g)
            X = X.rechunk({0: tuple(np.diff(new).tolist())})
            offsets = new
    return list(X.to_delayed().ravel()), offsets, X


def as_blocks(X, *, groups=None, observed=None, chunk_rows=None, allow_negative=False, allow_nan=True,
              few_blocks=False) -> tuple[Blocks, dict]:
    """Turn the estimators' input into :class:`Blocks`.

    ``few_blocks``: a numpy / scipy.sparse X on dask's own scheduler, with no ``chunk_rows``, is
    cut into :func:`~dnmf_dask.parallel.memory.in_memory_block_count` blocks (about one per
    thread; never more than the default), not the default blocking, which is sized for a pass
    that reads its blocks: the fit holds X in memory (on a cluster the blocks are merged as they
    are loaded instead, :meth:`Blocks.persist`).

    Returns ``(blocks, info)`` where ``info`` has ``kind`` ("numpy", "sparse", "dask", "corpus"),
    the validated ``groups`` codes (or None) and ``nnz`` when known.
    """
    info = {}
    corpus = None
    if isinstance(X, Corpus):
        corpus = X
        info["kind"] = "corpus"
        if groups is None:
            groups = X.groups
        info["nnz"] = X.attrs.get("nnz")
        warn_if_blocks_exceed(X)
        X = X.X
    Xc = check_matrix(X, "X", allow_nan=allow_nan, allow_negative=allow_negative, allow_dask=True)
    n, f = Xc.shape
    check_not_empty(Xc.shape)
    g = None if groups is None else check_groups(groups, n)
    info["groups"] = g
    W = check_observed(observed, (n, f), sp.issparse(Xc))
    if isinstance(Xc, da.Array):
        info.setdefault("kind", "dask")
        sparse = sp.issparse(Xc._meta)
        if chunk_rows is not None:
            Xc = Xc.rechunk({0: tuple(np.diff(row_blocks(n, chunk_rows, g)).tolist()), 1: -1})
        parts, offsets, Xc = _dask_blocks(Xc, g)
        if corpus is not None and np.array_equal(offsets, corpus.row_offsets):
            # the stored blocks themselves: each pass's task reads its block (see StoredBlock)
            parts = stored_blocks(corpus, Xc.dtype)
        Wparts = None
        if W is not None:
            if isinstance(W, da.Array):
                Wparts = list(W.rechunk({0: Xc.chunks[0], 1: -1}).to_delayed().ravel())
            else:
                Wparts = _split_in_memory(W, offsets, "observed")
        return Blocks(parts, offsets, f, np.dtype(Xc.dtype), sparse, Wparts), info
    sparse = sp.issparse(Xc)
    info["kind"] = "sparse" if sparse else "numpy"
    if sparse:
        info["nnz"] = Xc.nnz
    if chunk_rows is None:
        chunk_rows = auto_chunk_rows(n, f, Xc.nnz if sparse else None, Xc.dtype.itemsize, block_bytes_budget())
        if few_blocks:
            n_default = len(row_blocks(n, chunk_rows)) - 1
            n_blocks = in_memory_block_count(Xc.nnz if sparse else n * f, n_default)
            if n_blocks and n_blocks < n_default:
                chunk_rows = -(-n // n_blocks)
    offsets = row_blocks(n, chunk_rows, g)
    parts = _split_in_memory(Xc, offsets, "X")
    Wparts = None if W is None else _split_in_memory(W, offsets, "observed")
    return Blocks(parts, offsets, f, np.dtype(Xc.dtype), sparse, Wparts, in_memory=True), info
