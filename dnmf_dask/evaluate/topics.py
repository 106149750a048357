"""Topics of every layer, the topic hierarchy, and the paper's topic consolidation.

Conventions: ``A[0]`` is (n_features, k0) — topic ``j`` of layer 0 is the column ``A[0][:, j]``
over the words; ``A[l]`` (l >= 1) is (k_{l-1}, k_l) — supertopic ``j`` of layer ``l`` is the
nonnegative combination ``A[l][:, j]`` of the layer-(l-1) topics. The *effective* topics of
layer ``l`` over the words are the columns of ``A[0] @ A[1] @ ... @ A[l]`` (n_features, k_l).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import DNMFTypeError, DNMFValueError
from .metrics import _dense_2d

__all__ = [
    "top_words",
    "effective_topics",
    "layer_topics",
    "LayerTopics",
    "hierarchy",
    "format_hierarchy",
    "topic_angles",
    "TopicConsolidation",
    "consolidated_topics",
]


def _dense_nonneg(A, name) -> np.ndarray:
    arr = _dense_2d(A, name)
    if not np.all(np.isfinite(arr)):
        raise DNMFValueError(f"{name}: expected finite values, found NaN or inf")
    if arr.size and arr.min() < 0:
        raise DNMFValueError(f"{name}: expected nonnegative values, found minimum {arr.min():g}")
    return arr


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise DNMFValueError(f"n: expected an integer >= 1, found {n!r}")
    return int(n)


def _check_A_list(A_list) -> list[np.ndarray]:
    if isinstance(A_list, np.ndarray) or sp.issparse(A_list) or not isinstance(A_list, (list, tuple)) or not A_list:
        raise DNMFTypeError(f"A_list: expected a non-empty list of factor matrices [A0, A1, ...], found {type(A_list).__name__}")
    As = [_dense_nonneg(A, f"A_list[{l}]") for l, A in enumerate(A_list)]
    for l in range(1, len(As)):
        if As[l].shape[0] != As[l - 1].shape[1]:
            raise DNMFValueError(
                f"A_list[{l}]: expected {As[l - 1].shape[1]} rows (k_{l - 1}, the columns of A_list[{l - 1}]), found shape {As[l].shape}"
            )
    return As


# --------------------------------------------------------------------------------------------
# top words
# --------------------------------------------------------------------------------------------
def top_words(A0, feature_names, n: int = 10, *, return_weights: bool = False):
    """The ``n`` largest-weight words of every column (topic) of ``A0`` (n_features, k).

    Words are sorted by decreasing weight (ties: lower column index first); only words with a
    positive weight are listed, so a topic with fewer than ``n`` nonzero words gets fewer.
    Returns a list (one per topic) of lists of words, or of ``(word, weight)`` pairs with
    ``return_weights``.
    """
    A0 = _dense_nonneg(A0, "A0")
    names = np.asarray(feature_names)
    if names.ndim != 1 or names.shape[0] != A0.shape[0]:
        raise DNMFValueError(f"feature_names: expected {A0.shape[0]} names (one per row of A0), found shape {names.shape}")
    n = _check_n(n)
    out = []
    for j in range(A0.shape[1]):
        col = A0[:, j]
        order = np.argsort(-col, kind="stable")[:n]
        order = order[col[order] > 0]
        if return_weights:
            out.append([(str(names[i]), float(col[i])) for i in order])
        else:
            out.append([str(names[i]) for i in order])
    return out


def effective_topics(A_list) -> list[np.ndarray]:
    """``[A0, A0 @ A1, A0 @ A1 @ A2, ...]``: every layer's topics over the words (n_features, k_l)."""
    As = _check_A_list(A_list)
    out = [As[0]]
    for A in As[1:]:
        out.append(out[-1] @ A)
    return out


@dataclass
class LayerTopics:
    """Topics of one layer: ``topics`` (n_features, k_l) effective word weights, ``words`` top words."""

    layer: int
    topics: np.ndarray
    words: list

    def __repr__(self) -> str:
        return f"LayerTopics(layer={self.layer}, k={self.topics.shape[1]})"


def layer_topics(A_list, feature_names, n: int = 10) -> list[LayerTopics]:
    """For every layer ``l``: the effective topics ``A[0] @ ... @ A[l]`` and their top ``n`` words."""
    return [LayerTopics(layer=l, topics=T, words=top_words(T, feature_names, n)) for l, T in enumerate(effective_topics(A_list))]


