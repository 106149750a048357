"""Rank selection: planted ranks, the hierarchy's candidates, stability scores, the CLI."""

import numpy as np
import pytest

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.errors import DNMFValueError
from dnmf_dask.kernels.selection import component_silhouette, consensus_cophenetic, elbow_index


def _planted(rng, n=60, f=40, k=4, noise=0.02):
    # disjoint supports make the planted factors unique (up to scaling/permutation)
    W = rng.random((n, k)) * (rng.random((n, k)) < 0.5) + np.eye(k)[np.arange(n) % k]
    H = np.zeros((k, f))
    for c, cols in enumerate(np.array_split(np.arange(f), k)):
        H[c, cols] = 0.5 + rng.random(cols.size)
    return W @ H + noise * rng.random((n, f))


@pytest.mark.parametrize("method", ["elbow", "stability"])
def test_recovers_planted_rank(rng, method):
    X = _planted(rng)
    res = dd.select_ranks(X, range(2, 8), method=method, n_restarts=3, max_iter=150, random_state=0, scheduler="threads")
    assert res.ranks == [4]
    rows = {r["k"]: r for r in res.table}
    assert [r["k"] for r in res.table if r["selected"]] == [4]
    assert rows[4]["rel_error"] < 0.05 < rows[3]["rel_error"]
    assert rows[4]["silhouette"] > 0.9 > rows[6]["silhouette"]
    # the stability rule reads the worst cluster's silhouette: every k above the planted one
    # must have an unstable component, k = 4 none
    assert rows[4]["silhouette_min"] > 0.9
    assert all(rows[k]["silhouette_min"] < 0.2 for k in (5, 6, 7))


def test_hierarchy_candidates_shrink_and_outputs(rng, tmp_path):
    X = _planted(rng)
    res = dd.select_ranks(X, [2, 3, 4, 5, 6], n_layers=3, n_restarts=2, max_iter=100, random_state=1, scheduler="threads")
    assert res.ranks[0] == 4 and all(b < a for a, b in zip(res.ranks, res.ranks[1:]))
    for l, k_prev in zip(range(1, len(res.ranks)), res.ranks):
        assert all(r["k"] < k_prev for r in res.table if r["layer"] == l)
    res.to_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().count("\n") == len(res.table) + 1
    res.plot(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0


def test_scores():
    same = np.array([[0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    assert consensus_cophenetic(same)[0] == pytest.approx(1.0)
    mixed = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 0, 2, 1, 2], [2, 0, 1, 0, 2, 1]])
    assert consensus_cophenetic(mixed)[0] < 0.9
    A = np.eye(5)[:, :3]
    assert component_silhouette([A, A[:, [2, 0, 1]] * 3])[0] == pytest.approx(1.0)
    assert elbow_index([1, 2, 3, 4, 5], [10, 5, 1, 0.9, 0.8]) == 2


def test_match_components_puts_one_column_of_each_restart_per_cluster(rng):
    """NMFk's clustering with an outlier restart first (two components blended); the others are
    permuted, rescaled, slightly noisy copies of C: every cluster holds the same true column of each
    of them, and the outlier shows in the worst cluster's silhouette."""
    from dnmf_dask.kernels.selection import match_components

    f, k = 30, 4
    C = rng.random((f, k)) ** 4
    bad = C.copy()
    bad[:, 0] = C[:, 0] + 0.9 * C[:, 1]
    bad[:, 1] = C[:, 1] + 0.9 * C[:, 0]
    As, truth = [bad], []
    for _ in range(8):
        p = rng.permutation(k)
        As.append(C[:, p] * (1 + rng.random(k)) + 0.01 * rng.random((f, k)))
        truth.append(p)
    perms = match_components(As)
    first = [truth[0][j] for j in perms[1]]
    assert sorted(first) == list(range(k))
    for p_true, perm in zip(truth, perms[1:]):
        assert [p_true[j] for j in perm] == first
    mean, worst = component_silhouette(As)
    assert mean > 0.6 and worst < mean


def test_stability_rule_is_the_largest_k_whose_worst_component_is_stable():
    from dnmf_dask.models.selection import _choose

    rows = [dict(k=k, silhouette=m, silhouette_min=w, rel_error=e)
            for k, m, w, e in [(2, 1.0, 1.0, 0.5), (3, 0.9, -0.2, 0.4), (4, 0.8, 0.6, 0.1), (5, 0.95, 0.1, 0.09)]]
    assert _choose(rows, "stability", 0.2, None) == 4  # k=5 has a high mean, but one component is not reproduced
    assert _choose(rows, "stability", 0.05, None) == 5
    assert _choose(rows, "stability", 0.05, None, max_error=0.095) == 5
    assert _choose(rows, "stability", 0.05, None, max_error=0.095 - 0.01) == 2  # none passes: the most stable k
    assert _choose(rows, "stability", 0.2, None, max_error=0.45) == 4


def test_layers_above_compare_components_in_feature_space(rng):
    from dnmf_dask.models.selection import _layer_rows

    basis = rng.random((12, 5))
    fits = [(rng.random((8, 3)), rng.random((5, 3)), 0.1) for _ in range(3)]
    row = _layer_rows(1, [3], {3: fits}, basis)[0]
    assert (row["silhouette"], row["silhouette_min"]) == pytest.approx(component_silhouette([basis @ A for _, A, _ in fits]))
    assert row["silhouette"] != pytest.approx(component_silhouette([A for _, A, _ in fits])[0])


@pytest.mark.parametrize("kw, name", [(dict(method="gap"), "method"), (dict(candidates=[0, 2]), "candidates"),
                                      (dict(candidates=[2, 500]), "candidates"), (dict(n_restarts=1), "n_restarts"),
                                      (dict(perturbation=1.5), "perturbation"), (dict(solver="hals", beta_loss="kl"), "solver"),
                                      (dict(min_silhouette=1.5), "min_silhouette"), (dict(min_silhouette="x"), "min_silhouette"),
                                      (dict(max_error=-0.1), "max_error")])
def test_select_ranks_errors(rng, kw, name):
    with pytest.raises(DNMFValueError, match=name):
        dd.select_ranks(rng.random((20, 10)), **{"candidates": [2, 3], **kw})


def test_cli_select_ranks(rng, tmp_path, capsys):
    X = _planted(rng)
    dd.write_corpus(tmp_path / "c.zarr", X, chunk_rows=20)
    code = main(["select-ranks", str(tmp_path / "c.zarr"), "--candidates", "2-6", "--restarts", "2", "--max-iter", "100",
                 "--scheduler", "threads", "--csv", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "r.png")])
    out = capsys.readouterr().out
    assert code == 0 and "selected ranks: 4" in out
    assert (tmp_path / "r.csv").exists() and (tmp_path / "r.png").exists()
    assert main(["select-ranks", str(tmp_path / "c.zarr"), "--candidates", "2-99", "--scheduler", "threads"]) == 2
    assert main(["select-ranks", str(tmp_path / "c.zarr"), "--candidates", "2-6", "--restarts", "2", "--max-iter", "100",
                 "--scheduler", "threads", "--method", "stability", "--min-silhouette", "0.5", "--max-error", "0.3"]) == 0
    assert "selected ranks: 4 (stability" in capsys.readouterr().out
    assert main(["select-ranks", str(tmp_path / "c.zarr"), "--candidates", "2-6", "--method", "stability",
                 "--min-silhouette", "3", "--scheduler", "threads"]) == 2


