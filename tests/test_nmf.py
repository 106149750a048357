import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SKNMF
from sklearn.decomposition._nmf import _initialize_nmf

import dnmf_dask as dd
from dnmf_dask.errors import ConvergenceWarning, DNMFValueError

from .reference import ssnmf_mu


def _data(rng, n=120, f=30, sparse=False):
    X = rng.random((n, f))
    if sparse:
        X[X < 0.5] = 0
        return sp.csr_matrix(X)
    return X


def _rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max()


SCHEDULERS = ["threads", "cluster"]


@pytest.fixture(params=SCHEDULERS)
def scheduler(request):
    if request.param == "cluster":
        return request.getfixturevalue("local_cluster")
    return request.param


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("chunk_rows", [1000, 17])
def test_nmf_matches_numpy_reference(rng, sparse, chunk_rows, scheduler):
    X = _data(rng, sparse=sparse)
    k = 4
    W0, H0 = rng.random((X.shape[0], k)), rng.random((k, X.shape[1]))
    m = dd.NMF(k, init="custom", max_iter=50, tol=0, chunk_rows=chunk_rows, scheduler=scheduler)
    S = m.fit_transform(X, W=W0, H=H0)
    Xd = X.toarray() if sparse else X
    A_ref, S_ref, _, objs = ssnmf_mu(Xd.T, H0.T, W0.T, n_iter=50)
    assert _rel(m.A_[0], A_ref) < 1e-8
    assert _rel(S, S_ref.T) < 1e-8
    np.testing.assert_allclose(m.history_["objective"], objs, rtol=1e-8)
    assert m.n_iter_ == 50 and m.stop_reason_ == "max_iter"
    assert m.reconstruction_err_ == pytest.approx(np.sqrt(objs[-1]), rel=1e-8)


@pytest.mark.parametrize("sparse", [False, True])
def test_nmf_matches_sklearn_mu(rng, sparse):
    X = _data(rng, sparse=sparse)
    k = 5
    W0, H0 = rng.random((X.shape[0], k)), rng.random((k, X.shape[1]))
    sk = SKNMF(k, init="custom", solver="mu", max_iter=50, tol=0)
    W_sk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
    m = dd.NMF(k, init="custom", max_iter=50, tol=0, chunk_rows=33, scheduler="threads")
    S = m.fit_transform(X, W=W0, H=H0)
    assert _rel(m.components_, sk.components_) < 1e-6
    assert _rel(S, W_sk) < 1e-6
    assert m.reconstruction_err_ == pytest.approx(sk.reconstruction_err_, rel=1e-6)


@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_same_result_across_chunkings_and_inputs(rng, tmp_path, init):
    X = _data(rng, n=200, sparse=True)
    kw = dict(init=init, max_iter=30, tol=0, random_state=3, scheduler="threads")
    a = dd.NMF(4, chunk_rows=1000, **kw).fit(X)
    b = dd.NMF(4, chunk_rows=13, **kw).fit(X)
    corpus = dd.write_corpus(tmp_path / "c.zarr", X, chunk_rows=41)
    c = dd.NMF(4, **kw).fit(corpus)
    for other in (b, c):
        assert _rel(other.A_[0], a.A_[0]) < 1e-8
        np.testing.assert_allclose(other.history_["objective"], a.history_["objective"], rtol=1e-8)
    S = dd.NMF(4, **kw).fit_transform(corpus)
    assert isinstance(S, da.Array) and S.shape == (200, 4)


def test_nndsvd_matches_sklearn_on_low_rank(rng):
    k = 4
    X = rng.random((150, k)) @ rng.random((k, 40))
    for variant in ("nndsvd", "nndsvda"):
        W_sk, H_sk = _initialize_nmf(X, k, init=variant)
        m = dd.NMF(k, init=variant, max_iter=1, tol=0, random_state=0, scheduler="threads")
        # one iteration from the same start: compare against the reference from sklearn's init
        m.fit(X)
        A_ref, _, _, _ = ssnmf_mu(X.T, H_sk.T, W_sk.T, n_iter=1)
        assert _rel(m.A_[0], A_ref) < 1e-6


def test_nndsvd_of_sparse_x_equals_that_of_dense_x(rng):
    """The exact (Gram) SVD path forms XᵀX from sparse blocks without densifying them."""
    X = _data(rng, n=120, sparse=True)
    kw = dict(init="nndsvd", max_iter=1, tol=0, scheduler="threads", chunk_rows=50)
    a = dd.NMF(4, **kw).fit(X)
    b = dd.NMF(4, **kw).fit(X.toarray())
    assert _rel(a.A_[0], b.A_[0]) < 1e-10


