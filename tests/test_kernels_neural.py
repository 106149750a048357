"""Tests of the Neural NMF kernels: forward pass, cost and exact gradients through q."""

import numpy as np
import pytest
import scipy.sparse as sp

from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.kernels.neural import chunk_cost_grad, forward, sum_results
from dnmf_dask.kernels.nnls import nnls

N_ROWS, N_FEATURES, KS, N_CLASSES = 14, 12, (6, 4, 3), 3
FD_STEP = 1e-6


def make_problem(seed, n_layers):
    """A small problem whose supports are stable under the finite-difference step."""
    rng = np.random.default_rng(seed)
    A_true = rng.random((N_FEATURES, 6))
    S_true = rng.random((N_ROWS, 6)) * (rng.random((N_ROWS, 6)) < 0.6)
    X = S_true @ A_true.T + 0.3 * rng.random((N_ROWS, N_FEATURES))
    As = [rng.random((N_FEATURES, KS[0])) + 0.1]
    for l in range(1, n_layers):
        As.append(rng.random((KS[l - 1], KS[l])) + 0.1)
    B = rng.random((N_CLASSES, KS[n_layers - 1]))
    return rng, X, As, B


def support_margin(X, As):
    """Smallest relative distance of any S entry / KKT multiplier from a support change."""
    S = forward(X, As)
    prev, margin, zero_frac = X, np.inf, []
    for A, Sl in zip(As, S):
        C = np.asarray(prev @ A)
        grad = Sl @ (A.T @ A) - C
        pos = Sl[Sl > 0]
        if pos.size:
            margin = min(margin, pos.min() / np.abs(Sl).max())
        if np.any(Sl == 0):
            margin = min(margin, grad[Sl == 0].min() / np.abs(C).max())
        zero_frac.append(float(np.mean(Sl == 0)))
        prev = Sl
    return margin, zero_frac


def labels(rng, mode):
    if mode == "unsupervised":
        return None
    y = rng.integers(0, N_CLASSES, N_ROWS)
    if mode == "semisupervised":
        y[rng.random(N_ROWS) < 0.5] = -1
        y[0], y[1] = -1, 1  # both kinds present
    return y


def central_differences(f, As):
    """Central differences of the scalar ``f(As)`` with respect to every entry of every factor."""
    num = []
    for l, A in enumerate(As):
        G = np.zeros_like(A)
        for idx in np.ndindex(A.shape):
            Ap = [a.copy() for a in As]
            Am = [a.copy() for a in As]
            Ap[l][idx] += FD_STEP
            Am[l][idx] -= FD_STEP
            G[idx] = (f(Ap) - f(Am)) / (2 * FD_STEP)
        num.append(G)
    return num


def finite_difference(X, As, B, y, lam, cost, label_loss="frobenius"):
    def f(As_, B_):
        return chunk_cost_grad(X, As_, B_, y, lam, cost, label_loss=label_loss)[0]

    num = central_differences(lambda As_: f(As_, B), As)
    numB = None
    if B is not None:
        numB = np.zeros_like(B)
        for idx in np.ndindex(B.shape):
            Bp, Bm = B.copy(), B.copy()
            Bp[idx] += FD_STEP
            Bm[idx] -= FD_STEP
            numB[idx] = (f(As, Bp) - f(As, Bm)) / (2 * FD_STEP)
    return num, numB


def rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("mode", ["unsupervised", "semisupervised", "supervised"])
@pytest.mark.parametrize("cost", ["reconstruction", "layerwise"])
@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_matches_finite_differences(n_layers, mode, cost, sparse):
    seed = {1: 0, 2: 1, 3: 2}[n_layers]
    rng, X, As, B = make_problem(seed, n_layers)
    margin, zero_frac = support_margin(X, As)
    assert margin > 1e-4  # the supports cannot change under the FD step
    assert all(0.1 < z < 0.9 for z in zero_frac)  # the constraints are active
    y = labels(rng, mode)
    lam = 0.0 if mode == "unsupervised" else 0.7
    Bm = None if mode == "unsupervised" else B
    Xc = sp.csr_matrix(X) if sparse else X
    c, grads, gB, extras = chunk_cost_grad(Xc, As, Bm, y, lam, cost)
    num, numB = finite_difference(Xc, As, Bm, y, lam, cost)
    assert len(grads) == n_layers
    for g, gn, A in zip(grads, num, As):
        assert g.shape == A.shape
        assert rel_err(g, gn) <= 1e-5
    if Bm is None:
        assert gB is None
    else:
        assert gB.shape == B.shape
        assert rel_err(gB, numB) <= 1e-5


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("mode", ["semisupervised", "supervised"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("label_loss", ["cross-entropy", "kl"])
def test_cross_entropy_and_kl_gradients_match_finite_differences(n_layers, mode, sparse, label_loss):
    seed = {1: 0, 2: 1, 3: 2}[n_layers]
    rng, X, As, B = make_problem(seed, n_layers)
    if label_loss == "cross-entropy":
        B = B - 0.5  # an unconstrained classifier: signed weights
    y = labels(rng, mode)
    Xc = sp.csr_matrix(X) if sparse else X
    c, grads, gB, _ = chunk_cost_grad(Xc, As, B, y, 0.7, label_loss=label_loss)
    num, numB = finite_difference(Xc, As, B, y, 0.7, "reconstruction", label_loss=label_loss)
    for g, gn in zip(grads, num):
        assert rel_err(g, gn) <= 1e-5
    assert rel_err(gB, numB) <= 1e-5


def test_cross_entropy_cost_matches_a_plain_transcription():
    rng, X, As, B = make_problem(1, 2)
    B = B - 0.5
    y = labels(rng, "semisupervised")
    c, _, _, ex = chunk_cost_grad(X, As, B, y, 0.7, label_loss="cross-entropy")
    S = forward(X, As)
    recon = np.sum((X - S[1] @ (As[0] @ As[1]).T) ** 2)
    ce = 0.0
    for m in np.flatnonzero(y >= 0):  # one sample at a time, softmax written out
        z = B @ S[1][m]
        ce -= np.log(np.exp(z[y[m]]) / np.sum(np.exp(z)))
    assert ex["label_loss"] == pytest.approx(ce, rel=1e-10)
    assert c == pytest.approx(recon + 0.7 * ce, rel=1e-10)
    # very large logits stay finite (the softmax is shifted)
    c_big, _, gB_big, _ = chunk_cost_grad(X, As, 1e4 * B, y, 0.7, label_loss="cross-entropy")
    assert np.isfinite(c_big) and np.all(np.isfinite(gB_big))
    with pytest.raises(DNMFValueError, match="label_loss"):
        chunk_cost_grad(X, As, B, y, 0.7, label_loss="hinge")


def test_i_divergence_cost_matches_a_plain_transcription():
    rng, X, As, B = make_problem(1, 2)
    y = labels(rng, "semisupervised")
    c, _, _, ex = chunk_cost_grad(X, As, B, y, 0.7, label_loss="i-divergence")
    S = forward(X, As)
    recon = np.sum((X - S[1] @ (As[0] @ As[1]).T) ** 2)
    idiv = 0.0
    for m in np.flatnonzero(y >= 0):  # D(y || z) = Σ y log(y/z) − y + z, one sample at a time
        z = B @ S[1][m]
        idiv += -np.log(z[y[m]]) - 1.0 + np.sum(z)
    assert ex["label_loss"] == pytest.approx(idiv, rel=1e-10)
    assert c == pytest.approx(recon + 0.7 * idiv, rel=1e-10)
    assert chunk_cost_grad(X, As, B, y, 0.7, label_loss="kl")[0] == c  # aliases
    assert chunk_cost_grad(X, As, B, y, 0.7, label_loss="kullback-leibler")[0] == c
    # a zero score is clipped inside the log: finite cost and gradient
    c0, g0, gB0, _ = chunk_cost_grad(X, As, 0.0 * B, y, 0.7, label_loss="kl")
    assert np.isfinite(c0) and np.all(np.isfinite(gB0)) and all(np.all(np.isfinite(g)) for g in g0)


def test_through_q_terms_matter():
    """The FD check above would fail for a gradient that holds S fixed (sanity of the test)."""
    rng, X, As, B = make_problem(0, 1)
    y = rng.integers(0, N_CLASSES, N_ROWS)
    c, grads, gB, _ = chunk_cost_grad(X, As, B, y, 0.7)
    num, _ = finite_difference(X, As, B, y, 0.7, "reconstruction")
    S = forward(X, As)[0]
    direct = -2.0 * (X - S @ As[0].T).T @ S  # dC/dA with S held fixed
    assert rel_err(grads[0], num[0]) <= 1e-5
    assert rel_err(direct, num[0]) > 1e-2
    # two unsupervised layers: the second layer's q feeds back into A[0]
    rng, X, As, B = make_problem(1, 2)
    c, grads, _, _ = chunk_cost_grad(X, As)
    num, _ = finite_difference(X, As, None, None, 0.0, "reconstruction")
    S1 = forward(X, As)[1]
    P = As[0] @ As[1]
    direct0 = -2.0 * (X - S1 @ P.T).T @ S1 @ As[1].T
    assert rel_err(grads[0], num[0]) <= 1e-5
    assert rel_err(direct0, num[0]) > 1e-2


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("cost", ["reconstruction", "layerwise"])
def test_chunks_sum_to_full_batch(sparse, cost):
    rng = np.random.default_rng(21)
    n = 60
    X = rng.random((n, 15)) * (rng.random((n, 15)) < 0.6)
    As = [rng.random((15, 5)), rng.random((5, 3))]
    B = rng.random((4, 3))
    y = rng.integers(-1, 4, n)
    Xc = sp.csr_matrix(X) if sparse else X
    full = chunk_cost_grad(Xc, As, B, y, 0.5, cost)
    splits = (slice(0, 17), slice(17, 40), slice(40, n))
    parts = [chunk_cost_grad(Xc[s], As, B, y[s], 0.5, cost) for s in splits]
    total = sum_results(parts)
    assert total[0] == pytest.approx(full[0], rel=1e-12)
    for g, h in zip(total[1], full[1]):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-12 * np.abs(h).max())
    np.testing.assert_allclose(total[2], full[2], rtol=1e-10, atol=1e-12)
    for key in ("recon_sq", "x_sq", "label_sq"):
        assert total[3][key] == pytest.approx(full[3][key], rel=1e-10)
    np.testing.assert_allclose(total[3]["layer_sq"], full[3]["layer_sq"], rtol=1e-10)
    for key in ("n_labeled", "n_correct", "n_rows"):
        assert total[3][key] == full[3][key]
    # an empty chunk contributes nothing
    empty = chunk_cost_grad(Xc[:0], As, B, y[:0], 0.5, cost)
    assert empty[0] == 0.0 and all(np.all(g == 0) for g in empty[1])


def test_forward_is_successive_nnls():
    rng, X, As, _ = make_problem(3, 3)
    S = forward(X, As)
    assert [s.shape for s in S] == [(N_ROWS, k) for k in KS]
    prev = X
    for A, Sl in zip(As, S):
        np.testing.assert_allclose(Sl, nnls(A, prev), atol=1e-13)
        prev = Sl
    S_sparse = forward(sp.csr_matrix(X), As)
    for a, b in zip(S, S_sparse):
        np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("sparse", [False, True])
def test_cost_and_extras_values(sparse):
    rng, X, As, B = make_problem(4, 2)
    y = labels(rng, "semisupervised")
    lam = 0.3
    Xc = sp.csr_matrix(X) if sparse else X
    S = forward(X, As)
    P = As[0] @ As[1]
    recon = np.sum((X - S[1] @ P.T) ** 2)
    lay = [np.sum((X - S[0] @ As[0].T) ** 2), np.sum((S[0] - S[1] @ As[1].T) ** 2)]
    lab = y >= 0
    Z = S[1][lab] @ B.T
    Y = np.eye(N_CLASSES)[y[lab]]
    label_sq = np.sum((Y - Z) ** 2)
    c, _, _, ex = chunk_cost_grad(Xc, As, B, y, lam, "reconstruction")
    assert c == pytest.approx(recon + lam * label_sq, rel=1e-10)
    assert ex["recon_sq"] == pytest.approx(recon, rel=1e-10)
    assert ex["x_sq"] == pytest.approx(np.sum(X**2), rel=1e-12)
    np.testing.assert_allclose(ex["layer_sq"], lay, rtol=1e-10)
    assert ex["label_sq"] == pytest.approx(label_sq, rel=1e-10)
    assert ex["n_labeled"] == int(lab.sum())
    assert ex["n_correct"] == int(np.sum(np.argmax(Z, axis=1) == y[lab]))
    assert ex["n_rows"] == N_ROWS
    c2, _, _, _ = chunk_cost_grad(Xc, As, B, y, lam, "layerwise")
    assert c2 == pytest.approx(sum(lay) + lam * label_sq, rel=1e-10)
    _, _, _, ex3 = chunk_cost_grad(Xc, As, return_S=True)
    for a, b in zip(ex3["S"], S):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_unlabeled_rows_do_not_contribute():
    rng, X, As, B = make_problem(5, 2)
    c0, g0, _, _ = chunk_cost_grad(X, As)
    c1, g1, gB, ex = chunk_cost_grad(X, As, B, np.full(N_ROWS, -1), 2.0)
    assert c1 == pytest.approx(c0, rel=1e-14)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert np.all(gB == 0) and ex["n_labeled"] == 0 and ex["n_correct"] == 0


def test_float32_preserved():
    rng, X, As, B = make_problem(6, 2)
    y = labels(rng, "supervised")
    c64, g64, gB64, _ = chunk_cost_grad(X, As, B, y, 0.5)
    X32, As32, B32 = X.astype(np.float32), [a.astype(np.float32) for a in As], B.astype(np.float32)
    c32, g32, gB32, _ = chunk_cost_grad(X32, As32, B32, y, 0.5)
    assert all(g.dtype == np.float32 for g in g32) and gB32.dtype == np.float32
    assert all(s.dtype == np.float32 for s in forward(X32, As32))
    assert c32 == pytest.approx(c64, rel=1e-4)
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a, b, atol=1e-3 * np.abs(b).max())


