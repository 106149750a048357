"""Independent plain-numpy transcriptions of the papers' update rules, in the papers' orientation
(columns = samples, X ≈ A S). Used only by the tests; written from the formulas, not from the
package code."""

import numpy as np

EPS = np.finfo(np.float32).eps


def _div(num, den):
    den = den.copy()
    den[den == 0] = EPS
    return num / den


def ssnmf_mu(X, A, S, B=None, Y=None, L=None, W=None, lam=0.0, n_iter=50):
    """Lee–Yoo–Choi SSNMF multiplicative updates; order per iteration: S, then A, then B.

    X (N, M), A (N, k), S (k, M), B (P, k), Y (P, M), L (P, M) label mask, W (N, M) data mask.
    Returns A, S, B and the objective after each iteration.
    """
    X = np.array(X, dtype=float)
    W = np.ones_like(X) if W is None else np.asarray(W, dtype=float)
    X = np.where(W > 0, X, 0.0)
    A, S = A.copy(), S.copy()
    B = None if B is None else B.copy()
    objs = []
    for _ in range(n_iter):
        num = A.T @ (W * X)
        den = A.T @ (W * (A @ S))
        if B is not None and lam > 0:
            num = num + lam * B.T @ (L * Y)
            den = den + lam * B.T @ (L * (B @ S))
        S = S * _div(num, den)
        A = A * _div((W * X) @ S.T, (W * (A @ S)) @ S.T)
        if B is not None:
            B = B * _div((L * Y) @ S.T, (L * (B @ S)) @ S.T)
        obj = np.sum((W * (X - A @ S)) ** 2)
        if B is not None:
            obj += lam * np.sum((L * (Y - B @ S)) ** 2)
        objs.append(obj)
    return A, S, B, np.array(objs)


def kl_mu(X, A, S, n_iter=50):
    """Lee–Seung multiplicative updates for the generalized KL divergence D(X || A S).

    Per iteration: S ← S ⊙ Aᵀ(X ⊘ AS) / Aᵀ1, then A ← A ⊙ (X ⊘ AS) Sᵀ / 1Sᵀ, with AS clipped below
    at EPS where it divides, a zero column sum of S replaced by 1, and entries of A below the
    float64 epsilon set to 0 (scikit-learn's safeguards). Returns A, S and D after each iteration.
    """
    X = np.array(X, dtype=float)
    A, S = A.copy(), S.copy()
    ones = np.ones_like(X)
    objs = []
    for _ in range(n_iter):
        S = S * _div(A.T @ (X / np.maximum(A @ S, EPS)), A.T @ ones)
        ssum = S.sum(axis=1)
        ssum[ssum == 0] = 1.0
        A = A * _div((X / np.maximum(A @ S, EPS)) @ S.T, np.tile(ssum, (X.shape[0], 1)))
        A[A < np.finfo(np.float64).eps] = 0
        Xh = A @ S
        pos = X > 0
        objs.append(np.sum(X[pos] * np.log(X[pos] / Xh[pos])) - X.sum() + Xh.sum())
    return A, S, np.array(objs)


def hals(X, A, S, n_iter=50):
    """HALS (Cichocki & Phan 2009) for ||X − A S||²: rows of S one at a time, then columns of A,
    each set to its exact nonnegative minimiser with the others fixed. Returns A, S, objectives."""
    A, S = A.copy(), S.copy()
    k = A.shape[1]
    objs = []
    for _ in range(n_iter):
        AtA, AtX = A.T @ A, A.T @ X
        for t in range(k):
            if AtA[t, t] > 0:
                S[t] = np.maximum(S[t] + (AtX[t] - AtA[t] @ S) / AtA[t, t], 0)
        SSt, XSt = S @ S.T, X @ S.T
        for t in range(k):
            if SSt[t, t] > 0:
                A[:, t] = np.maximum(A[:, t] + (XSt[:, t] - A @ SSt[:, t]) / SSt[t, t], 0)
        objs.append(np.sum((X - A @ S) ** 2))
    return A, S, np.array(objs)


def anls(X, A, S, n_iter=10):
    """Alternating nonnegative least squares with scipy.optimize.nnls column by column."""
    from scipy.optimize import nnls

    A, S = A.copy(), S.copy()
    objs = []
    for _ in range(n_iter):
        S = np.column_stack([nnls(A, X[:, j])[0] for j in range(X.shape[1])])
        A = np.vstack([nnls(S.T, X[i])[0] for i in range(X.shape[0])])
        objs.append(np.sum((X - A @ S) ** 2))
    return A, S, np.array(objs)


def ssnmf_ce_mu(X, A, S, B, Y, L, lam, n_iter=20):
    """SSNMF with Frobenius data term and cross-entropy label term −Σ_labeled Y log softmax(B S)
    (softmax over classes, per sample column), by split-gradient multiplicative updates: the
    gradient (P − Y) of the cross-entropy contributes λ Bᵀ Y to the numerator and λ Bᵀ P to the
    denominator. Order per iteration: S, then A, then B. L (M,) bool marks labeled columns."""
    A, S, B = A.copy(), S.copy(), B.copy()
    Y = Y * L

    def probs(S):
        Z = B @ S
        E = np.exp(Z - Z.max(axis=0))
        return E / E.sum(axis=0) * L

    for _ in range(n_iter):
        S = S * _div(2 * A.T @ X + lam * B.T @ Y, 2 * A.T @ A @ S + lam * B.T @ probs(S))
        A = A * _div(X @ S.T, A @ S @ S.T)
        B = B * _div(Y @ S.T, probs(S) @ S.T)
    return A, S, B


def runs(groups):
    """(start, stop) of every run of equal group ids, by a plain loop."""
    out, start = [], 0
    for i in range(1, len(groups) + 1):
        if i == len(groups) or groups[i] != groups[i - 1]:
            out.append((start, i))
            start = i
    return out