def test_randomized_nndsvd_of_large_float32_counts(rng):
    """Above GRAM_SVD_MAX_FEATURES the SVD is randomized with power iterations; on float32 data
    with a large leading singular value (here ~3e4) the sketch must not overflow (dask's default
    power iterator did: s^15 > 3e38, then 'SVD did not converge'), and the init must be the
    float64 data's."""
    from dnmf_dask.parallel.init import GRAM_SVD_MAX_FEATURES

    import scipy.sparse as sp

    X = sp.random(300, GRAM_SVD_MAX_FEATURES + 52, density=0.05, random_state=1, format="csr") * 1000.0
    X.data = np.round(X.data) + 1.0
    kw = dict(init="nndsvda", max_iter=1, tol=0, random_state=0, scheduler="synchronous", chunk_rows=100)
    a = dd.NMF(5, **kw).fit(X.astype(np.float32))
    b = dd.NMF(5, **kw).fit(X)
    assert np.isfinite(a.A_[0]).all() and a.A_[0].dtype == np.float32
    assert _rel(a.A_[0], b.A_[0]) < 1e-3


def test_tol_stops_and_reports(rng):
    X = _data(rng)
    m = dd.NMF(3, max_iter=500, tol=1e-3, random_state=0, scheduler="threads").fit(X)
    assert m.stop_reason_ == "tol" and m.n_iter_ < 500
    h = m.history_["objective"]
    assert len(h) == m.n_iter_
    assert (h[-2] - h[-1]) <= 1e-3 * h[-2]
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        dd.NMF(3, max_iter=5, tol=1e-9, random_state=0, scheduler="threads").fit(X)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_tol_stop_matches_reference_iteration(rng, tmp_path, scheduler, checkpoint):
    """Without a checkpoint, pass t+1 is submitted before the driver has the objective of pass t;
    the fit must still stop at the reference's iteration, with that iteration's factors (with a
    checkpoint every pass waits for the previous one: the same result)."""
    X = _data(rng)
    k, tol = 4, 1e-2
    W0, H0 = rng.random((X.shape[0], k)), rng.random((k, X.shape[1]))
    _, _, _, objs = ssnmf_mu(X.T, H0.T, W0.T, n_iter=300)
    # stop at iteration t when the objectives after t-2 and t-1 differ by <= tol (relative)
    n_ref = next(t for t in range(3, 301) if objs[t - 3] - objs[t - 2] <= tol * objs[t - 3])
    A_ref, S_ref, _, objs_ref = ssnmf_mu(X.T, H0.T, W0.T, n_iter=n_ref)
    run = {"checkpoint": tmp_path / "ck", "checkpoint_every": 1000} if checkpoint else {}
    m = dd.NMF(k, init="custom", max_iter=300, tol=tol, chunk_rows=50, scheduler=scheduler)
    S = m.fit_transform(X, W=W0, H=H0, **run)
    assert m.stop_reason_ == "tol" and m.n_iter_ == n_ref < 300
    assert _rel(m.A_[0], A_ref) < 1e-8 and _rel(S, S_ref.T) < 1e-8
    np.testing.assert_allclose(m.history_["objective"], objs_ref, rtol=1e-8)
    assert m.reconstruction_err_ == pytest.approx(np.sqrt(objs_ref[-1]), rel=1e-8)


