"""The rank-specialised numba kernels (kernels/spmm.py) against dense numpy references.

Each kernel is compared with a float64 dense-numpy transcription of its product or update, for
several ranks (1, 7, 20, 64: the generated source differs per k), float32 and float64, on CSR
blocks with empty rows, an empty block, and non-canonical CSR (unsorted and duplicate column
indices, which CSR allows and which mean a sum). Then block_step (and the masked, semi and
transform paths) with the kernels on against the same calls with ``DNMF_DASK_SPMM=0``, a whole NMF
fit both ways, and the on-disk cache from fresh processes. Sizes are tiny; the threshold
``SPMM_MIN_NNZ`` is lowered so the hook applies to them.
"""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf_dask as dd
from dnmf_dask.kernels import _env, nmf
from dnmf_dask.kernels.nmf import EPS, block_step, semi_block_step, transform_block

spmm = _env.spmm_module()
pytestmark = pytest.mark.skipif(spmm is None, reason="numba not available")

TOL = {np.float32: dict(rtol=3e-5, atol=1e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}
KS = [1, 7, 20, 64]
DTYPES = [np.float32, np.float64]


def _csr(rng, dtype, n=29, m=23, density=0.3):
    X = sp.random(n, m, density=density, random_state=rng, format="lil", dtype=np.float64)
    X[3, :] = 0  # empty rows, one of them the last
    X[n - 1, :] = 0
    X = sp.csr_matrix(X)
    X.data = np.round(X.data * 5) + 1
    return X.astype(dtype)


def _noncanonical(rng, dtype, n=17, m=11, per_row=6):
    """CSR with unsorted and repeated column indices within rows (scipy: entries add up)."""
    lengths = rng.integers(0, per_row, n)
    lengths[2] = 0
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    indices = rng.integers(0, m, indptr[-1]).astype(np.int32)
    indices[indptr[1]:indptr[1] + 2] = indices[indptr[1]]  # a duplicate in row 1 (length >= 2 below)
    data = rng.random(indptr[-1]).astype(dtype)
    X = sp.csr_matrix((data, indices, indptr), shape=(n, m))
    assert not X.has_canonical_format
    return X


def _dense(X):
    """Float64 dense X, duplicates summed (independent of the kernels and of scipy's products)."""
    D = np.zeros(X.shape)
    for i in range(X.shape[0]):
        for p in range(X.indptr[i], X.indptr[i + 1]):
            D[i, X.indices[p]] += float(X.data[p])
    return D


def _blocks(rng, dtype):
    yield _csr(rng, dtype)
    X = _noncanonical(rng, dtype)
    if X.indptr[2] - X.indptr[1] < 2:  # make sure row 1 holds the duplicate
        X = _noncanonical(np.random.default_rng(7), dtype, per_row=9)
    yield X
    yield sp.csr_matrix((0, 9), dtype=dtype)  # no rows
    yield sp.csr_matrix((5, 9), dtype=dtype)  # no nonzeros


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", KS)
def test_csr_dense_and_transpose_equal_dense_products(rng, k, dtype):
    for X in _blocks(rng, dtype):
        D = _dense(X)
        A = rng.random((X.shape[1], k)).astype(dtype)
        S = rng.random((X.shape[0], k)).astype(dtype)
        XA = spmm.csr_dense(X, A)
        assert XA.dtype == dtype and XA.shape == (X.shape[0], k)
        np.testing.assert_allclose(XA, D @ A.astype(np.float64), **TOL[dtype])
        XtS = spmm.csr_t_dense(X, S)
        assert XtS.dtype == dtype and XtS.shape == (X.shape[1], k)
        np.testing.assert_allclose(XtS, D.T @ S.astype(np.float64), **TOL[dtype])
        out = np.ones((X.shape[1], k), dtype=dtype)  # accumulates into a given output
        spmm.csr_t_dense(X, S, out=out)
        np.testing.assert_allclose(out, 1 + D.T @ S.astype(np.float64), **TOL[dtype])


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", KS)
def test_mu_step_equals_dense_update(monkeypatch, rng, k, dtype, split):
    if split:  # the two product kernels with the update in numpy (what k > FUSED_MAX_K runs)
        monkeypatch.setattr(spmm, "FUSED_MAX_K", 0)
    for X in _blocks(rng, dtype):
        D = _dense(X)
        n, m = X.shape
        S = rng.random((n, k)).astype(dtype)
        A = rng.random((m, k)).astype(dtype)
        den = (S.astype(np.float64) @ (A.T.astype(np.float64) @ A)).astype(dtype)
        if n > 4:
            den[4, 0] = 0  # a zero denominator: EPS, never 0/0
            S[4, 0] = 0
        add = rng.random((n, k)).astype(dtype)
        for num_add in (None, add):
            XA = D @ A.astype(np.float64)
            num = XA if num_add is None else XA + num_add
            ref = S * num / np.where(den == 0, EPS, den)
            S_new, XtS, dot = spmm.mu_step(X, S, A, den, num_add=num_add)
            assert S_new.dtype == dtype and XtS.dtype == dtype
            np.testing.assert_allclose(S_new, ref, **TOL[dtype])
            np.testing.assert_allclose(XtS, D.T @ ref, **TOL[dtype])
            np.testing.assert_allclose(dot, np.sum(S * XA), rtol=TOL[dtype]["rtol"], atol=1e-9)  # XA rounded in S.dtype
            assert np.all(S_new >= 0) and np.all(np.isfinite(S_new))
        S_same, XtS, _ = spmm.mu_step(X, S, A, den, update_S=False)
        assert S_same is S
        np.testing.assert_allclose(XtS, D.T @ S.astype(np.float64), **TOL[dtype])


def test_kernels_reject_bad_arguments(rng):
    X = _csr(rng, np.float32)
    with pytest.raises(ValueError, match="A"):
        spmm.csr_dense(X, np.ones((X.shape[1] + 1, 3), np.float32))
    with pytest.raises(ValueError, match="columns"):
        spmm.csr_dense(X, np.ones((X.shape[1], spmm.MAX_K + 1), np.float32))
    with pytest.raises(ValueError, match="S"):
        spmm.csr_t_dense(X, np.ones((X.shape[0] - 1, 3), np.float32))
    with pytest.raises(ValueError, match="k"):
        spmm.generate_source(0)


def _both_ways(monkeypatch, fn, *args, **kw):
    """fn(*args, **kw) with the kernels on (lowered threshold), then with DNMF_DASK_SPMM=0; also
    checks that the kernels really ran the first time."""
    calls = []
    with monkeypatch.context() as m:
        m.setattr(_env, "SPMM_MIN_NNZ", 0)
        m.setenv(_env.SPMM_ENV, "1")
        for name in ("mu_step", "csr_dense", "csr_t_dense"):
            orig = getattr(spmm, name)
            m.setattr(spmm, name, lambda *a, _o=orig, _n=name, **k: calls.append(_n) or _o(*a, **k))
        on = fn(*args, **kw)
    assert calls, "the spmm kernels were not used"
    with monkeypatch.context() as m:
        m.setattr(_env, "SPMM_MIN_NNZ", 0)
        m.setenv(_env.SPMM_ENV, "0")
        m.setattr(spmm, "mu_step", None)  # would fail if called
        off = fn(*args, **kw)
    return on, off


def _assert_same(a, b, dtype):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key], dtype)
    elif isinstance(a, tuple):
        for x, y in zip(a, b):
            _assert_same(x, y, dtype)
    else:
        np.testing.assert_allclose(a, b, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_step_with_and_without_spmm_agree(monkeypatch, rng, dtype):
    X = _csr(rng, dtype)
    n, m = X.shape
    k = 5
    S = rng.random((n, k)).astype(dtype)
    A = rng.random((m, k)).astype(dtype)
    B = rng.random((3, k)).astype(dtype)
    y = rng.integers(-1, 3, n)
    for kw in ({}, {"update_S": False}, {"B": B, "y": y, "lam": 0.5}):
        on, off = _both_ways(monkeypatch, block_step, X, S, A, **kw)
        _assert_same(on, off, dtype)
    # the masked path forms its two sparse products with the kernels too
    W = sp.random(n, m, density=0.7, random_state=1, format="csr") > 0
    on, off = _both_ways(monkeypatch, block_step, X, S, A, W=W)
    _assert_same(on, off, dtype)
    on, off = _both_ways(monkeypatch, semi_block_step, X, S, rng.standard_normal((m, k)).astype(dtype))
    _assert_same(on, off, dtype)
    on, off = _both_ways(monkeypatch, transform_block, X, A, S, max_iter=20)
    _assert_same(on, off, dtype)


def test_spmm_wanted_switches(monkeypatch, rng):
    X = _csr(rng, np.float32)
    monkeypatch.setattr(_env, "SPMM_MIN_NNZ", 0)
    monkeypatch.delenv(_env.SPMM_ENV, raising=False)
    assert _env.spmm_wanted(X, 20)
    assert not _env.spmm_wanted(X, 20, W=X)
    assert not _env.spmm_wanted(X.tocsc(), 20)
    assert not _env.spmm_wanted(X.toarray(), 20)
    assert not _env.spmm_wanted(X, _env.SPMM_MAX_K + 1)
    monkeypatch.setenv(_env.SPMM_ENV, "0")
    assert not _env.spmm_wanted(X, 20)
    monkeypatch.delenv(_env.SPMM_ENV)
    monkeypatch.setattr(_env, "SPMM_MIN_NNZ", X.nnz + 1)
    assert not _env.spmm_wanted(X, 20)


def test_nmf_fit_with_and_without_spmm_agree(monkeypatch, rng):
    X = _csr(rng, np.float32, n=120, m=40, density=0.2)

    def fit():
        m = dd.NMF(6, init="random", random_state=0, max_iter=30, tol=0, chunk_rows=50, scheduler="threads")
        S = m.fit_transform(X)
        return m.components_, S, np.asarray(m.history_["rel_error"])

    (A1, S1, e1), (A0, S0, e0) = _both_ways(monkeypatch, fit)
    np.testing.assert_allclose(e1, e0, rtol=1e-4)
    np.testing.assert_allclose(A1, A0, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(S1, S0, rtol=2e-3, atol=1e-5)


_CHILD = textwrap.dedent("""
    import numpy as np, scipy.sparse as sp
    from dnmf_dask.kernels import spmm
    X = sp.random(30, 20, density=0.3, random_state=0, format="csr", dtype=np.float32)
    S = np.ones((30, 7), np.float32)
    A = np.ones((20, 7), np.float32)
    S_new, XtS, dot = spmm.mu_step(X, S, A, S @ (A.T @ A))
    d = spmm.kernels(7).mu_step
    print(sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()), float(XtS.sum()))
""")


def test_generated_kernels_are_cached_across_processes(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(dd.__file__)), env.get("PYTHONPATH", "")])
    runs = [subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    (h1, m1, s1), (h2, m2, s2) = (r.stdout.split() for r in runs)
    assert (h1, m1) == ("0", "1")  # the first process compiles ...
    assert (h2, m2) == ("1", "0")  # ... the second loads the compiled code
    assert s1 == s2
    sources = list((tmp_path / "dnmf_dask_spmm").glob("spmm_k7_*.py"))
    assert len(sources) == 1 and not list((tmp_path / "dnmf_dask_spmm").glob(".tmp-*"))


def test_stale_generated_files_are_removed(tmp_path):
    d = tmp_path
    keep, old, new = d / "spmm_k5_aaaa.py", d / "spmm_k5_bbbb.py", d / "spmm_k5_cccc.py"
    (d / "__pycache__").mkdir()
    old_cache = d / "__pycache__" / "spmm_k5_bbbb.mu_step-1.py311.nbi"
    for f in (keep, old, new, old_cache):
        f.write_text("")
    day_ago = time.time() - 2 * 86400
    for f in (keep, old):
        os.utime(f, (day_ago, day_ago))
    spmm._remove_stale(str(d), 5, "spmm_k5_aaaa")
    assert keep.exists() and new.exists()  # ours, and another version still recent
    assert not old.exists() and not old_cache.exists()


@pytest.mark.parametrize("dtype", DTYPES)
def test_sq_norm_equals_float64_sum(rng, dtype):
    for n in (0, 1, 7, 1001):
        x = (rng.random(n) * 100).astype(dtype)
        np.testing.assert_allclose(spmm.sq_norm(x), float(np.sum(x.astype(np.float64) ** 2)), rtol=1e-12)


def test_numba_switched_off_means_no_spmm_and_no_numba_import():
    """Small workers run with DNMF_DASK_NUMBA=0 (parallel/memory.py): block_step stays on scipy and
    numba is never imported, even for a block above the threshold."""
    code = textwrap.dedent("""
        import sys, numpy as np, scipy.sparse as sp
        from dnmf_dask.kernels import _env
        from dnmf_dask.kernels.nmf import block_step
        X = sp.random(400, 300, density=0.9, format="csr", dtype=np.float32, random_state=0)
        assert X.nnz >= _env.SPMM_MIN_NNZ
        block_step(X, np.ones((400, 4), np.float32), np.ones((300, 4), np.float32))
        print(_env.spmm_wanted(X, 4), "numba" in sys.modules)
    """)
    env = dict(os.environ, DNMF_DASK_NUMBA="0")
    env.pop(_env.SPMM_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(dd.__file__)), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("k", [7, 20])
def test_float32_block_in_float64_products_is_read_as_stored(rng, k):
    """A float32 CSR block times float64 factors: the kernels read the float32 values (no float64
    copy) and widen them exactly, so the results are those of the block's float64 copy (to the
    last bit or two: the compiled code may contract other products into FMAs), and equal the
    dense float64 products."""
    for X in _blocks(rng, np.float32):
        X64 = X.astype(np.float64)
        D = _dense(X)
        A = rng.random((X.shape[1], k))
        S = rng.random((X.shape[0], k))
        assert spmm._csr(X, np.float64)[2] is X.data  # not converted
        XA = spmm.csr_dense(X, A)
        assert XA.dtype == np.float64
        np.testing.assert_allclose(XA, spmm.csr_dense(X64, A), rtol=1e-15, atol=0)
        np.testing.assert_allclose(XA, D @ A, **TOL[np.float64])
        XtS = spmm.csr_t_dense(X, S)
        assert XtS.dtype == np.float64
        np.testing.assert_allclose(XtS, spmm.csr_t_dense(X64, S), rtol=1e-15, atol=0)
        np.testing.assert_allclose(XtS, D.T @ S, **TOL[np.float64])
        den = S @ (A.T @ A)
        got, ref = spmm.mu_step(X, S, A, den), spmm.mu_step(X64, S, A, den)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-15, atol=0)
        np.testing.assert_allclose(got[0], S * (D @ A) / den, **TOL[np.float64])
    Xi = sp.csr_matrix(np.array([[0, 2], [3, 0]], dtype=np.int64))  # other dtypes are converted
    np.testing.assert_array_equal(spmm.csr_dense(Xi, np.eye(2)), [[0.0, 2.0], [3.0, 0.0]])
