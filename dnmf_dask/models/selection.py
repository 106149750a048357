"""Choosing the rank of every layer: :func:`select_ranks`.

For each layer, every candidate rank is fitted ``n_restarts`` times from seeded random starts
(HALS by default), all (rank, restart) fits running as parallel dask tasks. Two rules:

* ``method="elbow"``: the best relative error of each candidate gives an error curve; the rank is
  its elbow (the point farthest below the chord joining the curve's ends, on normalised axes).
  For a layer above the first the curve is closed by the previous rank, where the error is exactly
  0 (the previous layer's S has that rank: S = S·I).
* ``method="stability"`` (NMFk, Alexandrov et al.): the k components of the restarts are clustered
  (Hungarian matching to the cluster medians, repeated until stable:
  :func:`~dnmf_dask.kernels.selection.match_components`) and the silhouette of the pooled
  components is computed (cosine); the rank is the largest candidate whose *worst* cluster has a
  mean silhouette of at least ``min_silhouette`` (and, if ``max_error`` is given, whose best
  relative error is at most ``max_error``). For a layer above the first the components are
  compared in feature space — the restart's A(l) mapped by the unit-norm topics of the layers
  below, A(0)…A(l−1)·A(l) — where supertopics that group the same topics are close and the
  others far apart (in the k_{l−1} coordinates of S(l−1) every direction looks alike). The
  consensus-matrix cophenetic correlation of Brunet et al. over the same restarts (samples
  assigned to their largest coefficient after scaling the topics to unit norm) is reported too.

For a hierarchy (``n_layers`` > 1), layer l is selected on the previous layer's S (of the best
restart at the chosen rank, its A columns scaled to unit norm, S scaled inversely, so the next
layer sees the coefficients in the units of unit-norm topics); candidates of layer l are those
below the rank chosen for layer l − 1.

The restarts work on the data in memory (a dask array or corpus is computed; ``max_samples``
draws a random subset of rows first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .._validation import check_choice, check_matrix, check_nonneg_float, check_positive_int
from ..errors import DNMFValueError
from ..kernels.selection import component_silhouette, consensus_cophenetic, elbow_index
from ..kernels.solvers import SOLVERS, canonical_loss
from ..parallel.scheduler import scheduler_context
from ..parallel.selection import run_restarts
from .base import seed_from

METHODS = ("elbow", "stability")
#: consensus matrices (n × n) are formed only up to this many samples
MAX_CONSENSUS_SAMPLES = 4000


@dataclass
class RankSelection:
    """Result of :func:`select_ranks`.

    Attributes
    ----------
    ranks : list of int, the chosen rank of each layer.
    table : list of dict, one row per (layer, candidate): ``layer``, ``k``, ``rel_error`` (best
        restart), ``rel_error_mean``, ``silhouette``, ``silhouette_min`` (worst component),
        ``cophenetic`` (NaN above ``MAX_CONSENSUS_SAMPLES`` samples), ``selected``.
    method : str; ``elapsed`` : seconds; ``params`` : dict of the call's settings.
    """

    ranks: list
    table: list
    method: str
    elapsed: float
    params: dict = field(default_factory=dict)

    def to_text(self):
        """The table as aligned text (one line per candidate, * = selected)."""
        head = f"{'layer':>5} {'k':>4} {'rel_error':>10} {'mean_err':>10} {'silhouette':>10} {'sil_min':>8} {'cophenetic':>10}"
        lines = [head]
        for r in self.table:
            lines.append(f"{r['layer']:>5} {r['k']:>4} {r['rel_error']:>10.4f} {r['rel_error_mean']:>10.4f} "
                         f"{r['silhouette']:>10.3f} {r['silhouette_min']:>8.3f} {r['cophenetic']:>10.4f}"
                         + (" *" if r["selected"] else ""))
        return "\n".join(lines)

    def to_csv(self, path):
        keys = ["layer", "k", "rel_error", "rel_error_mean", "silhouette", "silhouette_min", "cophenetic", "selected"]
        with open(path, "w") as fh:
            fh.write(",".join(keys) + "\n")
            for r in self.table:
                fh.write(",".join(str(int(r[k])) if k == "selected" else str(r[k]) for k in keys) + "\n")

    def plot(self, path=None):
        """Error curve and silhouette per layer, chosen ranks marked; saved to ``path`` if given.
        Returns the matplotlib Figure."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        layers = sorted({r["layer"] for r in self.table})
        fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.2), squeeze=False)
        for ax, l in zip(axes[0], layers):
            rows = [r for r in self.table if r["layer"] == l]
            ks = [r["k"] for r in rows]
            ax.plot(ks, [r["rel_error"] for r in rows], "o-", label="relative error")
            ax2 = ax.twinx()
            ax2.plot(ks, [r["silhouette"] for r in rows], "s--", color="tab:orange", label="silhouette")
            ax2.set_ylim(-1.05, 1.05)
            ax.axvline(self.ranks[l], color="k", lw=0.8, ls=":")
            ax.set_title(f"layer {l}: k = {self.ranks[l]} ({self.method})")
            ax.set_xlabel("rank k")
            ax.set_ylabel("relative error")
            ax2.set_ylabel("silhouette")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def _in_memory(X, max_samples, seed):
    if hasattr(X, "row_offsets") and hasattr(X, "X"):  # an opened Corpus
        X = X.X
    X = check_matrix(X, "X", allow_dask=True)
    n = X.shape[0]
    if max_samples is not None and n > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
        X = X[rows]
    if hasattr(X, "compute"):
        X = check_matrix(X.compute(), "X", allow_dask=False)  # the values are checked once in memory
    if (sp.issparse(X) and X.nnz == 0) or (not sp.issparse(X) and not np.any(X)):
        raise DNMFValueError("X: expected some nonzero entries for rank selection, found none")
    return X


