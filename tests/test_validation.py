"""Bad input never hurts (issue #9): every case raises one DNMFError subclass naming the argument,
what was expected and what was found; the CLI prints one line and exits 2; stores stay intact."""

import errno
import os
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.errors import DNMFError, DNMFTypeError, DNMFValueError, StoreError, StoreWriteError
from dnmf_dask.store.model import load_model, save_model

KW = dict(max_iter=3, tol=0, random_state=0, scheduler="synchronous")


def _models():
    """One small instance of every estimator (labels-aware ones are fitted with y where needed)."""
    return [
        dd.NMF(2, **KW),
        dd.SSNMF(2, **KW),
        dd.HierarchicalNMF((2, 1), **KW),
        dd.DeepNMF((2, 1), **KW),
        dd.NeuralNMF((2, 1), epochs=2, init_max_iter=3, random_state=0, scheduler="synchronous"),
    ]


MODEL_IDS = ["NMF", "SSNMF", "HierarchicalNMF", "DeepNMF", "NeuralNMF"]


def _y(n):
    return np.arange(n) % 2


def _fit(m, X, **kw):
    y = kw.pop("y", _y(np.shape(X)[0]) if isinstance(m, dd.SSNMF) else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return m.fit(X, y, **kw)


def _raises(exc, *words):
    """pytest.raises for a DNMFError subclass whose message holds ``words`` (argument, expected, found)."""
    return pytest.raises(exc, match=".*".join(words))


# -- X: values -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["numpy", "sparse", "dask"])
@pytest.mark.parametrize("model", _models(), ids=MODEL_IDS)
def test_negative_entries(rng, model, kind):
    X = rng.random((12, 4)) - 0.5
    X = {"numpy": X, "sparse": sp.csr_matrix(X), "dask": da.from_array(X, chunks=(6, 4))}[kind]
    with _raises(DNMFValueError, "X: expected nonnegative", "found minimum"):
        _fit(model, X)


def test_semi_nmf_allows_negative_but_not_missing(rng):
    X = rng.random((12, 4)) - 0.5
    m = _fit(dd.HierarchicalNMF((2, 1), semi=True, **KW), X)
    assert np.all(np.isfinite(m.A_[0]))
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with _raises(DNMFValueError, "X: expected no NaN", "found NaN"):
        _fit(dd.HierarchicalNMF((2, 1), semi=True, **KW), Xn)
    with _raises(DNMFValueError, "observed: expected None", "found a mask"):
        _fit(dd.HierarchicalNMF((2, 1), semi=True, **KW), X, observed=np.ones(X.shape, bool))


@pytest.mark.parametrize("model", _models(), ids=MODEL_IDS)
def test_inf_always_rejected(rng, model):
    X = rng.random((12, 4))
    X[3, 1] = np.inf
    with _raises(DNMFValueError, "X: expected finite", "inf"):
        _fit(model, X)
    with _raises(DNMFValueError, "X: expected finite", "inf"):
        _fit(model, da.from_array(X, chunks=(6, 4)))  # found by the first pass over the data
    with _raises(DNMFValueError, "X: expected finite", "NaN or inf"):
        _fit(model, sp.csr_matrix(X))


def test_nan_is_missing_data_only_where_supported(rng):
    X = rng.random((12, 4))
    X[2, 2] = np.nan
    for m in _models()[:4]:  # NaN = missing entry
        assert np.all(np.isfinite(_fit(m, X).A_[0]))
    with _raises(DNMFValueError, "X: expected no NaN", "found NaN"):
        _fit(dd.NeuralNMF((2, 1), epochs=2, random_state=0, scheduler="synchronous"), X)
    with _raises(DNMFValueError, "X: expected no NaN", "2 NaN entries"):  # dask: found by the first pass
        X[5, 0] = np.nan
        _fit(dd.NeuralNMF((2, 1), epochs=2, random_state=0, scheduler="synchronous"), da.from_array(X, chunks=(6, 4)))
    with _raises(DNMFValueError, "X: expected finite", "observed="):  # sparse X marks missing data with observed=
        _fit(dd.NMF(2, **KW), sp.csr_matrix(np.where(np.isnan(X), np.nan, X)))


def test_deep_backprop_nan_equals_mask(rng):
    """NaN in dense X used to reach the backprop kernels and turn the energy into NaN silently."""
    X = rng.random((20, 5))
    X[0, 0] = X[3, 2] = np.nan
    W = ~np.isnan(X)
    kw = dict(KW, init="random", backprop_iter=3)
    a = dd.DeepNMF((2, 2), **kw).fit(X)
    b = dd.DeepNMF((2, 2), **kw).fit(np.nan_to_num(X, nan=7.0), observed=W)
    assert np.all(np.isfinite(a.history_["energy"]))
    np.testing.assert_allclose(a.history_["energy"], b.history_["energy"], rtol=1e-12)
    np.testing.assert_allclose(a.A_[0], b.A_[0], rtol=1e-12)


def test_transform_with_missing_entries_fits_observed_only(rng):
    """The exact forward pass leaves NaN entries out: equal to an NNLS on the observed features."""
    from scipy.optimize import nnls

    X = rng.random((15, 6))
    h = dd.HierarchicalNMF((3, 2), **KW).fit(X)
    Xn = X.copy()
    Xn[4, [0, 3]] = np.nan
    S = h.transform(Xn, layer=0)
    obs = ~np.isnan(Xn[4])
    ref, _ = nnls(h.A_[0][obs], Xn[4, obs])
    np.testing.assert_allclose(S[4], ref, atol=1e-10)
    np.testing.assert_allclose(S[5], nnls(h.A_[0], X[5])[0], atol=1e-10)


@pytest.mark.parametrize("model", _models(), ids=MODEL_IDS)
def test_empty_X(model):
    with _raises(DNMFValueError, "X: expected at least one sample", r"0 sample\(s\)"):
        _fit(model, np.zeros((0, 3)), y=np.zeros(0, int))
    with _raises(DNMFValueError, "X: expected at least one sample and one feature", r"0 feature\(s\)"):
        _fit(model, np.zeros((4, 0)), y=_y(4))


def test_empty_X_in_write_corpus(tmp_path):
    with _raises(DNMFValueError, "X: expected at least one sample", r"0 sample\(s\)"):
        dd.write_corpus(tmp_path / "c.zarr", np.zeros((0, 3)))
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("model", _models(), ids=MODEL_IDS)
def test_all_zero_rows_and_columns(rng, model):
    """Defined behaviour: zero samples get zero codes, zero features get zero loadings; an all-zero X is an error."""
    X = rng.random((16, 6))
    X[:3] = 0
    X[:, :2] = 0
    m = _fit(model, X, y=_y(16))
    assert np.all(np.isfinite(m.A_[0])) and m.A_[0].min() >= 0
    assert np.all(m.A_[0][:2] == 0)
    S = np.asarray(m.transform(X))
    assert np.all(np.isfinite(S)) and np.all(S[:3] == 0)
    with _raises(DNMFValueError, "X: expected at least one nonzero", "only zeros"):
        _fit(model, np.zeros((6, 4)), y=_y(6))


# -- X: dtypes -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad, exc, found", [
    (np.array([["a", "b"], ["c", "d"]]), DNMFTypeError, "found <U1"),
    (np.zeros((3, 3), "datetime64[s]"), DNMFTypeError, "found datetime64"),
    (np.ones((3, 3), complex), DNMFValueError, "found dtype complex128"),
    (np.array([[1.0, "x"], [2.0, 3.0]], dtype=object), DNMFTypeError, "found an entry of type str"),
    (np.array([[1.0, None], [2.0, 3.0]], dtype=object), DNMFTypeError, "found an entry of type NoneType"),
    ([[1.0, 2.0], [3.0]], DNMFTypeError, "numpy cannot convert"),
])
def test_non_numeric_X(bad, exc, found):
    for f in (lambda: dd.NMF(1, **KW).fit(bad), lambda: dd.write_corpus("/nonexistent/never.zarr", bad)):
        with _raises(exc, "X: expected", found):
            f()


