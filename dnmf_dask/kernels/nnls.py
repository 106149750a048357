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
  code); a set shared by many rows (``_GROUP_MIN_ROWS``) is solved once, with one LAPACK solve
  of ``G_FF`` and all its rows as right-hand sides;
* the remaining rows (sets shared by few rows: with a few zeros per row almost every sample
  has its own set) are solved as stacks of small systems gathered per row and padded (with an
  identity block) to a few sizes chosen by a small cost model; stacks up to size
  ``_ELIM_MAX_DIM`` use a Gaussian elimination vectorised across the stack (numpy's stacked
  LAPACK costs microseconds per tiny matrix), larger ones one stacked LAPACK call.  When ``G``
  is well conditioned a row with fewer zeros than nonzeros is solved through its zero set
  ``N`` instead: ``x = u - H[:, N] H_NN^{-1} u_N`` with ``H = G^{-1}`` and ``u = H c`` the
  unconstrained solution, so every system has size ``min(|F|, k - |F|)``;
* batches of at most ``_TINY_ROWS`` rows skip the grouping (one stacked solve).

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
definite with condition number <= cond(G) (eigenvalue interlacing) and the fast solves above
are used.

Precision: the k-dimensional iteration always runs in float64 (it is cheap); the result is
returned in the input floating dtype (float32 inputs give float32 output).  The large product
``X @ A`` in :func:`nnls` is computed in the input dtype.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.kernels._env import fused_module as _fused

__all__ = ["nnls", "nnls_gram", "solve_passive"]

_F64 = np.dtype(np.float64)
#: ``G`` is treated as singular when ``eig_min <= _RCOND_SINGULAR * k * eig_max``.
_RCOND_SINGULAR = 1e3 * np.finfo(np.float64).eps
#: a passive set shared by at least this many rows is solved once with all rows as right-hand
#: sides (otherwise its rows go to the stacked, gathered solve).
_GROUP_MIN_ROWS = 32
#: batches of at most this many rows (with a proper passive set) skip the grouping.
_TINY_ROWS = 32
#: bound (number of float64 entries) on the gathered stacks of sub-matrices.
_GATHER_MAX_ENTRIES = 1 << 21
#: stacks of systems up to this size use the vectorised elimination, larger ones LAPACK.
_ELIM_MAX_DIM = 14
#: the complement (Schur) formulation is used only when cond(G) is below this.
_SCHUR_MAX_COND = 1e7
#: Kim & Park's number of full exchanges allowed without progress before the backup rule.
_P_BAR = 3


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _float_dtype(*dtypes):
    """Floating dtype of the result: float32 only if every input is float32 (or smaller)."""
    if all(d == _F64 for d in dtypes):  # the common case, without result_type's overhead
        return _F64
    dt = np.result_type(*dtypes)
    if dt.kind == "c":
        raise DNMFTypeError(f"expected real-valued input, found complex dtype {dt}")
    if dt.kind not in "fiub":
        raise DNMFTypeError(f"expected a numeric dtype, found {dt}")
    if dt == np.float32 or dt == np.float16:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _as_dense_2d(name, a, check_finite=True):
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
    if check_finite and arr.size and not np.all(np.isfinite(arr)):
        raise DNMFValueError(f"{name}: expected finite values, found NaN or inf")
    return arr


