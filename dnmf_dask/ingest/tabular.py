"""AnnData ``.h5ad`` files → the arrays of a corpus store.

An ``.h5ad`` file (AnnData ≥ 0.8 on-disk format, read with h5py, no anndata or pandas needed)
holds ``X`` (a dense dataset, or a group with ``encoding-type`` ``csr_matrix`` / ``csc_matrix``
and ``data``, ``indices``, ``indptr``), and the data frames ``obs`` (one row per sample) and
``var`` (one row per feature), whose ``_index`` attribute names their index column. Columns are
datasets (numbers or strings) or ``categorical`` groups (``categories`` + ``codes``, −1 = missing).

:func:`read_h5ad` returns samples as rows (X stays sparse if it is stored sparse), the ``var``
index as ``feature_names``, the ``obs`` index as ``sample_ids``, and optionally labels and groups
from ``obs`` columns. Missing labels (categorical code −1) become −1, i.e. unlabeled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import DNMFTypeError, DNMFValueError

__all__ = ["H5adData", "read_h5ad"]


@dataclass
class H5adData:
    X: object  # (n_samples, n_features) numpy array or scipy.sparse CSR matrix
    y: np.ndarray | None
    groups: np.ndarray | None
    feature_names: np.ndarray | None
    label_names: np.ndarray | None
    sample_ids: np.ndarray | None
    params: dict = field(default_factory=dict)


def _strings(values) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _encoding(node) -> str | None:
    enc = node.attrs.get("encoding-type")
    return enc.decode() if isinstance(enc, bytes) else enc


def _read_X(f, path):
    import h5py

    if "X" not in f:
        raise DNMFValueError(f"input: expected an 'X' entry in the h5ad file {path}, found entries {sorted(f.keys())}")
    node = f["X"]
    if isinstance(node, h5py.Dataset):
        return np.asarray(node[()])
    enc = _encoding(node)
    if enc not in ("csr_matrix", "csc_matrix") or not {"data", "indices", "indptr"} <= set(node.keys()):
        raise DNMFValueError(
            f"input: expected X as a dense dataset or a csr_matrix/csc_matrix group (AnnData >= 0.8) in {path}, "
            f"found a group with encoding-type {enc!r} and entries {sorted(node.keys())}"
        )
    shape = tuple(int(s) for s in node.attrs["shape"])
    cls = sp.csr_matrix if enc == "csr_matrix" else sp.csc_matrix
    M = cls((node["data"][()], node["indices"][()], node["indptr"][()]), shape=shape)
    return M.tocsr()


def _frame(f, name, path):
    if name not in f:
        return None, {}
    g = f[name]
    index_key = g.attrs.get("_index", "_index")
    index_key = index_key.decode() if isinstance(index_key, bytes) else index_key
    index = _strings(g[index_key][()]) if index_key in g else None
    return index, g


def _column(g, key, frame, path):
    """(codes, names) of an obs column: categorical → its codes and categories; strings → sorted
    unique values; integers → the values themselves (−1 = missing) and no names."""
    import h5py

    if key not in g:
        cols = sorted(k for k in g.keys() if k != g.attrs.get("_index", "_index"))
        raise DNMFValueError(f"{frame}: expected a column {key!r} in {path}'s {frame}, found columns {cols}")
    node = g[key]
    if isinstance(node, h5py.Group):
        if _encoding(node) != "categorical":
            raise DNMFValueError(f"{frame}: expected column {key!r} to be categorical or a dataset, found {_encoding(node)!r}")
        return np.asarray(node["codes"][()], dtype=np.int64), _strings(node["categories"][()])
    vals = node[()]
    if vals.dtype.kind in "iu":
        return vals.astype(np.int64), None
    if vals.dtype.kind in "OSU":
        names, codes = np.unique(_strings(vals), return_inverse=True)
        return codes.astype(np.int64), names
    raise DNMFTypeError(f"{frame}: expected column {key!r} of integers, strings or categories, found dtype {vals.dtype}")


def read_h5ad(path, *, label_key=None, group_key=None) -> H5adData:
    """Read an AnnData ``.h5ad`` file (see the module docstring).

    Parameters
    ----------
    path : the .h5ad file
    label_key : obs column with the class of each sample (optional)
    group_key : obs column with the group of each sample (e.g. a document or donor id; samples of a
        group must be contiguous, as pooling requires; optional)
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise DNMFValueError(f"input: expected an existing .h5ad file, found nothing at {str(p)!r}")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise DNMFValueError(f"input: expected an HDF5 (.h5ad) file, found {type(e).__name__}: {e}") from None
    with f:
        X = _read_X(f, p)
        if X.ndim != 2:
            raise DNMFValueError(f"input: expected a 2-D X in {p}, found shape {X.shape}")
        sample_ids, obs = _frame(f, "obs", p)
        feature_names, _ = _frame(f, "var", p)
        y = label_names = groups = None
        if label_key is not None:
            if not obs:
                raise DNMFValueError(f"label_key: expected an 'obs' frame in {p}, found none")
            y, label_names = _column(obs, label_key, "obs", p)
        if group_key is not None:
            if not obs:
                raise DNMFValueError(f"group_key: expected an 'obs' frame in {p}, found none")
            groups, _ = _column(obs, group_key, "obs", p)
    n, m = X.shape
    for name, arr, size in (("obs index", sample_ids, n), ("var index", feature_names, m), ("labels", y, n),
                            ("groups", groups, n)):
        if arr is not None and len(arr) != size:
            raise DNMFValueError(f"input: expected the {name} of {p} to have length {size}, found {len(arr)}")
    return H5adData(X, y, groups, feature_names, label_names, sample_ids,
                    {"file": str(p), "format": "h5ad", "label_key": label_key, "group_key": group_key})