def test_bad_inputs():
    rng, X, As, B = make_problem(0, 2)
    y = np.zeros(N_ROWS, dtype=int)
    with pytest.raises(DNMFValueError, match="cost"):
        chunk_cost_grad(X, As, cost="nope")
    with pytest.raises(DNMFValueError, match="A_list"):
        chunk_cost_grad(X, [As[0], As[0]])
    with pytest.raises(DNMFValueError, match="A_list"):
        forward(X, [])
    with pytest.raises(DNMFTypeError, match="A_list"):
        forward(X, As[0])
    with pytest.raises(DNMFValueError, match="y"):
        chunk_cost_grad(X, As, B, y[:-1], 1.0)
    with pytest.raises(DNMFValueError, match="y"):
        chunk_cost_grad(X, As, B, y + N_CLASSES, 1.0)
    with pytest.raises(DNMFValueError, match="y"):
        chunk_cost_grad(X, As, B, y - 2, 1.0)
    with pytest.raises(DNMFTypeError, match="y"):
        chunk_cost_grad(X, As, B, y.astype(float), 1.0)
    with pytest.raises(DNMFValueError, match="B"):
        chunk_cost_grad(X, As, B[:, :2], y, 1.0)
    with pytest.raises(DNMFValueError, match="B"):
        chunk_cost_grad(X, As, None, y, 1.0)
    with pytest.raises(DNMFValueError, match="lam"):
        chunk_cost_grad(X, As, B, y, -1.0)
    with pytest.raises(DNMFValueError, match="solver"):
        forward(X, As, solver={"maxiter": 3})
    with pytest.raises(DNMFValueError, match="X"):
        forward(X[:, :5], As)


def test_fit_classifier_reaches_the_independent_optimum():
    """B's exact block step: scikit-learn's unpenalised multinomial logistic regression for
    cross-entropy, scipy's NNLS per class for the squared error with B ≥ 0."""
    from scipy.optimize import nnls as scipy_nnls
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from dnmf_dask.kernels.neural import fit_classifier

    rng = np.random.default_rng(5)
    SL = rng.random((60, 3))
    y = rng.integers(0, 4, 60)  # random labels: not separable, so the optimum is finite
    B0 = rng.random((4, 3))
    B, term = fit_classifier(SL, y, B0, "cross-entropy", max_iter=1000)
    ref = LogisticRegression(penalty=None, fit_intercept=False, max_iter=10000, tol=1e-12).fit(SL, y)
    ref_term = 60 * log_loss(y, ref.predict_proba(SL), labels=range(4))
    assert term == pytest.approx(ref_term, rel=1e-6)
    assert B.min() < 0  # a signed classifier
    Bf, term_f = fit_classifier(SL, y, B0, "frobenius", max_iter=1000)
    Y = np.eye(4)[y]
    Bref = np.array([scipy_nnls(SL, Y[:, c])[0] for c in range(4)])
    assert Bf.min() >= 0
    assert term_f == pytest.approx(np.sum((Y - SL @ Bref.T) ** 2), rel=1e-7)
    np.testing.assert_allclose(Bf, Bref, atol=1e-3)  # the objective is flat near its minimum
    # I-divergence with B ≥ 0: the optimum satisfies the KKT conditions of the bound problem
    Bk, term_k = fit_classifier(SL, y, B0, "kl", max_iter=1000)
    Z = SL @ Bk.T
    grad = (1.0 - Y / Z).T @ SL
    assert Bk.min() >= 0
    assert np.all(grad >= -2e-3) and np.max(np.abs(grad * Bk)) <= 2e-3  # L-BFGS-B tolerance
    assert term_k == pytest.approx(np.sum(Y * np.log(np.where(Y > 0, Y / Z, 1.0)) - Y + Z), rel=1e-10)
    # never worse than the start, and max_iter=0 keeps B
    assert fit_classifier(SL, y, B0, "cross-entropy", max_iter=0)[0] is not None
    np.testing.assert_array_equal(fit_classifier(SL, y, B0, "frobenius", max_iter=0)[0], B0)


