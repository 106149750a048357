import time
import warnings

import numpy as np
import pytest

import dnmf_dask as dd
from dnmf_dask.errors import DNMFValueError
from dnmf_dask.ingest.synthetic import hierarchical_blocks
from dnmf_dask.kernels.neural import chunk_cost_grad

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def toy():
    return hierarchical_blocks(random_state=0)


def test_pgd_cost_decreases_and_beats_hierarchical_init(toy):
    X, _ = toy
    m = dd.NeuralNMF((9, 4, 2), epochs=40, tol=0, random_state=0, scheduler="threads").fit(X)
    c = np.array(m.history_["cost"])
    assert np.all(np.diff(c) <= 0)  # Armijo steps only accept decreases
    assert all(A.min() >= 0 for A in m.A_)
    assert m.history_["rel_error"][-1] < m.init_model_.layer_rel_error_[-1] - 0.05
    # the reported cost is the kernel's cost at the final factors, on all rows at once
    cost, *_ = chunk_cost_grad(X, m.A_, None, None, 0.0)
    assert c[-1] == pytest.approx(cost, rel=1e-10)


def test_full_batch_independent_of_chunking_and_scheduler(toy, local_cluster):
    X, y = toy
    ym = y.copy()
    ym[np.random.default_rng(0).random(len(y)) > 0.4] = -1
    kw = dict(epochs=8, tol=0, random_state=3, init="random")
    a = dd.NeuralNMF((6, 3), chunk_rows=90, scheduler="threads", **kw).fit(X, ym)
    b = dd.NeuralNMF((6, 3), chunk_rows=13, scheduler=local_cluster, **kw).fit(X, ym)
    for Aa, Ab in zip(a.A_ + [a.B_], b.A_ + [b.B_]):
        np.testing.assert_allclose(Ab, Aa, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(a.history_["cost"], b.history_["cost"], rtol=1e-9)


def test_supervised_single_layer_and_sgd(toy):
    X, y = toy
    m = dd.NeuralNMF((9,), epochs=30, random_state=0, scheduler="threads").fit(X, y)
    assert m.history_["accuracy_labeled"][-1] >= 0.95
    s = dd.NeuralNMF((9, 4), solver="sgd", init="random", epochs=8, learning_rate=1e-3, batch_size=30,
                     random_state=0, scheduler="threads").fit(X)
    assert len(s.history_["cost"]) == 9 and all(A.min() >= 0 for A in s.A_)
    assert s.history_["cost"][-1] < 0.3 * s.history_["cost"][0]


def test_bad_params(toy):
    X, _ = toy
    with pytest.raises(DNMFValueError, match="solver"):
        dd.NeuralNMF((3,), solver="adam", scheduler="threads").fit(X)
    with pytest.raises(DNMFValueError, match="cost"):
        dd.NeuralNMF((3,), cost="kl", scheduler="threads").fit(X)


def test_cross_entropy_reads_nine_classes_off_four_codes(toy):
    """A squared-error B ≥ 0 cannot separate the 9 classes from the 4-dim last layer; the softmax
    classifier (label_loss='cross_entropy', B signed and refitted exactly) can."""
    X, y = toy
    kw = dict(epochs=5, tol=0, random_state=0, scheduler="threads")
    fro = dd.NeuralNMF((9, 4), **kw).fit(X, y)
    ce = dd.NeuralNMF((9, 4), label_loss="cross-entropy", **kw).fit(X, y)
    assert np.mean(fro.predict(X) == y) < 0.7
    assert np.mean(ce.predict(X) == y) >= 0.95
    assert ce.B_.min() < 0 and fro.B_.min() >= 0
    assert all(A.min() >= 0 for A in ce.A_)
    assert np.all(np.diff(ce.history_["cost"]) <= 1e-9 * abs(ce.history_["cost"][0]))
    with pytest.raises(DNMFValueError, match="label_loss"):
        dd.NeuralNMF((3,), label_loss="hinge", scheduler="threads").fit(X, y)


@pytest.mark.parametrize("label_loss", ["frobenius", "cross-entropy"])
def test_in_memory_single_block_runs_without_dask_and_matches_the_dask_path(toy, label_loss, monkeypatch):
    """One numpy block: the epochs call the kernel directly (no graph); a one-chunk dask array of
    the same data goes through map_reduce; both give the same fit to 1e-10 (the direct path also warm-starts its NNLS)."""
    import dask.array as da

    from dnmf_dask.parallel import neural as parallel_neural

    X, y = toy
    ym = y.copy()
    ym[np.random.default_rng(1).random(len(y)) > 0.4] = -1
    kw = dict(epochs=6, tol=0, random_state=2, init="random", label_loss=label_loss, scheduler="synchronous")
    graph = dd.NeuralNMF((6, 3), **kw).fit(da.from_array(X, chunks=X.shape), ym)
    calls = []
    monkeypatch.setattr(parallel_neural, "map_reduce", lambda *a, **k: calls.append(1))  # must not be used
    direct = dd.NeuralNMF((6, 3), **kw).fit(X, ym)
    assert not calls
    for Fa, Fb in zip(direct.A_ + [direct.B_], graph.A_ + [graph.B_]):  # norm-wise, warm NNLS rounds
        assert np.linalg.norm(Fa - Fb) <= 1e-10 * np.linalg.norm(Fb)  # differently in the last bits
    np.testing.assert_allclose(direct.history_["cost"], graph.history_["cost"], rtol=1e-10)
    assert direct.n_iter_ == graph.n_iter_ == 6


@pytest.mark.parametrize("label_loss", ["frobenius", "cross-entropy"])
def test_in_memory_blocks_run_without_dask_and_match_the_dask_path(toy, label_loss, monkeypatch):
    """Several numpy blocks on an in-process scheduler: every pass calls the kernel on each block
    directly (no graph, the trials' backward pass only when accepted), summing the blocks' statistics
    in block order as the dask path's reduction; equal to the same chunking as a dask array."""
    import dask.array as da

    from dnmf_dask.parallel import neural as parallel_neural

    X, y = toy
    ym = y.copy()
    ym[np.random.default_rng(1).random(len(y)) > 0.4] = -1
    rows = -(-X.shape[0] // 3)
    kw = dict(epochs=6, tol=0, random_state=2, init="random", label_loss=label_loss, scheduler="synchronous",
              chunk_rows=rows)
    graph = dd.NeuralNMF((6, 3), **kw).fit(da.from_array(X, chunks=(rows, X.shape[1])), ym)
    calls = []
    monkeypatch.setattr(parallel_neural, "map_reduce", lambda *a, **k: calls.append(1))  # must not be used
    direct = dd.NeuralNMF((6, 3), **kw).fit(X, ym)
    assert not calls
    for Fa, Fb in zip(direct.A_ + [direct.B_], graph.A_ + [graph.B_]):
        assert np.linalg.norm(Fa - Fb) <= 1e-10 * np.linalg.norm(Fb)
    np.testing.assert_allclose(direct.history_["cost"], graph.history_["cost"], rtol=1e-10)


def test_i_divergence_label_loss(toy):
    """label_loss='kl' (I-divergence): B ≥ 0 after the refits, factors ≥ 0, cost never rises,
    and the labels are learned on the 9-dim layer; a misspelt name is one clear error."""
    X, y = toy
    m = dd.NeuralNMF((9,), label_loss="kl", epochs=5, tol=0, random_state=0, scheduler="threads").fit(X, y)
    assert m.B_.min() >= 0 and all(A.min() >= 0 for A in m.A_)
    c = np.array(m.history_["cost"])
    assert np.all(np.diff(c) <= 1e-9 * abs(c[0]))
    assert np.mean(m.predict(X) == y) >= 0.9
    # the reported label term is the kernel's I-divergence at the final factors
    _, _, _, ex = chunk_cost_grad(X, m.A_, m.B_, np.searchsorted(m.classes_, y), m.lam, label_loss="i-divergence")
    assert m.history_["loss_Y"][-1] == pytest.approx(ex["label_loss"], rel=1e-9)
    with pytest.raises(DNMFValueError, match="label_loss"):
        dd.NeuralNMF((3,), label_loss="idivergence", scheduler="threads").fit(X, y)


def test_n_init_keeps_the_start_of_lowest_training_cost(toy, monkeypatch, tmp_path):
    """n_init starts: start 0 is the plain fit, start r the initial factors times exp(0.1 z) with
    z from the seed's stream (checked on the first recorded cost against the kernel at the
    jittered factors), and the fit kept is the start of lowest final cost; the hierarchical init
    is fitted once."""
    from dnmf_dask.models import neural

    X, y = toy
    ym = y.copy()
    ym[np.random.default_rng(2).random(len(y)) > 0.4] = -1
    kw = dict(epochs=4, tol=0, random_state=5, init_max_iter=20, label_loss="cross-entropy", lam=30.0,
              scheduler="synchronous")
    calls = []
    real_fit = neural.HierarchicalNMF.fit
    monkeypatch.setattr(neural.HierarchicalNMF, "fit", lambda self, *a, **k: calls.append(1) or real_fit(self, *a, **k))
    m = dd.NeuralNMF((6, 3), n_init=3, **kw).fit(X, ym)
    assert len(calls) == 1 and len(m.start_costs_) == 3
    assert m.best_start_ == int(np.argmin(m.start_costs_)) and m.history_["cost"][-1] == min(m.start_costs_)
    assert len(set(m.start_costs_)) == 3  # the starts differ
    from dnmf_dask.store.model import load_model, save_model

    save_model(m, tmp_path / "m.zarr")
    back = load_model(tmp_path / "m.zarr")
    assert back.n_init == 3 and back.start_costs_ == m.start_costs_ and back.best_start_ == m.best_start_
    one = dd.NeuralNMF((6, 3), **kw).fit(X, ym)
    assert one.start_costs_ == [one.history_["cost"][-1]] and one.best_start_ == 0
    assert m.start_costs_[0] == pytest.approx(one.history_["cost"][-1], rel=1e-12)
    # the kept factors are those of the best start, refitted alone
    ref = dd.NeuralNMF((6, 3), **kw)
    ref._fit_start(X, ym, start=m.best_start_)
    for Fa, Fb in zip(m.A_ + [m.B_], ref.A_ + [ref.B_]):
        np.testing.assert_allclose(Fa, Fb, rtol=1e-12)
    # the jitter, unsupervised (no B refit before the first record) from a random init
    u = dict(epochs=1, tol=0, random_state=7, init="random", scheduler="synchronous")
    base = dd.NeuralNMF((6, 3), **u, n_init=1).fit(X)
    rj = np.random.default_rng([7, 77, 1])
    r1 = dd.NeuralNMF((6, 3), **u)
    r1._fit_start(X, start=1)
    # start 0 begins at the random init's factors (an independent draw here), start 1 at those
    # factors jittered: their first recorded costs are the kernel's at these points
    from dnmf_dask.kernels.init import random_matrix

    scale = np.sqrt(X.mean() / 6)
    init = [random_matrix(7, (X.shape[1], 6), scale, np.float64, stream=2),
            random_matrix(7, (6, 3), 1.0 / np.sqrt(6), np.float64, stream=11)]
    jit = [A * np.exp(0.1 * rj.standard_normal(A.shape)) for A in init]
    assert r1.history_["cost"][0] == pytest.approx(chunk_cost_grad(X, jit, None, None, 0.0)[0], rel=1e-10)
    assert base.history_["cost"][0] == pytest.approx(chunk_cost_grad(X, init, None, None, 0.0)[0], rel=1e-10)
    with pytest.raises(DNMFValueError, match="n_init"):
        dd.NeuralNMF((3,), n_init=0, scheduler="synchronous").fit(X)
    with pytest.raises(DNMFValueError, match="checkpoint"):
        dd.NeuralNMF((3,), n_init=2, scheduler="synchronous").fit(X, checkpoint=tmp_path / "ck")


def test_single_block_fit_same_without_numba(toy, monkeypatch):
    """The single-block fast path on the numpy fallback (no numba: eigvalsh/solve, batched BPP,
    numpy passive solves) gives the compiled path's fit."""
    from dnmf_dask.kernels import fused

    if not fused.AVAILABLE:
        pytest.skip("numba not available")
    X, _ = toy
    kw = dict(epochs=5, tol=0, random_state=3, init="random", scheduler="synchronous")
    compiled = dd.NeuralNMF((6, 3), **kw).fit(X)
    monkeypatch.setattr(fused, "AVAILABLE", False)
    plain = dd.NeuralNMF((6, 3), **kw).fit(X)
    np.testing.assert_allclose(plain.history_["cost"], compiled.history_["cost"], rtol=1e-10)
    for Fa, Fb in zip(plain.A_, compiled.A_):
        assert np.linalg.norm(Fa - Fb) <= 1e-9 * np.linalg.norm(Fb)


def test_single_block_summary_is_the_dask_pass_and_still_rejects_bad_data(toy):
    """The in-memory single block is summarised directly (no dask pass): the same statistics,
    and negative or infinite data is still rejected by the fit."""
    from dnmf_dask.models.base import data_summary
    from dnmf_dask.models.neural import _in_memory_block

    X, _ = toy
    m = dd.NeuralNMF((4,), init="random", epochs=1, scheduler="synchronous")
    blocks, _, info = m._prepare(X)
    block = _in_memory_block(blocks, info)
    assert isinstance(block, np.ndarray) and np.array_equal(block, X)
    assert data_summary(blocks, block=block) == pytest.approx(data_summary(blocks))
    Xn = X.copy()
    Xn[3, 5] = -1.0
    with pytest.raises(DNMFValueError, match="nonnegative"):
        m.fit(Xn)
    Xn[3, 5] = np.inf
    with pytest.raises(DNMFValueError, match="finite"):
        m.fit(Xn)


def test_classifier_l2_and_unit_topics_are_wired_and_keep_the_cost_consistent(toy):
    """unit_topics: every factor column at unit norm after the fit (pgd and sgd); classifier_l2:
    the B refit is ridge-penalised (smaller B) and the recorded cost is the kernel's cost at the
    final factors plus λ μ ||B||², never increasing over the iterations."""
    from dnmf_dask.ingest.labels import mask_labels

    X, y = toy
    ym = mask_labels(y, 0.4, random_state=0)
    lam, mu = 50.0, 1e-2
    kw = dict(label_loss="cross-entropy", lam=lam, epochs=12, tol=0, random_state=0, scheduler="synchronous")
    plain = dd.NeuralNMF((9, 4), classifier_l2=0.0, **kw).fit(X, ym)  # (not the default ridge of 'auto')
    unit = dd.NeuralNMF((9, 4), unit_topics=True, classifier_l2=0.0, **kw).fit(X, ym)
    both = dd.NeuralNMF((9, 4), unit_topics=True, classifier_l2=mu, **kw).fit(X, ym)
    assert not np.allclose(np.linalg.norm(plain.A_[0], axis=0), 1.0)
    for m in (unit, both):
        for A in m.A_:
            np.testing.assert_allclose(np.linalg.norm(A, axis=0), 1.0, rtol=1e-10)
        c = np.array(m.history_["cost"])
        assert np.all(np.diff(c) <= 1e-12 * c[:-1])
    assert np.linalg.norm(both.B_) < 0.5 * np.linalg.norm(unit.B_)
    kernel_cost = chunk_cost_grad(X, both.A_, both.B_, ym, lam, label_loss="cross-entropy")[0]
    assert both.history_["cost"][-1] == pytest.approx(kernel_cost + lam * mu * np.sum(both.B_ ** 2), rel=1e-10)
    kernel_cost = chunk_cost_grad(X, unit.A_, unit.B_, ym, lam, label_loss="cross-entropy")[0]
    assert unit.history_["cost"][-1] == pytest.approx(kernel_cost, rel=1e-10)
    s = dd.NeuralNMF((9, 4), solver="sgd", init="random", epochs=3, learning_rate=1e-3, batch_size=30, unit_topics=True,
                     random_state=0, scheduler="synchronous").fit(X)
    for A in s.A_:
        np.testing.assert_allclose(np.linalg.norm(A, axis=0), 1.0, rtol=1e-10)
    with pytest.raises(DNMFValueError, match="classifier_l2"):
        dd.NeuralNMF((3,), classifier_l2=-1.0, scheduler="synchronous").fit(X)
    with pytest.raises(DNMFValueError, match="unit_topics"):
        dd.NeuralNMF((3,), unit_topics="yes", scheduler="synchronous").fit(X)


@pytest.fixture(scope="module")
def sparse_semisupervised():
    """The toy data with its entries below 0.1 set to zero (2/3 of the noise), as CSR, and a
    stratified 40% of the labels."""
    import scipy.sparse as sp

    from dnmf_dask.ingest.labels import mask_labels

    X, y = hierarchical_blocks(random_state=0)
    X = X.copy()
    X[X < 0.1] = 0.0
    return sp.csr_matrix(X), mask_labels(y, 0.4, random_state=0)


def _assert_same_fit(fits, cost_rtol=1e-10, factor_rtol=1e-9):
    ref = fits[0]
    for m in fits[1:]:
        np.testing.assert_allclose(m.history_["cost"], ref.history_["cost"], rtol=cost_rtol)
        for F, G in zip(m.A_ + [m.B_], ref.A_ + [ref.B_]):
            assert np.linalg.norm(F - G) <= factor_rtol * np.linalg.norm(G)


@pytest.mark.parametrize("label_loss", ["cross-entropy", "frobenius"])
def test_default_fit_on_sparse_data_same_for_every_chunking(sparse_semisupervised, label_loss):
    """Default settings (classifier_l2 and classifier_iter 'auto'): on sparse data the fit is the
    same, cost history to 1e-10 and A_, B_ to 1e-9 (norm-wise, relative), on the direct path and
    as a dask array of 1, 2 and 3 CSR blocks. The summation order of the blocks' statistics
    differs in the last bits; the B refit goes to its unique minimiser, so B follows them
    continuously. (The former default, an unpenalised softmax refit stopped after 50 L-BFGS-B
    iterations, gave factors 0.3 apart after these 10 iterations.)"""
    import dask.array as da

    X, ym = sparse_semisupervised
    kw = dict(label_loss=label_loss, epochs=10, tol=0, random_state=0, init_max_iter=30, scheduler="threads")
    fits = [dd.NeuralNMF((9, 4), **kw).fit(X, ym)]
    for n_blocks in (1, 2, 3):
        rows = -(-X.shape[0] // n_blocks)
        Xd = da.from_array(X, chunks=(rows, X.shape[1]), asarray=False)
        fits.append(dd.NeuralNMF((9, 4), chunk_rows=rows, **kw).fit(Xd, ym))
    assert fits[0].n_iter_ == 10 and fits[0].B_.shape == (9, 4)
    _assert_same_fit(fits)


def test_default_cross_entropy_fit_on_sparse_data_same_on_a_cluster(sparse_semisupervised, local_cluster):
    """The same default cross-entropy fit on a 2-process LocalCluster (2 blocks) and in-process."""
    X, ym = sparse_semisupervised
    kw = dict(label_loss="cross-entropy", epochs=5, tol=0, random_state=0, init_max_iter=30)
    here = dd.NeuralNMF((9, 4), scheduler="threads", **kw).fit(X, ym)
    there = dd.NeuralNMF((9, 4), chunk_rows=45, scheduler=local_cluster, **kw).fit(X, ym)
    _assert_same_fit([here, there])


def _spy_warm(monkeypatch):
    """Record, per call of the dask path's block task, whether it got a warm start."""
    from dnmf_dask.parallel import neural as parallel_neural

    real, calls = parallel_neural.cost_grad_task, []

    def task(X, y, warm=None, **kw):
        calls.append(warm is not None)
        return real(X, y, warm, **kw)

    monkeypatch.setattr(parallel_neural, "cost_grad_task", task)
    return calls


@pytest.mark.parametrize("solver", ["pgd", "sgd"])
def test_dask_path_warm_starts_equal_cold_passes_and_the_direct_path(sparse_semisupervised, solver, monkeypatch):
    """PGD on the dask path (a dask array of 3 CSR blocks) keeps each block's supports between
    passes and starts its NNLS from them: only the first pass is cold. The fit equals the same
    fit with every pass cold, and the direct in-memory path of the same blocks (which warm-starts
    in memory): costs to 1e-10, factors to 1e-9. SGD's passes all stay cold (its fits amplify
    last-bit differences, parallel/neural.py): the same fit as with warm starts switched off."""
    import dask.array as da

    from dnmf_dask.parallel import neural as parallel_neural

    X, ym = sparse_semisupervised
    rows = -(-X.shape[0] // 3)
    kw = dict(label_loss="cross-entropy", epochs=8, tol=0, random_state=0, init="random", scheduler="threads",
              chunk_rows=rows, solver=solver, learning_rate=1e-3)
    Xd = da.from_array(X, chunks=(rows, X.shape[1]), asarray=False)
    calls = _spy_warm(monkeypatch)
    warm = dd.NeuralNMF((9, 4), **kw).fit(Xd, ym)
    n_blocks, n_calls = 3, len(calls)
    assert n_calls > 2 * n_blocks and n_calls % n_blocks == 0
    if solver == "pgd":
        assert calls[:n_blocks] == [False] * n_blocks  # the first pass is cold,
        assert all(calls[n_blocks:])  # every other pass warm
    else:
        assert not any(calls)
    calls.clear()
    monkeypatch.setattr(parallel_neural, "WARM_STARTS", False)
    cold = dd.NeuralNMF((9, 4), **kw).fit(Xd, ym)
    assert len(calls) == n_calls and not any(calls)
    assert warm.n_iter_ == cold.n_iter_ == 8
    if solver == "sgd":
        _assert_same_fit([cold, warm], cost_rtol=0, factor_rtol=0)
        return
    direct = dd.NeuralNMF((9, 4), **kw).fit(X, ym)  # no dask task at all
    assert len(calls) == n_calls
    _assert_same_fit([cold, warm, direct])


def test_warm_state_lineage_is_cut_on_a_cluster(sparse_semisupervised, local_cluster, monkeypatch):
    """On a distributed cluster the scheduler keeps the tasks (and the factors) every persisted
    warm state descends from; parallel/neural.py cuts the chain by a cold pass once it holds
    WARM_LINEAGE_BYTES of factors. With a budget of 1 byte (2 passes per chain) the scheduler's
    task count stays flat while, uncut, it grows with every pass; both fits equal the in-process one."""
    from dnmf_dask.parallel import neural as parallel_neural

    assert parallel_neural.max_chain([np.zeros((100, 10))], local=True) is None
    assert parallel_neural.max_chain([np.zeros((100, 10))], np.zeros((3, 10)), local=False) == parallel_neural.WARM_CHAIN_MAX
    X, ym = sparse_semisupervised
    kw = dict(label_loss="cross-entropy", epochs=6, tol=0, random_state=0, init="random", chunk_rows=45)
    here = dd.NeuralNMF((9, 4), scheduler="threads", **kw).fit(X, ym)
    real = parallel_neural.map_reduce

    def fits(budget):
        monkeypatch.setattr(parallel_neural, "WARM_LINEAGE_BYTES", budget)
        counts, warm = [], []

        def counted(func, items, **k):
            out = real(func, items, **k)
            if k.get("keep_outputs"):
                warm.append(items[0][2] is not None)
                counts.append(local_cluster.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))
            return out

        monkeypatch.setattr(parallel_neural, "map_reduce", counted)
        m = dd.NeuralNMF((9, 4), scheduler=local_cluster, **kw).fit(X, ym)
        n_tasks = lambda: local_cluster.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))  # noqa: E731
        for _ in range(50):  # (the client tells the scheduler of released futures asynchronously)
            if n_tasks() < counts[0]:
                break
            time.sleep(0.1)
        after.append(n_tasks())
        return m, counts, warm

    after = []

    cut, counts_cut, warm_cut = fits(1)
    assert parallel_neural.max_chain(cut.A_, cut.B_, local=False) == 2
    assert warm_cut[:4] == [False, True, False, True] and len(warm_cut) > 8
    uncut, counts_uncut, warm_uncut = fits(2**40)
    assert warm_uncut[0] is False and all(warm_uncut[1:])
    assert max(counts_cut) == max(counts_cut[:4])  # flat (9, 15, 9, 15, ... tasks)
    assert np.all(np.diff(counts_uncut) > 0)  # one more pass kept each time (9, 15, 21, ...)
    assert after[1] < counts_uncut[0]  # the fit's end releases the kept supports and their lineage
    _assert_same_fit([here, cut, uncut])