def _as_data_2d(name, X, check_finite=True):
    """Dense ndarray or scipy.sparse CSR (other sparse formats are converted, never densified)."""
    if sp.issparse(X):
        if X.dtype.kind not in "fiub":
            raise DNMFTypeError(f"{name}: expected a real numeric sparse matrix, found dtype {X.dtype}")
        if X.ndim != 2:
            raise DNMFValueError(f"{name}: expected 2-D, found ndim={X.ndim}")
        if X.format != "csr":
            X = X.tocsr()
        if check_finite and X.nnz and not np.all(np.isfinite(X.data)):
            raise DNMFValueError(f"{name}: expected finite values, found NaN or inf")
        return X
    return _as_dense_2d(name, X, check_finite=check_finite)


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
def _batched_spd_solve(M, b):
    """Solve ``M[:, :, i] x[:, i] = b[:, i]`` for a stack of small SPD matrices.

    Layout (d, d, r) / (d, r) so that every elementary operation is a vector operation over
    the r systems (numpy's stacked LAPACK has a per-matrix overhead of microseconds, which
    dominates for the tiny systems of an NNLS).  Symmetric Gaussian elimination without
    pivoting (stable for SPD).  ``M`` and ``b`` are overwritten.  Returns (x, ok) where ``ok``
    flags systems whose pivots stayed positive and whose solution is finite.
    """
    d = M.shape[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for j in range(d - 1):
            lj = M[j + 1:, j] / M[j, j]  # (d-j-1, r)
            M[j + 1:, j + 1:] -= lj[:, None, :] * M[j, None, j + 1:]
            b[j + 1:] -= lj * b[j]
        diag = np.arange(d)
        ok = np.all(M[diag, diag] > 0, axis=0)
        x = b
        x[d - 1] /= M[d - 1, d - 1]
        for j in range(d - 2, -1, -1):
            x[j] = (x[j] - np.einsum("ar,ar->r", M[j, j + 1:], x[j + 1:])) / M[j, j]
        ok &= np.all(np.isfinite(x), axis=0)
    return x, ok


def _stack_cost(D, r):
    """Rough time model (seconds) of one stacked solve of r systems padded to size D."""
    if D <= _ELIM_MAX_DIM:
        return 6e-5 + 3.5e-5 * D + r * (1e-9 * D**3 + 3e-9 * D * D + 2e-8)
    return 6e-5 + r * (2e-6 + 3e-10 * D**3 + 3e-9 * D * D)


def _size_buckets(values, counts):
    """Partition the sorted distinct system sizes into consecutive buckets (each solved padded
    to its largest size) minimising :func:`_stack_cost` (dynamic programming, q <= k)."""
    q = len(values)
    csum = np.concatenate([[0], np.cumsum(counts)])
    best = np.zeros(q + 1)
    cut = np.zeros(q + 1, dtype=np.int64)
    for j in range(1, q + 1):
        D = int(values[j - 1])
        costs = [best[i] + _stack_cost(D, int(csum[j] - csum[i])) for i in range(j)]
        i = int(np.argmin(costs))
        best[j], cut[j] = costs[i], i
    # walk back: bucket padded size for every value
    padded = np.empty(q, dtype=np.int64)
    j = q
    while j > 0:
        i = cut[j]
        padded[i:j] = values[j - 1]
        j = i
    return padded


class _PassiveSolver:
    """Solves ``G_FF x_F = c_F`` (zeros off ``F``) for many rows with individual passive sets."""

    def __init__(self, G64):
        fused = _fused()
        self.G = G64
        self.k = k = G64.shape[0]
        self.singular = False
        self.H = None
        self._w, self._V = None, None
        self._bd = None
        self._wmax = 0.0
        if k == 0:
            return
        if fused.AVAILABLE:
            # the spectrum and G⁻¹ in one compiled call (numpy's wrappers cost ~20 µs each, as
            # much as a whole pass of Neural NMF on Table 1's 90 × 87 problem)
            w0, wmax, H = fused.spectrum_inverse(G64)
        else:
            w = np.linalg.eigvalsh(G64)
            w0, wmax, H = float(w[0]), float(w[-1]), None
        wmax = max(wmax, 0.0)
        if w0 < -1e-8 * max(wmax, np.finfo(np.float64).tiny):
            raise DNMFValueError(
                f"G: expected a positive semidefinite Gram matrix (A^T A), found eigenvalue "
                f"{w0:.3g} (largest {wmax:.3g})"
            )
        self.singular = bool(wmax == 0.0 or w0 <= _RCOND_SINGULAR * k * wmax)
        self._wmax = wmax
        if not self.singular and w0 * _SCHUR_MAX_COND >= wmax:
            # well-conditioned: rows with few zeros are solved through the complement,
            # G_FF^{-1} c_F = u_F - H_FN H_NN^{-1} u_N with H = G^{-1}, u = H c.
            if H is None:
                H = np.linalg.solve(G64, np.eye(k))
            self.H = 0.5 * (H + H.T)

    @property
    def _BD(self):
        """Block-diagonal source of the gathered sub-matrices of the numpy path: G, H (or I),
        then identity padding (a padded system ``[[M, 0], [0, I]] [v; 0] = [b; 0]``); the
        identity blocks are scaled like G so that pseudo-inverse cut-offs are unaffected.
        Built on first use (the compiled path never needs it)."""
        if self._bd is None:
            k = self.k
            pad = self._wmax if self._wmax > 0 else 1.0
            BD = np.zeros((3 * k, 3 * k), dtype=np.float64)
            BD[:k, :k] = self.G
            BD[k:2 * k, k:2 * k] = self.H if self.H is not None else pad * np.eye(k)
            BD[2 * k:, 2 * k:] = pad * np.eye(k)
            self._bd = BD
        return self._bd

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
    def _solve_stack(self, idx, rhs):
        """Solve ``BD[idx_i, idx_i] v_i = rhs_i`` for every row i; idx, rhs of shape (r, D)."""
        r, D = idx.shape
        BD = self._BD
        if not self.singular and D <= _ELIM_MAX_DIM:
            idt = np.ascontiguousarray(idx.T)
            flat = idt[:, None, :] * BD.shape[1] + idt[None, :, :]  # (D, D, r)
            v, ok = _batched_spd_solve(np.take(BD, flat), np.array(rhs.T, order="C"))
            v = v.T
            if not ok.all():  # pragma: no cover - numerically singular sub-block
                bad = np.flatnonzero(~ok)
                v[bad] = self._solve_stack_lapack(idx[bad], rhs[bad], pinv=True)
            return v
        if not self.singular:
            try:
                return self._solve_stack_lapack(idx, rhs, pinv=False)
            except np.linalg.LinAlgError:  # pragma: no cover
                pass
        return self._solve_stack_lapack(idx, rhs, pinv=True)

    def _solve_stack_lapack(self, idx, rhs, pinv):
        Ms = self._BD[idx[:, :, None], idx[:, None, :]]
        if not pinv:
            return np.linalg.solve(Ms, rhs[:, :, None])[:, :, 0]
        Mp = np.linalg.pinv(Ms, rcond=_RCOND_SINGULAR * idx.shape[1], hermitian=True)
        return np.matmul(Mp, rhs[:, :, None])[:, :, 0]

    def solve(self, C, P, U=None):
        """x with ``x[i, F_i] = G_{F_i F_i}^{-1} C[i, F_i]`` (or pinv), zeros elsewhere.

        C : (m, k) float64, P : (m, k) bool, U : optional ``C @ H`` (unconstrained solutions).
        """
        fused = _fused()
        m, k = C.shape
        if m == 0 or k == 0:
            return np.zeros((m, k), dtype=np.float64)
        if U is None and self.H is not None:
            U = C @ self.H
        if fused.AVAILABLE and not self.singular:
            # one compiled LDLᵀ solve per row instead of numpy's grouping and stacking (whose
            # per-call overhead dominated small problems, e.g. Neural NMF on Table 1's 90 × 87)
            X, bad = fused.passive_rows(self.G, self.H, C, P, U)
            if bad.size:  # pragma: no cover - a numerically non-SPD G_FF of a non-singular G
                X[bad] = self._solve_numpy(C[bad], P[bad], None if U is None else U[bad])
            return X
        return self._solve_numpy(C, P, U)

    def _solve_numpy(self, C, P, U):
        """:meth:`solve` in numpy: rows grouped by passive set, then stacked small solves."""
        m, k = C.shape
        X = np.zeros((m, k), dtype=np.float64)
        sizes = np.count_nonzero(P, axis=1)
        # all-passive rows: the unconstrained solutions
        full = np.flatnonzero(sizes == k)
        if full.size:
            X[full] = U[full] if U is not None else self._solve_block(np.arange(k), C[full])
        rest = np.flatnonzero((sizes > 0) & (sizes < k))
        if rest.size == 0:
            return X
        if rest.size <= _TINY_ROWS and not self.singular:
            # a handful of rows: grouping costs more than it saves; one stacked LAPACK solve
            # of the masked full systems [[G_FF, 0], [0, I]] x = [c_F; 0]
            Pr = P[rest]
            M = self.G * (Pr[:, :, None] & Pr[:, None, :])
            diag = np.arange(k)
            M[:, diag, diag] = np.where(Pr, self.G[diag, diag], 1.0)
            Xr = np.linalg.solve(M, np.where(Pr, C[rest], 0.0)[:, :, None])[:, :, 0]
            np.multiply(Xr, Pr, out=Xr)
            X[rest] = Xr
            return X
        # group rows by passive set (integer / byte code of the boolean row); a set shared by
        # many rows is solved once with all of them as right-hand sides
        Pr = P[rest]
        if k <= 62:
            codes = Pr @ (np.int64(1) << np.arange(k, dtype=np.int64))
        else:
            packed = np.ascontiguousarray(np.packbits(Pr, axis=1))
            codes = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
        _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        big = counts[inverse] >= _GROUP_MIN_ROWS
        if big.any():
            big_rows = np.flatnonzero(big)
            order = big_rows[np.argsort(inverse[big_rows], kind="stable")]
            grp = inverse[order]
            starts = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
            ends = np.r_[starts[1:], order.size]
            for s, e in zip(starts, ends):
                rows = rest[order[s:e]]
                idx = np.flatnonzero(P[rows[0]])
                X[rows[:, None], idx[None, :]] = self._solve_block(idx, C[np.ix_(rows, idx)])
            small = rest[~big]
        else:
            small = rest
        if small.size:
            self._solve_small(C, P, U, sizes, small, X)
        return X

    def _solve_small(self, C, P, U, sizes, srows, X):
        """Rows with (nearly) unique passive sets: stacked solves, one per padded size.

        Every row's system is gathered into a ``(D, D)`` matrix (padded with identity) of the
        block-diagonal source ``BD = diag(G, H, I)``: ``G_FF`` for the direct system, or
        ``H_NN`` for the complement system when the zero set ``N`` is the smaller one.  All
        index work uses flat indices (1-D fancy indexing is several times faster than 2-D).
        """
        k = self.k
        f = sizes[srows]
        if self.H is not None:
            comp = (k - f) < f  # the complement system H_NN w = u_N is the smaller one
            d = np.where(comp, k - f, f)
        else:
            comp = np.zeros(f.shape, dtype=bool)
            d = f
        # pad the sizes to a few buckets (fewer, larger stacked solves)
        vals_d, inv_d, cnt_d = np.unique(d, return_inverse=True, return_counts=True)
        D = _size_buckets(vals_d, cnt_d)[inv_d.ravel()]
        order = np.argsort(D, kind="stable")
        srows, comp, d, D = srows[order], comp[order], d[order], D[order]
        r_all = srows.size
        has_comp = bool(comp.any())
        Ps = P[srows]
        sel = (Ps ^ comp[:, None]) if has_comp else Ps
        flat = np.flatnonzero(sel)  # row-major: the selected coordinates of each row
        rr = flat // k
        cc = flat - rr * k
        rowstart = np.cumsum(d) - d
        pos = np.arange(flat.size) - rowstart[rr]
        gflat = srows[rr] * k + cc  # the same coordinates in the caller's (m, k) arrays
        vals = C.ravel()[gflat]
        if has_comp:
            csel = comp[rr]
            gidx = cc + k * csel
            vals[csel] = U.ravel()[gflat[csel]]
        else:
            gidx = cc
        Vf = np.zeros(r_all * k, dtype=np.float64)
        starts = np.flatnonzero(np.r_[True, D[1:] != D[:-1]])
        ends = np.r_[starts[1:], D.size]
        for s0, e0 in zip(starts, ends):
            Dv = int(D[s0])
            step = max(1, _GATHER_MAX_ENTRIES // (Dv * Dv))
            for s in range(s0, e0, step):
                e = min(e0, s + step)
                r = e - s
                fs, fe = rowstart[s], rowstart[e - 1] + d[e - 1]
                dest = (rr[fs:fe] - s) * Dv + pos[fs:fe]
                idx = np.tile(2 * k + np.arange(Dv), r)
                idx[dest] = gidx[fs:fe]
                rhs = np.zeros(r * Dv, dtype=np.float64)
                rhs[dest] = vals[fs:fe]
                v = self._solve_stack(idx.reshape(r, Dv), rhs.reshape(r, Dv))
                Vf[flat[fs:fe]] = v.ravel()[dest]
        Vf = Vf.reshape(r_all, k)
        if has_comp:
            # x = u - H[:, N] w on complement rows (then x_N = 0 exactly)
            ci = np.flatnonzero(comp)
            Xc = U[srows[ci]] - Vf[ci] @ self.H
            np.multiply(Xc, Ps[ci], out=Xc)
            Vf[ci] = Xc
        X[srows] = Vf

    # -- last resort for rows where BPP did not finish ------------------------------------------
    def solve_rows_scipy(self, C):
        """Row-by-row scipy.optimize.nnls on ``min ||R s - d||`` with ``R^T R = G``, ``R^T d = c``."""
        from scipy.optimize import nnls as _scipy_nnls  # here: scipy.optimize costs a worker ~20 MB

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
def _bpp(solver, C, P0, max_iter, tol):
    """Kim & Park block principal pivoting on all rows at once.

    Only the rows whose KKT conditions are still violated are kept in the (compacted) working
    arrays.  Returns (X, P, n_iter, n_backup_rows, unfinished_rows).

    Feasibility test of a row with current solution ``x`` (0 off the passive set ``F``) and
    gradient ``y = G x - c`` (used off ``F`` only), with ``g = max diag(G)`` and the row scale
    ``sc = max|c| + g max(x)``:  ``x_j < -tol sc / g`` on ``F`` or ``y_j < -tol sc`` off ``F``
    is a violation (one comparison of ``where(F, g x, y)`` with ``-tol sc``).
    """
    n, k = C.shape
    tiny = np.finfo(np.float64).tiny
    G = solver.G
    gscale = max(float(np.max(np.abs(np.diag(G)))), tiny)
    X = np.zeros((n, k), dtype=np.float64)
    P = np.zeros((n, k), dtype=bool)
    U = C @ solver.H if solver.H is not None else None
    # initial partition
    if P0 is not None:
        Pw = P0
        Xw = solver.solve(C, Pw, U)
        Yw = Xw @ G - C
    elif U is not None:
        # everything passive: the unconstrained solutions, which are free to compute here
        Pw = np.ones((n, k), dtype=bool)
        Xw = U
        Yw = None
    else:
        Pw = np.zeros((n, k), dtype=bool)
        Xw = np.zeros((n, k), dtype=np.float64)
        Yw = -C
    idx = np.arange(n)
    Cw, Uw = C, U
    cscale = np.max(np.abs(C), axis=1)
    ninf = np.full(n, k + 1, dtype=np.int64)
    pcount = np.full(n, _P_BAR, dtype=np.int64)
    n_iter = 0
    n_backup = 0
    while True:
        # KKT violations of the current working rows
        thr = -tol * np.maximum(cscale + gscale * np.max(Xw, axis=1), tiny)
        W = Xw * gscale if Yw is None else np.where(Pw, Xw * gscale, Yw)
        V = W < thr[:, None]
        nv = np.count_nonzero(V, axis=1)
        done = nv == 0
        n_done = int(np.count_nonzero(done))
        if n_done:
            di = np.flatnonzero(done)
            X[idx[di]] = Xw[di]
            P[idx[di]] = Pw[di]
            if n_done == idx.size:
                idx = idx[:0]
                break
            ai = np.flatnonzero(~done)
            idx, nv, cscale, ninf, pcount = idx[ai], nv[ai], cscale[ai], ninf[ai], pcount[ai]
            Cw, Pw, V, Xw = Cw.take(ai, axis=0), Pw.take(ai, axis=0), V.take(ai, axis=0), Xw.take(ai, axis=0)
            if Uw is not None:
                Uw = Uw.take(ai, axis=0)
        if n_iter >= max_iter:
            X[idx] = Xw
            P[idx] = Pw
            break
        n_iter += 1
        better = nv < ninf
        allow = ~better & (pcount >= 1)
        backup = ~(better | allow)
        ninf = np.where(better, nv, ninf)
        pcount = np.where(better, _P_BAR, pcount - allow)
        # full exchange: infeasible passive -> active, infeasible active -> passive
        if backup.any():
            b = np.flatnonzero(backup)
            n_backup += b.size
            j = k - 1 - np.argmax(V[b, ::-1], axis=1)  # largest infeasible index
            V[b] = False
            V[b, j] = True  # backup rule: exchange that single variable
        Pw = Pw ^ V
        Xw = solver.solve(Cw, Pw, Uw)
        Yw = Xw @ G - Cw
    return X, P, n_iter, n_backup, idx


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
        Relative feasibility tolerance of the KKT checks: with ``g = max(diag G)`` and the
        row scale ``sc = max|c| + g*max(x)``, ``x_j < -tol*sc/g`` on the passive set or
        ``grad_j < -tol*sc`` off it count as violations.
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
    P0 = None
    if S0 is not None:
        S0 = _as_dense_2d("S0", S0)
        if S0.shape != (n, k):
            raise DNMFValueError(f"S0: expected shape {(n, k)}, found {S0.shape}")
        P0 = S0 > 0
    X, info = _nnls_core(_PassiveSolver(G64), C64, P0, max_iter, tol)
    S = X.astype(out_dtype, copy=False)
    return (S, info) if return_info else S


def _nnls_core(solver, C64, P0, max_iter, tol):
    """BPP + fallback + exact nonnegativity on validated float64 input; returns (S64, info).

    With numba and a non-singular G the pivoting runs row by row in compiled code
    (:func:`dnmf_dask.kernels.fused.bpp_rows`, the same rules); otherwise batched in numpy.
    """
    fused = _fused()
    compiled = fused.AVAILABLE and not solver.singular and solver.k > 0
    if compiled:
        X, P, n_iter, n_backup, unfinished = fused.bpp_rows(solver.G, solver.H, C64, P0, max_iter, tol, _P_BAR)
    else:
        X, P, n_iter, n_backup, unfinished = _bpp(solver, C64, P0, max_iter, tol)
    info = {
        "n_iter": n_iter,
        "n_backup": int(n_backup),
        "n_fallback": int(unfinished.size),
        "singular": solver.singular,
    }
    if unfinished.size:
        X[unfinished] = solver.solve_rows_scipy(C64[unfinished])  # (scipy's solutions are >= 0)
        P[unfinished] = X[unfinished] > 0
    if not compiled:  # (the compiled kernel does this per row)
        # exact nonnegativity: entries off the passive set are 0 by construction; passive
        # entries that are negative within the tolerance are clamped.
        np.multiply(X, P, out=X)
        np.maximum(X, 0.0, out=X)
    return X, info


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
    # X is checked for NaN/inf through X @ A (every non-finite entry of X makes its row of
    # X @ A non-finite), which saves a full pass over a large dense X
    X = _as_data_2d("X", X, check_finite=False)
    if X.shape[1] != A.shape[0]:
        raise DNMFValueError(
            f"X: expected {A.shape[0]} columns (n_features of A with shape {A.shape}), found shape {X.shape}"
        )
    dt = _float_dtype(A.dtype, X.dtype)
    A64 = np.asarray(A, dtype=np.float64)
    G = A64.T @ A64
    Ad = np.asarray(A, dtype=dt)
    C = np.asarray(X.astype(dt, copy=False) @ Ad)
    if C.size and not np.all(np.isfinite(C)):
        raise DNMFValueError("X: expected finite values, found NaN or inf (X @ A is not finite)")
    res = nnls_gram(G, C, **kwargs)
    if kwargs.get("return_info", False):
        S, info = res
        return S.astype(dt, copy=False), info
    return res.astype(dt, copy=False)