def test_transform_and_inverse(rng):
    k = 3
    X = rng.random((90, k)) @ rng.random((k, 25))
    m = dd.NMF(k, max_iter=400, tol=1e-10, random_state=0, scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(X)
    S = m.transform(X)
    assert S.shape == (90, k) and np.all(S >= 0)
    assert np.linalg.norm(m.inverse_transform(S) - X) / np.linalg.norm(X) < 0.02
    assert m.score(X) <= 0


def _ssnmf_problem(rng, n=150, f=30, k=4, classes=3):
    X = rng.random((n, f))
    y = rng.integers(0, classes, n)
    y_masked = y.copy()
    y_masked[rng.random(n) < 0.6] = -1
    W0, H0 = rng.random((n, k)), rng.random((k, f))
    return X, y, y_masked, W0, H0


@pytest.mark.parametrize("mask", ["none", "nan", "observed"])
def test_ssnmf_matches_numpy_reference(rng, mask, scheduler):
    X, _, y, W0, H0 = _ssnmf_problem(rng)
    n, f = X.shape
    obs = rng.random((n, f)) > 0.2
    Xin, observed = X, None
    if mask == "nan":
        Xin = np.where(obs, X, np.nan)
    elif mask == "observed":
        observed = obs
    m = dd.SSNMF(4, lam=0.7, init="custom", init_B="random", max_iter=50, tol=0, chunk_rows=29, random_state=5, scheduler=scheduler)
    S = m.fit_transform(Xin, y, observed=observed, W=W0, H=H0)
    B0 = m._init_B(3, 5, np.float64)  # the estimator's own B start, fed to the reference
    L = np.zeros((3, n)); L[:, y >= 0] = 1
    Y = np.zeros((3, n)); Y[y[y >= 0], np.flatnonzero(y >= 0)] = 1
    Wm = np.ones((f, n)) if mask == "none" else obs.T
    A_ref, S_ref, B_ref, objs = ssnmf_mu(X.T, H0.T, W0.T, B0, Y, L, Wm, lam=0.7, n_iter=50)
    assert _rel(m.A_[0], A_ref) < 1e-8
    assert _rel(m.B_, B_ref) < 1e-8
    assert _rel(S, S_ref.T) < 1e-8
    np.testing.assert_allclose(m.history_["objective"], objs, rtol=1e-8)


def test_ssnmf_sparse_observed_pattern(rng):
    X, _, y, W0, H0 = _ssnmf_problem(rng)
    obs = rng.random(X.shape) > 0.3
    Xs = sp.csr_matrix(np.where(rng.random(X.shape) > 0.5, X, 0))
    m = dd.SSNMF(4, lam=0.5, init="custom", init_B="random", max_iter=20, tol=0, chunk_rows=40, random_state=1, scheduler="threads")
    m.fit(Xs, y, observed=sp.csr_matrix(obs), W=W0, H=H0)
    B0 = m._init_B(3, 1, np.float64)
    L = np.zeros((3, len(y))); L[:, y >= 0] = 1
    Y = np.zeros((3, len(y))); Y[y[y >= 0], np.flatnonzero(y >= 0)] = 1
    A_ref, _, B_ref, objs = ssnmf_mu(Xs.toarray().T, H0.T, W0.T, B0, Y, L, obs.T, lam=0.5, n_iter=20)
    assert _rel(m.A_[0], A_ref) < 1e-8 and _rel(m.B_, B_ref) < 1e-8
    np.testing.assert_allclose(m.history_["objective"], objs, rtol=1e-8)


def test_ssnmf_lambda_zero_equals_nmf(rng):
    X, _, y, _, _ = _ssnmf_problem(rng)
    kw = dict(max_iter=40, tol=0, random_state=2, scheduler="threads", init="random")
    a = dd.SSNMF(4, lam=0.0, **kw).fit(X, y)
    b = dd.NMF(4, **kw).fit(X)
    np.testing.assert_array_equal(a.A_[0], b.A_[0])
    np.testing.assert_array_equal(a.history_["loss_X"], b.history_["loss_X"])


def test_ssnmf_objective_non_increasing_and_accuracy(rng):
    # three well separated classes, 10% labels
    n_per, f, classes = 100, 60, 3
    centers = np.zeros((classes, f))
    for c in range(classes):
        centers[c, c * 20:(c + 1) * 20] = 1.0
    y = np.repeat(np.arange(classes), n_per)
    X = centers[y] * rng.uniform(0.5, 1.5, (len(y), 1)) + 0.1 * rng.random((len(y), f))
    y_masked = y.copy()
    hidden = np.ones(len(y), bool)
    for c in range(classes):
        idx = rng.choice(np.flatnonzero(y == c), 10, replace=False)
        hidden[idx] = False
    y_masked[hidden] = -1
    m = dd.SSNMF(6, lam=1.0, max_iter=300, tol=1e-6, random_state=0, scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(X, y_masked)
    h = np.array(m.history_["objective"])
    assert np.all(np.diff(h) <= 1e-9 * h[:-1])
    acc = np.mean(m.predict(X)[hidden] == y[hidden])
    assert acc >= 0.95, acc
    assert m.score(X, y) >= 0.95


def test_ssnmf_label_errors(rng):
    X = rng.random((10, 4))
    with pytest.raises(DNMFValueError, match="at least one labeled"):
        dd.SSNMF(2, scheduler="threads").fit(X, -np.ones(10, int))
    with pytest.raises(DNMFValueError, match="y: expected"):
        dd.SSNMF(2, scheduler="threads").fit(X)
    with pytest.raises(DNMFValueError, match="nonnegative"):
        dd.NMF(2, scheduler="threads").fit(-X)
    with pytest.raises(DNMFValueError, match="n_components"):
        dd.NMF(0).fit(X)


def test_local_cluster_started_on_request(rng, capsys):
    X = _data(rng, n=60)
    kw = dict(max_iter=10, tol=0, random_state=0, init="random")
    a = dd.NMF(3, scheduler="local", **kw).fit(X)
    b = dd.NMF(3, scheduler="threads", **kw).fit(X)
    assert _rel(a.A_[0], b.A_[0]) < 1e-10
    assert "dashboard" in capsys.readouterr().err


def test_lstsq_B_start_is_nnls_of_labeled_rows(rng):
    from scipy.optimize import nnls as scipy_nnls

    from dnmf_dask.parallel.blocks import as_blocks
    from dnmf_dask.parallel.mu import init_B_lstsq

    n, k, c = 80, 5, 3
    S = rng.random((n, k))
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.5] = -1
    blocks, _ = as_blocks(rng.random((n, 4)), chunk_rows=23)
    S_blocks = [S[blocks.offsets[i]:blocks.offsets[i + 1]] for i in range(blocks.n_blocks)]
    B = init_B_lstsq(blocks, S_blocks, y, c, np.float64)
    lab = y >= 0
    for cls in range(c):
        ref, _ = scipy_nnls(S[lab], (y[lab] == cls).astype(float))
        np.testing.assert_allclose(B[cls], ref, rtol=1e-8, atol=1e-12)


def test_float32_and_zero_rows_columns(rng):
    X = rng.random((80, 20))
    X[:5] = 0  # all-zero samples
    X[:, :3] = 0  # all-zero features
    a = dd.NMF(4, max_iter=60, tol=0, random_state=0, init="random", scheduler="threads").fit(X)
    b = dd.NMF(4, max_iter=60, tol=0, random_state=0, init="random", scheduler="threads").fit(X.astype(np.float32))
    assert b.A_[0].dtype == np.float32 and a.A_[0].dtype == np.float64
    for m in (a, b):
        assert np.all(np.isfinite(m.A_[0])) and m.A_[0].min() >= 0
        assert np.all(m.A_[0][:3] == 0)  # zero features keep zero loadings, no 0/0
    S = b.transform(X.astype(np.float32))
    assert S.dtype == np.float32 and np.all(np.isfinite(S)) and np.all(S[:5] == 0)
    np.testing.assert_allclose(b.A_[0], a.A_[0], rtol=2e-3, atol=1e-5)
    Xi = (X * 10).astype(np.int64)  # integers are converted to float64
    assert dd.NMF(2, max_iter=5, scheduler="threads").fit(Xi).A_[0].dtype == np.float64


class _AliveBlocks:
    """Loader of row blocks that counts how many loaded blocks are alive at once."""

    def __init__(self, X, offsets):
        self.X, self.offsets, self.alive, self.peak, self.loads = X, offsets, 0, 0, 0

    def _gone(self):
        self.alive -= 1

    def load(self, i):
        import weakref

        block = self.X[self.offsets[i] : self.offsets[i + 1]].copy()
        self.loads += 1
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(block, self._gone)
        return block


def test_randomized_nndsvd_streams_x_and_equals_the_in_memory_init(rng):
    """X not persisted (read from its store every pass): the randomized SVD reads X once per
    product and lets its blocks go. As one graph it held every block from the first product to
    the last, and dask's product Qᵀ X after the sketch put all sparse blocks into one task: all
    of an out-of-core corpus in memory. Same init as with X persisted."""
    import dask
    import scipy.sparse as sp

    from dnmf_dask.parallel.blocks import Blocks
    from dnmf_dask.parallel.init import GRAM_SVD_MAX_FEATURES, nndsvd_init

    X = sp.random(400, GRAM_SVD_MAX_FEATURES + 20, density=0.02, random_state=3, format="csr")
    offsets = np.arange(0, 401, 50)
    src = _AliveBlocks(X, offsets)
    parts = [dask.delayed(src.load, pure=False)(i) for i in range(len(offsets) - 1)]
    streamed = Blocks(parts, offsets, X.shape[1], np.dtype(np.float64), True)
    in_memory = Blocks([dask.delayed(X[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)], offsets,
                       X.shape[1], np.dtype(np.float64), True, persisted=True)
    with dask.config.set(scheduler="synchronous"):
        S_a, A_a = nndsvd_init(streamed, 4, 0, float(X.mean()), np.float64, variant="nndsvda")
        S_b, A_b = nndsvd_init(in_memory, 4, 0, float(X.mean()), np.float64, variant="nndsvda")
        S_a, S_b = np.vstack(dask.compute(*S_a)), np.vstack(dask.compute(*S_b))
    assert src.loads > len(parts)  # X was read again for the later products ...
    assert src.peak <= 2  # ... and never held: at most the block being multiplied and the next
    assert _rel(A_a, A_b) < 1e-10 and _rel(S_a, S_b) < 1e-10


@pytest.mark.parametrize("sparse", [False, True])
def test_randomized_svd_matches_numpy_svd(rng, sparse):
    """The blockwise randomized SVD (one pass over X per power iteration) against numpy's SVD
    of the whole matrix: a planted rank-6 matrix with a clear gap, above the exact path's width."""
    import scipy.sparse as sp

    from dnmf_dask.parallel.blocks import as_blocks
    from dnmf_dask.parallel.init import GRAM_SVD_MAX_FEATURES, _randomized_svd

    n, f, r, k = 230, GRAM_SVD_MAX_FEATURES + 30, 6, 4
    X = (rng.random((n, r)) * np.geomspace(8, 1, r)) @ rng.random((r, f)) + 1e-3 * rng.random((n, f))
    if sparse:
        X[X < np.quantile(X, 0.3)] = 0
        X = sp.csr_matrix(X)
    blocks, _ = as_blocks(X, chunk_rows=70)
    with dask.config.set(scheduler="threads"):
        U_blocks, s, V, upn, unn = _randomized_svd(blocks, k, 0, 7)
        U = np.vstack(dask.compute(*U_blocks))
    U_ref, s_ref, Vt_ref = np.linalg.svd(X.toarray() if sparse else X, full_matrices=False)
    assert np.allclose(s, s_ref[:k], rtol=1e-9)
    sign = np.sign(np.sum(V * Vt_ref[:k].T, axis=0))
    assert np.allclose(V, Vt_ref[:k].T * sign, atol=1e-7)
    assert np.allclose(U, U_ref[:, :k] * sign, atol=1e-7)
    assert np.allclose(upn, np.linalg.norm(np.maximum(U, 0), axis=0))
    assert np.allclose(unn, np.linalg.norm(np.minimum(U, 0), axis=0))


def test_randomized_svd_holds_only_the_sketch_in_the_fit_dtype(rng):
    """Between the SVD and the S blocks only the sketch Y (n × (k + 10)) stays on the workers, in
    float32 for a float32 fit; U's blocks are lazy products Y_i (T W). Holding a float64 Y and a
    persisted float64 U made a 1.2M-row corpus's init spill on two 400 MB workers. U from the
    float32 sketch equals the float64 one to float32 rounding."""
    import scipy.sparse as sp

    from dnmf_dask.parallel.blocks import as_blocks
    from dnmf_dask.parallel.init import GRAM_SVD_MAX_FEATURES, N_OVERSAMPLES, _randomized_svd

    k = 4
    X = sp.random(210, GRAM_SVD_MAX_FEATURES + 30, density=0.03, random_state=5, format="csr", dtype=np.float32)
    blocks, _ = as_blocks(X, chunk_rows=70)
    with dask.config.set(scheduler="threads"):
        U32, s32, V32, *_ = _randomized_svd(blocks, k, 0, 7, keep_dtype=np.float32)
        U64, s64, V64, *_ = _randomized_svd(blocks, k, 0, 7)
        for U_blocks, dt in ((U32, np.float32), (U64, np.float64)):
            graph = dict(U_blocks[0].dask)
            assert len(graph) == 2  # the held sketch block and the lazy product, nothing persisted beside
            # (a literal task: the array itself, or wrapped in a DataNode by newer dask)
            held = [a for a in (getattr(v, "value", v) for v in graph.values()) if isinstance(a, np.ndarray)]
            assert len(held) == 1 and held[0].dtype == dt and held[0].shape == (70, k + N_OVERSAMPLES)
        U32, U64 = np.vstack(dask.compute(*U32)), np.vstack(dask.compute(*U64))
    assert U32.dtype == np.float64 and np.array_equal(s32, s64) and np.array_equal(V32, V64)
    assert np.abs(U32 - U64).max() < 1e-6 * np.abs(U64).max()


def test_randomized_nndsvd_of_x_with_rank_below_k(rng):
    """X of rank 2 with k = 4 above the exact path's width: the sketch's zero directions are
    dropped (no division by ~0) and the missing singular pairs are zero; the fit goes on."""
    from dnmf_dask.parallel.init import GRAM_SVD_MAX_FEATURES

    X = rng.random((120, 2)) @ rng.random((2, GRAM_SVD_MAX_FEATURES + 8))
    m = dd.NMF(4, init="nndsvda", max_iter=50, tol=0, random_state=0, scheduler="threads").fit(X)
    assert np.isfinite(m.A_[0]).all() and (m.A_[0] >= 0).all()
    assert m.history_["rel_error"][-1] < 0.05
