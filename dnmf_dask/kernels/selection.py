"""Rank selection on one in-memory matrix: one seeded NMF restart, and the stability scores.

* :func:`fit_restart` — one NMF of X (n, f) at rank k from a seeded random start (optionally on
  a multiplicatively perturbed copy of X, as NMFk does), returning S (n, k), A (f, k) and the
  final relative error. Pure numpy/scipy; the restarts are mapped over dask tasks in
  :mod:`dnmf_dask.parallel.selection`.
* :func:`consensus_cophenetic` — Brunet et al. (2004): each restart assigns every sample to its
  largest coefficient; the consensus matrix is the fraction of restarts putting two samples
  together; its cophenetic correlation (average linkage on 1 − consensus, scipy) is 1 for a
  perfectly stable clustering.
* :func:`component_silhouette` — NMFk (Alexandrov et al.): the k columns of A of every restart are
  clustered into k clusters of one column per restart — each restart's columns are matched to the
  cluster centroids by a Hungarian assignment on cosine similarity (scipy), the centroids become
  the medians of their members, until the assignment stops changing (NMFk's custom clustering;
  starting from the first restart's columns) — and the silhouette of the pooled, normalised columns
  (cosine distance, scikit-learn) measures how well the restarts reproduce the same k components.
* :func:`elbow_index` — the point of a decreasing error curve farthest below the chord joining its
  ends (on normalised axes: the "kneedle" rule).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .solvers import general_block_step, update_A


def perturb(X, rng, eps):
    """X with every stored entry multiplied by uniform(1 − eps, 1 + eps) (sparsity kept)."""
    if eps <= 0:
        return X
    if sp.issparse(X):
        X = X.copy()
        X.data = X.data * rng.uniform(1 - eps, 1 + eps, X.data.shape)
        return X
    return X * rng.uniform(1 - eps, 1 + eps, X.shape)


def fit_restart(X, k, seed, *, max_iter=300, tol=1e-5, solver="hals", loss="frobenius", perturbation=0.0):
    """One seeded restart: random start scaled like scikit-learn's, then ``max_iter`` iterations.

    Returns (S (n, k), A (f, k), rel_error) with rel_error = sqrt(loss_X / ||X||²) (Frobenius)
    or loss_X / Σ X (KL) on the data the restart was fitted to.
    """
    rng = np.random.default_rng(seed)
    X = perturb(X, rng, perturbation)
    n, f = X.shape
    mean = float(X.sum() / (n * f))
    scale = np.sqrt(max(mean, 1e-12) / k)
    S = scale * rng.random((n, k)) + 1e-3 * scale
    A = scale * rng.random((f, k)) + 1e-3 * scale
    prev, st = None, None
    for _ in range(max_iter):
        S, st = general_block_step(X, S, A, loss=loss, solver=solver)
        A = update_A(A, st, loss=loss, solver=solver)
        obj = st["loss_X"]
        if tol > 0 and prev is not None and prev - obj <= tol * prev:
            break
        prev = obj
    _, st = general_block_step(X, S, A, loss=loss, solver=solver, update_S=False, a_stats=False)
    if loss == "frobenius":
        err = float(np.sqrt(st["loss_X"] / st["norm_X"])) if st["norm_X"] > 0 else 0.0
    else:
        total = float(X.sum())
        err = st["loss_X"] / total if total > 0 else 0.0
    return S, A, err


def consensus_cophenetic(labels):
    """Cophenetic correlation of the consensus matrix of per-restart sample labels (r, n)."""
    from scipy.cluster.hierarchy import cophenet, linkage
    from scipy.spatial.distance import squareform

    labels = np.asarray(labels)
    C = np.mean([(lab[:, None] == lab[None, :]) for lab in labels], axis=0)
    D = squareform(1.0 - C, checks=False)
    if np.ptp(D) == 0:
        return 1.0, C  # every restart gives the same partition into one cluster or all singletons
    c, _ = cophenet(linkage(D, method="average"), D)
    return float(c), C


def _unit_columns(A):
    nrm = np.linalg.norm(A, axis=0)
    nrm[nrm == 0] = 1.0
    return A / nrm


def match_components(As, max_iter=50):
    """NMFk's clustering of the restarts' components: one column of every restart per cluster.

    ``As`` is a list of r arrays (f, k). Starting from the first restart's columns as centroids,
    every restart's unit-norm columns are assigned to the centroids by a Hungarian assignment
    maximising the cosine similarity, and the centroids become the (unit-norm) medians of their
    members, until no assignment changes (at most ``max_iter`` rounds). Returns the list of the
    restarts' permutations (column ``perm[c]`` of restart i is in cluster c).
    """
    from scipy.optimize import linear_sum_assignment

    Us = [_unit_columns(A) for A in As]
    cent, perms = Us[0], None
    for _ in range(max_iter):
        new = [linear_sum_assignment(-(cent.T @ U))[1] for U in Us]
        if perms is not None and all(np.array_equal(a, b) for a, b in zip(new, perms)):
            break
        perms = new
        cent = _unit_columns(np.median(np.stack([U[:, p] for U, p in zip(Us, perms)]), axis=0))
    return perms


def component_silhouette(As):
    """Silhouette (cosine) of the restarts' components clustered by :func:`match_components`.

    ``As`` is a list of (f, k). Returns (mean silhouette, min over the k clusters of the cluster's
    mean silhouette) — the second is NMFk's stability criterion.
    """
    from sklearn.metrics import silhouette_samples

    k = As[0].shape[1]
    if k < 2 or len(As) < 2:
        return 1.0, 1.0
    perms = match_components(As)
    P = np.vstack([_unit_columns(A)[:, p].T for A, p in zip(As, perms)])
    lab = np.tile(np.arange(k), len(As))
    s = silhouette_samples(P, lab, metric="cosine")
    return float(s.mean()), float(min(s[lab == c].mean() for c in range(k)))


def elbow_index(ks, errors):
    """Index of the elbow of a decreasing curve: farthest point below the chord (normalised axes)."""
    ks = np.asarray(ks, float)
    e = np.asarray(errors, float)
    if len(ks) < 3:
        return int(np.argmin(e)) if len(ks) else 0
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    span = e[0] - e[-1]
    yv = (e - e[-1]) / span if span > 0 else np.zeros_like(e)
    chord = 1.0 - x  # the line from (0, 1) to (1, 0)
    return int(np.argmax(chord - yv))