# --------------------------------------------------------------------------------------------
# hierarchy
# --------------------------------------------------------------------------------------------
def hierarchy(A_list, threshold: float = 0.1, *, weights: str = "column") -> list[list[dict]]:
    """Which layer-(l-1) topics form each layer-l supertopic.

    Returns ``h`` with ``h[l - 1][j] = {"layer": l, "topic": j, "children": [(i, w), ...]}``
    for ``l = 1 .. L``: the subtopics ``i`` of layer ``l-1`` whose normalised weight ``w`` in
    supertopic ``j`` is at least ``threshold``, by decreasing weight.

    ``weights="column"``: ``w = A[l][i, j] / sum_i A[l][i, j]`` (the column of ``A[l]``
    normalised to sum 1). ``weights="mass"``: each subtopic is first scaled by the total word
    weight of its effective topic, ``w ∝ A[l][i, j] * |(A[0]...A[l-1])[:, i]|_1`` — the share of the
    supertopic's word mass contributed by subtopic ``i`` (insensitive to how the factorization
    distributed scale between the layers). A zero column gives no children.
    """
    As = _check_A_list(A_list)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= float(threshold) <= 1.0:
        raise DNMFValueError(f"threshold: expected a float in [0, 1], found {threshold!r}")
    if weights not in ("column", "mass"):
        raise DNMFValueError(f"weights: expected 'column' or 'mass', found {weights!r}")
    eff = effective_topics(As)
    out = []
    for l in range(1, len(As)):
        W = As[l].copy()
        if weights == "mass":
            W *= eff[l - 1].sum(axis=0)[:, None]
        tot = W.sum(axis=0)
        level = []
        for j in range(W.shape[1]):
            if tot[j] > 0:
                w = W[:, j] / tot[j]
                order = np.argsort(-w, kind="stable")
                kids = [(int(i), float(w[i])) for i in order if w[i] >= threshold and w[i] > 0]
            else:
                kids = []
            level.append({"layer": l, "topic": j, "children": kids})
        out.append(level)
    return out


