import dask
import numpy as np
import pytest
from scipy.ndimage import maximum_filter1d

from dnmf_dask.errors import DNMFValueError
from dnmf_dask.kernels.deep import apply_backprop_update, backprop_chunk_step
from dnmf_dask.models.deep import DeepNMF
from dnmf_dask.models.hierarchical import HierarchicalNMF


def _grouped_data(rng, n_docs=60, n_classes=3, f=30, noise=0.05):
    """Documents of 3–8 'paragraphs'; every paragraph is drawn from its document's class topic."""
    topics = np.zeros((n_classes, f))
    per = f // n_classes
    for c in range(n_classes):
        topics[c, c * per:(c + 1) * per] = 1.0
        topics[c] += 0.1 * rng.random(f)
    rows, groups, labels = [], [], []
    for d in range(n_docs):
        c = d % n_classes
        n_par = int(rng.integers(3, 9))
        w = rng.random((n_par, 1)) + 0.5
        rows.append(w * topics[c] * rng.random((n_par, f)) + noise * rng.random((n_par, f)))
        groups += [d] * n_par
        labels += [c] * n_par
    return np.vstack(rows), np.asarray(groups), np.asarray(labels)


def _gather(parts):
    return np.concatenate(dask.compute(*parts), axis=0)


def test_equals_hierarchical_without_pooling(rng):
    X, g, y = _grouped_data(rng)
    ym = y.copy()
    ym[rng.random(len(y)) < 0.7] = -1
    kw = dict(max_iter=30, tol=0, random_state=3, chunk_rows=40, scheduler="threads")
    h = HierarchicalNMF((5, 3), **kw).fit(X, ym, groups=g)
    for ps in (0, 1):
        d = DeepNMF((5, 3), pool_size=ps, **kw).fit(X, ym, groups=g)
        for Ad, Ah in zip(d.A_, h.A_):
            np.testing.assert_array_equal(Ad, Ah)
        np.testing.assert_array_equal(d.B_, h.B_)
        np.testing.assert_allclose(d.layer_rel_error_, h.layer_rel_error_, rtol=1e-12)
        np.testing.assert_array_equal(d.predict(X), h.predict(X))
    # random B start too
    h = HierarchicalNMF((5, 3), init_B="random", **kw).fit(X, ym)
    d = DeepNMF((5, 3), init_B="random", **kw).fit(X, ym)
    np.testing.assert_array_equal(d.B_, h.B_)


def _pooling_fit(X, y, g, chunk_rows, scheduler):
    m = DeepNMF((5, 3), pool_size=3, max_iter=25, tol=0, random_state=5, chunk_rows=chunk_rows, scheduler=scheduler)
    dbg = m._fit_deep(X, y, groups=g, observed=None, debug=True)
    S0 = _gather(dbg["forward_S"][0])
    X1 = _gather(dbg["inputs"][1])
    return m, S0, X1, dbg


def test_pooling_layer_input_and_chunking(rng, local_cluster):
    X, g, y = _grouped_data(rng, n_docs=45)
    y = y.copy()
    y[rng.random(len(y)) < 0.6] = -1
    m, S0, X1, dbg = _pooling_fit(X, y, g, 7, "threads")  # 7 rows would split most documents
    offs = dbg["blocks"].offsets
    assert len(offs) > 3
    assert all(g[o] != g[o - 1] for o in offs[1:-1])  # blocks hold whole groups
    expect = np.empty_like(S0)
    for d in np.unique(g):
        rows = g == d
        expect[rows] = maximum_filter1d(S0[rows], size=3, axis=0, mode="nearest")
    np.testing.assert_array_equal(X1, expect)
    # the layer-1 data is really used: A1 is the fit of X1
    assert not np.allclose(X1, S0)
    m2, _, _, _ = _pooling_fit(X, y, g, 50, "threads")
    m3, _, _, _ = _pooling_fit(X, y, g, 13, local_cluster)
    for other in (m2, m3):
        for Aa, Ab in zip(m.A_ + [m.B_], other.A_ + [other.B_]):
            np.testing.assert_allclose(Ab, Aa, rtol=1e-8, atol=1e-10)
    # transform: exact forward with pooling between layers
    S1 = m.transform(X, layer=1, groups=g)
    assert S1.shape == (len(X), 3)
    with pytest.raises(DNMFValueError, match="groups"):
        m.transform(X, layer=1)


