"""float32 and float64 inputs work for every estimator (codes in the input's dtype), and a fit is
determined by ``random_state`` whatever the chunking and the scheduler."""

import warnings

import numpy as np
import pytest

import dnmf_dask as dd


def _data(rng, n=48, f=10, k=3):
    X = rng.random((n, k)) @ rng.random((k, f)) + 0.05 * rng.random((n, f))
    y = np.arange(n) % 3
    y[rng.random(n) < 0.5] = -1
    groups = np.repeat(np.arange(n // 4), 4)
    return X, y, groups


def _estimators(**common):
    kw = dict(tol=0, random_state=11, init="random", **common)  # random starts: the seed matters
    return {
        "NMF": dd.NMF(3, max_iter=8, **kw),
        "SSNMF": dd.SSNMF(3, max_iter=8, **kw),
        "HierarchicalNMF": dd.HierarchicalNMF((3, 2), max_iter=8, **kw),
        "DeepNMF": dd.DeepNMF((3, 2), pool_size=2, backprop_iter=3, max_iter=6, **kw),
        "NeuralNMF": dd.NeuralNMF((3, 2), epochs=3, init_max_iter=6, **kw),
    }


NAMES = list(_estimators())


def _fit(m, X, y, groups):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return m.fit(X, None if type(m) is dd.NMF else y, groups=groups)


def _factors(m):
    return list(m.A_) + ([m.B_] if getattr(m, "B_", None) is not None else [])


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_float64(rng, name):
    X, y, g = _data(rng)
    m64 = _fit(_estimators(scheduler="synchronous")[name], X, y, g)
    m32 = _fit(_estimators(scheduler="synchronous")[name], X.astype(np.float32), y, g)
    for A32, A64 in zip(_factors(m32), _factors(m64)):
        assert np.all(np.isfinite(A32)) and A32.min() >= 0
        # the same fit up to float32 round-off (a few iterations, so it has not amplified)
        assert np.linalg.norm(A32 - A64) <= 2e-3 * np.linalg.norm(A64) + 1e-6
    for M, dt in ((m32, np.float32), (m64, np.float64)):
        if name in ("NMF", "SSNMF", "HierarchicalNMF", "DeepNMF"):  # MU fits keep the input's dtype
            assert M.A_[0].dtype == dt
        S = np.asarray(M.transform(X.astype(dt)) if name not in ("DeepNMF",) else M.transform(X.astype(dt), groups=g))
        assert S.dtype == dt and np.all(np.isfinite(S)) and S.min() >= 0
    Xi = (X * 100).astype(np.int64)  # integers -> float64 (README "Numerical conventions")
    mi = _fit(_estimators(scheduler="synchronous")[name], Xi, y, g)
    assert all(np.all(np.isfinite(A)) for A in mi.A_)
    if name != "NeuralNMF":
        assert mi.A_[0].dtype == np.float64


@pytest.mark.parametrize("name", NAMES)
def test_same_fit_across_chunkings_and_schedulers(rng, name):
    X, y, g = _data(rng)
    ref = _fit(_estimators(scheduler="synchronous", chunk_rows=48)[name], X, y, g)
    again = _fit(_estimators(scheduler="synchronous", chunk_rows=48)[name], X, y, g)
    for A, B in zip(_factors(again), _factors(ref)):
        np.testing.assert_array_equal(A, B)  # same random_state, same everything: bitwise equal
    for chunk_rows, scheduler in ((8, "threads"), (20, "synchronous"), (13, "threads")):  # 13 splits groups: rechunked
        m = _fit(_estimators(scheduler=scheduler, chunk_rows=chunk_rows)[name], X, y, g)
        assert m.n_iter_ == ref.n_iter_
        for A, B in zip(_factors(m), _factors(ref)):
            np.testing.assert_allclose(A, B, rtol=1e-7, atol=1e-10)
    other = _fit(_estimators(scheduler="synchronous")[name].set_params(random_state=12), X, y, g)
    assert not np.allclose(other.A_[0], ref.A_[0])  # the seed matters (the comparison above can fail)


@pytest.mark.parametrize("opts", [{}, {"label_loss": "kl"}, {"label_loss": "cross-entropy"}, {"backprop_solver": "hals"}],
                         ids=["default", "kl", "cross-entropy", "hals"])
def test_deep_backprop_same_on_local_cluster(rng, local_cluster, opts):
    X, y, g = _data(rng)
    a = _fit(_estimators(scheduler="synchronous", chunk_rows=48)["DeepNMF"].set_params(**opts), X, y, g)
    b = _fit(_estimators(scheduler=local_cluster, chunk_rows=12)["DeepNMF"].set_params(**opts), X, y, g)
    for A, B in zip(_factors(b), _factors(a)):
        np.testing.assert_allclose(A, B, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(b.history_["energy"], a.history_["energy"], rtol=1e-9)