def test_object_array_of_numbers_is_converted(rng):
    X = rng.random((10, 4))
    a = dd.NMF(2, **KW).fit(X)
    b = dd.NMF(2, **KW).fit(X.astype(object))
    assert b.A_[0].dtype == np.float64
    np.testing.assert_array_equal(a.A_[0], b.A_[0])


@pytest.mark.parametrize("dtype, expected", [(np.float32, np.float32), (np.float64, np.float64),
                                             (np.float16, np.float32), (np.int32, np.float64),
                                             (np.uint8, np.float64), (bool, np.float64)])
def test_dtype_rule(rng, dtype, expected):
    """float32/float64 kept, float16 -> float32, integers and booleans -> float64 (README 'Input dtypes')."""
    X = (rng.random((12, 5)) * 3).astype(dtype)
    m = dd.NMF(2, **KW).fit(X)
    assert m.A_[0].dtype == expected
    assert np.asarray(m.transform(X)).dtype == expected
    assert dd.SSNMF(2, **KW).fit(X, _y(12)).A_[0].dtype == expected


def test_one_d_X_says_reshape():
    with _raises(DNMFValueError, "X: expected a 2-D array", "1-D", "Reshape"):
        dd.NMF(1, **KW).fit(np.ones(5))


# -- y, groups, observed ----------------------------------------------------------------------

