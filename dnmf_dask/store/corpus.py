"""The corpus store: one zarr v3 group per corpus, row blocks that never split a group.

Layout (``format_version`` 1)::

    corpus.zarr/                 group, attrs: dnmf_format="corpus", format_version, n_samples,
                                 n_features, dtype, sparse, row_offsets, provenance, ...
      X/<i>                      dense block i: array (n_i, n_features)
      X/<i>/{data,indices,indptr}  sparse block i: CSR arrays of rows row_offsets[i]:row_offsets[i+1]
      y, y_true, groups          int64 (n_samples,)   (optional; -1 in y = unlabeled)
      sample_ids                 str   (n_samples,)   (optional)
      feature_names              str   (n_features,)  (optional)
      label_names                str   (n_classes,)   (optional)

Every block is one task of the dask graph that :func:`open_corpus` returns, so a block is the
unit of parallel work and of pooling: :func:`row_blocks` never cuts a group. Writes are atomic
(:mod:`.atomic`).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr

from .._validation import check_groups, check_not_empty, check_labels, check_matrix
from ..errors import DNMFValueError, StoreError
from .atomic import atomic_directory, open_store

FORMAT = "corpus"
FORMAT_VERSION = 1

#: default target of nonzeros per block for sparse data (≈ 0.1 s of MU work per task, k = 20)
TARGET_NNZ_PER_BLOCK = 4_000_000
#: default target bytes per block for dense data
TARGET_BYTES_PER_BLOCK = 64 * 2**20
#: blocks are never made smaller than this to get :data:`BLOCK_MULTIPLE` of them
MIN_NNZ_PER_BLOCK = 1_000_000
MIN_BYTES_PER_BLOCK = 16 * 2**20
#: the default block count is rounded up to a multiple of this (when blocks stay above the
#: minimum), so that 2 or 4 workers get equal shares; a constant, not the machine's core count,
#: so that the blocking (and a checkpoint's fingerprint) does not depend on where it runs
BLOCK_MULTIPLE = 4


def block_compressors():
    """The codecs of X's arrays in a new store: Blosc with zstd at level 5 over byte-shuffled values.

    An out-of-core pass decodes every block again, so the decode is what a fit pays per
    iteration. On a 4 GB count corpus (float32 data, int32 indices) zarr's default (zstd level 3,
    no shuffle) read at 7.2 ns of CPU per nonzero and stored 2.31 bytes per nonzero; this codec
    reads at 4.0 ns/nz and stores 1.81 B/nz (writing costs 84 instead of 34 ns/nz, once). Blosc's
    lz4hc read at 3.0 ns/nz but stored 2.13 B/nz (BENCHMARKS.md, "Status of #7's targets on
    2026-12-07, afternoon").
    Stores written with other codecs read as before (zarr records each array's codecs).

    A CRC32C checksum follows the compression: Blosc stores a small chunk uncompressed and then
    decoded a truncated one without an error, into wrong values; with the checksum a truncated
    or altered chunk fails its read (:class:`~dnmf_dask.errors.StoreError`). Checking it cost
    no measurable read time (3.87 vs 4.01 ns/nz, noise).
    """
    from zarr.codecs import BloscCodec, Crc32cCodec

    return (BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec())


def auto_chunk_rows(n_samples: int, n_features: int, nnz: int | None, itemsize: int, max_block_bytes: int | None = None) -> int:
    """Rows per block chosen from the data's size (used when ``chunk_rows`` is not given).

    Sparse data aims at :data:`TARGET_NNZ_PER_BLOCK` nonzeros per block, dense data at
    :data:`TARGET_BYTES_PER_BLOCK` bytes, so that one task carries enough work to amortise the
    scheduler's per-task cost (about 1–3 ms). The number of blocks is then rounded up to a
    multiple of :data:`BLOCK_MULTIPLE` (else of 2) if every block keeps at least
    :data:`MIN_NNZ_PER_BLOCK` nonzeros (:data:`MIN_BYTES_PER_BLOCK` bytes): without it, 5
    blocks on 2 workers take 3 rounds, and 1.5 blocks' worth of data leaves a core idle.

    ``max_block_bytes`` caps a block's in-memory size (sparse: ``nnz · (itemsize + 4)``), e.g.
    :func:`dnmf_dask.parallel.memory.block_bytes_budget` of the workers' ``memory_limit``: more,
    smaller blocks then.
    """
    if n_samples == 0:
        return 1
    if nnz is not None:
        size, target, least = max(nnz, n_samples), TARGET_NNZ_PER_BLOCK, MIN_NNZ_PER_BLOCK
    else:
        size, target, least = n_samples * n_features * itemsize, TARGET_BYTES_PER_BLOCK, MIN_BYTES_PER_BLOCK
    n_blocks = max(1, -(-size // target))
    if max_block_bytes:
        nbytes = size * (itemsize + 4) if nnz is not None else size
        n_blocks = max(n_blocks, -(-int(nbytes) // max(1, int(max_block_bytes))))
    for multiple in (BLOCK_MULTIPLE, 2):
        balanced = -(-n_blocks // multiple) * multiple
        if size / balanced >= least:
            n_blocks = balanced
            break
    return int(max(1, min(n_samples, -(-n_samples // n_blocks))))


def row_blocks(n_samples: int, chunk_rows: int, groups=None) -> np.ndarray:
    """Block boundaries (offsets, length n_blocks + 1) of about ``chunk_rows`` rows each.

    With ``groups`` a boundary is only placed where the group id changes, so a block always holds
    whole groups; a group longer than ``chunk_rows`` gets a block of its own.
    """
    chunk_rows = int(chunk_rows)
    if chunk_rows < 1:
        raise DNMFValueError(f"chunk_rows: expected a positive integer, found {chunk_rows}")
    if n_samples == 0:
        return np.array([0], dtype=np.int64)
    if groups is None:
        cuts = np.arange(0, n_samples, chunk_rows, dtype=np.int64)
        return np.append(cuts, n_samples)
    groups = np.asarray(groups)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]).tolist() + [n_samples]
    # greedy: each block ends at the furthest group start within chunk_rows of its beginning,
    # or, when the next group alone is longer, right after that group
    out = [0]
    j = 1
    while out[-1] < n_samples:
        lo, best = out[-1], None
        while j < len(starts) and starts[j] - lo <= chunk_rows:
            best = starts[j]
            j += 1
        if best is None:
            best = starts[j]
            j += 1
        out.append(int(best))
    return np.asarray(out, dtype=np.int64)


@dataclass
class Corpus:
    """An opened corpus: a row-blocked dask array and its per-sample and per-feature metadata.

    Attributes
    ----------
    X : dask.array.Array, shape (n_samples, n_features)
        One dask chunk per stored block; blocks are ``scipy.sparse.csr_matrix`` for sparse corpora.
    y : ndarray of int64 (n_samples,) or None
        Labels used for training, ``-1`` = unlabeled.
    y_true : ndarray or None
        Full ground truth kept for evaluation (e.g. before ``--label-fraction`` masking).
    groups : ndarray of int64 (n_samples,) or None
        Group (document / clip) id per sample; groups are contiguous and never split by a block.
    feature_names, label_names, sample_ids : ndarray of str or None
    attrs : dict
        Provenance and format information.
    path : Path
    """

    X: da.Array
    y: np.ndarray | None = None
    y_true: np.ndarray | None = None
    groups: np.ndarray | None = None
    feature_names: np.ndarray | None = None
    label_names: np.ndarray | None = None
    sample_ids: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def row_offsets(self) -> np.ndarray:
        return np.asarray(self.attrs["row_offsets"], dtype=np.int64)

    @property
    def shape(self):
        return self.X.shape

    def __repr__(self) -> str:
        kind = "sparse" if self.attrs.get("sparse") else "dense"
        return (
            f"Corpus(path={str(self.path)!r}, shape={self.X.shape}, {kind}, "
            f"blocks={self.X.numblocks[0]}, labeled={None if self.y is None else int((self.y >= 0).sum())})"
        )


class StoredBlock:
    """Row block ``index`` of a corpus store, read by the task that uses it (:meth:`load`).

    A pass over a corpus larger than the cluster's memory reads every block again; handing the
    per-block task this small description instead of a separate read task's result makes the read
    part of that task: one scheduler round trip per block and pass instead of three (read, the
    dask array's alias of it, the pass), no decoded block held between two tasks, and a pass that
    waits for the previous one's factors cannot start its reads early. ``dtype`` is the dtype the
    block is decoded to (the estimator's float dtype).
    """

    __slots__ = ("path", "index", "sparse", "shape", "dtype")

    def __init__(self, path: str, index: int, sparse: bool, shape, dtype):
        self.path, self.index, self.sparse = str(path), int(index), bool(sparse)
        self.shape, self.dtype = (int(shape[0]), int(shape[1])), np.dtype(dtype)

    def load(self):
        """The block as a ``scipy.sparse.csr_matrix`` (sparse corpora) or numpy array."""
        return _load_block(self.path, self.index, self.sparse, self.shape, self.dtype)

    def delayed(self):
        """A dask task reading the block (one key per stored block: dask's own read task)."""
        return dask.delayed(StoredBlock.load, pure=True)(self, dask_key_name=f"load-corpus-{self.path}-{self.index}")

    def __reduce__(self):  # a plain tuple on the wire (no pickle of numpy dtype objects' classes)
        return (StoredBlock, (self.path, self.index, self.sparse, self.shape, self.dtype.str))

    def __repr__(self) -> str:
        return f"StoredBlock({self.path!r}, {self.index}, shape={self.shape})"


def stored_blocks(corpus: "Corpus", dtype=None) -> list:
    """One :class:`StoredBlock` per stored block of ``corpus`` (decoded to ``dtype``, default the stored one)."""
    off = corpus.row_offsets
    f = int(corpus.X.shape[1])
    dt = corpus.X.dtype if dtype is None else dtype
    path = str(Path(corpus.path).absolute())
    return [StoredBlock(path, i, bool(corpus.attrs.get("sparse")), (int(off[i + 1] - off[i]), f), dt)
            for i in range(len(off) - 1)]


def _block_iter(X, offsets):
    """Yield the row blocks of X (numpy, scipy CSR or dask) as in-memory numpy / CSR."""
    if isinstance(X, da.Array):
        X = X.rechunk({0: tuple(np.diff(offsets).tolist()), 1: -1})
        for i in range(X.numblocks[0]):
            b = X.blocks[i].compute()
            if sp.issparse(b):
                b = sp.csr_matrix(b)
            yield b
    else:
        for i in range(len(offsets) - 1):
            yield X[offsets[i] : offsets[i + 1]]


def _write_blocks(xg, X, offsets, is_sparse, first=0, overwrite=False) -> int:
    """Write the row blocks of X as ``xg/<first + i>``; returns the nonzeros written (sparse)."""
    f = X.shape[1]
    written_nnz = 0
    for j, block in enumerate(_block_iter(X, offsets)):
        i = first + j
        if is_sparse:
            block = sp.csr_matrix(block)
            block.sum_duplicates()
            block.sort_indices()
            if block.data.size and not np.all(np.isfinite(block.data)):
                raise DNMFValueError(f"X: expected finite values, found NaN or inf in block {j}")
            bg = xg.create_group(str(i), overwrite=overwrite)
            for name, arr in (("data", block.data), ("indices", block.indices.astype(np.int32)), ("indptr", block.indptr.astype(np.int64))):
                bg.create_array(name, data=np.ascontiguousarray(arr), chunks=(max(1, min(arr.size, 1 << 22)),),
                                compressors=block_compressors())
            written_nnz += block.nnz
        else:
            block = np.asarray(block)
            if np.isinf(block).any():
                raise DNMFValueError(f"X: expected finite values or NaN for missing entries, found inf in block {j}")
            rows = max(1, min(block.shape[0], TARGET_BYTES_PER_BLOCK // max(1, f * block.dtype.itemsize)))
            xg.create_array(str(i), data=np.ascontiguousarray(block), chunks=(rows, f), overwrite=overwrite,
                            compressors=block_compressors())
    return written_nnz


def _write_strings(g, name, values):
    values = np.asarray(values).astype(str)
    a = g.create_array(name, shape=values.shape, dtype=str, chunks=(max(1, min(len(values), 65536)),))
    if len(values):
        a[:] = values


def _write_ints(g, name, values):
    values = np.asarray(values, dtype=np.int64)
    g.create_array(name, data=values, chunks=(max(1, min(len(values), 1 << 20)),))


def write_corpus(
    path,
    X,
    y=None,
    groups=None,
    feature_names=None,
    chunk_rows=None,
    *,
    label_names=None,
    sample_ids=None,
    y_true=None,
    attrs=None,
    overwrite=False,
):
    """Write a corpus to a zarr v3 store at ``path``, atomically, and return it opened.

    Parameters
    ----------
    path : str or Path
        Destination folder (conventionally ``*.zarr``).
    X : array-like (n_samples, n_features)
        numpy array, any scipy.sparse matrix (stored CSR per block) or dask array (dense or with
        scipy.sparse blocks). NaN in dense X marks missing entries; inf is rejected.
    y : array-like of int (n_samples,), optional
        Labels, ``-1`` = unlabeled.
    groups : array-like (n_samples,), optional
        Group id per sample (document, clip); samples of a group must be contiguous. Blocks never
        split a group.
    feature_names : array-like of str (n_features,), optional
    chunk_rows : int, optional
        Target rows per block; default from :func:`auto_chunk_rows`.
    label_names, sample_ids, y_true : optional
        Class names, per-sample identifiers, and ground-truth labels kept for evaluation.
    attrs : dict, optional
        JSON-serialisable provenance stored under ``attrs["provenance"]``.
    overwrite : bool
        Replace an existing store (atomically; the old one stays intact if the write fails).

    Returns
    -------
    Corpus
    """
    X = check_matrix(X, "X", allow_nan=True, allow_negative=True, allow_dask=True)
    n, f = X.shape
    check_not_empty(X.shape)
    y = None if y is None else check_labels(y, n, "y")
    y_true = None if y_true is None else check_labels(y_true, n, "y_true")
    groups = None if groups is None else check_groups(groups, n)
    if feature_names is not None:
        feature_names = np.asarray(feature_names).astype(str)
        if feature_names.shape != (f,):
            raise DNMFValueError(
                f"feature_names: expected {f} names (one per column of X), found shape {feature_names.shape}"
            )
    if sample_ids is not None:
        sample_ids = np.asarray(sample_ids).astype(str)
        if sample_ids.shape != (n,):
            raise DNMFValueError(f"sample_ids: expected {n} ids (one per row of X), found shape {sample_ids.shape}")
    if label_names is not None:
        label_names = np.asarray(label_names).astype(str)
        for lab_name, v in (("y", y), ("y_true", y_true)):
            if v is not None and (v >= len(label_names)).any():
                raise DNMFValueError(f"{lab_name}: expected class codes < {len(label_names)} (one per label name), found {v.max()}")
    if attrs is not None:
        try:
            json.dumps(attrs)
        except TypeError as e:
            raise DNMFValueError(f"attrs: expected a JSON-serialisable dict, found {e}") from None

    is_sparse = (isinstance(X, da.Array) and sp.issparse(X._meta)) or sp.issparse(X)
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        X.sum_duplicates()
        X.sort_indices()
    nnz = X.nnz if sp.issparse(X) else None
    if chunk_rows is None:
        chunk_rows = auto_chunk_rows(n, f, nnz, X.dtype.itemsize)
    offsets = row_blocks(n, chunk_rows, groups)

    with atomic_directory(path, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w-")
        xg = root.create_group("X")
        written_nnz = _write_blocks(xg, X, offsets, is_sparse)
        for name, v in (("y", y), ("y_true", y_true), ("groups", groups)):
            if v is not None:
                _write_ints(root, name, v)
        for name, v in (("feature_names", feature_names), ("sample_ids", sample_ids)):
            if v is not None:
                _write_strings(root, name, v)
        if label_names is not None:
            _write_strings(root, "label_names", label_names)
        from .. import __version__

        root.attrs.update(
            {
                "dnmf_format": FORMAT,
                "format_version": FORMAT_VERSION,
                "n_samples": int(n),
                "n_features": int(f),
                "dtype": np.dtype(X.dtype).name,
                "sparse": bool(is_sparse),
                "nnz": int(written_nnz) if is_sparse else None,
                "row_offsets": offsets.tolist(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                "dnmf_version": __version__,
                "provenance": attrs or {},
            }
        )
    return open_corpus(path)


def _load_block(path: str, i: int, sparse: bool, shape, dtype):
    g = zarr.open_group(path, mode="r")
    try:
        if sparse:
            bg = g["X"][str(i)]
            data, indices, indptr = bg["data"][:], bg["indices"][:], bg["indptr"][:]
            if indptr.shape != (shape[0] + 1,) or indptr[-1] != data.shape[0] or indices.shape != data.shape:
                raise StoreError(f"corpus {path!r}: block {i} is inconsistent (CSR arrays do not match its shape {shape})")
            return sp.csr_matrix((data.astype(dtype, copy=False), indices, indptr), shape=shape)
        block = g["X"][str(i)][:]
        return block.astype(dtype, copy=False)
    except StoreError:
        raise
    except Exception as e:  # decoding errors of truncated / damaged chunks
        raise StoreError(f"corpus {path!r}: block {i} cannot be read ({type(e).__name__}: {e})") from e


def _read_optional(root, name):
    # after an append the per-sample arrays live under new names recorded in the attrs
    name = dict(root.attrs).get("sample_arrays", {}).get(name, name)
    if name in root:
        return root[name][:]
    return None


def open_corpus(path) -> Corpus:
    """Open a corpus store written by :func:`write_corpus` as a lazy, row-blocked dask array.

    Metadata is validated eagerly (format, version, block shapes, per-sample arrays); block data
    is read lazily, one task per block.
    """
    root, a, p = open_store(path, FORMAT, FORMAT_VERSION)
    n, f, sparse, dtype = a["n_samples"], a["n_features"], a["sparse"], np.dtype(a["dtype"])
    offsets = np.asarray(a["row_offsets"], dtype=np.int64)
    if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) <= 0):
        raise StoreError(f"corpus {str(p)!r}: row_offsets are inconsistent with n_samples={n}")
    if "X" not in root:
        raise StoreError(f"corpus {str(p)!r}: the array 'X' is missing")
    xg = root["X"]
    parts = []
    spath = str(p.absolute())
    meta = sp.csr_matrix((0, 0), dtype=dtype) if sparse else np.empty((0, 0), dtype=dtype)
    for i in range(len(offsets) - 1):
        shape = (int(offsets[i + 1] - offsets[i]), int(f))
        if str(i) not in xg:
            raise StoreError(f"corpus {str(p)!r}: block X/{i} is missing")
        node = xg[str(i)]
        if sparse:
            if not all(k in node for k in ("data", "indices", "indptr")):
                raise StoreError(f"corpus {str(p)!r}: sparse block X/{i} lacks data/indices/indptr")
            if node["indptr"].shape != (shape[0] + 1,):
                raise StoreError(f"corpus {str(p)!r}: block X/{i} has {node['indptr'].shape[0] - 1} rows, expected {shape[0]}")
        elif tuple(node.shape) != shape:
            raise StoreError(f"corpus {str(p)!r}: block X/{i} has shape {tuple(node.shape)}, expected {shape}")
        d = StoredBlock(spath, i, sparse, shape, dtype).delayed()
        parts.append(da.from_delayed(d, shape=shape, dtype=dtype, meta=meta))
    X = da.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    out = Corpus(X=X, attrs=a, path=p)
    for name in ("y", "y_true", "groups"):
        v = _read_optional(root, name)
        if v is not None and v.shape != (n,):
            raise StoreError(f"corpus {str(p)!r}: {name} has shape {v.shape}, expected ({n},)")
        setattr(out, name, v)
    for name, length in (("feature_names", f), ("sample_ids", n), ("label_names", None)):
        v = _read_optional(root, name)
        if v is not None:
            v = np.asarray(v.tolist(), dtype=str)
            if length is not None and v.shape != (length,):
                raise StoreError(f"corpus {str(p)!r}: {name} has shape {v.shape}, expected ({length},)")
        setattr(out, name, v)
    return out


#: per-sample arrays an append extends (feature_names and label_names are per corpus)
_SAMPLE_ARRAYS = ("y", "y_true", "groups", "sample_ids")


def append_corpus(path, X, y=None, groups=None, *, sample_ids=None, y_true=None, chunk_rows=None, provenance=None):
    """Append new samples (rows) to an existing corpus store as new row blocks.

    Existing blocks are never rewritten. The new blocks are written under unused names, the
    extended per-sample arrays (``y``, ``y_true``, ``groups``, ``sample_ids``) under new names,
    and the store only switches to them with the final, atomic update of its metadata
    (``zarr.json``): an append that fails or is killed leaves the corpus as it was.

    Parameters
    ----------
    path : corpus store written by :func:`write_corpus`
    X : array-like (n_new, n_features), same features (and dense/sparse kind) as the store
    y, y_true : labels of the new rows (default -1 = unknown when the store has labels)
    groups : group ids of the new rows (renumbered after the store's groups, so a new group
        never joins an old one); default one group per new row when the store has groups
    sample_ids : ids of the new rows (required when the store has sample ids)
    chunk_rows : rows per new block (default: the store's first block size)
    provenance : JSON dict recorded in the store's ``appends`` list

    Returns
    -------
    Corpus, reopened
    """
    c = open_corpus(path)
    root = zarr.open_group(str(c.path), mode="r+")
    a = dict(root.attrs)
    n_old, f, sparse_old = a["n_samples"], a["n_features"], a["sparse"]
    X = check_matrix(X, "X", allow_nan=True, allow_negative=True, allow_dask=True)
    n, f_new = X.shape
    if f_new != f or n == 0:
        raise DNMFValueError(f"X: expected at least one row of {f} features (as the corpus), found shape {X.shape}")
    is_sparse = (isinstance(X, da.Array) and sp.issparse(X._meta)) or sp.issparse(X)
    if is_sparse != bool(sparse_old):
        raise DNMFValueError(f"X: expected {'sparse' if sparse_old else 'dense'} data (as the corpus), found {'sparse' if is_sparse else 'dense'}")
    if sp.issparse(X):
        X = sp.csr_matrix(X)
    X = X.astype(np.dtype(a["dtype"]))
    new = {}
    for name, v in (("y", y), ("y_true", y_true)):
        if v is not None:
            new[name] = check_labels(v, n, name)
        elif getattr(c, name) is not None:
            new[name] = np.full(n, -1, dtype=np.int64)
    if c.groups is not None or groups is not None:
        if c.groups is None:
            raise DNMFValueError("groups: expected None (the corpus has no groups), found group ids")
        g = np.arange(n) if groups is None else check_groups(groups, n)
        _, g = np.unique(g, return_inverse=True)  # codes 0..m-1 (a relabeling keeps groups contiguous)
        new["groups"] = g.astype(np.int64) + int(c.groups.max()) + 1
    if c.sample_ids is not None or sample_ids is not None:
        if c.sample_ids is None or sample_ids is None:
            raise DNMFValueError("sample_ids: expected ids for the new rows exactly when the corpus has them, found a mismatch")
        sid = np.asarray(sample_ids).astype(str)
        if sid.shape != (n,):
            raise DNMFValueError(f"sample_ids: expected {n} ids, found shape {sid.shape}")
        new["sample_ids"] = sid
    offsets_old = np.asarray(a["row_offsets"], dtype=np.int64)
    if chunk_rows is None:
        chunk_rows = int(offsets_old[1] - offsets_old[0])
    offsets_new = row_blocks(n, chunk_rows, new.get("groups"))
    gen = len(a.get("appends", [])) + 1
    n_blocks_old = len(offsets_old) - 1
    # blocks left over by an interrupted append sit at these names; they are not part of the corpus
    written_nnz = _write_blocks(root["X"], X, offsets_new, is_sparse, first=n_blocks_old, overwrite=True)
    names = dict(a.get("sample_arrays", {}))
    old_names = dict(names)
    for key in _SAMPLE_ARRAYS:
        if key not in new:
            continue
        full = np.concatenate([np.asarray(getattr(c, key)), new[key]])
        stored = f"{key}.{gen}"
        if stored in root:
            del root[stored]
        (_write_strings if key == "sample_ids" else _write_ints)(root, stored, full)
        names[key] = stored
    appends = list(a.get("appends", [])) + [{
        "n_samples": int(n), "first_block": int(n_blocks_old),
        "appended": _dt.datetime.now(_dt.timezone.utc).isoformat(), "provenance": provenance or {},
    }]
    root.attrs.update({  # one atomic write of zarr.json: the corpus switches to the new state here
        "n_samples": int(n_old + n),
        "nnz": (int(a["nnz"]) + int(written_nnz)) if sparse_old else None,
        "row_offsets": offsets_old.tolist() + (offsets_new[1:] + n_old).tolist(),
        "sample_arrays": names,
        "appends": appends,
    })
    for key, stored in old_names.items():  # the superseded per-sample arrays
        if names.get(key) != stored and stored in root:
            del root[stored]
    for key in names:
        if key in root and names[key] != key:
            del root[key]
    return open_corpus(c.path)


def corpus_fingerprint(corpus) -> str:
    """A sha256 identifying the corpus' content version (shape, blocks, labels, appends).

    Cheap (metadata and per-sample arrays only): an append or a re-ingest changes it.
    """
    import hashlib

    a = corpus.attrs
    h = hashlib.sha256()
    h.update(json.dumps({k: a.get(k) for k in ("n_samples", "n_features", "dtype", "sparse", "nnz", "row_offsets",
                                                 "created", "appends")}, sort_keys=True).encode())
    for name in ("y", "groups"):
        v = getattr(corpus, name)
        h.update(name.encode() + (b"-" if v is None else np.ascontiguousarray(v, dtype=np.int64).tobytes()))
    return h.hexdigest()
