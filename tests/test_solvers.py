"""KL loss, scikit-learn penalties, HALS / ANLS solvers and the ssnmf package's six models."""

import importlib.util
import pathlib
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SKNMF

import dnmf_dask as dd
from dnmf_dask.errors import DNMFValueError
from dnmf_dask.kernels.solvers import kl_ratio

from .reference import anls, hals, kl_mu


def _data(rng, n=90, f=25, sparse=False):
    X = rng.random((n, f))
    X[X < 0.5] = 0
    return sp.csr_matrix(X) if sparse else X


def _rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max()


def _start(rng, X, k):
    return rng.random((X.shape[0], k)), rng.random((k, X.shape[1]))


def _fit(X, W0, H0, n_iter=40, **kw):
    m = dd.NMF(W0.shape[1], init="custom", max_iter=n_iter, tol=0, scheduler=kw.pop("scheduler", "threads"), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        S = m.fit_transform(X, W=W0, H=H0)
    return m, S


def _non_increasing(h):
    h = np.asarray(h)
    return bool(np.all(np.diff(h) <= 1e-12 * np.abs(h[:-1])))


# -- generalized KL --------------------------------------------------------------------------
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("chunk_rows", [1000, 17])
def test_kl_matches_numpy_reference(rng, sparse, chunk_rows):
    X = _data(rng, sparse=sparse)
    W0, H0 = _start(rng, X, 4)
    m, S = _fit(X, W0, H0, beta_loss="kl", chunk_rows=chunk_rows)
    Xd = X.toarray() if sparse else X
    A_ref, S_ref, objs = kl_mu(Xd.T, H0.T, W0.T, n_iter=40)
    assert _rel(m.A_[0], A_ref) < 1e-8 and _rel(S, S_ref.T) < 1e-8
    np.testing.assert_allclose(m.history_["loss_X"], objs, rtol=1e-8)
    assert _non_increasing(m.history_["objective"])
    assert m.n_iter_ == 40 and m.stop_reason_ == "max_iter"


@pytest.mark.parametrize("sparse", [False, True])
def test_kl_matches_sklearn_mu(rng, sparse):
    # same safeguards as scikit-learn (x̂ clipped at float32 eps where it divides, zero column sums
    # of S replaced by 1, A < float64 eps set to 0), so the two agree to rounding: 1e-8 leaves
    # room for the different summation order of the blocked products over 40 iterations
    X = _data(rng, sparse=sparse)
    W0, H0 = _start(rng, X, 5)
    sk = SKNMF(5, init="custom", solver="mu", beta_loss="kullback-leibler", max_iter=40, tol=0)
    W_sk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
    m, S = _fit(X, W0, H0, beta_loss="kullback-leibler", chunk_rows=31)
    assert _rel(m.components_, sk.components_) < 1e-8 and _rel(S, W_sk) < 1e-8


def test_kl_sparse_stays_sparse_and_tol_stops(rng):
    X = _data(rng, sparse=True)
    S, A = rng.random((X.shape[0], 3)), rng.random((X.shape[1], 3))
    R, _ = kl_ratio(X, S, A)
    assert sp.issparse(R) and R.nnz == X.nnz
    np.testing.assert_allclose(R.toarray()[X.toarray() > 0], (X.toarray() / (S @ A.T))[X.toarray() > 0])
    m = dd.NMF(3, beta_loss="kl", max_iter=500, tol=1e-3, random_state=0, scheduler="threads").fit(X)
    assert m.stop_reason_ == "tol" and m.n_iter_ < 500
    h = m.history_["objective"]
    assert h[-2] - h[-1] <= 1e-3 * h[-2]


def test_kl_transform_uses_kl(rng):
    X = _data(rng)
    m = dd.NMF(4, beta_loss="kl", max_iter=200, tol=0, random_state=0, scheduler="threads", transform_max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        S_fit = m.fit_transform(X)
    # transform solves min_S D(X || S Aᵀ) with A fixed; from the fitted S it cannot do much better
    S_new = m.transform(X)
    def kl(S):
        Xh = S @ m.A_[0].T
        p = X > 0
        return np.sum(X[p] * np.log(X[p] / Xh[p])) - X.sum() + Xh.sum()
    assert kl(S_new) <= kl(S_fit) * 1.01


# -- penalties ------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_loss", ["frobenius", "kullback-leibler"])
@pytest.mark.parametrize("alphas", [dict(alpha_W=0.01, l1_ratio=0.3), dict(alpha_W=0.005, alpha_H=0.02, l1_ratio=0.8),
                                    dict(alpha_W=0.0, alpha_H=0.01, l1_ratio=0.0)])
def test_penalties_match_sklearn_mu(rng, beta_loss, alphas):
    X = _data(rng, sparse=True)
    W0, H0 = _start(rng, X, 4)
    sk = SKNMF(4, init="custom", solver="mu", beta_loss=beta_loss, max_iter=40, tol=0, **alphas)
    W_sk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
    m, S = _fit(X, W0, H0, beta_loss=beta_loss, chunk_rows=23, **alphas)
    assert _rel(m.components_, sk.components_) < 1e-8 and _rel(S, W_sk) < 1e-8
    assert _non_increasing(m.history_["objective"])
    # the objective is loss_X + c·P with scikit-learn's P (c = 2: loss_X is the unhalved squared error)
    aW = alphas["alpha_W"]
    aH = alphas.get("alpha_H", aW)
    r = alphas["l1_ratio"]
    n, f = X.shape
    P = (f * aW * (r * S.sum() + 0.5 * (1 - r) * (S**2).sum())
         + n * aH * (r * m.A_[0].sum() + 0.5 * (1 - r) * (m.A_[0] ** 2).sum()))
    c = 2.0 if beta_loss == "frobenius" else 1.0
    assert m.history_["objective"][-1] == pytest.approx(m.history_["loss_X"][-1] + c * P, rel=1e-10)


def test_l1_penalty_makes_factors_sparser(rng):
    X = _data(rng)
    W0, H0 = _start(rng, X, 6)
    plain, S0 = _fit(X, W0, H0, n_iter=150, solver="hals")
    sparse_fit, S1 = _fit(X, W0, H0, n_iter=150, solver="hals", alpha_W=0.02, l1_ratio=1.0)
    assert (S1 == 0).mean() > (S0 == 0).mean() + 0.1


# -- HALS and ANLS ---------------------------------------------------------------------------
@pytest.mark.parametrize("sparse", [False, True])
def test_hals_matches_reference_and_sklearn_cd(rng, sparse):
    X = _data(rng, sparse=sparse)
    W0, H0 = _start(rng, X, 5)
    m, S = _fit(X, W0, H0, solver="hals", chunk_rows=19)
    Xd = X.toarray() if sparse else X
    A_ref, S_ref, objs = hals(Xd.T, H0.T, W0.T, n_iter=40)
    assert _rel(m.A_[0], A_ref) < 1e-8 and _rel(S, S_ref.T) < 1e-8
    np.testing.assert_allclose(m.history_["loss_X"], objs, rtol=1e-8)
    assert _non_increasing(m.history_["objective"])
    # scikit-learn's cd (shuffle=False) updates W then H, columns in order: the same algorithm
    sk = SKNMF(5, init="custom", solver="cd", max_iter=40, tol=0)
    W_sk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
    assert _rel(m.components_, sk.components_) < 1e-8 and _rel(S, W_sk) < 1e-8


def test_hals_penalties_match_sklearn_cd(rng):
    X = _data(rng, sparse=True)
    W0, H0 = _start(rng, X, 4)
    kw = dict(alpha_W=0.01, alpha_H=0.003, l1_ratio=0.4)
    sk = SKNMF(4, init="custom", solver="cd", max_iter=30, tol=0, **kw)
    W_sk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
    m, S = _fit(X, W0, H0, n_iter=30, solver="hals", chunk_rows=40, **kw)
    assert _rel(m.components_, sk.components_) < 1e-8 and _rel(S, W_sk) < 1e-8
    assert _non_increasing(m.history_["objective"])


@pytest.mark.parametrize("sparse", [False, True])
def test_anls_matches_scipy_nnls_reference(rng, sparse):
    X = _data(rng, n=40, f=15, sparse=sparse)
    W0, H0 = _start(rng, X, 3)
    m, S = _fit(X, W0, H0, n_iter=8, solver="anls", chunk_rows=13)
    Xd = X.toarray() if sparse else X
    A_ref, S_ref, objs = anls(Xd.T, H0.T, W0.T, n_iter=8)
    assert _rel(m.A_[0], A_ref) < 1e-6 and _rel(S, S_ref.T) < 1e-6
    np.testing.assert_allclose(m.history_["loss_X"], objs, rtol=1e-6)
    assert _non_increasing(m.history_["objective"])


def test_solvers_reach_sklearn_cd_objective(rng):
    X = _data(rng, n=80, f=20)
    W0, H0 = _start(rng, X, 3)
    sk = SKNMF(3, init="custom", solver="cd", max_iter=100, tol=0).fit(X, W=W0.copy(), H=H0.copy())
    for s, n_iter in (("mu", 150), ("hals", 100), ("anls", 30)):
        v = _fit(X, W0, H0, n_iter=n_iter, solver=s)[0].history_["loss_X"][-1]
        assert v == pytest.approx(sk.reconstruction_err_**2, rel=0.05), s


def test_solvers_agree_across_schedulers(rng, local_cluster):
    X = _data(rng, n=80, f=20)
    W0, H0 = _start(rng, X, 3)
    a, _ = _fit(X, W0, H0, n_iter=5, solver="hals", chunk_rows=30, scheduler="threads")
    b, _ = _fit(X, W0, H0, n_iter=5, solver="hals", chunk_rows=7, scheduler="synchronous")
    c, _ = _fit(X, W0, H0, n_iter=2, beta_loss="kl", chunk_rows=30, scheduler="threads")
    d, _ = _fit(X, W0, H0, n_iter=2, beta_loss="kl", chunk_rows=40, scheduler=local_cluster)
    assert _rel(a.A_[0], b.A_[0]) < 1e-10 and _rel(c.A_[0], d.A_[0]) < 1e-10


@pytest.mark.parametrize("kw, name", [
    (dict(beta_loss="itakura-saito"), "beta_loss"), (dict(solver="cd"), "solver"),
    (dict(solver="hals", beta_loss="kl"), "solver"), (dict(alpha_W=-1.0), "alpha_W"),
    (dict(alpha_H="twice"), "alpha_H"), (dict(l1_ratio=1.5), "l1_ratio"),
])
def test_solver_parameter_errors(rng, kw, name):
    with pytest.raises(DNMFValueError, match=name):
        dd.NMF(2, **kw).fit(_data(rng))


def test_hals_refuses_missing_entries(rng):
    X = _data(rng)
    X[0, 0] = np.nan
    with pytest.raises(DNMFValueError, match="solver.*missing"):
        dd.NMF(2, solver="hals", scheduler="threads").fit(X)


# -- the ssnmf package's six models ------------------------------------------------------------
def _ssnmf_numpy():
    """The package's numpy module, loaded by path: ``import ssnmf`` would import torch."""
    spec = importlib.util.find_spec("ssnmf")
    if spec is None:
        pytest.skip("the ssnmf package is not installed (pip install ssnmf; in the test extra)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "ssnmf_numpy.py"
    mod_spec = importlib.util.spec_from_file_location("_ssnmf_numpy", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.SSNMF_N


MODELS = {1: ("frobenius", None), 2: ("kullback-leibler", None), 3: ("frobenius", "frobenius"),
          4: ("frobenius", "kullback-leibler"), 5: ("kullback-leibler", "frobenius"),
          6: ("kullback-leibler", "kullback-leibler")}


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_six_ssnmf_models_match_the_package(rng, model, mask):
    SSNMF_N = _ssnmf_numpy()
    loss, label_loss = MODELS[model]
    n, f, k, p, n_iter = 60, 20, 4, 3, 15
    X = rng.random((n, f))
    y = rng.integers(0, p, n)
    y[rng.random(n) < 0.3] = -1
    Y = np.zeros((p, n))
    Y[y[y >= 0], np.flatnonzero(y >= 0)] = 1
    L = np.tile((y >= 0).astype(float), (p, 1))
    A0, S0, B0 = rng.random((f, k)), rng.random((k, n)), rng.random((p, k))
    obs = rng.random((n, f)) > 0.2 if mask else None
    kw = dict(modelNum=model, A=A0.copy(), S=S0.copy())
    if mask:
        kw["W"] = obs.T.astype(float)
    if label_loss:
        kw.update(Y=Y, B=B0.copy(), L=L, lam=0.7)
    ref = SSNMF_N(X.T.copy(), k, **kw)
    # the package updates A (and B) first, then S; ours S first, then A and B. Start ours from the
    # package's first A, B with its initial S: then our iteration t gives its S_t, A_{t+1}, B_{t+1}
    states = []
    for _ in range(n_iter + 1):
        ref.mult(numiters=1)
        states.append((ref.A.copy(), ref.S.copy(), None if ref.B is None else ref.B.copy()))
    A1, _, B1 = states[0]
    common = dict(init="custom", max_iter=n_iter, tol=0, chunk_rows=25, scheduler="threads", beta_loss=loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if label_loss:
            m = dd.SSNMF(k, lam=0.7, label_loss=label_loss, **common)
            S = m.fit_transform(X, y, W=S0.T, H=A1.T, B=B1, observed=obs)
        else:
            m = dd.NMF(k, **common)
            S = m.fit_transform(X, W=S0.T, H=A1.T, observed=obs)
    A_ref, S_ref, B_ref = states[n_iter][0], states[n_iter - 1][1], states[n_iter][2]
    assert _rel(m.A_[0], A_ref) < 1e-6 and _rel(S, S_ref.T) < 1e-6
    if label_loss:
        assert _rel(m.B_, B_ref) < 1e-6


# -- gradients of every term and the cross-entropy label loss -----------------------------------
@pytest.mark.parametrize("term, loss", [("data", "frobenius"), ("data", "kullback-leibler"), ("label", "frobenius"),
                                        ("label", "kullback-leibler"), ("label", "cross-entropy")])
def test_mu_split_is_the_gradient(rng, term, loss):
    # multiplicative updates use num/den with c·(den − num) = ∂loss/∂S; check against finite differences
    from dnmf_dask.kernels.nmf import one_hot
    from dnmf_dask.kernels.solvers import data_term, label_term, weight

    n, f, k, p = 12, 7, 3, 4
    S = rng.random((n, k)) + 0.2
    if term == "data":
        X, A = rng.random((n, f)), rng.random((f, k))
        fun = lambda S: data_term(X, S, A, None, loss, A.T @ A, float(np.sum(X * X)))  # noqa: E731
    else:
        y = rng.integers(0, p, n)
        y[:3] = -1
        B, Y = rng.random((p, k)), one_hot(y, p)
        fun = lambda S: label_term(Y, y >= 0, S, B, loss)  # noqa: E731
    value, num, den = fun(S)
    grad = weight(loss) * (np.asarray(den) - np.asarray(num))
    fd = np.zeros_like(S)
    h = 1e-6
    for i in range(n):
        for j in range(k):
            E = np.zeros_like(S)
            E[i, j] = h
            fd[i, j] = (fun(S + E)[0] - fun(S - E)[0]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_cross_entropy_ssnmf_matches_reference_and_classifies(rng):
    from .reference import ssnmf_ce_mu

    n, f, k, p = 60, 20, 4, 3
    y = np.repeat(np.arange(p), n // p)
    X = rng.random((n, f)) * 0.3
    for c in range(p):
        X[y == c, c * 6:(c + 1) * 6] += 1.0
    y_obs = y.copy()
    y_obs[rng.random(n) < 0.3] = -1
    S0, A0, B0 = rng.random((n, k)), rng.random((f, k)), rng.random((p, k))
    m = dd.SSNMF(k, lam=2.0, label_loss="cross-entropy", init="custom", max_iter=30, tol=0, chunk_rows=16,
                 scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        S = m.fit_transform(X, y_obs, W=S0, H=A0.T, B=B0)
    Y = np.zeros((p, n))
    Y[y_obs[y_obs >= 0], np.flatnonzero(y_obs >= 0)] = 1
    A_ref, S_ref, B_ref = ssnmf_ce_mu(X.T, A0, S0.T, B0, Y, y_obs >= 0, 2.0, n_iter=30)
    assert _rel(m.A_[0], A_ref) < 1e-8 and _rel(S, S_ref.T) < 1e-8 and _rel(m.B_, B_ref) < 1e-8
    h = m.history_
    assert h["loss_Y"][-1] < h["loss_Y"][0] and h["objective"][-1] < h["objective"][0]
    assert h["accuracy_labeled"][-1] == 1.0


@pytest.mark.parametrize("kw", [dict(solver="hals"), dict(solver="anls"), dict(beta_loss="kl"),
                                dict(alpha_W=0.01, l1_ratio=0.5)])
def test_every_solver_reports_tol_stop(rng, kw):
    X = _data(rng)
    m = dd.NMF(3, max_iter=400, tol=1e-4, random_state=0, scheduler="threads", **kw).fit(X)
    h = m.history_["objective"]
    assert m.stop_reason_ == "tol" and m.n_iter_ < 400 and len(h) == m.n_iter_
    assert h[-3] - h[-2] <= 1e-4 * h[-3]  # the check that stopped it (see NMF's tol docs)
    with pytest.warns(dd.errors.ConvergenceWarning):
        m2 = dd.NMF(3, max_iter=3, tol=1e-12, random_state=0, scheduler="threads", **kw).fit(X)
    assert m2.stop_reason_ == "max_iter" and m2.n_iter_ == 3


@pytest.mark.parametrize("solver", ["hals", "anls"])
def test_ssnmf_exact_solvers_decrease_objective(rng, solver):
    X = _data(rng)
    y = np.arange(X.shape[0]) % 3
    y[::4] = -1
    m = dd.SSNMF(4, lam=0.5, solver=solver, max_iter=15, tol=0, random_state=0, chunk_rows=30, scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(X, y)
    assert _non_increasing(m.history_["objective"]) and m.n_iter_ == 15
    assert (m.A_[0] >= 0).all() and (m.B_ >= 0).all()


def test_cli_fit_with_kl_and_store_round_trip(rng, tmp_path, capsys):
    from dnmf_dask.cli import main
    from dnmf_dask.store.model import load_model

    X = _data(rng, n=40, f=12)
    dd.write_corpus(tmp_path / "c.zarr", X, chunk_rows=20)
    assert main(["fit", str(tmp_path / "c.zarr"), str(tmp_path / "m.zarr"), "--model", "nmf", "-k", "3",
                 "--beta-loss", "kl", "--max-iter", "30", "--scheduler", "threads"]) == 0
    m = load_model(tmp_path / "m.zarr")
    assert m.beta_loss == "kl" and m.solver == "mu"
    # transform of the loaded model minimises the KL divergence (as fitted), not the squared error
    S = np.asarray(m.transform(X))
    m.beta_loss = "frobenius"
    S_fro = np.asarray(m.transform(X))
    def kl(S):
        Xh = S @ m.A_[0].T
        p = X > 0
        return np.sum(X[p] * np.log(X[p] / Xh[p])) - X.sum() + Xh.sum()
    assert kl(S) < kl(S_fro)
    assert main(["fit", str(tmp_path / "c.zarr"), str(tmp_path / "n.zarr"), "--model", "neural", "--ranks", "3,2",
                 "--solver", "hals", "--scheduler", "threads"]) == 2
    assert "--solver" in capsys.readouterr().err