def _check_candidates(candidates, n, f):
    try:
        ks = sorted({int(k) for k in candidates})
    except (TypeError, ValueError):
        raise DNMFValueError(f"candidates: expected positive integers, found {candidates!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > min(n, f):
        raise DNMFValueError(f"candidates: expected ranks in 1..min(n_samples, n_features) = {min(n, f)}, found {ks}")
    return ks


def _layer_rows(layer, ks, res, basis=None):
    """One table row per candidate; ``basis`` (n_features, k_{l−1}) maps a layer's A to feature space."""
    rows = []
    for k in ks:
        fits = res[k]
        errs = np.array([e for *_, e in fits])
        sil, sil_min = component_silhouette([A if basis is None else basis @ A for _, A, _ in fits])
        n = fits[0][0].shape[0]
        coph = float("nan")
        if n <= MAX_CONSENSUS_SAMPLES and len(fits) > 1:  # largest coefficient of unit-norm topics
            coph, _ = consensus_cophenetic([np.argmax(S * np.linalg.norm(A, axis=0), axis=1) for S, A, _ in fits])
        rows.append({"layer": layer, "k": k, "rel_error": float(errs.min()), "rel_error_mean": float(errs.mean()),
                     "silhouette": sil, "silhouette_min": sil_min, "cophenetic": coph, "selected": False})
    return rows


def _choose(rows, method, min_silhouette, prev_k, max_error=None):
    ks = [r["k"] for r in rows]
    if method == "stability":
        stable = [r["k"] for r in rows if r["silhouette_min"] >= min_silhouette
                  and (max_error is None or r["rel_error"] <= max_error)]
        return max(stable) if stable else ks[int(np.argmax([r["silhouette_min"] for r in rows]))]
    errs = [r["rel_error"] for r in rows]
    if prev_k is not None:
        ks, errs = ks + [prev_k], errs + [0.0]
    i = elbow_index(ks, errs)
    return ks[min(i, len(rows) - 1)]


#: default restarts per candidate: the stability scores need more restarts than the best error does
DEFAULT_RESTARTS = {"elbow": 8, "stability": 12}


def select_ranks(X, candidates=range(2, 11), *, method="elbow", n_layers=1, n_restarts=None, random_state=None,
                 max_iter=300, tol=1e-6, solver="hals", beta_loss="frobenius", perturbation=0.0,
                 min_silhouette=0.2, max_error=None, max_samples=None, scheduler=None) -> RankSelection:
    """Choose the rank of one layer, or of every layer of a hierarchy.

    Parameters
    ----------
    X : array (n_samples, n_features), scipy.sparse, dask array or opened corpus; nonnegative.
    candidates : iterable of int
        Ranks to try (for layers above the first, those below the previous layer's rank).
    method : {'elbow', 'stability'}
        See the module docstring.
    n_layers : int, default 1
        Number of layers to select (stops early when no candidate is below the last rank).
    n_restarts : int, optional
        Seeded restarts per candidate (run in parallel as dask tasks); default 8 for the elbow, 12
        for stability (with 8 the silhouette estimates were too noisy on the toy hierarchy:
        BENCHMARKS.md).
    random_state : int, RandomState or None
    max_iter, tol : iterations of each restart and its relative-decrease stop.
    solver : {'hals', 'mu', 'anls'}; beta_loss : {'frobenius', 'kullback-leibler'} (KL needs 'mu').
    perturbation : float in [0, 1)
        NMFk-style: each restart fits X with its entries multiplied by uniform(1 ± perturbation).
    min_silhouette : float, default 0.2
        Stability threshold of ``method="stability"`` on the worst component cluster's mean
        silhouette (in [-1, 1]; NMFk's criterion). The default was chosen on seeds 0..5 of the
        Neural NMF toy hierarchy and checked on a planted-rank BBC subset; components that are
        not reproduced score below 0 there. On held-out toy seeds the first layer stays right but
        the upper layers are not reliable (BENCHMARKS.md, "Rank selection"): prefer the elbow.
    max_error : float, optional
        ``method="stability"`` also requires the best relative error to be at most this.
    max_samples : int, optional
        Use a random subset of this many rows.
    scheduler : see :mod:`dnmf_dask.parallel.scheduler`.

    Returns
    -------
    RankSelection
    """
    check_choice(method, "method", METHODS)
    n_layers = check_positive_int(n_layers, "n_layers")
    n_restarts = check_positive_int(DEFAULT_RESTARTS[method] if n_restarts is None else n_restarts, "n_restarts",
                                    minimum=2)
    check_positive_int(max_iter, "max_iter")
    check_nonneg_float(tol, "tol")
    check_choice(solver, "solver", SOLVERS)
    loss = canonical_loss(beta_loss)
    check_choice(loss, "beta_loss", ("frobenius", "kullback-leibler"))
    if loss != "frobenius" and solver != "mu":
        raise DNMFValueError(f"solver: expected 'mu' for beta_loss={beta_loss!r}, found {solver!r}")
    if check_nonneg_float(perturbation, "perturbation") >= 1:
        raise DNMFValueError(f"perturbation: expected a number in [0, 1), found {perturbation!r}")
    if not isinstance(min_silhouette, (int, float, np.integer, np.floating)) or isinstance(min_silhouette, bool) \
            or not -1.0 <= float(min_silhouette) <= 1.0:
        raise DNMFValueError(f"min_silhouette: expected a number in [-1, 1], found {min_silhouette!r}")
    if max_error is not None:
        check_nonneg_float(max_error, "max_error")
    check_positive_int(max_samples, "max_samples", allow_none=True)
    seed = seed_from(random_state)
    t0 = time.perf_counter()
    with scheduler_context(scheduler):
        data = _in_memory(X, max_samples, seed)
        ks = _check_candidates(candidates, *data.shape)
        ranks, table, prev, basis = [], [], None, None
        for layer in range(n_layers):
            ks_l = [k for k in ks if prev is None or k < prev]
            if not ks_l:
                break
            res = run_restarts(data, ks_l, n_restarts, seed + 7919 * layer, max_iter=max_iter, tol=tol,
                               solver=solver, loss=loss, perturbation=perturbation)
            rows = _layer_rows(layer, ks_l, res, basis)
            k = _choose(rows, method, min_silhouette, prev, max_error)
            for r in rows:
                r["selected"] = r["k"] == k
            table += rows
            ranks.append(k)
            S, A, _ = min(res[k], key=lambda r: r[2])
            nrm = np.linalg.norm(A, axis=0)
            data, prev = S * nrm, k
            unit = A / np.where(nrm > 0, nrm, 1.0)
            basis = unit if basis is None else basis @ unit  # the chosen topics of this layer, in feature space
    params = dict(candidates=ks, n_layers=n_layers, n_restarts=n_restarts, random_state=seed, max_iter=max_iter,
                  tol=tol, solver=solver, beta_loss=loss, perturbation=perturbation, min_silhouette=min_silhouette,
                  max_error=max_error, max_samples=max_samples)
    return RankSelection(ranks, table, method, time.perf_counter() - t0, params)
