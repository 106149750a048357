"""score(X) without labels: the reconstruction error, computed block by block (never densifying X)."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import NotFittedError

from dnmf_dask import NMF, DeepNMF, HierarchicalNMF
from dnmf_dask.errors import DNMFValueError


def _data(rng, n=120, f=40):
    X = rng.random((n, 5)) @ rng.random((5, f))
    X[rng.random(X.shape) < 0.5] = 0.0
    return X


def test_nmf_score_is_minus_squared_error_of_transform(rng):
    X = _data(rng)
    m = NMF(n_components=4, max_iter=50, random_state=0, chunk_rows=35).fit(X)
    S = m.transform(X)
    ref = -np.sum((X - S @ m.A_[0].T) ** 2)
    assert m.score(X) == pytest.approx(ref, rel=1e-9)
    assert m.score(sp.csr_matrix(X)) == pytest.approx(ref, rel=1e-6)


def test_nmf_score_leaves_out_missing_entries(rng):
    X = _data(rng)
    m = NMF(n_components=4, max_iter=30, random_state=0).fit(X)
    Xn = X.copy()
    Xn[3, 5] = np.nan
    S = m.transform(Xn)
    R = Xn - S @ m.A_[0].T
    assert np.isfinite(m.score(Xn))
    assert m.score(Xn) == pytest.approx(-np.nansum(R * R), rel=1e-9)
    obs = np.ones(X.shape, bool)
    obs[3, 5] = False
    assert m.score(X, observed=obs) == pytest.approx(-np.nansum(R * R), rel=1e-6)


@pytest.mark.parametrize("cls", [HierarchicalNMF, DeepNMF])
def test_multilayer_score_is_minus_squared_error_of_last_layer(rng, cls):
    X = _data(rng)
    m = cls(ranks=(6, 3), max_iter=40, random_state=0, chunk_rows=50).fit(X)
    ref = -np.sum((X - m.inverse_transform(m.transform(X))) ** 2)
    assert m.score(X) == pytest.approx(ref, rel=1e-9)
    assert m.score(sp.csr_matrix(X)) == pytest.approx(ref, rel=1e-6)
    # the first layer's reconstruction is another (smaller) error: the layer argument is honoured
    assert -np.sum((X - m.inverse_transform(m.transform(X, layer=0), layer=0)) ** 2) > ref


def test_multilayer_score_of_wide_sparse_x_does_not_densify(rng):
    """200,000 × 100,000 with 400k nonzeros: a dense copy would need 160 GB."""
    n, f = 200_000, 100_000
    nnz = 400_000
    rows, cols = np.sort(rng.integers(0, n, nnz)), rng.integers(0, f, nnz)
    X = sp.csr_matrix((rng.random(nnz) + 0.1, (rows, cols)), shape=(n, f))
    m = HierarchicalNMF(ranks=(3, 2), max_iter=3, random_state=0, tol=0).fit(X[:2000])
    assert np.isfinite(m.score(X))


def test_inverse_transform_checks_fitted_and_layer(rng):
    with pytest.raises(NotFittedError):
        HierarchicalNMF(ranks=(3, 2)).inverse_transform(np.ones((2, 2)))
    m = HierarchicalNMF(ranks=(3, 2), max_iter=10, random_state=0).fit(_data(rng))
    with pytest.raises(DNMFValueError, match="layer"):
        m.inverse_transform(np.ones((2, 2)), layer=2)


def test_pooled_deep_score_without_labels_is_refused(rng):
    X = _data(rng)
    g = np.repeat(np.arange(20), 6)
    m = DeepNMF(ranks=(6, 3), pool_size=3, max_iter=20, random_state=0).fit(X, groups=g)
    with pytest.raises(DNMFValueError, match="pooled"):
        m.score(X)
