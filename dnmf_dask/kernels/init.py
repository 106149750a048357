"""Initial factors: chunking-independent random S rows and the NNDSVD sign rule.

Random initialisation follows scikit-learn's ``init="random"`` in distribution
(|N(0,1)| · sqrt(mean(X) / k)), but S rows are drawn in fixed pages of :data:`PAGE` rows, each
page from its own seeded stream, so the values of a row depend only on the seed and the row's
index — never on how the rows are split into blocks.
"""

from __future__ import annotations

import numpy as np

PAGE = 4096
NNDSVD_EPS = 1e-6


def random_rows(seed: int, start: int, stop: int, k: int, scale: float, dtype, stream: int = 1) -> np.ndarray:
    """Rows ``start:stop`` of a virtual (∞, k) matrix of scale·|N(0,1)| values."""
    if stop <= start:
        return np.zeros((0, k), dtype=dtype)
    p0, p1 = start // PAGE, (stop - 1) // PAGE
    pages = [np.abs(np.random.default_rng([seed, stream, p]).standard_normal((PAGE, k))) for p in range(p0, p1 + 1)]
    full = np.concatenate(pages)[start - p0 * PAGE : stop - p0 * PAGE]
    return (scale * full).astype(dtype)


def random_matrix(seed: int, shape, scale: float, dtype, stream: int) -> np.ndarray:
    """A small factor (A, B) drawn from its own stream of ``seed``."""
    return (scale * np.abs(np.random.default_rng([seed, stream]).standard_normal(shape))).astype(dtype)


def nndsvd_choice(s, V, u_pos_norm, u_neg_norm):
    """The NNDSVD rule (Boutsidis & Gallopoulos 2008) for every singular pair at once.

    Parameters
    ----------
    s : (k,) singular values; V : (n_features, k) right singular vectors;
    u_pos_norm, u_neg_norm : (k,) norms of the positive / negative parts of the left vectors.

    Returns
    -------
    use_pos : bool (k,) — take the positive parts of the pair (else the negative parts);
    u_scale : (k,) factor applying to the chosen part of each left vector;
    A : (n_features, k) the initial A (= Hᵀ of scikit-learn) before zero-thresholding.
    """
    k = len(s)
    Vp, Vn = np.maximum(V, 0), np.abs(np.minimum(V, 0))
    vpn, vnn = np.linalg.norm(Vp, axis=0), np.linalg.norm(Vn, axis=0)
    m_p, m_n = u_pos_norm * vpn, u_neg_norm * vnn
    use_pos = m_p > m_n
    use_pos[0] = True
    A = np.zeros_like(V)
    u_scale = np.zeros(k)
    for j in range(k):
        if j == 0:
            A[:, 0] = np.sqrt(s[0]) * np.abs(V[:, 0])
            u_scale[0] = np.sqrt(s[0])
            continue
        if use_pos[j]:
            v, un, vn, sigma = Vp[:, j], u_pos_norm[j], vpn[j], m_p[j]
        else:
            v, un, vn, sigma = Vn[:, j], u_neg_norm[j], vnn[j], m_n[j]
        lbd = np.sqrt(s[j] * sigma)
        A[:, j] = lbd * v / vn if vn > 0 else 0.0
        u_scale[j] = lbd / un if un > 0 else 0.0
    return use_pos, u_scale, A


def nndsvd_rows(U, use_pos, u_scale, fill=None):
    """The S rows of a block from its left singular vectors ``U`` (n, k) (see nndsvd_choice)."""
    W = np.where(use_pos[None, :], np.maximum(U, 0), np.abs(np.minimum(U, 0)))
    W[:, 0] = np.abs(U[:, 0])
    W = W * u_scale[None, :]
    W[W < NNDSVD_EPS] = 0
    if fill is not None:
        W[W == 0] = fill
    return W
