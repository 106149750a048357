"""Classification and clustering scores, B-matrix density, and the layer angle/distance study.

Conventions: rows are samples; ``y`` holds class codes with ``-1`` = unlabeled/unknown;
``S[l]`` is ``(n_samples, k_l)`` and ``B`` is ``(n_classes, k_L)``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .._validation import check_int_vector
from ..errors import DNMFTypeError, DNMFValueError

__all__ = [
    "purity",
    "accuracy_unlabeled",
    "confusion",
    "BDensity",
    "b_density",
    "LayerAngles",
    "layer_angles",
    "drift_angles",
    "layer_reconstructions",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _dense_2d(M, name) -> np.ndarray:
    if sp.issparse(M):
        M = M.toarray()
    elif hasattr(M, "compute") and not isinstance(M, np.ndarray):
        M = M.compute()
    arr = np.asarray(M)
    if arr.dtype.kind not in "iuf" or arr.dtype.kind == "b":
        raise DNMFTypeError(f"{name}: expected a numeric array, found dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DNMFValueError(f"{name}: expected a 2-D array, found shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _assignments(clusters, n, name) -> np.ndarray:
    """1-D integer assignment, or argmax over the rows of a 2-D (n, k) weight matrix."""
    if sp.issparse(clusters) or np.ndim(clusters) == 2:
        S = _dense_2d(clusters, name)
        if S.shape[0] != n:
            raise DNMFValueError(f"{name}: expected {n} rows (one per sample), found shape {S.shape}")
        return np.argmax(S, axis=1).astype(np.int64)
    return check_int_vector(clusters, name, n)


# --------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------
def purity(y_true, clusters) -> float:
    """Cluster purity: ``(1/n) sum_clusters max_class |cluster ∩ class|``.

    ``clusters`` is an integer assignment (n,) or a weight matrix (n, k) such as ``S[L]``,
    whose row argmax is the cluster. Samples with ``y_true == -1`` are left out.
    """
    from sklearn.metrics.cluster import contingency_matrix

    y_true = check_int_vector(y_true, "y_true")
    c = _assignments(clusters, y_true.size, "clusters")
    keep = y_true >= 0
    if not keep.any():
        raise DNMFValueError("y_true: expected at least one known class (>= 0), found only -1")
    M = contingency_matrix(y_true[keep], c[keep], sparse=True)  # classes x clusters
    return float(np.asarray(M.max(axis=0).todense()).sum() / keep.sum())


def accuracy_unlabeled(y_true, y_pred, y_masked) -> float:
    """Accuracy on the samples whose label was hidden (``y_masked == -1``) and is known in ``y_true``.

    ``y_pred`` is an integer prediction (n,) or a score matrix (n, n_classes) (row argmax).
    """
    y_true = check_int_vector(y_true, "y_true")
    n = y_true.size
    y_pred = _assignments(y_pred, n, "y_pred")
    y_masked = check_int_vector(y_masked, "y_masked", n)
    known = y_masked >= 0
    if np.any(y_masked[known] != y_true[known]):
        raise DNMFValueError("y_masked: expected y_true with some entries set to -1, found known labels that differ from y_true")
    hidden = (~known) & (y_true >= 0)
    if not hidden.any():
        raise DNMFValueError("y_masked: expected at least one hidden label (-1 where y_true is known), found none")
    return float(np.mean(y_pred[hidden] == y_true[hidden]))


def confusion(y_true, y_pred, *, n_classes: int | None = None, mask=None) -> np.ndarray:
    """Confusion matrix (rows = true class, columns = predicted), ``sklearn.metrics.confusion_matrix``.

    Classes are ``0 .. n_classes-1`` (default: max code + 1 over both vectors). Samples with
    ``y_true == -1`` are left out; ``mask`` (bool, n) restricts further (e.g. ``y_masked == -1``).
    """
    from sklearn.metrics import confusion_matrix

    y_true = check_int_vector(y_true, "y_true")
    y_pred = _assignments(y_pred, y_true.size, "y_pred")
    keep = y_true >= 0
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool or m.shape != y_true.shape:
            raise DNMFValueError(f"mask: expected a boolean array of shape {y_true.shape}, found {m.dtype} {m.shape}")
        keep &= m
    if n_classes is None:
        n_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    return confusion_matrix(y_true[keep], y_pred[keep], labels=np.arange(n_classes))


# --------------------------------------------------------------------------------------------
# B density (Figs 9 and 13 of the deep NMF paper)
# --------------------------------------------------------------------------------------------
@dataclass
class BDensity:
    """Which topics each class row of ``B`` uses.

    ``active[c, j]`` is ``B[c, j] > rtol * max_j B[c, j]`` (and ``> 0``). ``n_active[c]`` counts
    them, ``fraction_active[c] = n_active[c] / k``; ``density`` is the fraction of active entries
    of the whole matrix; ``n_topics_used`` the number of topics active in at least one class.
    ``mass_topics[c]`` is the smallest number of topics holding ``mass`` of the row's total weight
    (a threshold-free companion measure).
    """

    active: np.ndarray
    n_active: np.ndarray
    fraction_active: np.ndarray
    density: float
    n_topics_used: int
    mass_topics: np.ndarray
    rtol: float
    mass: float
    label_names: list = field(default_factory=list)

    def table(self) -> str:
        lines = [f"B density (active: > {self.rtol:g} x row max; mass: {self.mass:g})", "class  n_active  fraction  n_for_mass"]
        for c in range(self.n_active.size):
            name = self.label_names[c] if c < len(self.label_names) else str(c)
            lines.append(f"{name:>5}  {self.n_active[c]:8d}  {self.fraction_active[c]:8.3f}  {self.mass_topics[c]:10d}")
        lines.append(f"overall density {self.density:.3f}; topics used by some class: {self.n_topics_used}/{self.active.shape[1]}")
        return "\n".join(lines)


def b_density(B, *, rtol: float = 0.1, mass: float = 0.9, label_names=None) -> BDensity:
    """Density of ``B`` (n_classes, k_L) per class: how many topics each class needs.

    The paper (§4.2, Figs 9/13) reads "the density of the B matrix" as "the number of basis
    elements necessary for classification" and plots the *active topics* per class row. A
    topic is taken as active for class ``c`` when ``B[c, j] > rtol * max_j B[c, j]`` (default 10% of
    the row's largest weight; relative, because B's scale trades off against S's). An all-zero
    row has no active topic.
    """
    B = _dense_2d(B, "B")
    if np.any(B < 0) or not np.all(np.isfinite(B)):
        raise DNMFValueError("B: expected finite nonnegative values, found negative or non-finite entries")
    for name, v in (("rtol", rtol), ("mass", mass)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= float(v) <= 1.0:
            raise DNMFValueError(f"{name}: expected a float in [0, 1], found {v!r}")
    rowmax = B.max(axis=1, keepdims=True)
    active = (B > rtol * rowmax) & (B > 0)
    n_active = active.sum(axis=1)
    srt = -np.sort(-B, axis=1)
    tot = srt.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.where(tot > 0, np.cumsum(srt, axis=1) / tot, 1.0)
    # smallest m with cum[m-1] >= mass (tolerance for float round-off); 0 for an all-zero row
    mass_topics = np.where(tot[:, 0] > 0, np.argmax(cum >= mass - 1e-12, axis=1) + 1, 0)
    return BDensity(
        active=active,
        n_active=n_active,
        fraction_active=n_active / B.shape[1],
        density=float(active.mean()),
        n_topics_used=int(active.any(axis=0).sum()),
        mass_topics=mass_topics.astype(np.int64),
        rtol=float(rtol),
        mass=float(mass),
        label_names=[] if label_names is None else [str(s) for s in label_names],
    )


# --------------------------------------------------------------------------------------------
# layer angles and distances (§4.5 of the deep NMF paper)
# --------------------------------------------------------------------------------------------
def layer_reconstructions(A_list, S_list, rows=None) -> list[np.ndarray]:
    """``[S[l][rows] @ (A[0] @ ... @ A[l]).T for l]``: every layer's reconstruction of X, in word space.

    All reconstructions share X's feature space, so a sample can be compared with itself
    across layers (:func:`drift_angles`). ``rows`` (indices) limits the samples, as the result
    is dense (n_rows, n_features).
    """
    if len(A_list) != len(S_list) or len(A_list) == 0:
        raise DNMFValueError(f"A_list, S_list: expected the same nonzero number of layers, found {len(A_list)} and {len(S_list)}")
    out = []
    eff = None
    for l, (A, S) in enumerate(zip(A_list, S_list)):
        A = _dense_2d(A, f"A[{l}]")
        eff = A if eff is None else eff @ A
        S = _dense_2d(S if rows is None else (S[rows] if not sp.issparse(S) else S.tocsr()[rows]), f"S[{l}]")
        if S.shape[1] != eff.shape[1]:
            raise DNMFValueError(f"S[{l}]: expected {eff.shape[1]} columns (k_{l}), found {S.shape[1]}")
        out.append(S @ eff.T)
    return out


def _row_norms(R) -> np.ndarray:
    if sp.issparse(R):
        return np.sqrt(np.asarray(R.multiply(R).sum(axis=1)).ravel())
    return np.linalg.norm(R, axis=1)


def _rows(R, idx):
    return R[idx] if not sp.issparse(R) else R[idx]


def _pair_geometry(Ra, Rb, i, j, na, nb, batch_elems: int = 2_000_000):
    """For rows ``Ra[i]`` and ``Rb[j]``: angle (degrees), unit-vector distance, raw distance.

    The angle is ``2 atan2(|u - v|, |u + v|)`` of the unit vectors ``u, v``, accurate for small
    and large angles alike (``acos`` of a cosine loses half the digits near 0°). NaN when a
    vector is zero. Works on numpy arrays and CSR matrices, in batches of pairs.
    """
    m = i.size
    ang = np.empty(m)
    unit = np.empty(m)
    raw = np.empty(m)
    d = max(Ra.shape[1], 1)
    step = max(1, batch_elems // d) if not (sp.issparse(Ra) and sp.issparse(Rb)) else max(1, 4 * batch_elems // d + 1024)
    for s in range(0, m, step):
        ii, jj = i[s : s + step], j[s : s + step]
        ni, nj = na[ii], nb[jj]
        with np.errstate(invalid="ignore", divide="ignore"):
            si = np.where(ni > 0, 1.0 / ni, 0.0)
            sj = np.where(nj > 0, 1.0 / nj, 0.0)
        X, Y = _rows(Ra, ii), _rows(Rb, jj)
        if sp.issparse(X) or sp.issparse(Y):
            X, Y = sp.csr_matrix(X), sp.csr_matrix(Y)
            U, V = sp.diags(si) @ X, sp.diags(sj) @ Y
            diff, summ, rawd = U - V, U + V, X - Y
            dn, sn, rn = _row_norms(diff), _row_norms(summ), _row_norms(rawd)
        else:
            U, V = X * si[:, None], Y * sj[:, None]
            dn = np.linalg.norm(U - V, axis=1)
            sn = np.linalg.norm(U + V, axis=1)
            rn = np.linalg.norm(X - Y, axis=1)
        ok = (ni > 0) & (nj > 0)
        ang[s : s + step] = np.where(ok, np.degrees(2.0 * np.arctan2(dn, sn)), np.nan)
        unit[s : s + step] = np.where(ok, dn, np.nan)
        raw[s : s + step] = rn
    return ang, unit, raw


def _pair_stats(R, i, j, norms, normalize):
    """Angle (degrees) and distance (per ``normalize``) between rows i and j of R."""
    ang, unit, raw = _pair_geometry(R, R, i, j, norms, norms)
    if normalize == "sample":
        return ang, unit
    scale = 1.0 if normalize is None else normalize
    return ang, raw / scale


@dataclass
class LayerAngles:
    """Result of :func:`layer_angles`.

    ``rows``: one dict per (class, relation, layer pair) with the statistics (see
    :func:`layer_angles`). ``angles[(c, relation)]`` / ``distances[(c, relation)]``: the raw
    (n_pairs, n_layers) angle (degrees) and distance of every sampled pair at every layer, for
    histograms (Fig. 15). ``pairs[(c, relation)]``: the (n_pairs, 2) sample indices.
    """

    rows: list
    angles: dict
    distances: dict
    pairs: dict
    layer_names: list
    normalize: str | None
    label_names: list = field(default_factory=list)

    def table(self) -> str:
        head = f"{'class':>12} {'relation':>8} {'layers':>9} {'pairs':>6} {'angle_in':>9} {'angle_out':>9} {'ang_ratio':>9} {'dist_ratio':>10}"
        out = [head]
        for r in self.rows:
            out.append(
                f"{r['class_name']:>12} {r['relation']:>8} {r['layer_in']:>4}->{r['layer_out']:<4} {r['n_pairs']:6d} "
                f"{r['angle_in_mean']:9.2f} {r['angle_out_mean']:9.2f} {r['angle_ratio_mean']:9.3f} {r['dist_ratio_mean']:10.3f}"
            )
        return "\n".join(out)


def _sample_pairs(idx_a, idx_b, same, max_pairs, rng):
    """Pairs (i in idx_a, j in idx_b), i != j; all of them when there are at most max_pairs."""
    na, nb = idx_a.size, idx_b.size
    if same:
        total = na * (na - 1) // 2
        if total == 0:
            return np.empty((0, 2), dtype=np.int64)
        if total <= max_pairs:
            iu, ju = np.triu_indices(na, k=1)
            return np.stack([idx_a[iu], idx_a[ju]], axis=1)
        p = rng.randint(0, na, size=max_pairs)
        q = rng.randint(0, na - 1, size=max_pairs)
        q = q + (q >= p)  # uniform over the other members
        return np.stack([idx_a[p], idx_a[q]], axis=1)
    total = na * nb
    if total == 0:
        return np.empty((0, 2), dtype=np.int64)
    if total <= max_pairs:
        ii, jj = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
        return np.stack([idx_a[ii.ravel()], idx_b[jj.ravel()]], axis=1)
    return np.stack([idx_a[rng.randint(0, na, size=max_pairs)], idx_b[rng.randint(0, nb, size=max_pairs)]], axis=1)


def _layer_pairs(spec, L):
    if spec == "consecutive":
        return [(l, l + 1) for l in range(L - 1)]
    if spec == "first_last":
        return [(0, L - 1)]
    if spec == "all":
        return [(a, b) for a in range(L) for b in range(a + 1, L)]
    try:
        out = [(int(a), int(b)) for a, b in spec]
    except Exception:
        raise DNMFValueError(
            f"layer_pairs: expected 'consecutive', 'first_last', 'all' or a list of (layer_in, layer_out), found {spec!r}"
        ) from None
    for a, b in out:
        if not (0 <= a < L and 0 <= b < L):
            raise DNMFValueError(f"layer_pairs: expected layer indices in [0, {L - 1}], found ({a}, {b})")
    return out


def layer_angles(
    reps,
    y,
    *,
    layer_pairs="consecutive",
    max_pairs: int = 5000,
    normalize: str | None = "sample",
    random_state=0,
    layer_names=None,
    label_names=None,
) -> LayerAngles:
    """How pairs of samples move apart or together through the layers, by class (§4.5).

    Reading of §4.5 (after Giryes et al. 2015, whom it follows). The section follows *points*
    through the layers: within a class they should stay close, across classes move apart. Its
    formula compares "a feature vector from class a" at layer l and l+1 via the polarization
    identity; since ``S[l]`` and ``S[l+1]`` live in different spaces (k_l vs k_{l+1} coordinates),
    the measurable quantity, and the one Giryes et al. and the paper's figures report, is the
    angle **between two samples** in the same layer, compared across layers:

    * for each class ``a`` we sample pairs of samples, **within** (both in ``a``) and
      **between** (one in ``a``, one in another class — Fig. 15 "comparing class 1 to the other
      classes");
    * at every layer ``l`` (``reps[l]``, e.g. ``[X, S[0], ..., S[L]]``) the pair's angle
      ``θ_l = acos(<r_i, r_j> / (|r_i| |r_j|))`` (degrees, at most 90° for nonnegative data) and
      distance ``d_l = |r_i - r_j|`` (after normalisation, below) are computed;
    * for each layer pair ``(l_in, l_out)`` we report the mean/std of the angles and distances
      at both layers and of the ratios ``θ_out/θ_in`` and ``d_out/d_in`` (pairs with a zero
      input value are left out of the ratios). Ratio ``< 1``: points move together;
      ``> 1``: apart. Desired (Figs 16/17): between-class distance ratio > 1, within-class <= 1.

    ``normalize``: ``"sample"`` (default) puts every vector on the unit sphere first (as the
    section assumes; distance = chord = 2 sin(θ/2)); ``"layer"`` divides a layer's distances by
    the root-mean-square norm of that layer's vectors (keeps norm differences between samples,
    removes NMF's arbitrary per-layer scale); ``None`` uses raw Euclidean distances.

    Parameters
    ----------
    reps : list of arrays (n_samples, d_l), numpy or scipy.sparse
        The representation at every layer, same samples in the same order.
    y : array-like of int (n_samples,)
        True classes (``-1`` samples are ignored).
    layer_pairs : "consecutive" | "first_last" | "all" | list of (int, int)
        Which layer comparisons to report (indices into ``reps``).
    max_pairs : int
        Per class and relation: all pairs are used when there are at most this many,
        otherwise ``max_pairs`` pairs are sampled uniformly with replacement (seeded).

    Returns
    -------
    LayerAngles
        ``rows`` has keys ``class``, ``class_name``, ``relation`` ('within'/'between'),
        ``layer_in``, ``layer_out``, ``n_pairs``, ``angle_in_mean/std``, ``angle_out_mean/std``,
        ``angle_ratio_mean/std``, ``dist_in_mean/std``, ``dist_out_mean/std``,
        ``dist_ratio_mean/std``.
    """
    from sklearn.utils import check_random_state

    if not isinstance(reps, (list, tuple)) or len(reps) < 2:
        raise DNMFValueError(f"reps: expected a list of at least 2 layer representations, found {type(reps).__name__}")
    y = check_int_vector(y, "y")
    n = y.size
    R = []
    for l, r in enumerate(reps):
        if sp.issparse(r):
            r = sp.csr_matrix(r, dtype=np.float64)
        else:
            r = _dense_2d(r, f"reps[{l}]")
        if r.shape[0] != n:
            raise DNMFValueError(f"reps[{l}]: expected {n} rows (one per sample of y), found {r.shape[0]}")
        R.append(r)
    if normalize not in ("sample", "layer", None):
        raise DNMFValueError(f"normalize: expected 'sample', 'layer' or None, found {normalize!r}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, numbers.Integral) or max_pairs < 1:
        raise DNMFValueError(f"max_pairs: expected an integer >= 1, found {max_pairs!r}")
    L = len(R)
    lp = _layer_pairs(layer_pairs, L)
    rng = check_random_state(random_state)
    names = [f"layer{l}" for l in range(L)] if layer_names is None else [str(s) for s in layer_names]
    lnames = [] if label_names is None else [str(s) for s in label_names]
    norms = [_row_norms(r) for r in R]
    scales = []
    for nr in norms:
        if normalize == "layer":
            rms = float(np.sqrt(np.mean(nr**2)))
            scales.append(rms if rms > 0 else 1.0)
        else:
            scales.append(normalize)

    classes = np.unique(y[y >= 0])
    angles, dists, pairs, rows = {}, {}, {}, []
    for c in classes:
        idx_c = np.flatnonzero(y == c)
        idx_o = np.flatnonzero((y >= 0) & (y != c))
        for relation, same, other in (("within", True, idx_c), ("between", False, idx_o)):
            P = _sample_pairs(idx_c, other, same, int(max_pairs), rng)
            if P.shape[0] == 0:
                continue
            ang = np.empty((P.shape[0], L))
            dis = np.empty((P.shape[0], L))
            for l in range(L):
                ang[:, l], dis[:, l] = _pair_stats(R[l], P[:, 0], P[:, 1], norms[l], scales[l])
            key = (int(c), relation)
            angles[key], dists[key], pairs[key] = ang, dis, P
            for a, b in lp:
                with np.errstate(invalid="ignore", divide="ignore"):
                    ar = np.where(ang[:, a] > 0, ang[:, b] / ang[:, a], np.nan)
                    dr = np.where(dis[:, a] > 0, dis[:, b] / dis[:, a], np.nan)
                row = {
                    "class": int(c),
                    "class_name": lnames[c] if c < len(lnames) else str(int(c)),
                    "relation": relation,
                    "layer_in": names[a],
                    "layer_out": names[b],
                    "n_pairs": int(P.shape[0]),
                }
                for nm, v in (
                    ("angle_in", ang[:, a]),
                    ("angle_out", ang[:, b]),
                    ("angle_ratio", ar),
                    ("dist_in", dis[:, a]),
                    ("dist_out", dis[:, b]),
                    ("dist_ratio", dr),
                ):
                    ok = v[np.isfinite(v)]
                    row[f"{nm}_mean"] = float(ok.mean()) if ok.size else float("nan")
                    row[f"{nm}_std"] = float(ok.std()) if ok.size else float("nan")
                rows.append(row)
    return LayerAngles(rows=rows, angles=angles, distances=dists, pairs=pairs, layer_names=names, normalize=normalize, label_names=lnames)


def drift_angles(R_from, R_to, y=None) -> dict:
    """The literal §4.5 formula: angle between a sample's vector at one layer and at another.

    ``θ_i = acos(<r_i, r'_i> / (|r_i| |r'_i|))`` (the paper writes the inner product through the
    polarization identity ``<u, v> = (|u+v|^2 - |u-v|^2) / 4``). Only meaningful when both
    representations live in the same space — e.g. two layers' reconstructions of X from
    :func:`layer_reconstructions`. Returns ``{"angles": (n,) degrees, "per_class": {c: (mean, std)}}``
    (NaN angle for a zero vector; ``per_class`` only when ``y`` is given).
    """
    A = sp.csr_matrix(R_from, dtype=np.float64) if sp.issparse(R_from) else _dense_2d(R_from, "R_from")
    Bm = sp.csr_matrix(R_to, dtype=np.float64) if sp.issparse(R_to) else _dense_2d(R_to, "R_to")
    if A.shape != Bm.shape:
        raise DNMFValueError(f"R_to: expected the shape of R_from {A.shape} (same samples, same space), found {Bm.shape}")
    idx = np.arange(A.shape[0])
    ang, _, _ = _pair_geometry(A, Bm, idx, idx, _row_norms(A), _row_norms(Bm))
    out = {"angles": ang, "per_class": {}}
    if y is not None:
        y = check_int_vector(y, "y", idx.size)
        for c in np.unique(y[y >= 0]):
            v = ang[(y == c) & np.isfinite(ang)]
            out["per_class"][int(c)] = (float(v.mean()) if v.size else float("nan"), float(v.std()) if v.size else float("nan"))
    return out