@pytest.mark.parametrize("model", _models()[1:], ids=MODEL_IDS[1:])
def test_labels(rng, model):
    X = rng.random((10, 4))
    with _raises(DNMFValueError, "y: expected shape", r"found shape \(9,\)"):
        _fit(model, X, y=np.zeros(9, int))
    with _raises(DNMFValueError, "y: expected integer class labels", "non-integer value 0.5"):
        _fit(model, X, y=np.r_[0.5, np.zeros(9)])
    with _raises(DNMFTypeError, "y: expected integer class labels", "found dtype <U"):
        _fit(model, X, y=np.array(["a", "b"] * 5))
    with _raises(DNMFValueError, "y: expected labels >= 0 or -1", "found -2"):
        _fit(model, X, y=np.r_[-2, np.zeros(9, int)])
    _fit(model, X, y=np.r_[0.0, 1.0] .repeat(5))  # integral floats are accepted


def test_labels_required(rng):
    X = rng.random((10, 4))
    with _raises(DNMFValueError, "y: expected at least one labeled sample", "only -1"):
        dd.SSNMF(2, **KW).fit(X, -np.ones(10, int))
    with _raises(DNMFValueError, "y: expected labels", "the target y is None"):
        dd.SSNMF(2, **KW).fit(X)
    h = dd.HierarchicalNMF((2, 1), **KW).fit(X, -np.ones(10, int))  # all unlabeled = unsupervised
    with _raises(DNMFValueError, "model: expected a model fitted with labels", "found none"):
        h.predict(X)


def test_class_without_labeled_sample(tmp_path, rng):
    """With a corpus's label_names every class needs a labeled sample (semi-supervised mode)."""
    X = rng.random((12, 4))
    y = np.r_[0, 0, 1, 1, -1 * np.ones(8, int)]
    c = dd.write_corpus(tmp_path / "c.zarr", X, y=y, label_names=["a", "b", "c"], chunk_rows=6)
    for m in _models()[1:]:
        with _raises(DNMFValueError, "y: expected at least one labeled sample of every class", r"class 2 \(c\)"):
            _fit(m, c)
    _fit(dd.NMF(2, **KW), c)  # NMF ignores labels
    with _raises(DNMFValueError, "y: expected class codes < 2", "found 2"):
        dd.write_corpus(tmp_path / "d.zarr", X, y=np.r_[0, 1, 2, -np.ones(9, int)], label_names=["a", "b"])


@pytest.mark.parametrize("model", _models(), ids=MODEL_IDS)
def test_groups_shape_and_contiguity(rng, model):
    X = rng.random((12, 4))
    with _raises(DNMFValueError, "groups: expected shape", r"found shape \(11,\)"):
        _fit(model, X, y=_y(12), groups=np.zeros(11, int))
    with _raises(DNMFValueError, "groups: expected the samples of each group to be contiguous", "found group 0 in"):
        _fit(model, X, y=_y(12), groups=np.arange(12) % 3)


@pytest.mark.parametrize("model", _models()[:4], ids=MODEL_IDS[:4])
def test_observed_shape(rng, model):
    X = rng.random((12, 4))
    for W in (np.ones((12, 3), bool), sp.csr_matrix(np.ones((11, 4))), da.ones((12, 5), dtype=bool)):
        with _raises(DNMFValueError, "observed: expected", "like X, found"):
            _fit(model, X, y=_y(12), observed=W)
    with _raises(DNMFTypeError, "observed: expected a boolean mask", "other than 0/1"):
        _fit(model, X, y=_y(12), observed=np.full((12, 4), 2))
    with _raises(DNMFValueError, "observed: expected None", "found a mask"):
        _fit(_models()[4], X, observed=np.ones((12, 4), bool))


