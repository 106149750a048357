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