def test_hierarchical_auto_ranks_and_solvers(rng):
    X = _planted(rng)
    m = dd.HierarchicalNMF("auto", rank_candidates=range(2, 8), n_layers=2, max_iter=60, tol=0, random_state=0,
                           scheduler="threads", solver="hals")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(X)
    assert m.ranks_[0] == 4 and m.ranks_ == m.rank_selection_.ranks and len(m.ranks_) == 2
    assert m.A_[0].shape == (X.shape[1], 4) and m.A_[1].shape == (4, m.ranks_[1])
    for h in m.layer_history_:
        assert np.all(np.diff(h["objective"]) <= 1e-12 * np.abs(h["objective"][:-1]))
    with pytest.raises(DNMFValueError, match="ranks"):
        dd.DeepNMF("auto").fit(X)
    with pytest.raises(DNMFValueError, match="solver"):
        dd.HierarchicalNMF((3, 2), semi=True, solver="hals").fit(X)
    with pytest.raises(DNMFValueError, match="beta_loss"):
        dd.HierarchicalNMF((3, 2), semi=True, beta_loss="kl").fit(X)


def test_hierarchical_kl_layers_with_kl_labels(rng):
    import warnings

    X = _planted(rng)
    y = np.arange(X.shape[0]) % 4
    y[::3] = -1
    m = dd.HierarchicalNMF((4, 3), beta_loss="kl", label_loss="kl", max_iter=40, tol=0, random_state=0,
                           scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(X, y)
    for h in m.layer_history_:
        assert np.all(np.diff(h["objective"]) <= 1e-12 * np.abs(h["objective"][:-1]))
    assert m.layer_history_[-1]["loss_Y"][-1] < m.layer_history_[-1]["loss_Y"][0]
