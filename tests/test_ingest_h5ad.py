"""`.h5ad` ingestion: files written in AnnData's on-disk layout (>= 0.8) with h5py."""

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.errors import DNMFValueError
from dnmf_dask.ingest.tabular import read_h5ad


def _frame(f, name, index, columns):
    g = f.create_group(name)
    g.attrs["encoding-type"] = "dataframe"
    g.attrs["_index"] = "_index"
    g.create_dataset("_index", data=np.array(index, dtype=object), dtype=h5py.string_dtype())
    for key, col in columns.items():
        if isinstance(col, tuple):  # categorical: (codes, categories)
            c = g.create_group(key)
            c.attrs["encoding-type"] = "categorical"
            c.create_dataset("codes", data=np.asarray(col[0], dtype=np.int8))
            c.create_dataset("categories", data=np.array(col[1], dtype=object), dtype=h5py.string_dtype())
        elif np.asarray(col).dtype.kind in "OU":
            g.create_dataset(key, data=np.array(col, dtype=object), dtype=h5py.string_dtype())
        else:
            g.create_dataset(key, data=np.asarray(col))


def write_h5ad(path, X, *, obs_columns=None, encoding="csr_matrix"):
    n, m = X.shape
    with h5py.File(path, "w") as f:
        if sp.issparse(X):
            M = X.tocsr() if encoding == "csr_matrix" else X.tocsc()
            g = f.create_group("X")
            g.attrs["encoding-type"] = encoding
            g.attrs["shape"] = np.array([n, m])
            g.create_dataset("data", data=M.data)
            g.create_dataset("indices", data=M.indices)
            g.create_dataset("indptr", data=M.indptr)
        else:
            f.create_dataset("X", data=X)
        _frame(f, "obs", [f"cell{i}" for i in range(n)], obs_columns or {})
        _frame(f, "var", [f"gene{j}" for j in range(m)], {})


@pytest.mark.parametrize("encoding", ["csr_matrix", "csc_matrix", "dense"])
def test_read_h5ad_matches_what_was_written(tmp_path, encoding):
    rng = np.random.default_rng(0)
    X = sp.random(12, 7, density=0.4, random_state=1, format="csr")
    codes = np.array([0, 0, 1, 1, -1, 2, 2, 2, 0, -1, 1, 1])
    donors = np.repeat(["d0", "d1", "d2"], 4)
    path = tmp_path / "a.h5ad"
    write_h5ad(path, X if encoding != "dense" else X.toarray(), encoding=encoding,
               obs_columns={"cell_type": (codes, ["B", "NK", "T"]), "donor": donors, "batch": rng.integers(0, 3, 12)})
    d = read_h5ad(path, label_key="cell_type", group_key="donor")
    got = d.X.toarray() if sp.issparse(d.X) else d.X
    np.testing.assert_array_equal(got, X.toarray())
    assert sp.issparse(d.X) == (encoding != "dense")
    np.testing.assert_array_equal(d.y, codes)  # missing category (-1) = unlabeled
    assert list(d.label_names) == ["B", "NK", "T"]
    np.testing.assert_array_equal(d.groups, np.repeat([0, 1, 2], 4))
    assert list(d.feature_names) == [f"gene{j}" for j in range(7)]
    assert d.sample_ids[3] == "cell3"
    assert read_h5ad(path, label_key="batch").label_names is None  # integer column: codes as given


def test_cli_ingest_h5ad_and_fit(tmp_path):
    X = sp.random(40, 9, density=0.5, random_state=2, format="csr")
    codes = np.repeat([0, 1], 20)
    write_h5ad(tmp_path / "a.h5ad", X, obs_columns={"cell_type": (codes, ["a", "b"])})
    assert main(["ingest", "h5ad", str(tmp_path / "c.zarr"), "--input", str(tmp_path / "a.h5ad"),
                 "--label-key", "cell_type"]) == 0
    c = dd.open_corpus(tmp_path / "c.zarr")
    assert c.shape == (40, 9)
    np.testing.assert_array_equal(c.y, codes)
    assert list(c.feature_names)[:2] == ["gene0", "gene1"]
    np.testing.assert_allclose(c.X.compute().toarray(), X.toarray())


def test_bad_h5ad_inputs(tmp_path, capsys):
    write_h5ad(tmp_path / "a.h5ad", np.ones((3, 2)), obs_columns={"t": (np.array([0, 1, 0]), ["x", "y"])})
    with pytest.raises(DNMFValueError, match="obs: expected a column 'cell_type'"):
        read_h5ad(tmp_path / "a.h5ad", label_key="cell_type")
    (tmp_path / "b.h5ad").write_text("not hdf5")
    with pytest.raises(DNMFValueError, match="input: expected an HDF5"):
        read_h5ad(tmp_path / "b.h5ad")
    with h5py.File(tmp_path / "c.h5ad", "w") as f:
        f.create_group("X").attrs["encoding-type"] = "awkward"
    with pytest.raises(DNMFValueError, match="csr_matrix/csc_matrix"):
        read_h5ad(tmp_path / "c.h5ad")
    capsys.readouterr()
    assert main(["ingest", "h5ad", str(tmp_path / "o.zarr"), "--input", str(tmp_path / "missing.h5ad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input: expected an existing .h5ad file" in err[0]
    assert not (tmp_path / "o.zarr").exists()