def format_hierarchy(h, topic_words=None, n_words: int = 5) -> str:
    """Text rendering of :func:`hierarchy`, top layer first.

    ``topic_words``: optional ``[words_of_layer0, words_of_layer1, ...]`` (e.g. ``[lt.words for lt
    in layer_topics(...)]``) to show the top ``n_words`` words next to every topic.
    """

    def label(layer, t):
        if topic_words is None or layer >= len(topic_words) or t >= len(topic_words[layer]):
            return f"L{layer}.{t}"
        return f"L{layer}.{t} [" + ", ".join(topic_words[layer][t][:n_words]) + "]"

    lines = []
    for level in reversed(h):
        for node in level:
            l, j = node["layer"], node["topic"]
            lines.append(label(l, j))
            for i, w in node["children"]:
                lines.append(f"    {w:5.2f}  {label(l - 1, i)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# topic consolidation (§4.2 / §4.4 of the deep NMF paper)
# --------------------------------------------------------------------------------------------
def topic_angles(A) -> np.ndarray:
    """(k, k) pairwise angles in degrees between the columns of ``A``; NaN where a column is zero.

    Computed as ``2 atan2(|u - v|, |u + v|)`` of the unit columns (accurate near 0°).
    """
    A = _dense_nonneg(A, "A")
    norms = np.linalg.norm(A, axis=0)
    U = np.divide(A, norms, out=np.zeros_like(A), where=norms > 0)
    G = U.T @ U
    d2 = np.maximum(2.0 - 2.0 * G, 0.0)
    s2 = np.maximum(2.0 + 2.0 * G, 0.0)
    # refine small distances exactly (where the Gram form loses precision)
    small = d2 < 1e-4
    if np.any(small):
        ii, jj = np.nonzero(small)
        d2[ii, jj] = np.sum((U[:, ii] - U[:, jj]) ** 2, axis=0)
    ang = np.degrees(2.0 * np.arctan2(np.sqrt(d2), np.sqrt(s2)))
    zero = norms == 0
    ang[zero, :] = np.nan
    ang[:, zero] = np.nan
    np.fill_diagonal(ang, np.where(zero, np.nan, 0.0))
    return ang


@dataclass
class TopicConsolidation:
    """Result of :func:`consolidated_topics`.

    ``groups``: list of arrays of column indices (each group sorted, groups ordered by their
    smallest index); ``labels[j]``: group of column ``j`` (-1 for an all-zero column);
    ``n_distinct``: number of groups (distinct topics); ``n_zero``: all-zero (dead) columns;
    ``angles``: the (k, k) pairwise angles in degrees; ``supports``: (n_features, k) bool.
    """

    groups: list
    labels: np.ndarray
    n_distinct: int
    n_zero: int
    angles: np.ndarray
    supports: np.ndarray
    angle_deg: float
    support_rtol: float
    linkage: str

    def __repr__(self) -> str:
        merged = [g.tolist() for g in self.groups if g.size > 1]
        return f"TopicConsolidation(k={self.labels.size}, n_distinct={self.n_distinct}, n_zero={self.n_zero}, merged={merged})"


def consolidated_topics(
    A, angle_deg: float = 5.0, *, support_rtol: float = 1e-3, linkage: str = "single"
) -> TopicConsolidation:
    """The paper's topic consolidation: topics with the same support and within ``angle_deg``.

    §4.2: "Topic consolidation was defined as two topics having the same nonzero word list and a
    distribution over words within 5° of each other." Columns ``i`` and ``j`` of ``A``
    (n_features, k) — e.g. effective topics of a layer — are *linked* when

    * their supports are equal: word ``w`` is in the support of column ``j`` when
      ``A[w, j] > support_rtol * max_w A[w, j]`` (multiplicative updates leave tiny positive
      values instead of exact zeros, hence the relative tolerance; ``support_rtol=0`` means
      strictly positive entries), and
    * the angle between the columns is ``<= angle_deg`` degrees.

    ``linkage="single"`` groups the connected components of the links (a topic joins a group if
    it is linked to any member); ``"complete"`` cuts a complete-linkage dendrogram at
    ``angle_deg`` within each support class, so every pair in a group is within ``angle_deg``.
    All-zero columns are "dead": they are in no group and not counted.
    """
    A = _dense_nonneg(A, "A")
    if isinstance(angle_deg, bool) or not isinstance(angle_deg, numbers.Real) or not 0.0 <= float(angle_deg) <= 180.0:
        raise DNMFValueError(f"angle_deg: expected an angle in degrees in [0, 180], found {angle_deg!r}")
    if isinstance(support_rtol, bool) or not isinstance(support_rtol, numbers.Real) or not 0.0 <= float(support_rtol) < 1.0:
        raise DNMFValueError(f"support_rtol: expected a float in [0, 1), found {support_rtol!r}")
    if linkage not in ("single", "complete"):
        raise DNMFValueError(f"linkage: expected 'single' or 'complete', found {linkage!r}")
    k = A.shape[1]
    colmax = A.max(axis=0) if A.shape[0] else np.zeros(k)
    supports = (A > support_rtol * colmax) & (A > 0)
    zero = colmax <= 0
    ang = topic_angles(A)
    labels = np.full(k, -1, dtype=np.int64)
    live = np.flatnonzero(~zero)
    # support classes: columns with identical support vectors
    if live.size:
        _, sup_cls = np.unique(supports[:, live].T, axis=0, return_inverse=True)
        sup_cls = np.asarray(sup_cls).ravel()
    else:
        sup_cls = np.empty(0, dtype=np.int64)
    comp = np.full(k, -1, dtype=np.int64)
    next_id = 0
    for s in np.unique(sup_cls):
        members = live[sup_cls == s]
        if members.size == 1:
            comp[members] = next_id
            next_id += 1
            continue
        sub = ang[np.ix_(members, members)]
        if linkage == "single":
            from scipy.sparse.csgraph import connected_components

            adj = sp.csr_matrix(sub <= angle_deg)
            nc, lab = connected_components(adj, directed=False)
        else:
            from scipy.cluster.hierarchy import fcluster, linkage as _linkage
            from scipy.spatial.distance import squareform

            D = sub.copy()
            np.fill_diagonal(D, 0.0)
            D = np.maximum(D, D.T)
            Z = _linkage(squareform(D, checks=False), method="complete")
            lab = fcluster(Z, t=angle_deg, criterion="distance") - 1
            nc = int(lab.max()) + 1
        comp[members] = lab + next_id
        next_id += nc
    # relabel groups in order of their smallest column index
    groups = []
    seen = {}
    for j in range(k):
        if comp[j] < 0:
            continue
        if comp[j] not in seen:
            seen[comp[j]] = len(groups)
            groups.append([])
        groups[seen[comp[j]]].append(j)
        labels[j] = seen[comp[j]]
    return TopicConsolidation(
        groups=[np.asarray(g, dtype=np.int64) for g in groups],
        labels=labels,
        n_distinct=len(groups),
        n_zero=int(zero.sum()),
        angles=ang,
        supports=supports,
        angle_deg=float(angle_deg),
        support_rtol=float(support_rtol),
        linkage=linkage,
    )