# -- ranks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [dd.HierarchicalNMF, dd.DeepNMF, dd.NeuralNMF])
def test_ranks(rng, cls):
    X = rng.random((10, 4))
    with _raises(DNMFValueError, "ranks: expected at least one rank", "empty"):
        cls(()).fit(X)
    for bad in ((0, 1), (3, -1), (2.5,), ("3",)):
        with _raises(DNMFValueError, "ranks: expected an integer >= 1", "found"):
            cls(bad).fit(X)
    with _raises(DNMFValueError, "ranks: expected k0 <= min", "found 5", "n_features = 4"):
        cls((5, 2), scheduler="synchronous").fit(X)


def test_deeper_rank_larger_than_layer_below(rng):
    """An SVD start of layer 1 has at most k0 directions: k1 > k0 used to be cut to k0 silently."""
    X = rng.random((10, 4))
    with _raises(DNMFValueError, "ranks: expected k1 with init='nndsvda'", "<= min", "found 3"):
        dd.HierarchicalNMF((2, 3), **KW).fit(X)
    m = dd.HierarchicalNMF((2, 3), init="random", **KW).fit(X)  # a random start can over-complete
    assert m.A_[1].shape == (2, 3)


def test_n_components(rng):
    X = rng.random((10, 4))
    for bad in (0, -2, 2.0, True, None):
        with _raises(DNMFValueError, "n_components: expected an integer >= 1", "found"):
            dd.NMF(bad).fit(X)
    with _raises(DNMFValueError, "n_components: expected k with init='nndsvda' <= min", "found 6"):
        dd.NMF(6, **KW).fit(X)
    assert dd.NMF(6, init="random", **KW).fit(X).A_[0].shape == (4, 6)


# -- stores --------------------------------------------------------------------------------

@pytest.fixture
def corpus(tmp_path, rng):
    X = rng.random((12, 3))
    dd.write_corpus(tmp_path / "c.zarr", X, y=_y(12), feature_names=["a", "b", "c"], chunk_rows=6)
    return tmp_path / "c.zarr", X


def test_corpus_missing_array(corpus):
    path, _ = corpus
    import shutil

    shutil.rmtree(path / "X" / "1")
    with _raises(StoreError, "block X/1 is missing"):
        dd.open_corpus(path)
    shutil.rmtree(path / "X")
    with _raises(StoreError, "the array 'X' is missing"):
        dd.open_corpus(path)


def test_corpus_wrong_format(corpus):
    path, _ = corpus
    g = zarr.open_group(str(path), mode="r+")
    g.attrs["format_version"] = 2
    with _raises(StoreError, "path: expected corpus format_version 1", "found 2"):
        dd.open_corpus(path)
    g.attrs["format_version"] = 1
    g.attrs["dnmf_format"] = "model"
    with _raises(StoreError, "path: expected a dnmf corpus store", "found dnmf_format='model'"):
        dd.open_corpus(path)


