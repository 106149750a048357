"""Fused single-sweep sparse kernels (numba) for the multiplicative updates of one CSR row block.

The numpy/scipy kernels of :mod:`dnmf_dask.kernels.nmf` and :mod:`dnmf_dask.kernels.solvers`
form each product of an iteration with its own scipy call (``X @ A``, then ``X.T @ S_new``;
for KL the values of S Aᵀ at the nonzeros by gathering nnz × k rows, twice). Here one loop over
the block's rows does, row by row, everything an iteration needs from that row:

* Frobenius (:func:`frobenius_step`): ``xa = X[i] A`` (a sweep of the row's nonzeros), the new
  row ``S_new[i] = S[i] ⊙ (xa + num_add[i]) / den[i]`` (``den = S AᵀA`` does not involve X and
  comes from BLAS) and its contribution ``XᵀS_new[j] += x_ij S_new[i]`` (a second sweep of the
  same nonzeros, now in cache);
* KL (:func:`kl_step`): ``x̂_ij = S[i]·A[j]``, ``num = Σ_j x_ij/max(x̂_ij, EPS) A[j]``, the
  divergence term ``Σ x log(x/x̂)``, the new row, and at the new row
  ``RᵀS_new[j] += x_ij/max(S_new[i]·A[j], EPS) S_new[i]``.

So X is read from memory once per iteration and no nnz × k temporary is formed. The kernels
are serial and release the GIL (``nogil``): the parallelism is over row blocks (dask's task
threads or worker processes, one BLAS thread each), so nested threads would only oversubscribe
the cores. The Frobenius Xᵀ S accumulates in S's dtype (as scipy's product does), the KL
Rᵀ S in float64.

Speed (BENCHMARKS.md, #7): both sweeps gather/scatter a random row of A or of XᵀS per
nonzero; with k = 20 the inner loops run scalar (LLVM's loop vectorizer wants ≥ 32 iterations
and numba leaves the SLP vectorizer off), so the Frobenius kernel costs about what scipy's two
products cost, or more (measured: 15 vs 15 ns/nz on a quiet core, 46 vs 28 under load), so
:data:`FROBENIUS` leaves it off in the hot path (:mod:`dnmf_dask.kernels.spmm` does the same
sweep with source generated per k, unrolled and SLP-vectorised, and is what ``block_step`` uses
by default). The gain here is in KL, where the values of S Aᵀ at the nonzeros are computed in
registers instead of gathering nnz × k temporaries (~2× less CPU), and in the NNLS pivoting
(:func:`bpp_rows`).

Everything here is optional: if numba cannot be imported (or ``DNMF_DASK_NUMBA=0`` is set in
the environment) :data:`AVAILABLE` is False and the callers use their numpy/scipy code, which
stays the reference the tests compare these kernels with. Compiled code is cached on disk
(``cache=True``), so only the first process on a machine pays the compile time (~1-2 s per
dtype combination).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._env import FROBENIUS_ENV, env_flag, numba_disabled

try:  # pragma: no cover - exercised by whichever branch the environment has
    if numba_disabled():
        raise ImportError("disabled by DNMF_DASK_NUMBA")
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover
    numba = None
    AVAILABLE = False

EPS = float(np.finfo(np.float32).eps)

#: Use :func:`frobenius_step` in :func:`~dnmf_dask.kernels.nmf.block_step`. Off by default: on
#: the benchmark machine it was no faster than scipy's two products (see the module docstring
#: and BENCHMARKS.md); ``DNMF_DASK_FUSED_FROBENIUS=1`` turns it on.
FROBENIUS = env_flag(FROBENIUS_ENV, False)


def usable(X, S):
    """True when the fused kernels apply: numba present, X a CSR matrix/array, S a float ndarray."""
    return (AVAILABLE and sp.issparse(X) and X.format == "csr" and isinstance(S, np.ndarray)
            and S.dtype in (np.float32, np.float64))


def csr_parts(X, dtype):
    """(indptr, indices, data) of csr X with data in ``dtype`` (a copy only if it differs)."""
    return X.indptr, X.indices, np.asarray(X.data, dtype=dtype)


if AVAILABLE:
    _jit = numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
    #: for the helpers called once per row: a call of a compiled function that takes a dozen
    #: arrays costs ~150 ns (the arrays' reference counts are updated atomically on entry and
    #: exit), more than the small solve itself; inlined, the per-row pivoting is ~3x faster
    _jit_inline = numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")

    @_jit
    def _frobenius_kernel(indptr, indices, data, S, A, num_add, den, update_S, S_new, XA, XtS):
        n, k = S.shape
        has_add = num_add.shape[0] == n
        eps = S.dtype.type(EPS)
        for i in range(n):
            # X[i] A, accumulated in XA's row (the loop over k runs scalar for k < 32)
            for p in range(indptr[i], indptr[i + 1]):
                x = data[p]
                j = indices[p]
                for t in range(k):
                    XA[i, t] += x * A[j, t]
            if update_S:
                for t in range(k):
                    d = den[i, t]
                    if d == 0:
                        d = eps
                    num = XA[i, t] + num_add[i, t] if has_add else XA[i, t]
                    S_new[i, t] = S[i, t] * num / d
            # X[i]ᵀ S_new[i], scattered into the rows of XtS; the row's nonzeros are in cache
            for p in range(indptr[i], indptr[i + 1]):
                x = data[p]
                j = indices[p]
                for t in range(k):
                    XtS[j, t] += x * S_new[i, t]

    @numba.njit(nogil=True, fastmath=True, inline="always")
    def _row_dot(S, i, A, j, k):
        """S[i]·A[j] with four independent partial sums (a single chain of k dependent adds
        is latency-bound; k is too short for LLVM's loop vectorizer)."""
        z = S.dtype.type(0.0)
        a0 = z
        a1 = z
        a2 = z
        a3 = z
        k4 = k - k % 4
        for t in range(0, k4, 4):
            a0 += S[i, t] * A[j, t]
            a1 += S[i, t + 1] * A[j, t + 1]
            a2 += S[i, t + 2] * A[j, t + 2]
            a3 += S[i, t + 3] * A[j, t + 3]
        for t in range(k4, k):
            a0 += S[i, t] * A[j, t]
        return (a0 + a1) + (a2 + a3)

    @_jit
    def _kl_kernel(indptr, indices, data, S, A, den_row, num_add, den_add, cX, update_S, with_loss, a_stats,
                   S_new, RtS):
        n, k = S.shape
        has_na = num_add.shape[0] == n
        has_da = den_add.shape[0] == n
        num = np.empty(k, dtype=S.dtype)
        eps = S.dtype.type(EPS)
        cx = S.dtype.type(cX)
        xlog = 0.0
        for i in range(n):
            if update_S:
                for t in range(k):
                    num[t] = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                x = data[p]
                j = indices[p]
                xh = max(_row_dot(S, i, A, j, k), eps)
                if with_loss and x > 0:
                    xlog += float(x) * np.log(float(x) / float(xh))
                if update_S:
                    r = x / xh
                    for t in range(k):
                        num[t] += r * A[j, t]
            if update_S:
                for t in range(k):
                    nm = cx * num[t]
                    d = cx * den_row[t]
                    if has_na:
                        nm = nm + num_add[i, t]
                    if has_da:
                        d = d + den_add[i, t]
                    if d == 0:
                        d = eps
                    S_new[i, t] = S[i, t] * nm / d  # product first, as kernels.nmf._mu: no overflow of nm / d
            if a_stats:
                for p in range(indptr[i], indptr[i + 1]):
                    j = indices[p]
                    r = float(data[p] / max(_row_dot(S_new, i, A, j, k), eps))
                    for t in range(k):
                        RtS[j, t] += r * S_new[i, t]
        return xlog


def _opt(F, S):
    """An optional additive (n, k) term in S's dtype, or an empty (0, k) placeholder for "none"."""
    if F is None:
        return np.zeros((0, S.shape[1]), dtype=S.dtype)
    return np.ascontiguousarray(np.broadcast_to(F, S.shape), dtype=S.dtype)


def frobenius_step(X, S, A, den, *, num_add=None, update_S=True):
    """Frobenius MU of a CSR block's S rows and the block's Xᵀ S_new, in one sweep of X.

    Parameters
    ----------
    X : csr_matrix (n, n_features)
    S : ndarray (n, k), float32 or float64 (A, den and X's values are cast to its dtype)
    A : ndarray (n_features, k)
    den : ndarray (n, k)
        The update's denominator, e.g. ``S AᵀA`` (+ λ (L⊙S Bᵀ) B); it does not depend on X.
    num_add : ndarray (n, k) or None
        Added to the numerator ``X A`` (e.g. λ Y B).
    update_S : bool
        False: S_new = S (evaluation pass).

    Returns
    -------
    S_new : ndarray (n, k), ``S ⊙ (X A + num_add) / den`` (zero denominators as EPS)
    XA : ndarray (n, k), ``X A``
    XtS : float64 ndarray (n_features, k), ``Xᵀ S_new`` (accumulated in S's dtype, like
        scipy's product)
    """
    dt = S.dtype
    S = np.ascontiguousarray(S)
    indptr, indices, data = csr_parts(X, dt)
    na = _opt(num_add, S)
    S_new = np.empty_like(S) if update_S else S
    XA = np.zeros_like(S)
    XtS = np.zeros((X.shape[1], S.shape[1]), dtype=dt)
    _frobenius_kernel(indptr, indices, data, S, np.ascontiguousarray(A, dtype=dt), na,
                      np.ascontiguousarray(den, dtype=dt), bool(update_S), S_new, XA, XtS)
    return S_new, XA, XtS.astype(np.float64)


def kl_step(X, S, A, *, cX=1.0, num_add=None, den_add=None, update_S=True, with_loss=True, a_stats=True):
    """KL (I-divergence) MU of a CSR block's S rows and the block's (X ⊘ S_new Aᵀ)ᵀ S_new, one sweep of X.

    The data term's numerator is ``R A`` with ``R = X ⊘ max(S Aᵀ, EPS)`` at the stored entries and
    its denominator the column sums of A (no mask): ``S_new = S ⊙ ((cX·R A + num_add) /
    (cX·Σ_j A[j] + den_add))``, the ratio :func:`~dnmf_dask.kernels.solvers.general_block_step`
    forms (zero denominators as EPS). ``num_add``, ``den_add``: (n, k) or None (each optional).

    Returns
    -------
    S_new : ndarray (n, k)
    RtS : float64 ndarray (n_features, k), ``(X ⊘ max(S_new Aᵀ, EPS))ᵀ S_new`` (zeros if not ``a_stats``)
    xlog : float, ``Σ x log(x / max(x̂, EPS))`` over the stored x > 0 at the incoming S
        (0.0 if not ``with_loss``)
    """
    dt = S.dtype
    S = np.ascontiguousarray(S)
    A = np.ascontiguousarray(A, dtype=dt)
    indptr, indices, data = csr_parts(X, dt)
    S_new = np.empty_like(S) if update_S else S
    RtS = np.zeros((X.shape[1] if a_stats else 0, S.shape[1]), dtype=np.float64)
    den_row = A.sum(axis=0)
    xlog = _kl_kernel(indptr, indices, data, S, A, den_row, _opt(num_add, S), _opt(den_add, S), float(cX),
                      bool(update_S), bool(with_loss), bool(a_stats), S_new, RtS)
    return S_new, RtS, float(xlog)


# -- batched NNLS: block principal pivoting one row at a time ---------------------------------
if AVAILABLE:
    from llvmlite import ir as _llvm_ir
    from numba.core import types as _nb_types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _cttz(typingctx, x):
        """Index of the lowest set bit of a nonzero uint64 (LLVM's cttz)."""
        sig = _nb_types.uint64(_nb_types.uint64)

        def codegen(context, builder, signature, args):
            return builder.cttz(args[0], _llvm_ir.Constant(_llvm_ir.IntType(1), 0))

        return sig, codegen

    @_jit_inline
    def _bits_to_list(mask, out, start):
        """Append the indices of mask's set bits (ascending) to out[start:]; returns the new end."""
        e = start
        while mask:
            out[e] = _cttz(mask)
            e += 1
            mask &= mask - np.uint64(1)
        return e

    @_jit_inline
    def _ldl_extend(Q, idx, r0, m, rhs, M, fw):
        """Rows r0 … m−1 of the LDLᵀ factorisation of Q[idx[:m], idx[:m]] and of the forward
        substitution ``fw = L⁻¹ rhs`` (rows < r0 are already in M and fw); False if not
        numerically SPD (a pivot d_r ≤ 0).

        Row r of a row-oriented factorisation needs only rows < r, so when the index list only
        grows (new indices appended) the factor of the previous list is kept and extended: the
        pivoting's second and later solves mostly add one or two indices to the zero set.
        Row by row (the entries of Q gathered as they are needed), no square roots, and M's
        diagonal holding 1 / d_r: the solve is a chain of dependent operations, so each square
        root and division saved is latency saved. M holds the unit lower factor L below its
        diagonal and W = L D above it (``M[s, r] = L[r, s] d_s``).
        """
        for r in range(r0, m):
            ir = idx[r]
            for s in range(r):
                v = Q[ir, idx[s]]
                for t in range(s):
                    v -= M[t, r] * M[s, t]
                M[s, r] = v            # W[r, s] = L[r, s] d_s
                M[r, s] = v * M[s, s]  # L[r, s]
            d = Q[ir, ir]
            w = rhs[r]
            for s in range(r):
                d -= M[s, r] * M[r, s]
                w -= M[r, s] * fw[s]
            if not d > 0.0:
                return False
            M[r, r] = 1.0 / d
            fw[r] = w  # L fw = rhs
        return True

    @_jit_inline
    def _ldl_back(M, m, fw, out):
        """out[:m] = L⁻ᵀ D⁻¹ fw[:m] (the back substitution of :func:`_ldl_extend`'s factor)."""
        for r in range(m - 1, -1, -1):
            v = fw[r] * M[r, r]
            for s in range(r + 1, m):
                v -= M[s, r] * out[s]
            out[r] = v

    @_jit_inline
    def _ldl_solve_sub(Q, idx, m, rhs, M, out):
        """out[r] = (Q[idx, idx]⁻¹ rhs)[r] for r < m, by an LDLᵀ factorisation; False if not
        numerically SPD (a pivot d_r ≤ 0).

        Row by row (the entries of Q gathered as they are needed), the forward substitution
        fused in, no square roots, and M's diagonal holding 1 / d_r: the solve is a chain of
        dependent operations, so each square root and division saved is latency saved. M holds
        the unit lower factor L below its diagonal and W = L D above it (``M[s, r] = L[r, s] d_s``).

        The same factorisation as :func:`_ldl_extend` + :func:`_ldl_back`, kept as one function
        for the single solves of :func:`passive_rows`: written as those two calls, that kernel
        measured ~10% slower (numba 0.68; the generated loops differ), and written as this one,
        the pivoting kernel ~20% slower.
        """
        for r in range(m):
            ir = idx[r]
            for s in range(r):
                v = Q[ir, idx[s]]
                for t in range(s):
                    v -= M[t, r] * M[s, t]
                M[s, r] = v            # W[r, s] = L[r, s] d_s
                M[r, s] = v * M[s, s]  # L[r, s]
            d = Q[ir, ir]
            w = rhs[r]
            for s in range(r):
                d -= M[s, r] * M[r, s]
                w -= M[r, s] * out[s]
            if not d > 0.0:
                return False
            M[r, r] = 1.0 / d
            out[r] = w  # L w = rhs
        for r in range(m - 1, -1, -1):  # Lᵀ out = D⁻¹ w
            v = out[r] * M[r, r]
            for s in range(r + 1, m):
                v -= M[s, r] * out[s]
            out[r] = v
        return True

    @_jit_inline
    def _complement_x(H, u, nb, q, z, x):
        """x = u − H[:, N] z, exactly 0 on N = nb[:q] (H symmetric: rows, contiguous)."""
        for a in range(u.shape[0]):
            x[a] = u[a]
        for s in range(q):
            zs = z[s]
            h = nb[s]
            for a in range(u.shape[0]):
                x[a] -= zs * H[h, a]
        for s in range(q):
            x[nb[s]] = 0.0

    @_jit_inline
    def _solve_passive_row(G, H, u, c, P, x, M, b, nb, rhs, z):
        """x_F = G_FF⁻¹ c_F (0 off F); False if the system is not numerically SPD.

        With ``H = G⁻¹`` and ``u = H c`` and fewer zeros than passive entries, through the
        zero set N instead (as the numpy path): ``x = u − H[:, N] z`` with ``z = H_NN⁻¹ u_N``.
        """
        k = G.shape[0]
        m = 0
        q = 0
        for a in range(k):  # F and N as index lists, without a branch per entry (unpredictable)
            pa = P[a]
            b[m] = a
            nb[q] = a
            m += pa
            q += 1 - pa
        if H.shape[0] == k and q < m:
            for r in range(q):
                rhs[r] = u[nb[r]]
            if not _ldl_solve_sub(H, nb, q, rhs, M, z):
                return False
            _complement_x(H, u, nb, q, z, x)
            return True
        for r in range(m):
            rhs[r] = c[b[r]]
        if not _ldl_solve_sub(G, b, m, rhs, M, z):
            return False
        for a in range(k):
            x[a] = 0.0
        for r in range(m):
            x[b[r]] = z[r]
        return True

    @_jit
    def _bpp_rows_kernel(G, H, U, C, P0, max_iter, tol, p_bar, X, P, unfinished):
        """Block principal pivoting of every row in turn (see :func:`bpp_rows`).

        Work per pivoting round: the solve, one pass for max(x), one for the KKT test (which also
        clamps x, exact nonnegativity if it is the last round: x is recomputed by the next
        solve otherwise), one for the exchange, which also lists the indices it moved. The
        factor of the current system is kept from round to round: when the system's index
        list only grew (the zero set N in the complement form, the passive set F in the direct
        one; ~90% of the later solves on the benchmark), only the new rows of the factor are
        computed (:func:`_ldl_extend`), else it is refactored in index order. All workspace is
        allocated once per call.
        """
        n, k = C.shape
        tiny = np.finfo(np.float64).tiny
        gscale = tiny
        for a in range(k):
            gscale = max(gscale, abs(G[a, a]))
        has_H = H.shape[0] == k
        has_P0 = P0.shape[0] == n
        y = np.zeros(k)  # read (and discarded) on F too by the selects below: keep it finite
        M = np.empty((k, k))
        lst = np.empty(k, dtype=np.int64)  # the factor's index list (N or F), in factor order
        to_n = np.empty(k, dtype=np.int64)  # indices the last exchange moved F -> N
        to_f = np.empty(k, dtype=np.int64)  # ... and N -> F
        rhs = np.empty(k)
        fw = np.empty(k)
        z = np.empty(k)
        V = np.empty(k, dtype=np.bool_)
        n_iter_max = 0
        n_backup = 0
        # k <= 64: F and the violations are also kept as bit masks, and the index lists are
        # read off them (one step per set bit) instead of compacted from k entries
        bits = k <= 64
        one = np.uint64(1)
        full = ~np.uint64(0) >> np.uint64(64 - min(max(k, 1), 64))
        for i in range(n):
            c = C[i]
            x = X[i]
            F = P[i]
            u = U[i] if has_H else c  # the unconstrained solution H c (unused without H)
            cscale = 0.0
            m = 0  # |F|
            fmask = np.uint64(0)  # F as bits (k <= 64)
            if has_P0:
                for a in range(k):
                    cscale = max(cscale, abs(c[a]))
                    pa = P0[i, a]
                    F[a] = pa
                    m += pa
                    fmask |= np.uint64(pa) << np.uint64(a & 63)
            elif has_H:  # everything passive: the unconstrained solution
                for a in range(k):
                    cscale = max(cscale, abs(c[a]))
                    F[a] = True
                    x[a] = u[a]
                m = k
                fmask = full
            else:
                for a in range(k):
                    cscale = max(cscale, abs(c[a]))
                    F[a] = False
                    x[a] = 0.0
                    y[a] = -c[a]
            ok = True
            solve = has_P0
            ninf = k + 1
            pcount = p_bar
            it = 0
            form = 0  # the factor in M: 0 none, 1 of H_NN (complement form), 2 of G_FF (direct)
            ln = 0
            n_to_n = 0
            n_to_f = 0
            while True:
                if solve:
                    # the complement form (through H = G⁻¹ on the zero set) when it is the
                    # smaller system, as the numpy path
                    cform = 1 if (has_H and k - m < m) else 2
                    r0 = 0
                    ext = False
                    if cform == form:
                        if cform == 1 and n_to_f == 0:  # N only grew: extend the factor of H_NN
                            ext = True
                            for s in range(n_to_n):
                                lst[ln + s] = to_n[s]
                            r0 = ln
                            ln += n_to_n
                        elif cform == 2 and n_to_n == 0:  # F only grew: extend that of G_FF
                            ext = True
                            for s in range(n_to_f):
                                lst[ln + s] = to_f[s]
                            r0 = ln
                            ln += n_to_f
                    if not ext:  # a new factor, of N (or F) in index order
                        want = cform == 2
                        if bits:
                            ln = _bits_to_list(fmask if want else full & ~fmask, lst, 0)
                        else:
                            ln = 0
                            for a in range(k):
                                lst[ln] = a
                                ln += F[a] == want
                    if cform == 1:
                        for r in range(r0, ln):
                            rhs[r] = u[lst[r]]
                        ok = _ldl_extend(H, lst, r0, ln, rhs, M, fw)
                    else:
                        for r in range(r0, ln):
                            rhs[r] = c[lst[r]]
                        ok = _ldl_extend(G, lst, r0, ln, rhs, M, fw)
                    if not ok:
                        break
                    form = cform
                    _ldl_back(M, ln, fw, z)
                    if cform == 1:
                        # x = u − H[:, N] z with z = H_NN⁻¹ u_N; the gradient off F is free:
                        # y_N = −z (G x − c = G u − c − (G H)[:, N] z and G H = I)
                        _complement_x(H, u, lst, ln, z, x)
                        for s in range(ln):
                            y[lst[s]] = -z[s]
                    else:
                        # x_F = G_FF⁻¹ c_F, y = Σ_{s∈F} x_s G[s] − c (rows of G, contiguous)
                        for a in range(k):
                            x[a] = 0.0
                            y[a] = -c[a]
                        for r in range(ln):
                            xs = z[r]
                            g = lst[r]
                            x[g] = xs
                            for a in range(k):
                                y[a] += xs * G[g, a]
                solve = True
                xmax = 0.0
                for a in range(k):
                    xmax = max(xmax, x[a])
                thr = -tol * max(cscale + gscale * xmax, tiny)
                nv = 0
                vmask = np.uint64(0)
                for a in range(k):  # selects, not branches: F is unpredictable (and no
                    xa = x[a]       # "last violation" select chain: the loop vectorizes)
                    w = y[a]
                    if F[a]:
                        w = xa * gscale
                    va = w < thr
                    V[a] = va
                    nv += va
                    vmask |= np.uint64(va) << np.uint64(a & 63)
                    x[a] = max(xa, 0.0)  # exact nonnegativity (passive entries may be negative
                    # within the tolerance); if the row goes on, the next solve rewrites x
                if nv == 0:
                    break
                if it >= max_iter:
                    ok = False
                    break
                it += 1
                if nv < ninf:
                    ninf = nv
                    pcount = p_bar
                elif pcount >= 1:
                    pcount -= 1
                else:  # backup rule: exchange only the infeasible variable of largest index
                    n_backup += 1
                    last = k - 1
                    while not V[last]:
                        last -= 1
                    for a in range(k):
                        V[a] = a == last
                    vmask = one << np.uint64(last & 63)
                if bits:  # the exchange, and the moved indices read off the masks
                    for a in range(k):
                        F[a] = F[a] != V[a]
                    n_to_n = _bits_to_list(vmask & fmask, to_n, 0)
                    n_to_f = _bits_to_list(vmask & ~fmask, to_f, 0)
                    fmask ^= vmask
                else:  # the exchange, listing the moved indices (no branches)
                    n_to_n = 0
                    n_to_f = 0
                    for a in range(k):
                        fa = F[a]
                        va = V[a]
                        to_n[n_to_n] = a
                        to_f[n_to_f] = a
                        n_to_n += va & fa
                        n_to_f += va & (not fa)
                        F[a] = fa != va
                m += n_to_f - n_to_n
            n_iter_max = max(n_iter_max, it)
            unfinished[i] = not ok
        return n_iter_max, n_backup


if AVAILABLE:
    @_jit
    def _passive_rows_kernel(G, H, U, C, P, X, failed):
        n, k = C.shape
        has_H = H.shape[0] == k
        M = np.empty((k, k))
        b = np.empty(k, dtype=np.int64)
        nb = np.empty(k, dtype=np.int64)
        rhs = np.empty(k)
        z = np.empty(k)
        for i in range(n):
            u = U[i] if has_H else C[i]
            failed[i] = not _solve_passive_row(G, H, u, C[i], P[i], X[i], M, b, nb, rhs, z)


if AVAILABLE:
    @_jit
    def _spectrum_inverse_kernel(G):
        w = np.linalg.eigvalsh(G)
        return w[0], w[-1], np.linalg.solve(G, np.eye(G.shape[0]))


def spectrum_inverse(G):
    """(smallest eigenvalue, largest eigenvalue, G⁻¹) of a symmetric float64 (k, k) G, k ≥ 1,
    in one compiled call (LAPACK's syevd and gesv, as numpy's eigvalsh and solve(G, I)).
    The inverse is only meaningful when G is not singular (the caller decides from the
    spectrum); it is None if LAPACK reports G exactly singular."""
    try:
        w0, wmax, H = _spectrum_inverse_kernel(np.ascontiguousarray(G, dtype=np.float64))
    except np.linalg.LinAlgError:
        return _spectrum_only(G)
    return float(w0), float(wmax), H


def _spectrum_only(G):
    w = np.linalg.eigvalsh(G)
    return float(w[0]), float(w[-1]), None


def _row_inputs(G, H, C, U=None):
    """Contiguous float64 (G, H, C, U) for the row kernels: H = G⁻¹ or an empty (0, 0) array,
    U = C H (H symmetric: the rows are the unconstrained solutions H c; computed unless given),
    or C itself without H (unused then)."""
    C = np.ascontiguousarray(C, dtype=np.float64)
    H = np.zeros((0, 0)) if H is None else np.ascontiguousarray(H, dtype=np.float64)
    if H.shape[0] != C.shape[1]:
        U = C
    elif U is None:
        U = C @ H
    else:
        U = np.ascontiguousarray(U, dtype=np.float64)
    return np.ascontiguousarray(G, dtype=np.float64), H, C, U


def passive_rows(G, H, C, P, U=None):
    """``X[i, F_i] = G_{F_i F_i}⁻¹ C[i, F_i]`` (zeros off the passive set F_i = P[i]) row by row.

    The linear solves of :meth:`dnmf_dask.kernels.nnls._PassiveSolver.solve` (the gradient
    through q of Neural NMF solves one per sample and layer) in compiled code, by an LDLᵀ factorisation of
    G_FF or, given ``H = G⁻¹`` and fewer zeros than passive entries, of H_NN on the zero set.
    For non-singular G only.

    Parameters
    ----------
    G : float64 (k, k); H : float64 (k, k) or None; C : float64 (n, k); P : bool (n, k);
    U : float64 (n, k) = C H, optional (computed when H is given)

    Returns
    -------
    X : float64 (n, k), failed : int64 indices of rows whose system was not numerically SPD
    (to be solved by another path)
    """
    n, k = C.shape
    G, H, C, U = _row_inputs(G, H, C, U)
    X = np.zeros((n, k))
    failed = np.zeros(n, dtype=bool)
    _passive_rows_kernel(G, H, U, C, np.ascontiguousarray(P, dtype=bool), X, failed)
    return X, np.flatnonzero(failed)


def bpp_rows(G, H, C, P0, max_iter, tol, p_bar):
    """Kim & Park block principal pivoting (as :func:`dnmf_dask.kernels.nnls._bpp`), one row at a time.

    Same initial partition (``P0``; else all passive with the unconstrained solution ``H c``
    when ``H = G⁻¹`` is given; else all active), KKT test, full exchange with ``p_bar`` tries and
    backup rule, but each row is iterated to the end by itself in compiled code (no numpy
    overhead per pivoting round), with G_FF solved by an LDLᵀ factorisation (or, given H and with fewer zeros
    than passive entries, H_NN on the zero set, as the numpy path). The factor is kept from round
    to round and only extended when the set it factors only grew (the common case: the zero set
    after the first round is mostly a subset of the final one); workspace is allocated once per
    call, and the KKT test, the exchange and the index lists are branch-free (bit masks for
    k ≤ 64). For non-singular G only.

    Parameters
    ----------
    G : float64 (k, k); H : float64 (k, k) or None; C : float64 (n, k); P0 : bool (n, k) or None

    Returns
    -------
    X : float64 (n, k), ≥ 0 and 0 off P on the finished rows (undefined on unfinished ones),
    P : bool (n, k) (final passive sets), n_iter (max over rows),
    n_backup (row-iterations that used the backup rule), unfinished : int64 indices of rows that
    hit ``max_iter`` or met a non-SPD G_FF (to be finished by another solver)
    """
    n, k = C.shape
    X = np.empty((n, k))  # every row is written in full (or reported unfinished)
    P = np.empty((n, k), dtype=bool)
    unf = np.zeros(n, dtype=bool)
    G, H, C, U = _row_inputs(G, H, C)
    P0 = np.zeros((0, k), dtype=bool) if P0 is None else np.ascontiguousarray(P0, dtype=bool)
    n_iter, n_backup = _bpp_rows_kernel(G, H, U, C, P0, int(max_iter), float(tol), int(p_bar), X, P, unf)
    return X, P, int(n_iter), int(n_backup), np.flatnonzero(unf)
