"""Exact batched nonnegative least squares (the ``q`` of Neural NMF) for one in-memory block.

Orientation (DESIGN.md §1): rows are samples.  For a block ``X`` of shape ``(n, n_features)``
and a factor ``A`` of shape ``(n_features, k)`` we solve, independently for every row ``i``::

    S[i] = argmin_{s >= 0} || X[i] - A s ||^2
         = argmin_{s >= 0} 0.5 s^T G s - C[i] s,     G = A^T A (k, k),  C = X A (n, k).

Once ``C = X @ A`` is formed the work is in k-dimensional space: its cost does not grow with
``n_features`` (DESIGN.md §4), and ``X`` may be a scipy.sparse CSR block (never densified).

Algorithm: block principal pivoting (BPP) of Kim & Park (2011), "Fast nonnegative matrix
factorization: an active-set-like method and comparisons", SIAM J. Sci. Comput. 33(6), in its
many-right-hand-sides form: every row carries its own passive set ``F`` (the coordinates allowed
to be positive), all rows are iterated together, and in each iteration the unconstrained
systems ``G_FF x_F = c_F`` are solved for all rows whose KKT conditions are still violated.
Those solves are vectorised, never a Python loop over samples:

* rows that share the same passive set are grouped (the passive set is hashed to an integer
  code); a set shared by many rows is solved once, with all its rows as right-hand sides;
* the remaining rows (passive sets shared by few rows) are grouped by ``|F|`` and solved with
  one stacked (batched) LAPACK call per size on the gathered ``|F| x |F|`` sub-matrices.

Each row keeps Kim & Park's full-exchange counter (``p = 3``) and, when the number of
infeasible variables stops decreasing, switches to the backup rule (exchange only the
infeasible variable with the largest index), which guarantees finite termination.  As a last
resort (``max_iter`` reached, which we never observed on full-rank problems) the unfinished rows
are solved one by one with :func:`scipy.optimize.nnls` on an equivalent small problem.

Rank-deficient ``A`` (singular ``G``, e.g. duplicated columns): the minimiser is then not unique
(the fitted values ``S @ A.T`` are).  Defined behaviour: when ``G`` is numerically singular
(smallest eigenvalue <= ``_RCOND_SINGULAR * k`` times the largest) every passive-set system is
solved by the Moore-Penrose pseudo-inverse, i.e. ``x_F`` is the minimum-norm least-squares
solution of ``G_FF x_F = c_F`` (``np.linalg.pinv(..., hermitian=True)``).  Since ``c = A^T x``
lies in the range of ``G_FF`` on every ``F``, the passive-set gradient is still zero, so the
returned ``S`` satisfies the KKT conditions and is *a* global minimiser of the (convex) problem;
among the minimisers it is the one that is minimum-norm on its own support.  With exactly
duplicated columns, a weight is either split equally between the copies (both passive) or
put entirely on one of them.  For full-rank ``G`` all principal sub-matrices are positive
definite with condition number <= cond(G) (eigenvalue interlacing) and the fast LU-based
batched solve is used.

Precision: the k-dimensional iteration always runs in float64 (it is cheap); the result is
returned in the input floating dtype (float32 inputs give float32 output).  The large product
``X @ A`` in :func:`nnls` is computed in the input dtype.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from scipy.optimize import nnls as _scipy_nnls

from dnmf_dask.errors import DNMFTypeError, DNMFValueError

__all__ = ["nnls", "nnls_gram", "solve_passive"]

#: ``G`` is treated as singular when ``eig_min <= _RCOND_SINGULAR * k * eig_max``.
_RCOND_SINGULAR = 1e3 * np.finfo(np.float64).eps
#: a passive set shared by at least this many rows is solved once with all rows as right-hand
#: sides (otherwise its rows go to the stacked, gathered solve).
_GROUP_MIN_ROWS = 16
#: bound (number of float64 entries) on the gathered stacks of sub-matrices.
_GATHER_MAX_ENTRIES = 1 << 21
#: Kim & Park's number of full exchanges allowed without progress before the backup rule.
_P_BAR = 3


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _float_dtype(*dtypes):
    """Floating dtype of the result: float32 only if every input is float32 (or smaller)."""
    dt = np.result_type(*dtypes)
    if dt.kind == "c":
        raise DNMFTypeError(f"expected real-valued input, found complex dtype {dt}")
    if dt.kind not in "fiub":
        raise DNMFTypeError(f"expected a numeric dtype, found {dt}")
    if dt == np.float32 or dt == np.float16:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _as_dense_2d(name, a):
    if sp.issparse(a):
        raise DNMFTypeError(f"{name}: expected a dense numpy array, found {type(a).__name__}")
    try:
        arr = np.asarray(a)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise DNMFTypeError(f"{name}: expected an array-like, found {type(a).__name__}") from exc
    if arr.dtype.kind not in "fiub":
        raise DNMFTypeError(f"{name}: expected a real numeric array, found dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DNMFValueError(f"{name}: expected a 2-D array, found ndim={arr.ndim} (shape {arr.shape})")
    if arr.size and not np.all(np.isfinite(arr)):
        raise DNMFValueError(f"{name}: expected finite values, found NaN or inf")
    return arr


def _as_data_2d(name, X):
    """Dense ndarray or scipy.sparse CSR (other sparse formats are converted, never densified)."""
    if sp.issparse(X):
        if X.dtype.kind not in "fiub":
            raise DNMFTypeError(f"{name}: expected a real numeric sparse matrix, found dtype {X.dtype}")
        if X.ndim != 2:
            raise DNMFValueError(f"{name}: expected 2-D, found ndim={X.ndim}")
        if X.format != "csr":
            X = X.tocsr()
        if X.nnz and not np.all(np.isfinite(X.data)):
            raise DNMFValueError(f"{name}: expected finite values, found NaN or inf")
        return X
    return _as_dense_2d(name, X)


def _check_tol(tol):
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise DNMFTypeError(f"tol: expected a real number, found {type(tol).__name__}")
    if not (np.isfinite(tol) and tol >= 0):
        raise DNMFValueError(f"tol: expected a finite number >= 0, found {tol!r}")
    return float(tol)


def _check_max_iter(max_iter, k):
    if max_iter is None:
        return max(50, 5 * k)
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral):
        raise DNMFTypeError(f"max_iter: expected a positive int or None, found {type(max_iter).__name__}")
    if max_iter < 1:
        raise DNMFValueError(f"max_iter: expected a positive int or None, found {max_iter}")
    return int(max_iter)


def _check_gram(G):
    G = _as_dense_2d("G", G)
    if G.shape[0] != G.shape[1]:
        raise DNMFValueError(f"G: expected a square (k, k) Gram matrix, found shape {G.shape}")
    G64 = np.asarray(G, dtype=np.float64)
    if G64.size:
        scale = np.max(np.abs(G64))
        asym = np.max(np.abs(G64 - G64.T))
        if asym > 1e-5 * max(scale, np.finfo(np.float64).tiny):
            raise DNMFValueError(
                f"G: expected a symmetric matrix (A^T A), found max |G - G^T| = {asym:.3g} "
                f"(max |G| = {scale:.3g})"
            )
        G64 = 0.5 * (G64 + G64.T)
    return G, G64


# --------------------------------------------------------------------------------------------
# passive-set solves
# --------------------------------------------------------------------------------------------
class _PassiveSolver:
    """Solves ``G_FF x_F = c_F`` (zeros off ``F``) for many rows with individual passive sets."""

    def __init__(self, G64):
        self.G = G64
        self.k = k = G64.shape[0]
        if k == 0:
            self.singular = False
            return
        w = np.linalg.eigvalsh(G64)
        wmax = max(float(w[-1]), 0.0)
        if w[0] < -1e-8 * max(wmax, np.finfo(np.float64).tiny):
            raise DNMFValueError(
                f"G: expected a positive semidefinite Gram matrix (A^T A), found eigenvalue "
                f"{w[0]:.3g} (largest {wmax:.3g})"
            )
        self.singular = bool(wmax == 0.0 or w[0] <= _RCOND_SINGULAR * k * wmax)
        self._w, self._V = None, None

    # -- dense sub-system with many right-hand sides ------------------------------------------
    def _solve_block(self, idx, rhs):
        """Solve ``G[idx, idx] x = rhs.T`` for rhs of shape (r, f); returns (r, f)."""
        Gs = self.G[np.ix_(idx, idx)]
        if not self.singular:
            try:
                return np.linalg.solve(Gs, rhs.T).T
            except np.linalg.LinAlgError:  # pragma: no cover - cannot happen for PD G
                pass
        pinv = np.linalg.pinv(Gs, rcond=_RCOND_SINGULAR * len(idx), hermitian=True)
        return rhs @ pinv  # pinv is symmetric

    # -- stacked gathered sub-systems, one per row --------------------------------------------
    def _solve_stacked(self, idx, rhs):
        """Rows with their own index sets ``idx`` (r, f) and rhs (r, f)."""
        Gs = self.G[idx[:, :, None], idx[:, None, :]]
        if not self.singular:
            try:
                return np.linalg.solve(Gs, rhs[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:  # pragma: no cover - cannot happen for PD G
                pass
        f = idx.shape[1]
        pinv = np.linalg.pinv(Gs, rcond=_RCOND_SINGULAR * f, hermitian=True)
        return np.matmul(pinv, rhs[:, :, None])[:, :, 0]

    def solve(self, C, P):
        """x with ``x[i, F_i] = G_{F_i F_i}^{-1} C[i, F_i]`` (or pinv), zeros elsewhere.

        C : (m, k) float64, P : (m, k) bool.
        """
        m, k = C.shape
        X = np.zeros((m, k), dtype=np.float64)
        if m == 0 or k == 0:
            return X
        sizes = P.sum(axis=1)
        # all-passive rows: one solve with every such row as right-hand side
        full = np.flatnonzero(sizes == k)
        if full.size:
            X[full] = self._solve_block(np.arange(k), C[full])
        rest = np.flatnonzero((sizes > 0) & (sizes < k))
        if rest.size == 0:
            return X
        Pr = P[rest]
        # group rows by passive set (integer / byte code of the boolean row)
        if k <= 62:
            codes = Pr.astype(np.int64) @ (np.int64(1) << np.arange(k, dtype=np.int64))
        else:
            packed = np.ascontiguousarray(np.packbits(Pr, axis=1))
            codes = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
        _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        row_count = counts[inverse]
        big = row_count >= _GROUP_MIN_ROWS
        if np.any(big):
            big_rows = np.flatnonzero(big)
            order = big_rows[np.argsort(inverse[big_rows], kind="stable")]
            grp = inverse[order]
            starts = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
            ends = np.r_[starts[1:], order.size]
            for s, e in zip(starts, ends):
                rows = rest[order[s:e]]
                idx = np.flatnonzero(P[rows[0]])
                X[rows[:, None], idx[None, :]] = self._solve_block(idx, C[np.ix_(rows, idx)])
        small = np.flatnonzero(~big)
        if small.size:
            srows = rest[small]
            ssize = sizes[srows]
            order = np.argsort(ssize, kind="stable")
            srows, ssize = srows[order], ssize[order]
            starts = np.flatnonzero(np.r_[True, ssize[1:] != ssize[:-1]])
            ends = np.r_[starts[1:], ssize.size]
            for s, e in zip(starts, ends):
                f = int(ssize[s])
                step = max(1, _GATHER_MAX_ENTRIES // (f * f))
                for b in range(s, e, step):
                    rows = srows[b:min(e, b + step)]
                    idx = np.nonzero(P[rows])[1].reshape(rows.size, f)
                    rhs = np.take_along_axis(C[rows], idx, axis=1)
                    X[rows[:, None], idx] = self._solve_stacked(idx, rhs)
        return X

    # -- last resort for rows where BPP did not finish ------------------------------------------
    def solve_rows_scipy(self, C):
        """Row-by-row scipy.optimize.nnls on ``min ||R s - d||`` with ``R^T R = G``, ``R^T d = c``."""
        if self._w is None:
            w, V = np.linalg.eigh(self.G)
            keep = w > _RCOND_SINGULAR * self.k * max(w[-1], 0.0)
            self._w, self._V = w[keep], V[:, keep]
        sw = np.sqrt(self._w)
        R = sw[:, None] * self._V.T  # (r, k)
        D = (C @ self._V) / sw  # (m, r)
        out = np.empty_like(C)
        for i in range(C.shape[0]):
            out[i] = _scipy_nnls(R, D[i], maxiter=50 * max(self.k, 1))[0]
        return out


def solve_passive(G, C, P):
    """Solve ``G[F, F] x_F = C[i, F]`` for each row ``i`` with ``F = P[i]``; zeros off ``F``.

    This is the linear algebra shared by the NNLS and by the gradient of ``q`` (with ``P`` the
    support of ``q(A, x)`` and ``C`` the upstream gradient).  Rows with equal ``P`` are grouped;
    singular ``G`` uses minimum-norm (pseudo-inverse) solutions, see the module docstring.

    Parameters
    ----------
    G : (k, k) symmetric positive semidefinite array.
    C : (n, k) array.
    P : (n, k) bool array.

    Returns
    -------
    (n, k) float64 array.
    """
    G, G64 = _check_gram(G)
    C = _as_dense_2d("C", C)
    P = np.asarray(P)
    if C.shape[1] != G.shape[0]:
        raise DNMFValueError(f"C: expected shape (n, {G.shape[0]}), found {C.shape}")
    if P.shape != C.shape:
        raise DNMFValueError(f"P: expected shape {C.shape}, found {P.shape}")
    if P.dtype != bool:
        raise DNMFTypeError(f"P: expected a boolean array, found dtype {P.dtype}")
    return _PassiveSolver(G64).solve(np.asarray(C, dtype=np.float64), P)


# --------------------------------------------------------------------------------------------
# block principal pivoting
# --------------------------------------------------------------------------------------------
def _bpp(solver, C, P, X, Y, max_iter, tol):
    """Kim & Park block principal pivoting on all rows; modifies P, X, Y in place.

    Returns (n_iter, n_backup_rows, unfinished_rows).
    """
    n, k = C.shape
    tiny = np.finfo(np.float64).tiny
    cscale = np.max(np.abs(C), axis=1)
    gscale = float(np.max(np.abs(np.diag(solver.G)))) if k else 0.0

    def violations(rows):
        Xr, Yr, Pr = X[rows], Y[rows], P[rows]
        xs = np.max(np.abs(Xr), axis=1)
        xtol = tol * np.maximum(xs, tiny)
        ytol = tol * np.maximum(cscale[rows] + gscale * xs, tiny)
        vx = Pr & (Xr < -xtol[:, None])
        vy = ~Pr & (Yr < -ytol[:, None])
        return vx | vy

    ninf = np.full(n, k + 1, dtype=np.int64)
    pcount = np.full(n, _P_BAR, dtype=np.int64)
    rows = np.arange(n)
    V = violations(rows)
    nv = V.sum(axis=1)
    keep = nv > 0
    rows, V, nv = rows[keep], V[keep], nv[keep]
    n_iter = 0
    n_backup = 0
    while rows.size:
        if n_iter >= max_iter:
            break
        n_iter += 1
        better = nv < ninf[rows]
        allow = ~better & (pcount[rows] >= 1)
        backup = ~better & ~allow
        ninf[rows[better]] = nv[better]
        pcount[rows[better]] = _P_BAR
        pcount[rows[allow]] -= 1
        Pr = P[rows]
        full = better | allow
        Pr[full] ^= V[full]  # infeasible passive -> active, infeasible active -> passive
        if np.any(backup):
            b = np.flatnonzero(backup)
            n_backup += b.size
            j = k - 1 - np.argmax(V[b, ::-1], axis=1)  # largest infeasible index
            Pr[b, j] = ~Pr[b, j]
        P[rows] = Pr
        Cr = C[rows]
        Xr = solver.solve(Cr, Pr)
        Yr = Xr @ solver.G - Cr
        Yr[Pr] = 0.0
        X[rows] = Xr
        Y[rows] = Yr
        V = violations(rows)
        nv = V.sum(axis=1)
        keep = nv > 0
        rows, V, nv = rows[keep], V[keep], nv[keep]
    return n_iter, n_backup, rows


def nnls_gram(G, C, *, S0=None, max_iter=None, tol=1e-10, return_info=False):
    """Exact NNLS for many right-hand sides sharing one Gram matrix.

    Solves, for every row ``i``, ``min_{s >= 0} 0.5 s^T G s - C[i] s`` with ``G = A^T A`` and
    ``C = X @ A``, i.e. ``S = argmin_{S >= 0} ||X - S A^T||_F^2`` row by row, by block
    principal pivoting (Kim & Park 2011) with rows grouped by passive set.

    Parameters
    ----------
    G : (k, k) array, symmetric positive semidefinite (``A.T @ A``).
    C : (n, k) array (``X @ A``).
    S0 : (n, k) array, optional
        Warm start: its positive entries give the initial passive sets.
    max_iter : int, optional
        Maximum number of BPP iterations (default ``max(50, 5 k)``).  Rows not finished after
        that are solved one by one by :func:`scipy.optimize.nnls` (never observed in practice).
    tol : float
        Relative feasibility tolerance of the KKT checks: ``x_j < -tol*max|x|`` on the passive
        set or ``grad_j < -tol*(max|c| + max(diag G)*max|x|)`` off it count as violations.
    return_info : bool
        Also return a dict ``{"n_iter", "n_backup", "n_fallback", "singular"}``.

    Returns
    -------
    S : (n, k) array, dtype float32 if ``G`` and ``C`` are float32 else float64; exactly
        nonnegative and exactly zero outside the final passive sets.
    """
    G, G64 = _check_gram(G)
    C = _as_dense_2d("C", C)
    k = G.shape[0]
    if C.shape[1] != k:
        raise DNMFValueError(f"C: expected shape (n, {k}) to match G of shape {G.shape}, found {C.shape}")
    out_dtype = _float_dtype(G.dtype, C.dtype)
    tol = _check_tol(tol)
    max_iter = _check_max_iter(max_iter, k)
    n = C.shape[0]
    info = {"n_iter": 0, "n_backup": 0, "n_fallback": 0, "singular": False}
    if n == 0 or k == 0:
        S = np.zeros((n, k), dtype=out_dtype)
        return (S, info) if return_info else S
    C64 = np.asarray(C, dtype=np.float64)
    solver = _PassiveSolver(G64)
    info["singular"] = solver.singular
    if S0 is None:
        P = np.zeros((n, k), dtype=bool)
        X = np.zeros((n, k), dtype=np.float64)
        Y = -C64.copy()
    else:
        S0 = _as_dense_2d("S0", S0)
        if S0.shape != (n, k):
            raise DNMFValueError(f"S0: expected shape {(n, k)}, found {S0.shape}")
        P = S0 > 0
        X = solver.solve(C64, P)
        Y = X @ G64 - C64
        Y[P] = 0.0
    n_iter, n_backup, unfinished = _bpp(solver, C64, P, X, Y, max_iter, tol)
    info.update(n_iter=n_iter, n_backup=int(n_backup), n_fallback=int(unfinished.size))
    if unfinished.size:
        X[unfinished] = solver.solve_rows_scipy(C64[unfinished])
        P[unfinished] = X[unfinished] > 0
    # exact nonnegativity: entries off the passive set are 0 by construction; passive entries
    # that are negative within the tolerance are clamped.
    X[~P] = 0.0
    np.maximum(X, 0.0, out=X)
    S = X.astype(out_dtype, copy=False)
    return (S, info) if return_info else S


def nnls(A, X, **kwargs):
    """``S = argmin_{S >= 0} ||X - S @ A.T||_F^2`` row by row (``q(A, X)`` in our orientation).

    Parameters
    ----------
    A : (n_features, k) dense array.
    X : (n, n_features) dense array or scipy.sparse matrix (used only through ``X @ A``).
    **kwargs : passed to :func:`nnls_gram` (``S0``, ``max_iter``, ``tol``, ``return_info``).

    Returns
    -------
    S : (n, k), float32 if both ``A`` and ``X`` are float32, else float64.
    """
    A = _as_dense_2d("A", A)
    X = _as_data_2d("X", X)
    if X.shape[1] != A.shape[0]:
        raise DNMFValueError(
            f"X: expected {A.shape[0]} columns (n_features of A with shape {A.shape}), found shape {X.shape}"
        )
    dt = _float_dtype(A.dtype, X.dtype)
    A64 = np.asarray(A, dtype=np.float64)
    G = A64.T @ A64
    Ad = np.asarray(A, dtype=dt)
    C = X.astype(dt, copy=False) @ Ad
    C = np.asarray(C)
    res = nnls_gram(G, C, **kwargs)
    if kwargs.get("return_info", False):
        S, info = res
        return S.astype(dt, copy=False), info
    return res.astype(dt, copy=False)