def test_warm_start_gives_the_same_pass():
    """S0 (a forward pass at other factors) only changes where the NNLS pivoting starts."""
    rng, X, As, B = make_problem(2, 3)
    y = labels(rng, "semisupervised")
    c, g, gB, ex = chunk_cost_grad(X, As, B, y, 0.7, return_S=True)
    S_other = forward(X, [A * (1.0 + 0.3 * rng.random(A.shape)) for A in As])  # other supports
    for S0 in (ex["S"], S_other):
        c2, g2, gB2, ex2 = chunk_cost_grad(X, As, B, y, 0.7, return_S=True, S0=S0)
        assert c2 == pytest.approx(c, rel=1e-12)
        for a, b in zip(g2 + [gB2] + ex2["S"], g + [gB] + ex["S"]):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(DNMFValueError, match="S0"):
        chunk_cost_grad(X, As, B, y, 0.7, S0=ex["S"][:2])
    with pytest.raises(DNMFValueError, match=r"S0\[1\]"):
        chunk_cost_grad(X, As, B, y, 0.7, S0=[ex["S"][0], ex["S"][0], ex["S"][2]])


def test_packed_supports_warm_start_as_the_codes_they_pack():
    """Supports.of(S) (one bit per code, what the dask path keeps of a block between passes) and
    boolean supports warm-start chunk_cost_grad exactly as the float codes S0 themselves; the
    packing round-trips, is 1/64 of the float64 codes, and a Supports of another block or other
    ranks is one clear DNMFValueError per mismatch."""
    from dnmf_dask.kernels.neural import Supports, _check_warm

    rng, X, As, B = make_problem(2, 3)
    y = labels(rng, "semisupervised")
    S_other = forward(X, [A * (1.0 + 0.3 * rng.random(A.shape)) for A in As])  # other supports
    sup = Supports.of(S_other)
    assert sup.shapes == tuple(Sl.shape for Sl in S_other)
    for l, Sl in enumerate(S_other):
        np.testing.assert_array_equal(sup.layer(l), Sl > 0)
        assert sup.bits[l].dtype == np.uint8 and sup.bits[l].size == -(-Sl.size // 8)
    assert any((Sl > 0).any() and not (Sl > 0).all() for Sl in S_other)  # supports that say something
    assert sup.nbytes * 64 <= sum(Sl.astype(np.float64).nbytes for Sl in S_other) + 64 * len(S_other)
    for P, Sl in zip(_check_warm(sup, X.shape[0], As), S_other):
        np.testing.assert_array_equal(P, Sl > 0)
    ref = chunk_cost_grad(X, As, B, y, 0.7, return_S=True, S0=S_other)
    for S0 in (sup, [Sl > 0 for Sl in S_other]):
        got = chunk_cost_grad(X, As, B, y, 0.7, return_S=True, S0=S0)
        assert got[0] == ref[0]
        for a, b in zip(got[1] + [got[2]] + got[3]["S"], ref[1] + [ref[2]] + ref[3]["S"]):
            np.testing.assert_array_equal(a, b)
    cold = chunk_cost_grad(X, As, B, y, 0.7, return_S=True)
    assert got[0] == pytest.approx(cold[0], rel=1e-12)  # and the pass is the cold one's
    # wrong warm state: another block (rows), other ranks, other layers, damaged bits
    n = X.shape[0]
    with pytest.raises(DNMFValueError, match=r"S0.shapes\[0\]: expected \(%d, %d\), found \(%d, %d\)"
                       % (n, As[0].shape[1], n - 1, As[0].shape[1])):
        chunk_cost_grad(X, As, B, y, 0.7, S0=Supports.of([Sl[:-1] for Sl in S_other]))
    with pytest.raises(DNMFValueError, match=r"S0.shapes\[1\]"):
        chunk_cost_grad(X, As, B, y, 0.7, S0=Supports.of([S_other[0], S_other[1][:, :-1], S_other[2]]))
    with pytest.raises(DNMFValueError, match="S0: expected Supports of 3 layers, found 2"):
        chunk_cost_grad(X, As, B, y, 0.7, S0=Supports.of(S_other[:2]))
    with pytest.raises(DNMFValueError, match=r"S0.bits\[2\]: expected %d packed uint8" % -(-S_other[2].size // 8)):
        chunk_cost_grad(X, As, B, y, 0.7, S0=Supports(sup.shapes, sup.bits[:2] + (sup.bits[2][:-1],)))
    with pytest.raises(DNMFValueError, match=r"S0.bits\[0\].*found dtype float64"):
        chunk_cost_grad(X, As, B, y, 0.7, S0=Supports(sup.shapes, (sup.bits[0].astype(float),) + sup.bits[1:]))
    with pytest.raises(DNMFValueError, match=r"S0\[0\]: expected shape"):
        chunk_cost_grad(X, As, B, y, 0.7, S0=[Sl[:-1] > 0 for Sl in S_other])


@pytest.mark.parametrize("cost", ["reconstruction", "layerwise"])
def test_layer_energies_switch_skips_only_the_layer_energies(cost):
    """chunk_cost_grad(layer_energies=False) (the dask task's call: the fit does not report them)
    gives the same cost, gradients and statistics; layer_sq is None unless the cost is made of them."""
    rng, X, As, B = make_problem(2, 3)
    y = labels(rng, "semisupervised")
    Xs = sp.csr_matrix(X)
    for Xc in (X, Xs):
        ref = chunk_cost_grad(Xc, As, B, y, 0.7, cost, return_S=True)
        got = chunk_cost_grad(Xc, As, B, y, 0.7, cost, return_S=True, layer_energies=False)
        assert got[0] == ref[0]
        for a, b in zip(got[1] + [got[2]] + got[3]["S"], ref[1] + [ref[2]] + ref[3]["S"]):
            np.testing.assert_array_equal(a, b)
        for key in ("recon_sq", "x_sq", "label_sq", "label_loss", "n_labeled", "n_correct", "n_rows"):
            assert got[3][key] == ref[3][key]
        if cost == "layerwise":
            np.testing.assert_array_equal(got[3]["layer_sq"], ref[3]["layer_sq"])
        else:
            assert got[3]["layer_sq"] is None and ref[3]["layer_sq"].shape == (3,)


@pytest.mark.parametrize("sparse_X", [False, True])
@pytest.mark.parametrize("cost", ["reconstruction", "layerwise"])
def test_block_pass_equals_chunk_cost_grad(sparse_X, cost):
    """BlockPass (the single-block fit's per-pass call: X checked once, NNLS warm-started from
    the previous call) returns chunk_cost_grad's cost, gradients and statistics."""
    from dnmf_dask.kernels.neural import BlockPass

    rng, X, As, B = make_problem(3, 3)
    y = rng.integers(-1, N_CLASSES, N_ROWS)
    Xc = sp.csr_matrix(X) if sparse_X else X
    bp = BlockPass(Xc, y, 0.7, cost, "cross-entropy")
    prev = None
    for step in range(3):  # later calls start every layer's BPP from the previous supports
        As_t = [A * (1.0 + 0.05 * step * rng.random(A.shape)) for A in As]
        ref = chunk_cost_grad(Xc, As_t, B, y, 0.7, cost, label_loss="cross-entropy", return_S=True, S0=prev)
        got = bp(As_t, B)
        assert got[0] == pytest.approx(ref[0], rel=1e-12)
        for g, h in zip(got[1] + [got[2]], ref[1] + [ref[2]]):
            np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-12 * np.abs(h).max())
        for key in ("recon_sq", "x_sq", "label_loss", "n_labeled", "n_correct"):
            assert got[3][key] == pytest.approx(ref[3][key], rel=1e-12)
        np.testing.assert_allclose(got[3]["layer_sq"], ref[3]["layer_sq"], rtol=1e-12)
        for Sa, Sb in zip(got[3]["S"], ref[3]["S"]):
            np.testing.assert_allclose(Sa, Sb, rtol=1e-10, atol=1e-13)
        prev = ref[3]["S"]


@pytest.mark.parametrize("sparse_X", [False, True])
def test_block_pass_cost_first_then_gradients(sparse_X):
    """cost_at gives the cost (and statistics) from the forward pass alone; grads then gives that
    same point's gradients, even after a rejected trial at another point: what an Armijo trial
    needs. Equal to the one-call result, and grads is given once per cost_at."""
    from dnmf_dask.kernels.neural import BlockPass

    rng, X, As, B = make_problem(5, 3)
    y = rng.integers(-1, N_CLASSES, N_ROWS)
    Xc = sp.csr_matrix(X) if sparse_X else X
    bp, ref_bp = BlockPass(Xc, y, 0.7), BlockPass(Xc, y, 0.7)
    far = [A * 3.0 for A in As]
    for trial in (far, As):  # a rejected trial (cost only), then the accepted one
        c, ex = bp.cost_at(trial, B)
        ref = ref_bp(trial, B)
        assert c == ref[0] and ex["recon_sq"] == ref[3]["recon_sq"] and ex["n_correct"] == ref[3]["n_correct"]
    grads, gB = bp.grads()
    for g, h in zip(grads + [gB], ref[1] + [ref[2]]):
        np.testing.assert_array_equal(g, h)
    ref_c = chunk_cost_grad(Xc, As, B, y, 0.7)
    assert c == pytest.approx(ref_c[0], rel=1e-12)
    for g, h in zip(grads, ref_c[1]):
        np.testing.assert_allclose(g, h, rtol=1e-9, atol=1e-12 * np.abs(h).max())
    with pytest.raises(DNMFValueError, match="cost_at"):
        bp.grads()


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("cost", ["reconstruction", "layerwise"])
def test_dense_gram_form_equals_the_residual_form(n_layers, cost, monkeypatch):
    """A large dense block takes the Gram form (no (n, n_features) residual): the same cost,
    statistics and gradients as the residual form, labels included."""
    from dnmf_dask.kernels import neural

    rng, X, As, B = make_problem(6, n_layers)
    y = rng.integers(-1, N_CLASSES, N_ROWS)
    monkeypatch.setattr(neural, "DENSE_GRAM_MIN_SIZE", 10**12)
    ref = chunk_cost_grad(X, As, B, y, 0.7, cost, return_S=True)
    monkeypatch.setattr(neural, "DENSE_GRAM_MIN_SIZE", 1)
    got = chunk_cost_grad(X, As, B, y, 0.7, cost, return_S=True)
    assert got[0] == pytest.approx(ref[0], rel=1e-10)
    for g, h in zip(got[1] + [got[2]], ref[1] + [ref[2]]):
        np.testing.assert_allclose(g, h, rtol=1e-9, atol=1e-10 * np.abs(h).max())
    for key in ("recon_sq", "label_loss", "n_correct"):
        assert got[3][key] == pytest.approx(ref[3][key], rel=1e-10)
    np.testing.assert_allclose(got[3]["layer_sq"], ref[3]["layer_sq"], rtol=1e-9)


def test_block_pass_without_layer_energies_and_bad_factors():
    from dnmf_dask.kernels.neural import BlockPass

    rng, X, As, _ = make_problem(4, 2)
    full = chunk_cost_grad(X, As)
    bp = BlockPass(X, layer_energies=False)
    got = bp(As)
    assert got[3]["layer_sq"] is None  # not formed: the fit does not report them
    assert got[0] == pytest.approx(full[0], rel=1e-12)
    for g, h in zip(got[1], full[1]):
        np.testing.assert_allclose(g, h, rtol=1e-10)
    # the layer-wise cost needs them, so they are formed anyway
    assert BlockPass(X, cost="layerwise", layer_energies=False)(As)[3]["layer_sq"] is not None
    with pytest.raises(DNMFValueError, match=r"A_list\[0\].*finite"):
        bp([np.full_like(As[0], np.nan), As[1]])
    with pytest.raises(DNMFValueError, match=r"A_list\[1\]"):
        bp([As[0], As[1][:-1]])
    with pytest.raises(DNMFValueError, match="X.*finite"):
        BlockPass(np.full_like(X, np.inf))


@pytest.mark.parametrize("label_loss", ["cross-entropy", "frobenius", "kl"])
def test_classifier_objective_with_ridge_matches_finite_differences(label_loss):
    """The B refit's objective label term + l2 ||B||²: gradient by central differences, and the
    value is the unpenalised term plus l2 ||B||² (a plain transcription)."""
    from dnmf_dask.kernels.neural import classifier_objective

    rng = np.random.default_rng(11)
    SL, y = rng.random((30, 3)) + 0.05, rng.integers(0, 4, 30)
    B = rng.random((4, 3)) + 0.1 - (0.5 if label_loss == "cross-entropy" else 0.0)
    l2 = 0.37
    value, term, grad = classifier_objective(B, SL, y, label_loss, l2)
    assert value == pytest.approx(classifier_objective(B, SL, y, label_loss)[0] + l2 * np.sum(B ** 2), rel=1e-12)
    assert term == pytest.approx(classifier_objective(B, SL, y, label_loss)[1], rel=1e-12)
    num = np.zeros_like(B)
    for idx in np.ndindex(B.shape):
        Bp, Bm = B.copy(), B.copy()
        Bp[idx] += FD_STEP
        Bm[idx] -= FD_STEP
        num[idx] = (classifier_objective(Bp, SL, y, label_loss, l2)[0]
                    - classifier_objective(Bm, SL, y, label_loss, l2)[0]) / (2 * FD_STEP)
    assert rel_err(grad, num) <= 1e-5
    with pytest.raises(DNMFValueError, match="l2"):
        classifier_objective(B, SL, y, label_loss, -1.0)


def test_fit_classifier_with_ridge_reaches_the_independent_optimum():
    """Softmax refit with l2: scikit-learn's L2-penalised multinomial logistic regression without
    intercept minimises C Σ log-loss + ½ ||W||², the same problem for C = 1 / (2 l2)."""
    from sklearn.linear_model import LogisticRegression

    from dnmf_dask.kernels.neural import classifier_objective, fit_classifier

    rng = np.random.default_rng(6)
    SL = rng.random((60, 3))
    y = np.repeat(np.arange(4), 15)
    SL[np.arange(60), y % 3] += 2.0  # separable-ish codes: unpenalised, B would grow without bound
    l2 = 0.05
    B, term = fit_classifier(SL, y, np.zeros((4, 3)), "cross-entropy", max_iter=2000, l2=l2)
    ref = LogisticRegression(C=1.0 / (2 * l2), fit_intercept=False, max_iter=10000, tol=1e-12).fit(SL, y)
    np.testing.assert_allclose(B, ref.coef_, atol=1e-3)  # L-BFGS-B's default tolerances
    assert classifier_objective(B, SL, y, "cross-entropy", l2)[0] == pytest.approx(
        classifier_objective(ref.coef_, SL, y, "cross-entropy", l2)[0], rel=1e-7)
    assert term == pytest.approx(classifier_objective(ref.coef_, SL, y, "cross-entropy")[1], rel=1e-4)
    free, _ = fit_classifier(SL, y, np.zeros((4, 3)), "cross-entropy", max_iter=2000)
    assert np.linalg.norm(B) < 0.5 * np.linalg.norm(free)  # the ridge is what bounds B


def test_unit_columns_rescales_and_keeps_the_last_layer_exactly():
    """Unit columns everywhere; the scale of A[l] moves to A[l+1]'s rows and the last layer's to
    B's columns; a rescaled last layer gives the same reconstruction and scores (forward pass
    recomputed independently by scipy's NNLS)."""
    from dnmf_dask.kernels.neural import unit_columns

    rng, X, As, B = make_problem(2, 3)
    As2, B2 = unit_columns(As, B)
    for A in As2:
        np.testing.assert_allclose(np.linalg.norm(A, axis=0), 1.0, rtol=1e-12)
    n0 = np.linalg.norm(As[0], axis=0)
    np.testing.assert_allclose(As2[0], As[0] / n0)
    np.testing.assert_allclose(As2[1], (n0[:, None] * As[1]) / np.linalg.norm(n0[:, None] * As[1], axis=0))
    assert As[0] is not As2[0] and not np.allclose(As[0], As2[0])  # inputs unchanged
    # the last layer alone: A_L N⁻¹, S_L N, B N⁻¹ — reconstruction and scores unchanged
    lastA, lastB = unit_columns(As[-1:], B)
    nL = np.linalg.norm(As[-1], axis=0)
    np.testing.assert_allclose(lastB, B / nL)
    S_prev = forward(X, As[:-1])[-1]
    from scipy.optimize import nnls as scipy_nnls

    S_old = np.array([scipy_nnls(As[-1], s)[0] for s in S_prev])
    S_new = np.array([scipy_nnls(lastA[0], s)[0] for s in S_prev])
    P_old = As[0] @ As[1] @ As[2]
    P_new = As[0] @ As[1] @ lastA[0]
    np.testing.assert_allclose(S_new @ P_new.T, S_old @ P_old.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(S_new @ lastB.T, S_old @ B.T, rtol=1e-8, atol=1e-10)
    # a zero column stays zero, without NaN
    Z = [np.array([[1.0, 0.0], [2.0, 0.0]])]
    np.testing.assert_array_equal(unit_columns(Z)[0][0][:, 1], 0.0)


def test_fit_classifier_auto_is_the_minimiser_whatever_the_start():
    """max_iter='auto': the minimiser itself. Cross-entropy with a ridge: scikit-learn's
    L2-penalised multinomial logistic regression (C = 1 / (2 l2)), a gradient (written out here)
    at rounding level, rows summing to zero (softmax's shift, fixed by the ridge), the same B from
    any start and a continuous function of the codes; squared error: scipy's NNLS per class on
    [SL; √l2 I]; I-divergence: the bound problem's KKT conditions."""
    from scipy.optimize import nnls as scipy_nnls
    from sklearn.linear_model import LogisticRegression

    from dnmf_dask.kernels.neural import fit_classifier

    rng = np.random.default_rng(7)
    SL = rng.random((60, 3))
    y = np.repeat(np.arange(4), 15)
    SL[np.arange(60), y % 3] += 2.0  # separable-ish: without the ridge B would grow without bound
    Y = np.eye(4)[y]

    def softmax_gradient(B, l2):
        Z = SL @ B.T
        P = np.exp(Z - Z.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        return (P - Y).T @ SL + 2 * l2 * B

    for l2 in (1e-6, 1e-4, 0.05):
        B, term = fit_classifier(SL, y, np.zeros((4, 3)), "cross-entropy", max_iter="auto", l2=l2)
        g0 = np.linalg.norm(softmax_gradient(np.zeros((4, 3)), 0.0))
        assert np.linalg.norm(softmax_gradient(B, l2)) <= 1e-10 * g0
        np.testing.assert_allclose(B.sum(axis=0), 0.0, atol=1e-9 * np.abs(B).max())
        if l2 >= 1e-4:  # (sklearn's lbfgs stops short of the nearly flat optimum of l2 = 1e-6)
            ref = LogisticRegression(C=1.0 / (2 * l2), fit_intercept=False, max_iter=100000, tol=1e-14).fit(SL, y)
            np.testing.assert_allclose(B, ref.coef_, rtol=1e-4, atol=1e-4 * np.abs(B).max())  # lbfgs' accuracy
        for B0 in (rng.standard_normal((4, 3)), 30 * rng.standard_normal((4, 3))):
            B1, _ = fit_classifier(SL, y, B0, "cross-entropy", max_iter="auto", l2=l2)
            # to the gradient's rounding (~1e-14) times the flattest curvature 2 l2
            assert np.linalg.norm(B1 - B) <= (1e-11 + 1e-15 / l2) * np.linalg.norm(B)
        B2, _ = fit_classifier(SL * (1 + 1e-15 * rng.standard_normal(SL.shape)), y, B, "cross-entropy",
                               max_iter="auto", l2=l2)
        assert np.linalg.norm(B2 - B) <= (1e-11 + 1e-14 / l2) * np.linalg.norm(B)
    for l2 in (0.0, 0.05):
        Bf, term_f = fit_classifier(SL, y, rng.random((4, 3)), "frobenius", max_iter="auto", l2=l2)
        aug = np.vstack([SL, np.sqrt(l2) * np.eye(3)])
        Bref = np.array([scipy_nnls(aug, np.concatenate([Y[:, c], np.zeros(3)]))[0] for c in range(4)])
        np.testing.assert_allclose(Bf, Bref, rtol=1e-12, atol=1e-12)
        assert term_f == pytest.approx(np.sum((Y - SL @ Bref.T) ** 2), rel=1e-12)
    Bk, _ = fit_classifier(SL, y, rng.random((4, 3)) + 0.1, "kl", max_iter="auto")
    Z = SL @ Bk.T
    grad = (1.0 - Y / Z).T @ SL
    # (L-BFGS-B: not exact; the int path's test allows 2e-3, gradient entries here are ~50)
    assert Bk.min() >= 0 and np.all(grad >= -1e-5) and np.max(np.abs(grad * Bk)) <= 1e-5
    with pytest.raises(DNMFValueError, match="max_iter"):
        fit_classifier(SL, y, Bk, "kl", max_iter="exact")


# ---------------------------------------------------------------------------------------------
# sparse float32 blocks: the products through kernels/spmm.py (forced on these tiny blocks by
# lowering SPMM_MIN_NNZ) and through scipy, against plain numpy/scipy references
# ---------------------------------------------------------------------------------------------
def sparse_float32_problem(seed, n_layers):
    """make_problem's X with ~40% of its entries zeroed, rounded to float32 (so X32 and its
    float64 copy hold the same values), as a float32 CSR block; float64 factors."""
    rng, X, As, B = make_problem(seed, n_layers)
    X = np.where(rng.random(X.shape) < 0.4, 0.0, X).astype(np.float32)
    return rng, sp.csr_matrix(X), As, B


def reference_cost(Xd, As):
    """||X − S_L (A0 … A_L)ᵀ||² with every q solved row by row by scipy.optimize.nnls."""
    from scipy.optimize import nnls as scipy_nnls

    prev = Xd
    for A in As:
        prev = np.array([scipy_nnls(A, row, maxiter=1000)[0] for row in prev])
    P = As[0]
    for A in As[1:]:
        P = P @ A
    return float(np.sum((Xd - prev @ P.T) ** 2)), prev


@pytest.fixture
def spmm_on(monkeypatch):
    from dnmf_dask.kernels import _env

    if _env.spmm_module() is None:
        pytest.skip("numba not available")
    monkeypatch.setattr(_env, "SPMM_MIN_NNZ", 0)
    monkeypatch.delenv(_env.SPMM_ENV, raising=False)
    return monkeypatch


@pytest.mark.parametrize("spmm", ["1", "0"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_sparse_float32_block_matches_an_independent_reference(spmm_on, spmm, n_layers):
    """A float32 CSR block with the model's float64 factors (the products read the float32
    values as stored, through kernels/spmm.py or scipy): forward pass, cost and layer energies
    equal scipy.optimize.nnls row by row and the dense residual; gradients equal central
    differences of that reference cost."""
    spmm_on.setenv("DNMF_DASK_SPMM", spmm)
    _, X32, As, _ = sparse_float32_problem({1: 0, 2: 1, 3: 2}[n_layers], n_layers)
    Xd = X32.toarray().astype(np.float64)
    margin, _ = support_margin(Xd, As)
    assert margin > 1e-4  # the supports cannot change under the FD step
    ref_cost, ref_SL = reference_cost(Xd, As)
    c, grads, gB, ex = chunk_cost_grad(X32, As, return_S=True)
    assert gB is None and all(g.dtype == np.float64 for g in grads)
    assert c == pytest.approx(ref_cost, rel=1e-9)
    assert ex["recon_sq"] == pytest.approx(ref_cost, rel=1e-9)
    assert ex["x_sq"] == pytest.approx(float(np.sum(Xd ** 2)), rel=1e-14)
    np.testing.assert_allclose(ex["S"][-1], ref_SL, rtol=1e-8, atol=1e-10)
    prev, energies = Xd, []
    for A, Sl in zip(As, ex["S"]):
        energies.append(float(np.sum((prev - Sl @ A.T) ** 2)))
        prev = Sl
    np.testing.assert_allclose(ex["layer_sq"], energies, rtol=1e-9)
    # central differences of the reference cost (independent of the kernel's backward pass)
    for g, gn in zip(grads, central_differences(lambda As_: reference_cost(Xd, As_)[0], As)):
        assert rel_err(g, gn) <= 1e-5
    c_lw, g_lw, _, _ = chunk_cost_grad(X32, As, cost="layerwise")
    assert c_lw == pytest.approx(sum(energies), rel=1e-9)
    # central differences of the layer-wise energy on the dense block (the residual form)
    ref_lw = central_differences(lambda As_: chunk_cost_grad(Xd, As_, cost="layerwise")[0], As)
    for g, gn in zip(g_lw, ref_lw):
        assert rel_err(g, gn) <= 1e-5


@pytest.mark.parametrize("cost", ["reconstruction", "layerwise"])
def test_sparse_products_through_spmm_equal_scipy_for_float64_input(spmm_on, cost):
    """On a float64 CSR block the kernel's products (spmm) and scipy's give the same pass to
    1e-12, labels included; a float32 block with float64 factors gives its float64 copy's pass."""
    rng, X, As, B = make_problem(3, 3)
    X = sp.csr_matrix(np.where(rng.random(X.shape) < 0.4, 0.0, X))
    y = rng.integers(-1, N_CLASSES, N_ROWS)
    on = chunk_cost_grad(X, As, B, y, 0.7, cost)
    spmm_on.setenv("DNMF_DASK_SPMM", "0")
    off = chunk_cost_grad(X, As, B, y, 0.7, cost)
    assert on[0] == pytest.approx(off[0], rel=1e-12)
    for g, h in zip(on[1] + [on[2]], off[1] + [off[2]]):
        np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-12 * np.abs(h).max())
    _, X32, As, _ = sparse_float32_problem(3, 3)
    for spmm in ("1", "0"):
        spmm_on.setenv("DNMF_DASK_SPMM", spmm)
        got, ref = chunk_cost_grad(X32, As, cost=cost), chunk_cost_grad(X32.astype(np.float64), As, cost=cost)
        assert got[0] == pytest.approx(ref[0], rel=1e-12)
        for g, h in zip(got[1], ref[1]):
            np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-12 * np.abs(h).max())


def test_sparse_all_float32_through_spmm(spmm_on):
    """Float32 block and float32 factors: float32 results (the products accumulate in float32,
    as scipy's), close to the float64 reference."""
    _, X32, As, B = sparse_float32_problem(6, 2)
    As32 = [a.astype(np.float32) for a in As]
    c32, g32, _, ex = chunk_cost_grad(X32, As32, return_S=True)
    assert all(g.dtype == np.float32 for g in g32) and all(s.dtype == np.float32 for s in ex["S"])
    Xd = X32.toarray().astype(np.float64)
    As_r = [a.astype(np.float64) for a in As32]
    assert c32 == pytest.approx(reference_cost(Xd, As_r)[0], rel=1e-4)
    for a, b in zip(g32, chunk_cost_grad(Xd, As_r)[1]):
        np.testing.assert_allclose(a, b, atol=1e-3 * np.abs(b).max())


@pytest.mark.parametrize("spmm", ["1", "0"])
def test_sparse_non_finite_values_are_rejected(spmm_on, spmm):
    """A sparse block's values are checked through ||X||² (and one by one only if that is not
    finite): NaN and inf are rejected, by chunk_cost_grad and by BlockPass."""
    from dnmf_dask.kernels.neural import BlockPass

    spmm_on.setenv("DNMF_DASK_SPMM", spmm)
    _, X32, As, _ = sparse_float32_problem(0, 2)
    for bad in (np.nan, np.inf, -np.inf):
        Xb = X32.copy()
        Xb.data[3] = bad
        with pytest.raises(DNMFValueError, match="X: expected finite"):
            chunk_cost_grad(Xb, As)
        with pytest.raises(DNMFValueError, match="X: expected finite"):
            BlockPass(Xb)
    bp = BlockPass(X32)
    assert bp._X_as(np.float64) is bp.X  # a float32 block is not copied to float64
    c, grads, _, _ = bp(As)
    ref = chunk_cost_grad(X32.astype(np.float64), As)
    assert c == pytest.approx(ref[0], rel=1e-12)
