"""Tests of dnmf_dask.evaluate.metrics and .topics against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.evaluate.metrics import (
    accuracy_unlabeled,
    b_density,
    confusion,
    drift_angles,
    layer_angles,
    layer_reconstructions,
    purity,
)
from dnmf_dask.evaluate.topics import (
    consolidated_topics,
    effective_topics,
    format_hierarchy,
    hierarchy,
    layer_topics,
    top_words,
    topic_angles,
)


def _angle(u, v):
    """Reference angle in degrees (plain acos, fine away from 0)."""
    c = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


# ----------------------------------------------------------------------------------------------
# purity / accuracy / confusion
# ----------------------------------------------------------------------------------------------


def test_purity_hand_example():
    y = [0, 0, 0, 1, 1, 2]
    c = [5, 5, 7, 7, 7, 9]
    # cluster 5: {0,0} -> 2; cluster 7: {0,1,1} -> 2; cluster 9: {2} -> 1
    assert purity(y, c) == pytest.approx(5 / 6)
    S = np.zeros((6, 3))
    S[np.arange(6), [0, 0, 1, 1, 1, 2]] = 1.0
    assert purity(y, S) == pytest.approx(5 / 6)
    assert purity(y, sp.csr_matrix(S)) == pytest.approx(5 / 6)
    # unknown truth (-1) is left out
    assert purity([0, 0, -1, 1, 1, 2], c) == pytest.approx(5 / 5)


def test_purity_random_cross_check():
    rng = np.random.RandomState(0)
    for _ in range(20):
        n = rng.randint(1, 300)
        y = rng.randint(0, rng.randint(1, 6), size=n)
        c = rng.randint(0, rng.randint(1, 9), size=n)
        ref = sum(max(np.sum((c == k) & (y == a)) for a in np.unique(y)) for k in np.unique(c)) / n
        assert purity(y, c) == pytest.approx(ref)


def test_accuracy_unlabeled_and_confusion():
    y_true = np.array([0, 1, 2, 0, 1, 2, 0])
    y_mask = np.array([0, -1, -1, -1, 1, -1, -1])
    y_pred = np.array([0, 1, 0, 0, 0, 2, 1])
    # hidden: indices 1,2,3,5,6 -> correct 1,3,5 -> 3/5
    assert accuracy_unlabeled(y_true, y_pred, y_mask) == pytest.approx(3 / 5)
    scores = np.eye(3)[y_pred] + 0.01
    assert accuracy_unlabeled(y_true, scores, y_mask) == pytest.approx(3 / 5)
    with pytest.raises(DNMFValueError, match="hidden"):
        accuracy_unlabeled(y_true, y_pred, y_true)
    with pytest.raises(DNMFValueError, match="y_masked"):
        accuracy_unlabeled(y_true, y_pred, (y_true + 1) % 3)

    rng = np.random.RandomState(1)
    yt, yp = rng.randint(0, 4, 200), rng.randint(0, 4, 200)
    C = confusion(yt, yp)
    ref = np.zeros((4, 4), int)
    for a, b in zip(yt, yp):
        ref[a, b] += 1
    np.testing.assert_array_equal(C, ref)
    m = y_mask == -1
    Cm = confusion(y_true, y_pred, n_classes=4, mask=m)
    assert Cm.shape == (4, 4) and Cm.sum() == m.sum() and np.trace(Cm) == 3
    with pytest.raises(DNMFTypeError, match="y_true"):
        purity([0.5, 1.0], [0, 1])
    with pytest.raises(DNMFValueError, match="clusters"):
        purity([0, 1], [0, 1, 2])


# ----------------------------------------------------------------------------------------------
# B density
# ----------------------------------------------------------------------------------------------


def test_b_density_hand_example():
    B = np.array(
        [
            [1.0, 0.5, 0.05, 0.0],  # active: 1.0, 0.5 (0.05 <= 0.1)
            [0.0, 0.0, 2.0, 0.0],  # active: one
            [0.0, 0.0, 0.0, 0.0],  # dead row
        ]
    )
    d = b_density(B, rtol=0.1, mass=0.9, label_names=["a", "b", "c"])
    np.testing.assert_array_equal(d.n_active, [2, 1, 0])
    np.testing.assert_allclose(d.fraction_active, [0.5, 0.25, 0.0])
    assert d.density == pytest.approx(3 / 12)
    assert d.n_topics_used == 3
    # mass 0.9 of row 0 (total 1.55): 1.0 -> 0.645, +0.5 -> 0.968 -> 2 topics
    np.testing.assert_array_equal(d.mass_topics, [2, 1, 0])
    assert "b" in d.table()
    with pytest.raises(DNMFValueError, match="B"):
        b_density(-B)
    with pytest.raises(DNMFValueError, match="rtol"):
        b_density(B, rtol=2.0)


# ----------------------------------------------------------------------------------------------
# topics
# ----------------------------------------------------------------------------------------------

WORDS = np.array(["apple", "ball", "cat", "dog", "egg", "fish"])


def test_top_words_constructed():
    A0 = np.array(
        [
            [0.1, 0.0, 3.0],
            [0.9, 0.0, 3.0],
            [0.0, 0.0, 1.0],
            [0.5, 0.2, 0.0],
            [0.3, 0.0, 0.0],
            [0.0, 0.0, 2.0],
        ]
    )
    assert top_words(A0, WORDS, n=3) == [["ball", "dog", "egg"], ["dog"], ["apple", "ball", "fish"]]
    assert top_words(A0, WORDS, n=10)[0] == ["ball", "dog", "egg", "apple"]
    tw = top_words(A0, WORDS, n=2, return_weights=True)
    assert tw[2] == [("apple", 3.0), ("ball", 3.0)]
    with pytest.raises(DNMFValueError, match="feature_names"):
        top_words(A0, WORDS[:5])
    with pytest.raises(DNMFValueError, match="A0"):
        top_words(-A0, WORDS)
    with pytest.raises(DNMFValueError, match="n"):
        top_words(A0, WORDS, n=0)


def test_layer_topics_and_hierarchy():
    rng = np.random.RandomState(0)
    A0 = rng.rand(6, 4)
    A1 = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 0.5], [0.0, 0.5]])  # (4, 2)
    A2 = np.array([[0.2], [0.8]])
    eff = effective_topics([A0, A1, A2])
    np.testing.assert_allclose(eff[1], A0 @ A1)
    np.testing.assert_allclose(eff[2], A0 @ A1 @ A2)
    lt = layer_topics([A0, A1, A2], WORDS, n=2)
    assert [t.topics.shape for t in lt] == [(6, 4), (6, 2), (6, 1)]
    for t in lt:
        for j, words in enumerate(t.words):
            col = t.topics[:, j]
            assert words == [str(WORDS[i]) for i in np.argsort(-col, kind="stable")[:2]]

    h = hierarchy([A0, A1, A2], threshold=0.3)
    assert len(h) == 2 and len(h[0]) == 2 and len(h[1]) == 1
    assert h[0][0]["children"] == [(1, pytest.approx(0.75))]  # 0.25 < 0.3 dropped
    assert h[0][1]["children"] == [(2, pytest.approx(0.5)), (3, pytest.approx(0.5))]
    assert h[1][0]["children"] == [(1, pytest.approx(0.8))]
    # mass weights: subtopic scaled by its total word weight
    hm = hierarchy([A0, A1], threshold=0.0, weights="mass")
    m = A1[:, 0] * A0.sum(axis=0)
    ref = m / m.sum()
    got = dict(hm[0][0]["children"])
    assert set(got) == {0, 1}
    np.testing.assert_allclose([got[0], got[1]], ref[:2])
    text = format_hierarchy(h, [t.words for t in lt])
    assert text.splitlines()[0].startswith("L2.0") and "L1.1" in text
    with pytest.raises(DNMFValueError, match=r"A_list\[1\]"):
        hierarchy([A0, A1.T])
    with pytest.raises(DNMFTypeError, match="A_list"):
        hierarchy(A0)


# ----------------------------------------------------------------------------------------------
# topic consolidation
# ----------------------------------------------------------------------------------------------


def _rotated(theta_deg, p, q):
    t = math.radians(theta_deg)
    return math.cos(t) * p + math.sin(t) * q


@pytest.fixture()
def plane():
    """Orthonormal p, q with p + small multiples of q staying strictly positive."""
    p = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    p /= np.linalg.norm(p)
    q = np.array([1.0, -1.0, 0.5, -0.5, 0.2])
    q -= (q @ p) * p
    q /= np.linalg.norm(q)
    return p, q


def test_topic_angles_exact(plane):
    p, q = plane
    A = np.stack([_rotated(t, p, q) for t in (0.0, 1e-4, 4.9, 5.1, -5.1)], axis=1)
    assert np.all(A > 0)
    ang = topic_angles(A)
    ref = np.abs(np.subtract.outer([0.0, 1e-4, 4.9, 5.1, -5.1], [0.0, 1e-4, 4.9, 5.1, -5.1]))
    np.testing.assert_allclose(ang, ref, atol=1e-9)
    rng = np.random.RandomState(0)
    R = rng.rand(7, 5)
    ang = topic_angles(R)
    for i in range(5):
        for j in range(5):
            if i != j:
                assert ang[i, j] == pytest.approx(_angle(R[:, i], R[:, j]), abs=1e-7)


def test_consolidated_topics_threshold_support_and_dead(plane):
    p, q = plane
    cols = [
        _rotated(0.0, p, q),  # 0
        _rotated(4.9, p, q),  # 1: 4.9 deg from 0 -> same group
        3.0 * _rotated(0.0, p, q),  # 2: scaled copy of 0 -> same group
        _rotated(-5.1, p, q),  # 3: 5.1 from 0, 10 from 1 -> alone
        np.zeros(5),  # 4: dead
    ]
    A = np.vstack([np.stack(cols, axis=1), np.zeros((1, 5))])  # a 6th word unused so far
    other = A[:, 0].copy()
    other[5] = 0.05  # 5: ~2.9 deg from 0 but one more word in its support -> alone
    A = np.column_stack([A, other])
    assert _angle(A[:, 0], A[:, 5]) < 5.0
    r = consolidated_topics(A, 5.0)
    assert [g.tolist() for g in r.groups] == [[0, 1, 2], [3], [5]]
    assert r.n_distinct == 3 and r.n_zero == 1
    np.testing.assert_array_equal(r.labels, [0, 0, 0, 1, -1, 2])
    # a slightly smaller angle splits 1 off
    r2 = consolidated_topics(A, 4.8)
    assert [g.tolist() for g in r2.groups] == [[0, 2], [1], [3], [5]]
    # tiny entries count as zero under the relative support tolerance
    B = A.copy()
    B[5, 5] = 1e-6
    assert consolidated_topics(B, 5.0).labels[5] == 0
    assert consolidated_topics(B, 5.0, support_rtol=0.0).labels[5] != 0


def test_consolidated_topics_single_vs_complete(plane):
    p, q = plane
    A = np.stack([_rotated(t, p, q) for t in (0.0, 4.0, 8.0)], axis=1)
    assert consolidated_topics(A, 5.0, linkage="single").n_distinct == 1  # chain 0-4-8
    rc = consolidated_topics(A, 5.0, linkage="complete")
    assert rc.n_distinct == 2
    for g in rc.groups:
        assert np.all(rc.angles[np.ix_(g, g)] <= 5.0 + 1e-9)
    with pytest.raises(DNMFValueError, match="linkage"):
        consolidated_topics(A, linkage="average")
    with pytest.raises(DNMFValueError, match="angle_deg"):
        consolidated_topics(A, angle_deg=-1)


def test_consolidated_topics_random_cross_check():
    rng = np.random.RandomState(2)
    base = rng.rand(30, 4) + 0.1
    cols = []
    for b in range(4):
        for _ in range(3):
            cols.append(base[:, b] * (1 + 0.03 * rng.randn(30)))
    A = np.abs(np.stack(cols, axis=1))
    r = consolidated_topics(A, 5.0)
    # independent check: union-find over pairs within 5 degrees (all supports are full)
    parent = list(range(A.shape[1]))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(A.shape[1]):
        for j in range(i + 1, A.shape[1]):
            if _angle(A[:, i], A[:, j]) <= 5.0:
                parent[find(i)] = find(j)
    roots = [find(i) for i in range(A.shape[1])]
    assert r.n_distinct == len(set(roots))
    for i in range(A.shape[1]):
        for j in range(A.shape[1]):
            assert (r.labels[i] == r.labels[j]) == (roots[i] == roots[j])


# ----------------------------------------------------------------------------------------------
# layer angles (§4.5)
# ----------------------------------------------------------------------------------------------


def test_layer_angles_hand_example():
    # 4 samples, classes 0,0,1,1; layer 0 in 2-D, layer 1 collapses each class to one direction
    R0 = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 2.0]])
    R1 = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    y = np.array([0, 0, 1, 1])
    res = layer_angles([R0, R1], y, label_names=["a", "b"])
    rows = {(r["class"], r["relation"]): r for r in res.rows}
    assert set(rows) == {(0, "within"), (0, "between"), (1, "within"), (1, "between")}
    w0 = rows[(0, "within")]
    assert w0["n_pairs"] == 1 and w0["class_name"] == "a"
    assert w0["angle_in_mean"] == pytest.approx(45.0)
    assert w0["angle_out_mean"] == pytest.approx(0.0, abs=1e-12)
    assert w0["angle_ratio_mean"] == pytest.approx(0.0, abs=1e-12)
    assert w0["dist_in_mean"] == pytest.approx(2 * math.sin(math.radians(22.5)))
    assert w0["dist_ratio_mean"] == pytest.approx(0.0, abs=1e-12)
    b0 = rows[(0, "between")]
    assert b0["n_pairs"] == 4  # all (i in class 0, j in class 1)
    ref_in = [_angle(R0[i], R0[j]) for i in (0, 1) for j in (2, 3)]
    assert b0["angle_in_mean"] == pytest.approx(np.mean(ref_in))
    assert b0["angle_in_std"] == pytest.approx(np.std(ref_in))
    assert b0["angle_out_mean"] == pytest.approx(90.0)
    assert b0["angle_ratio_mean"] == pytest.approx(np.mean([90.0 / a for a in ref_in]))
    np.testing.assert_allclose(res.angles[(0, "between")][:, 0], ref_in)
    assert "within" in res.table()

    # raw distances
    raw = layer_angles([R0, R1], y, normalize=None)
    rr = {(r["class"], r["relation"]): r for r in raw.rows}
    assert rr[(0, "within")]["dist_in_mean"] == pytest.approx(1.0)
    assert rr[(0, "within")]["dist_out_mean"] == pytest.approx(1.0)
    assert rr[(1, "within")]["dist_ratio_mean"] == pytest.approx(2.0 / math.sqrt(2.0))
    lay = layer_angles([R0, R1], y, normalize="layer")
    rms0 = math.sqrt(np.mean(np.sum(R0**2, axis=1)))
    rl = {(r["class"], r["relation"]): r for r in lay.rows}
    assert rl[(0, "within")]["dist_in_mean"] == pytest.approx(1.0 / rms0)


def test_layer_angles_random_sparse_and_sampling():
    rng = np.random.RandomState(0)
    n = 120
    y = rng.randint(0, 3, size=n)
    y[:3] = -1
    X = sp.random(n, 40, density=0.2, random_state=1, format="csr") + sp.eye(n, 40, format="csr")
    S0 = rng.rand(n, 6)
    S1 = rng.rand(n, 4)
    res = layer_angles([X, S0, S1], y, layer_pairs="all", max_pairs=100, random_state=3)
    res_dense = layer_angles([X.toarray(), S0, S1], y, layer_pairs="all", max_pairs=100, random_state=3)
    assert len(res.rows) == 3 * 2 * 3
    for a, b in zip(res.rows, res_dense.rows):
        for k in a:
            if k.endswith(("mean", "std")):
                assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12)
    Xd = X.toarray()
    for (c, rel), P in res.pairs.items():
        assert P.shape[0] == 100  # more possible pairs than max_pairs -> sampled
        assert np.all(y[P[:, 0]] == c)
        if rel == "within":
            assert np.all(y[P[:, 1]] == c) and np.all(P[:, 0] != P[:, 1])
        else:
            assert np.all((y[P[:, 1]] != c) & (y[P[:, 1]] >= 0))
        ang = res.angles[(c, rel)]
        for t in range(0, 100, 17):
            i, j = P[t]
            for l, R in enumerate([Xd, S0, S1]):
                assert ang[t, l] == pytest.approx(_angle(R[i], R[j]), abs=1e-6)
    # same seed -> same pairs; consecutive pairs by default
    again = layer_angles([X, S0, S1], y, max_pairs=100, random_state=3)
    assert [(r["layer_in"], r["layer_out"]) for r in again.rows[:2]] == [("layer0", "layer1"), ("layer1", "layer2")]
    np.testing.assert_array_equal(again.pairs[(0, "within")], res.pairs[(0, "within")])
    with pytest.raises(DNMFValueError, match="reps"):
        layer_angles([S0], y)
    with pytest.raises(DNMFValueError, match=r"reps\[1\]"):
        layer_angles([S0, S1[:-1]], y)
    with pytest.raises(DNMFValueError, match="layer_pairs"):
        layer_angles([S0, S1], y, layer_pairs=[(0, 5)])
    with pytest.raises(DNMFValueError, match="normalize"):
        layer_angles([S0, S1], y, normalize="unit")


def test_reconstructions_and_drift_angles():
    rng = np.random.RandomState(0)
    A0, A1 = rng.rand(8, 4), rng.rand(4, 3)
    S0, S1 = rng.rand(10, 4), rng.rand(10, 3)
    R = layer_reconstructions([A0, A1], [S0, S1], rows=[1, 3, 5])
    np.testing.assert_allclose(R[0], S0[[1, 3, 5]] @ A0.T)
    np.testing.assert_allclose(R[1], S1[[1, 3, 5]] @ (A0 @ A1).T)
    y = np.array([0, 1, 0])
    d = drift_angles(R[0], R[1], y)
    ref = [_angle(R[0][i], R[1][i]) for i in range(3)]
    np.testing.assert_allclose(d["angles"], ref, atol=1e-7)
    assert d["per_class"][0][0] == pytest.approx((ref[0] + ref[2]) / 2)
    ds = drift_angles(sp.csr_matrix(R[0]), R[1])
    np.testing.assert_allclose(ds["angles"], ref, atol=1e-7)
    # a sample against its own scaled copy: angle 0
    assert drift_angles(R[0], 3 * R[0])["angles"] == pytest.approx(np.zeros(3), abs=1e-7)
    with pytest.raises(DNMFValueError, match="R_to"):
        drift_angles(R[0], R[0][:, :2])