def test_corpus_truncated_chunk(corpus):
    path, _ = corpus
    chunks = [os.path.join(d, f) for d, _, fs in os.walk(path / "X" / "1") for f in fs if f != "zarr.json"]
    assert chunks
    with open(chunks[0], "r+b") as fh:
        fh.truncate(max(1, os.path.getsize(chunks[0]) // 2))
    c = dd.open_corpus(path)  # metadata is fine; the damage shows when the block is read
    with _raises(StoreError, "block 1 cannot be read"):
        c.X.compute(scheduler="synchronous")
    with _raises(StoreError, "block 1 cannot be read"):
        dd.NMF(2, **KW).fit(c)


def test_corpus_inconsistent_shapes(corpus, rng):
    path, _ = corpus
    g = zarr.open_group(str(path), mode="r+")
    g.attrs["n_features"] = 4
    with _raises(StoreError, "block X/0 has shape", r"expected \(6, 4\)"):
        dd.open_corpus(path)
    g.attrs["n_features"] = 3
    g.attrs["row_offsets"] = [0, 6, 13]
    with _raises(StoreError, "row_offsets are inconsistent"):
        dd.open_corpus(path)
    g.attrs["row_offsets"] = [0, 6, 12]
    del g["y"]
    g.create_array("y", data=np.zeros(11, np.int64))
    with _raises(StoreError, r"y has shape \(11,\), expected \(12,\)"):
        dd.open_corpus(path)


def test_model_store_damaged(tmp_path, rng):
    m = dd.NMF(2, **KW).fit(rng.random((10, 4)))
    save_model(m, tmp_path / "m.zarr")
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r+")
    g.attrs["format_version"] = 7
    with _raises(StoreError, "path: expected model format_version 1", "found 7"):
        load_model(tmp_path / "m.zarr")
    with _raises(StoreError, "path: expected a model store", "found nothing"):
        load_model(tmp_path / "none.zarr")


def test_model_from_another_feature_space(tmp_path, rng, capsys):
    X = rng.random((12, 3))
    c1 = dd.write_corpus(tmp_path / "c1.zarr", X, y=_y(12), feature_names=["a", "b", "c"])
    dd.write_corpus(tmp_path / "c2.zarr", X, y=_y(12), feature_names=["a", "b", "z"])
    dd.write_corpus(tmp_path / "c3.zarr", rng.random((12, 4)), y=_y(12))
    m = dd.SSNMF(2, **KW).fit(c1)
    save_model(m, tmp_path / "m.zarr", feature_names=c1.feature_names)
    loaded = load_model(tmp_path / "m.zarr")
    with _raises(DNMFValueError, "X: expected the model's feature space", "column 2: 'z' where the model has 'c'"):
        loaded.predict(dd.open_corpus(tmp_path / "c2.zarr"))
    with _raises(DNMFValueError, "X: expected 3 features", "found 4"):
        loaded.predict(dd.open_corpus(tmp_path / "c3.zarr"))
    np.testing.assert_array_equal(loaded.predict(c1), m.predict(c1))
    for bad in ("c2.zarr", "c3.zarr"):
        assert main(["predict", str(tmp_path / "m.zarr"), str(tmp_path / bad), str(tmp_path / "p.txt"),
                     "--scheduler", "synchronous"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dnmf: error: X: expected")
    assert not (tmp_path / "p.txt").exists()


# -- unwritable paths ----------------------------------------------------------------------

def _fail_writes_after(monkeypatch, n, exc):
    """Make zarr's local store raise ``exc`` from its (n+1)-th chunk/metadata write on."""
    import zarr.storage._local as local

    real, calls = local._put, [0]

    def put(*a, **k):
        calls[0] += 1
        if calls[0] > n:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(local, "_put", put)


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 PermissionError(errno.EACCES, "Permission denied")], ids=["disk-full", "permission"])
def test_failed_write_keeps_old_corpus_and_model(tmp_path, rng, monkeypatch, exc):
    X_old = rng.random((12, 3))
    dd.write_corpus(tmp_path / "c.zarr", X_old, chunk_rows=6)
    m_old = dd.NMF(2, **KW).fit(X_old)
    save_model(m_old, tmp_path / "m.zarr")
    before = sorted(os.listdir(tmp_path))
    _fail_writes_after(monkeypatch, 3, exc)
    with _raises(StoreWriteError, "path: expected to write", exc.strerror) as info:
        dd.write_corpus(tmp_path / "c.zarr", rng.random((12, 3)), overwrite=True)
    assert isinstance(info.value, OSError) and info.value.errno == exc.errno
    with _raises(StoreWriteError, "path: expected to write", exc.strerror):
        save_model(dd.NMF(2, **KW).fit(rng.random((12, 3))), tmp_path / "m.zarr", overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before  # no temporary folder left behind
    np.testing.assert_array_equal(dd.open_corpus(tmp_path / "c.zarr").X.compute(), X_old)
    np.testing.assert_array_equal(load_model(tmp_path / "m.zarr").A_[0], m_old.A_[0])


def test_failed_rename_keeps_old_store(tmp_path, rng, monkeypatch):
    X_old = rng.random((12, 3))
    dd.write_corpus(tmp_path / "c.zarr", X_old)
    import dnmf_dask.store.atomic as atomic

    real = os.replace

    def replace(src, dst):
        if ".tmp-" in str(src):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with _raises(StoreWriteError, "Permission denied", "previous content is intact"):
        dd.write_corpus(tmp_path / "c.zarr", rng.random((12, 3)), overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["c.zarr"]
    np.testing.assert_array_equal(dd.open_corpus(tmp_path / "c.zarr").X.compute(), X_old)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder(tmp_path, rng):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with _raises(StoreError, "path: expected a writable folder", "no write permission"):
            dd.write_corpus(ro / "c.zarr", rng.random((4, 2)))
    finally:
        ro.chmod(0o700)


def test_cli_unwritable_outputs_exit_2(tmp_path, rng, capsys, monkeypatch):
    X = rng.random((12, 3))
    np.savez(tmp_path / "d.npz", X=X, y=_y(12))
    assert main(["ingest", "npz", str(tmp_path / "c.zarr"), "--input", str(tmp_path / "d.npz")]) == 0
    assert main(["fit", str(tmp_path / "c.zarr"), str(tmp_path / "m.zarr"), "--model", "ssnmf", "-k", "2",
                 "--max-iter", "3", "--tol", "0", "--scheduler", "synchronous"]) == 0
    (tmp_path / "p.txt").write_text("old\n")
    capsys.readouterr()
    _fail_writes_after(monkeypatch, 0, OSError(errno.ENOSPC, "No space left on device"))
    assert main(["fit", str(tmp_path / "c.zarr"), str(tmp_path / "m.zarr"), "--model", "ssnmf", "-k", "2",
                 "--max-iter", "3", "--tol", "0", "--scheduler", "synchronous", "--overwrite", "--force", "--quiet"]) == 2
    monkeypatch.undo()
    import dnmf_dask.store.atomic as atomic

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    assert main(["predict", str(tmp_path / "m.zarr"), str(tmp_path / "c.zarr"), str(tmp_path / "p.txt"),
                 "--scheduler", "synchronous", "--quiet"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("dnmf: error: path: expected to write") for e in err)
    assert (tmp_path / "p.txt").read_text() == "old\n"
    assert load_model(tmp_path / "m.zarr").n_iter_ == 3
    assert sorted(os.listdir(tmp_path)) == ["c.zarr", "d.npz", "m.zarr", "p.txt"]


def test_every_error_is_a_dnmf_error():
    for cls in (DNMFValueError, StoreError, StoreWriteError):
        assert issubclass(cls, DNMFError) and issubclass(cls, ValueError)
    assert issubclass(DNMFTypeError, TypeError) and issubclass(StoreWriteError, OSError)


def test_other_os_errors_are_not_called_write_failures(tmp_path, rng, monkeypatch):
    """An OSError that is not about the destination (here: a source block that cannot be read) propagates as is."""
    def unreadable(block):
        raise FileNotFoundError(errno.ENOENT, "No such file", "source.bin")

    X = da.from_array(rng.random((10, 3)), chunks=(5, 3)).map_blocks(unreadable, dtype=float)
    with pytest.raises(FileNotFoundError) as info:
        dd.write_corpus(tmp_path / "c.zarr", X)
    assert not isinstance(info.value, StoreWriteError)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("make, found", [
    (lambda p: np.save(p.with_suffix(".npy"), np.array([[1, "a"]], dtype=object), allow_pickle=True), "no pickled objects"),
    (lambda p: p.with_suffix(".npz").write_bytes(b"PK\x03\x04 truncated"), "BadZipFile"),
    (lambda p: np.savez(p.with_suffix(".npz"), X=-np.ones((3, 2)), y=[0, 1, 0.5]), "y: expected integer class labels"),
    (lambda p: np.savez(p.with_suffix(".npz"), X=np.array([["a", "b"]])), "X: expected a numeric dtype"),
    (lambda p: np.savez(p.with_suffix(".npz"), X=np.ones((3, 2)), groups=[0, 1, 0]), "groups: expected the samples"),
], ids=["object-npy", "corrupt-npz", "float-labels", "string-X", "groups"])
def test_cli_ingest_bad_files_exit_2(tmp_path, capsys, make, found):
    make(tmp_path / "d")
    src = next(tmp_path.glob("d.*"))
    assert main(["ingest", src.suffix[1:], str(tmp_path / "c.zarr"), "--input", str(src)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dnmf: error: ") and found in err[0]
    assert not (tmp_path / "c.zarr").exists()