def test_one_backprop_iteration_equals_single_chunk_kernel(rng):
    X, g, y = _grouped_data(rng, n_docs=30)
    ym = y.copy()
    ym[rng.random(len(y)) < 0.5] = -1
    m = DeepNMF((5, 4, 3), pool_size=3, lam=0.7, backprop_iter=1, max_iter=20, tol=0, random_state=2,
                chunk_rows=20, scheduler="threads")
    dbg = m._fit_deep(X, ym, groups=g, observed=None, debug=True)
    S_list = [_gather(p) for p in dbg["forward_S"]]
    S_new, stats = backprop_chunk_step(X, S_list, dbg["forward_A"], groups=g, pool_size=3, B=dbg["forward_B"],
                                       y=ym, lam=0.7)
    A_exp, B_exp = apply_backprop_update(dbg["forward_A"], dbg["forward_B"], stats)
    for Am, Ae in zip(m.A_, A_exp):
        np.testing.assert_allclose(Am, Ae, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(m.B_, B_exp, rtol=1e-8, atol=1e-12)
    for Sm, Se in zip(dbg["S"], S_new):
        np.testing.assert_allclose(_gather(Sm), Se, rtol=1e-8, atol=1e-12)
    assert m.n_iter_ == 1 and m.stop_reason_ == "max_iter"
    h = m.history_
    assert h["energy"][0] == pytest.approx(float(np.sum(stats["energy"])), rel=1e-10)
    np.testing.assert_allclose(h["energy_layers"][0], stats["energy"][:3], rtol=1e-10)
    assert h["loss_Y"][0] == pytest.approx(stats["energy"][3], rel=1e-10)
    assert np.isfinite(h["energy_final"])


def test_backprop_history_and_tol(rng):
    X, g, y = _grouped_data(rng, n_docs=30)
    m = DeepNMF((5, 3), pool_size=3, backprop_iter=200, tol=1e-3, max_iter=20, random_state=0,
                scheduler="threads").fit(X, y, groups=g)
    h = m.history_
    assert m.stop_reason_ == "tol" and m.n_iter_ < 200
    assert len(h["energy"]) == len(h["energy_layers"]) == len(h["loss_Y"]) == m.n_iter_
    assert h["rel_change"][-1] <= 1e-3
    assert len(m.layer_rel_error_) == 2


def test_semi_supervised_grouped_accuracy(rng):
    X, g, y = _grouped_data(rng, n_docs=90)
    docs = np.unique(g)
    labeled_docs = np.concatenate([docs[docs % 3 == c][:3] for c in range(3)])  # 9 of 90 documents
    ym = np.where(np.isin(g, labeled_docs), y, -1)
    m = DeepNMF((6, 3), pool_size=3, lam=1.0, backprop_iter=30, max_iter=100, random_state=0,
                chunk_rows=60, scheduler="threads").fit(X, ym, groups=g)
    unl = ym < 0
    acc = np.mean(m.predict(X, groups=g)[unl] == y[unl])
    assert acc >= 0.9, acc


def test_errors(rng):
    X, g, y = _grouped_data(rng, n_docs=12)
    with pytest.raises(DNMFValueError, match="groups"):
        DeepNMF((4, 2), pool_size=3, scheduler="threads").fit(X)
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(DNMFValueError, match="pool_size"):
            DeepNMF((4, 2), pool_size=bad, scheduler="threads").fit(X, groups=g)
    with pytest.raises(DNMFValueError, match="stride"):
        DeepNMF((4, 2), pool_size=2, stride=3, scheduler="threads").fit(X, groups=g)
    with pytest.raises(DNMFValueError, match="backprop_iter"):
        DeepNMF((4, 2), backprop_iter=-1, scheduler="threads").fit(X)
