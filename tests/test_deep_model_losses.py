"""DeepNMF's label losses (forward pass and backpropagation) and forward-layer solvers, end to end."""

import numpy as np
import pytest

from dnmf_dask.cli import main
from dnmf_dask.errors import DNMFValueError
from dnmf_dask.kernels.deep import apply_backprop_update, backprop_chunk_step
from dnmf_dask.models.deep import DeepNMF
from dnmf_dask.models.hierarchical import HierarchicalNMF

from .test_deep_model import _gather, _grouped_data


def _semi(rng, n_docs=30):
    X, g, y = _grouped_data(rng, n_docs=n_docs)
    ym = y.copy()
    ym[rng.random(len(y)) < 0.5] = -1
    return X, g, y, ym


@pytest.mark.parametrize("label_loss", ["kl", "cross-entropy"])
def test_one_backprop_iteration_with_label_loss_equals_the_kernel(rng, label_loss):
    X, g, _, ym = _semi(rng)
    m = DeepNMF((5, 4, 3), pool_size=3, lam=0.7, backprop_iter=1, max_iter=8, tol=0, random_state=2,
                chunk_rows=20, scheduler="threads", label_loss=label_loss)
    dbg = m._fit_deep(X, ym, groups=g, observed=None, debug=True)
    S_list = [_gather(p) for p in dbg["forward_S"]]
    S_new, stats = backprop_chunk_step(X, S_list, dbg["forward_A"], groups=g, pool_size=3, B=dbg["forward_B"],
                                       y=ym, lam=0.7, label_loss=label_loss)
    A_exp, B_exp = apply_backprop_update(dbg["forward_A"], dbg["forward_B"], stats)
    for Am, Ae in zip(m.A_, A_exp):
        np.testing.assert_allclose(Am, Ae, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(m.B_, B_exp, rtol=1e-8, atol=1e-12)
    assert m.history_["loss_Y"][0] == pytest.approx(stats["energy"][-1], rel=1e-10)
    # the loss reaches the backpropagation: the squared-error label term gives another B
    _, st_fro = backprop_chunk_step(X, S_list, dbg["forward_A"], groups=g, pool_size=3, B=dbg["forward_B"],
                                    y=ym, lam=0.7)
    assert not np.allclose(apply_backprop_update(dbg["forward_A"], dbg["forward_B"], st_fro)[1], m.B_)


def test_one_hals_backprop_iteration_equals_the_kernel(rng):
    X, g, _, ym = _semi(rng)
    m = DeepNMF((5, 4, 3), pool_size=3, lam=0.7, backprop_iter=1, max_iter=8, tol=0, random_state=2,
                chunk_rows=20, scheduler="threads", backprop_solver="hals")
    dbg = m._fit_deep(X, ym, groups=g, observed=None, debug=True)
    S_list = [_gather(p) for p in dbg["forward_S"]]
    kw = dict(groups=g, pool_size=3, B=dbg["forward_B"], y=ym, lam=0.7)
    S_new, stats = backprop_chunk_step(X, S_list, dbg["forward_A"], solver="hals", **kw)
    A_exp, B_exp = apply_backprop_update(dbg["forward_A"], dbg["forward_B"], stats, solver="hals")
    for Am, Ae in zip(m.A_ + [m.B_], A_exp + [B_exp]):
        np.testing.assert_allclose(Am, Ae, rtol=1e-8, atol=1e-12)
    for Sm, Se in zip(dbg["S"], S_new):
        np.testing.assert_allclose(_gather(Sm), Se, rtol=1e-8, atol=1e-12)
    S_mu, _ = backprop_chunk_step(X, S_list, dbg["forward_A"], **kw)  # the choice is honoured
    assert not np.allclose(S_mu[0], S_new[0])


@pytest.mark.parametrize("opts", [dict(label_loss="kl"), dict(label_loss="cross-entropy"), dict(solver="hals"),
                                  dict(solver="anls")])
def test_forward_pass_is_hierarchical_nmf_with_the_same_options(rng, opts):
    """Without pooling and backpropagation DeepNMF is HierarchicalNMF: the options reach every layer."""
    X, g, _, ym = _semi(rng)
    kw = dict(max_iter=15, tol=0, random_state=3, chunk_rows=40, scheduler="threads", **opts)
    h = HierarchicalNMF((5, 3), **kw).fit(X, ym, groups=g)
    d = DeepNMF((5, 3), **kw).fit(X, ym, groups=g)
    for Ad, Ah in zip(d.A_ + [d.B_], h.A_ + [h.B_]):
        np.testing.assert_array_equal(Ad, Ah)
    plain = DeepNMF((5, 3), **{**kw, "label_loss": "frobenius", "solver": "mu"}).fit(X, ym, groups=g)
    assert not np.allclose(plain.B_, d.B_)


@pytest.mark.parametrize("loss", ["kl", "cross-entropy"])
def test_label_losses_learn_the_classes(rng, loss):
    X, g, y = _grouped_data(rng, n_docs=60)
    docs = np.unique(g)
    ym = np.where(np.isin(g, np.concatenate([docs[docs % 3 == c][:3] for c in range(3)])), y, -1)
    m = DeepNMF((6, 3), pool_size=3, lam=1.0, backprop_iter=10, max_iter=50, random_state=0,
                scheduler="synchronous", label_loss=loss).fit(X, ym, groups=g)
    unl = ym < 0
    assert np.mean(m.predict(X, groups=g)[unl] == y[unl]) >= 0.9
    assert np.all(np.isfinite(m.history_["energy"])) and all((A >= 0).all() for A in m.A_ + [m.B_])


def test_option_errors(rng):
    X, g, _, ym = _semi(rng, n_docs=12)
    with pytest.raises(DNMFValueError, match=r"label_loss: expected one of \[.*\], found 'hinge'"):
        DeepNMF((4, 2), label_loss="hinge", scheduler="threads").fit(X, ym, groups=g)
    with pytest.raises(DNMFValueError, match=r"solver: expected one of \['anls', 'hals', 'mu'\], found 'sgd'"):
        DeepNMF((4, 2), solver="sgd", scheduler="threads").fit(X, ym, groups=g)
    with pytest.raises(DNMFValueError, match="solver: expected 'mu' for label_loss='kl'"):
        DeepNMF((4, 2), solver="hals", label_loss="kl", scheduler="threads").fit(X, ym, groups=g)
    for bad in ("anls", "sgd", None):
        with pytest.raises(DNMFValueError, match=r"backprop_solver: expected one of \['mu', 'hals'\]"):
            DeepNMF((4, 2), backprop_solver=bad, backprop_iter=2, scheduler="threads").fit(X, ym, groups=g)
    with pytest.raises(DNMFValueError, match="backprop_solver: expected 'mu' for label_loss='ce'"):
        DeepNMF((4, 2), backprop_solver="hals", label_loss="ce", scheduler="threads").fit(X, ym, groups=g)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(DNMFValueError, match="backprop_solver: expected 'mu' for data with missing entries"):
        DeepNMF((4, 2), backprop_solver="hals", backprop_iter=2, max_iter=3,
                scheduler="synchronous").fit(Xn, ym, groups=g)


def test_cli_and_config_pass_the_label_loss_and_solver(tmp_path, rng):
    import dnmf_dask as dd
    from dnmf_dask.store.model import load_model

    X, g, _, ym = _semi(rng, n_docs=12)
    corpus = dd.write_corpus(tmp_path / "c.zarr", X, y=ym, groups=g, chunk_rows=20)
    out = tmp_path / "m.zarr"
    assert main(["fit", str(corpus.path), str(out), "--model", "deep", "--ranks", "3,2", "--pool-size", "2",
                 "--backprop-iter", "2", "--max-iter", "5", "--label-loss", "kl", "--solver", "hals",
                 "--scheduler", "synchronous"]) == 2  # HALS solves the squared-error label term only
    assert not out.exists()
    cfg = tmp_path / "f.toml"
    cfg.write_text('model = "deep"\nranks = [3, 2]\npool_size = 2\nbackprop_iter = 2\nmax_iter = 5\n'
                   'label_loss = "cross-entropy"\nsolver = "mu"\nscheduler = "synchronous"\n')
    assert main(["fit", str(corpus.path), str(out), "--config", str(cfg)]) == 0
    m = load_model(out)
    assert type(m).__name__ == "DeepNMF" and m.label_loss == "cross-entropy" and m.n_iter_ == 2
    assert main(["fit", str(corpus.path), str(tmp_path / "m2.zarr"), "--config", str(cfg), "--label-loss", "kl",
                 "--solver", "anls"]) == 2  # anls + kl refused by the estimator, in one line
    assert main(["fit", str(corpus.path), str(tmp_path / "m4.zarr"), "--config", str(cfg), "--label-loss",
                 "frobenius", "--backprop-solver", "hals"]) == 0
    assert load_model(tmp_path / "m4.zarr").backprop_solver == "hals"
    assert main(["fit", str(corpus.path), str(tmp_path / "m5.zarr"), "--model", "hierarchical",
                 "--backprop-solver", "hals"]) == 2  # does not apply to that model
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "deep"\nlabel_loss = "hinge"\n')
    assert main(["fit", str(corpus.path), str(tmp_path / "m3.zarr"), "--config", str(bad)]) == 2
