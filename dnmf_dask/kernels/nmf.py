"""Frobenius multiplicative updates for NMF and semi-supervised NMF on one row block.

Orientation (DESIGN.md §1): a block of data ``X`` is (n, n_features) with rows = samples;
``S`` is (n, k), ``A`` is (n_features, k), so X ≈ S Aᵀ. The classifier ``B`` is
(n_classes, k) and the one-hot labels ``Y`` (n, n_classes) ≈ S Bᵀ on labeled rows.

Lee–Yoo–Choi semi-supervised NMF (the papers' eq. (2)), transcribed to this orientation, with
data mask W (n, n_features) and label mask L (labeled rows)::

    S ← S ⊙ [(W⊙X) A + λ (L⊙Y) B] / [(W⊙(S Aᵀ)) A + λ (L⊙(S Bᵀ)) B]
    A ← A ⊙ [(W⊙X)ᵀ S] / [(W⊙(S Aᵀ))ᵀ S]
    B ← B ⊙ [(L⊙Y)ᵀ S] / [(L⊙(S Bᵀ))ᵀ S]

With λ = 0 (or no labels) and no mask these are Lee and Seung's NMF updates.

Products with a sparse X: a CSR block of at least ``SPMM_MIN_NNZ`` nonzeros goes to the
rank-specialised numba kernels of :mod:`dnmf_dask.kernels.spmm` (one fused sweep per unmasked
block step, ``X @ A`` / ``Xᵀ @ S`` elsewhere), everything else to scipy; ``DNMF_DASK_SPMM=0``
keeps scipy everywhere (the reference the tests compare the kernels with).

Per block, :func:`block_step` does the S update of the block's rows (local) and returns the
block's contributions to the numerators and denominators of the A and B updates (sums over
rows, so blocks add up); :func:`update_factor` applies an update to the summed statistics
(in the root task of the pass's reduction, see :func:`dnmf_dask.parallel.mu.fit_mu`).

eps guard: wherever a denominator is exactly 0 it is replaced by ``EPS`` (float32 machine
epsilon, as scikit-learn does), so a zero numerator gives 0 and never 0/0 = NaN; factors stay
≥ 0 because numerators and denominators are sums of products of nonnegative numbers.
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.sparse as sp

from ._env import FROBENIUS_ENV, env_flag, spmm_module, spmm_wanted

EPS = float(np.finfo(np.float32).eps)


def _fused_frobenius(X, S):
    """:mod:`~dnmf_dask.kernels.fused` if its Frobenius sweep is on (``fused.FROBENIUS``) and applies
    to ``(X, S)``, else None.

    That module imports numba, which costs a worker process ~50 MB (~140 MB once its kernels are
    defined and loaded) of the memory its ``memory_limit`` counts; the sweep is off by default, so the module is imported
    here only when its environment switch asks for it, or if it is already imported (a test or a
    benchmark flipping ``fused.FROBENIUS``, or a NeuralNMF task that needed its NNLS kernels).
    """
    fused = sys.modules.get(f"{__package__}.fused")
    if fused is None:
        if not env_flag(FROBENIUS_ENV, False):
            return None
        from . import fused
    return fused if fused.FROBENIUS and fused.usable(X, S) else None


def _spmm_for(X, F):
    """:mod:`~dnmf_dask.kernels.spmm` if its kernels should form a product of CSR X with the
    float (·, k) array F (:func:`~dnmf_dask.kernels._env.spmm_wanted`), else None."""
    if isinstance(F, np.ndarray) and F.ndim == 2 and F.dtype in (np.float32, np.float64) and spmm_wanted(X, F.shape[1]):
        return spmm_module()
    return None


def sparse_times(X, F):
    """``X @ F`` as an ndarray: X (n, m) sparse or dense, F (m, k); the rank-specialised kernel for
    a large CSR X, else scipy/numpy."""
    spmm = _spmm_for(X, F)
    if spmm is None:
        return np.asarray(X @ F)
    return spmm.csr_dense(X, F, dtype=np.result_type(X.dtype, F.dtype))


def sparse_t_times(X, F):
    """``Xᵀ @ F`` as an ndarray: X (n, m) sparse or dense, F (n, k); like :func:`sparse_times`."""
    spmm = _spmm_for(X, F)
    if spmm is None:
        return np.asarray(X.T @ F)
    return spmm.csr_t_dense(X, F, dtype=np.result_type(X.dtype, F.dtype))


def _safe_ratio(num, den):
    den = np.where(den == 0, EPS, den)
    return num / den


def _mu(F, num, den):
    """The multiplicative update ``F ⊙ num / den`` (zero denominators as EPS).

    ``F ⊙ num`` is formed first: a tiny row of F makes ``den = F G`` tiny too, and ``num / den``
    alone would overflow to inf (then inf·F = inf or NaN) where the update itself is finite.
    """
    return F * num / np.where(den == 0, EPS, den)


def _floored_gram(G):
    """G (k, k) with its diagonal raised to at least eps² · max(diag G), for MU denominators.

    A component whose squared norm underflowed (≪ the others', e.g. a column of A at 1e-231)
    has a zero diagonal entry while its numerator is positive: the factor num/den then grows S
    by ~1e78 per iteration until it overflows to inf and NaN. The floor is far below the
    rounding of every other entry, so ordinary problems are unchanged bit for bit.
    """
    d = np.diagonal(G)
    if d.size == 0:
        return G
    floor = float(np.finfo(G.dtype).eps) ** 2 * float(d.max())
    if not (d < floor).any():
        return G
    G = G.copy()
    i = np.arange(d.size)
    G[i, i] = np.maximum(d, floor)
    return G


def gram_den(F, G, FG=None):
    """The MU denominator ``F @ G`` with G's diagonal floored (:func:`_floored_gram`).

    ``FG`` is ``F @ G`` when the caller has formed it already (e.g. for the loss): it is returned
    as is when no floor applies, so the product is not formed twice.
    """
    Gf = _floored_gram(G)
    if Gf is G:
        return F @ G if FG is None else FG
    return F @ Gf


def _sq_norm(X):
    """||X||_F² in float64; for canonical CSR straight from the stored values (no X ⊙ X copy)."""
    if sp.issparse(X):
        if getattr(X, "has_canonical_format", False):
            if X.data.dtype in (np.float32, np.float64) and spmm_wanted(X, 1):
                return spmm_module().sq_norm(X.data)
            return float(np.einsum("i,i->", X.data, X.data, dtype=np.float64))
        return float(X.multiply(X).sum())
    return float(np.einsum("ij,ij->", X, X, dtype=np.float64))


def one_hot(y, n_classes, dtype=np.float64):
    """One-hot (n, n_classes) of labels ``y``; rows with ``y == -1`` are all zero (= L ⊙ Y)."""
    y = np.asarray(y)
    Y = np.zeros((y.shape[0], n_classes), dtype=dtype)
    lab = y >= 0
    Y[np.flatnonzero(lab), y[lab]] = 1
    return Y


def split_missing(X, W=None):
    """Return (X with missing entries set to 0, mask or None).

    Dense X: NaN marks missing entries (combined with ``W`` if given). Sparse X: ``W`` is a
    sparse matrix whose pattern holds the observed entries (stored zeros of X outside it are
    ignored), or None = everything observed.
    """
    if sp.issparse(X):
        if W is None:
            return X, None
        W = sp.csr_matrix(W, dtype=bool)
        Xw = X.multiply(W).tocsr()
        return Xw, W
    nan = np.isnan(X)
    if nan.any():
        W = ~nan if W is None else (np.asarray(W, dtype=bool) & ~nan)
    if W is None:
        return X, None
    W = np.asarray(W, dtype=bool)
    return np.where(W, np.nan_to_num(X), 0).astype(X.dtype, copy=False), W


def _dense_float(X):
    """X is a dense 2-D float32/float64 ndarray (what the one-sweep dense paths take)."""
    return isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype in (np.float32, np.float64)


def _rows_dot(X, Y):
    """``⟨X, Y⟩`` of two dense (n, m) arrays: each row summed in their dtype (vectorised), the rows
    in float64. ~1e-9 from a float64 sum at float32 and 2–3× faster than ``einsum`` with
    ``dtype=float64``, which casts in buffered chunks (a NaN or inf entry, or products beyond the
    dtype, make it not finite)."""
    return float(np.einsum("ij,ij->i", X, Y).sum(dtype=np.float64))


def _rows_sq_norm(X):
    """``||X||²`` of a dense block (:func:`_rows_dot`)."""
    return _rows_dot(X, X)


def observed(X, W=None):
    """``(X, W, ||W⊙X||²)``: :func:`split_missing`'s pair and the squared norm of the observed
    entries in float64, with one sweep of a dense X that has no missing entry.

    The norm is what the NaN test reads: a dense X without a mask is summed first (per row in
    X's dtype, the rows in float64: a float32 block's norm costs ~0.5 ms per 5M entries against
    2.5 ms cast to float64, and agrees to ~1e-9), and only a sum that is not finite (a NaN, an
    inf, or squares beyond the dtype's range) takes :func:`split_missing`'s path and the norm of
    the zero-filled X in float64. Every MU pass needs ||X||²; for dense blocks these two sweeps
    were as costly as one of the pass's two GEMMs (BENCHMARKS.md, dense MU).
    """
    if W is None and _dense_float(X):
        norm = _rows_sq_norm(X)
        if np.isfinite(norm):
            return X, None, norm
    X, W = split_missing(X, W)
    return X, W, _sq_norm(X)


#: a dense block's MU pass takes its rows in pieces of about this many bytes of X, so that the
#: piece read for ``X A`` is still in the core's cache for ``Xᵀ S_new`` (:func:`_dense_mu_sweep`)
SWEEP_PIECE_BYTES = 1 << 20


def _dense_mu_sweep(X, S, A, den, num_add, update_S):
    """The Frobenius MU pass of a dense block without a mask, reading X from memory once.

    Two GEMMs of a k-column factor stream the whole block each (``X A``, then ``Xᵀ S_new``);
    with both cores doing so the memory bus, not the arithmetic, set the pace. Here the rows go
    in pieces of :data:`SWEEP_PIECE_BYTES`: a piece's ``X A``, its new S rows, its ``Xᵀ S_new``
    contribution and its squared norm are formed while it is in cache. (4 blocks of 5,000 × 1,000
    float32 on 2 threads: 19.6 → 12.6 ms, BENCHMARKS.md "Dense MU".)

    Returns ``(S_new, XᵀS_new in float64, ⟨S, X A⟩, ||X||²)``, or None as soon as a piece's norm
    is not finite (a NaN or inf entry: the caller takes the masked path).
    """
    X = np.asarray(X)  # (an np.matrix would make `*` a matrix product)
    n, f = X.shape
    rows = max(8, SWEEP_PIECE_BYTES // max(1, f * X.itemsize))
    dt = S.dtype
    S_new = np.empty_like(S) if update_S else S
    # summed in the products' dtype, as one GEMM would (a float32 sum then travels as float32)
    XtS = np.zeros((f, S.shape[1]), dtype=np.result_type(X.dtype, S.dtype))
    S_XA = norm = 0.0
    for i in range(0, n, rows):
        Xp, Sp = X[i : i + rows], S[i : i + rows]
        norm += _rows_sq_norm(Xp)
        if not np.isfinite(norm):
            return None
        XA = Xp @ A
        S_XA += _rows_dot(Sp, XA)
        if update_S:
            num = XA if num_add is None else XA + num_add[i : i + rows]
            S_new[i : i + rows] = _mu(Sp, num, den[i : i + rows])
        XtS += Xp.T @ S_new[i : i + rows]
    return S_new.astype(dt, copy=False), XtS.astype(np.float64), S_XA, norm


def _unmasked_step(X, S, A, den, num_add, update_S):
    """``(S_new, XᵀS_new in float64, ⟨S, X A⟩)`` of the Frobenius MU pass without a mask, for the
    blocks :func:`_dense_mu_sweep` does not take: sparse ones, and dense ones of another dtype."""
    fused = _fused_frobenius(X, S)
    spmm = None if fused is not None else _spmm_for(X, S)
    if spmm is not None:
        # one sweep of X with the rank-specialised kernel (kernels/spmm.py): the new rows of S,
        # Xᵀ S_new (in S's dtype, like scipy's product) and ⟨S, X A⟩, without forming X A
        S_new, XtS, S_XA = spmm.mu_step(X, S, A, den, num_add=num_add, update_S=update_S)
        return S_new, XtS.astype(np.float64), S_XA
    if fused is not None:
        # one sweep of X: X A, the new rows of S and Xᵀ S_new (kernels/fused.py)
        S_new, XA, XtS = fused.frobenius_step(X, S, A, den, num_add=num_add, update_S=update_S)
    else:
        XA = np.asarray(X @ A)
        num = XA if num_add is None else XA + num_add
        S_new = _mu(S, num, den).astype(S.dtype, copy=False) if update_S else S
        XtS = np.asarray(X.T @ S_new, dtype=np.float64)
    return S_new, XtS, float(np.einsum("ij,ij->", S, XA, dtype=np.float64))


def masked_product(S, A, W):
    """W ⊙ (S Aᵀ): dense (n, n_features) for a dense mask, sparse with W's pattern for a sparse mask."""
    if sp.issparse(W):
        W = W.tocoo()
        vals = np.einsum("ij,ij->i", S[W.row], A[W.col])
        return sp.csr_matrix((vals, (W.row, W.col)), shape=W.shape)
    return (S @ A.T) * W


def block_step(X, S, A, *, B=None, y=None, lam=0.0, W=None, update_S=True, AtA=None):
    """One multiplicative update of a block's S rows, and the block's sums for the A/B updates.

    Parameters
    ----------
    X : ndarray or csr_matrix, shape (n, n_features)
        The block (NaN = missing for dense).
    S : ndarray (n, k)
        The block's current coefficients.
    A : ndarray (n_features, k)
    B : ndarray (n_classes, k) or None
        Classifier (SSNMF). Ignored when ``lam == 0``.
    y : ndarray of int (n,) or None
        Labels of the block, -1 = unlabeled.
    lam : float
        Weight λ of the label term.
    W : bool ndarray (n, n_features) or sparse pattern, optional
        Data mask (see :func:`split_missing`).
    update_S : bool
        If False, S is kept (used to evaluate the objective only).
    AtA : ndarray (k, k), optional
        Precomputed ``A.T @ A`` (shared by all blocks).

    Returns
    -------
    S_new : ndarray (n, k)
    stats : dict of float64 arrays, each a sum over the block's rows
        ``XtS`` (n_features, k) = (W⊙X)ᵀ S_new; ``StS`` (k, k) = S_newᵀ S_new (no mask) or
        ``WSAtS`` (n_features, k) = (W⊙(S_new Aᵀ))ᵀ S_new (mask); with labels ``YtS``
        (n_classes, k) and ``StS_L`` (k, k) over labeled rows; and, evaluated at the *incoming*
        (S, A, B): ``loss_X`` = ||W⊙(X − S Aᵀ)||², ``loss_Y`` = ||L⊙(Y − S Bᵀ)||²,
        ``norm_X`` = ||W⊙X||², ``n_labeled`` and ``n_correct`` (argmax of S Bᵀ).
    """
    dt = S.dtype
    A = A.astype(dt, copy=False)
    stats = {}
    labeled, Y, num_L, den_L = _label_parts(S, B, y, lam, dt, stats)
    swept = None
    if W is None:
        AtA = (A.T @ A if AtA is None else AtA).astype(dt, copy=False)
        SAtA = S @ AtA
        den = gram_den(S, AtA, SAtA)
        den = den if den_L is None else den + den_L
        if _dense_float(X):
            # X read from memory once (None: X has missing or infinite entries, the masked path)
            swept = _dense_mu_sweep(X, S, A, den, num_L, update_S)
    if swept is None:
        X, W, norm_X = observed(X, W)
        if W is None:
            S_new, XtS, S_XA = _unmasked_step(X, S, A, den, num_L, update_S)
    else:
        S_new, XtS, S_XA, norm_X = swept
    stats["norm_X"] = norm_X
    if W is None:
        stats["XtS"] = XtS
        # ||X − S Aᵀ||² = ||X||² − 2⟨S, X A⟩ + ⟨SᵀS, AᵀA⟩, without forming S Aᵀ
        loss_X = norm_X - 2.0 * S_XA + _rows_dot(S, SAtA)
        stats["loss_X"] = max(loss_X, 0.0)
        stats["StS"] = (S_new.T @ S_new).astype(np.float64)
    else:
        XA = sparse_times(X, A)
        WSA = masked_product(S, A, W)
        R = X - WSA
        stats["loss_X"] = (float(R.multiply(R).sum()) if sp.issparse(R)
                           else float(np.einsum("ij,ij->", R, R, dtype=np.float64)))
        num, den = XA, np.asarray(WSA @ A)
        if num_L is not None:
            num, den = num + num_L, den + den_L
        S_new = _mu(S, num, den).astype(dt, copy=False) if update_S else S
        stats["XtS"] = sparse_t_times(X, S_new).astype(np.float64, copy=False)
        stats["WSAtS"] = np.asarray(masked_product(S_new, A, W).T @ S_new, dtype=np.float64)
    if labeled is not None:
        SL = S_new[labeled]
        stats["YtS"] = (Y[labeled].T @ SL).astype(np.float64)
        stats["StS_L"] = (SL.T @ SL).astype(np.float64)
    return S_new, stats


def _label_parts(S, B, y, lam, dt, stats):
    """The label term of a block at the incoming S (SSNMF), or Nones without labels.

    Adds ``loss_Y``, ``n_labeled``, ``n_correct`` to ``stats``; returns (labeled mask, one-hot
    Y, the S-update numerator term λ Y B, denominator term λ (L⊙S Bᵀ) B) -- the last two None
    when ``lam == 0``.
    """
    if B is None or y is None:
        return None, None, None, None
    labeled = np.asarray(y) >= 0
    B = B.astype(dt, copy=False)
    Y = one_hot(y, B.shape[0], dt)
    SB = S @ B.T
    LSB = SB * labeled[:, None]
    stats["loss_Y"] = float(np.sum((Y - LSB) ** 2, dtype=np.float64))
    stats["n_labeled"] = int(labeled.sum())
    stats["n_correct"] = int(np.sum((np.argmax(SB, axis=1) == y) & labeled))
    if lam > 0:
        return labeled, Y, lam * (Y @ B), lam * (LSB @ B)
    return labeled, Y, None, None


def update_factor(F, num, den_gram=None, den_full=None):
    """Multiplicative update of a factor from summed statistics.

    ``F ← F ⊙ num / den`` with ``den = F @ den_gram`` (e.g. A (SᵀS), B (S_Lᵀ S_L)) or a
    precomputed ``den_full`` (masked case). Shapes: F, num, den all (rows, k).
    """
    den = gram_den(F, den_gram) if den_full is None else den_full
    return _mu(F, num, den).astype(F.dtype, copy=False)


def transform_block(X, A, S, *, max_iter=200, tol=1e-4, W=None):
    """Coefficients of new samples with A fixed: MU on S only (no reduction needed).

    Runs until the relative decrease of the block's objective falls below ``tol`` or
    ``max_iter`` iterations; returns (S, n_iter).
    """
    X, W = split_missing(X, W)
    A = A.astype(S.dtype, copy=False)
    XA = sparse_times(X, A)
    AtA = A.T @ A
    AtA_den = _floored_gram(AtA)
    norm_X = float(X.multiply(X).sum()) if sp.issparse(X) else float(np.sum(X * X))
    prev = None
    it = 0
    for it in range(1, max_iter + 1):
        if W is None:
            den = S @ AtA_den
        else:
            den = np.asarray(masked_product(S, A, W) @ A)
        S = _mu(S, XA, den)
        if tol > 0 and it % 10 == 0:
            if W is None:
                obj = norm_X - 2.0 * np.sum(S * XA) + np.sum((S.T @ S) * AtA)
            else:
                R = X - masked_product(S, A, W)
                obj = float(R.multiply(R).sum()) if sp.issparse(R) else float(np.sum(R * R))
            if prev is not None and abs(prev - obj) <= tol * max(abs(prev), 1e-300):
                break
            prev = obj
    return S, it


def semi_block_step(X, S, A, *, AtA=None, update_S=True):
    """Semi-NMF (Ding, Li & Jordan 2010) on a block: A free in sign, S ≥ 0, X of any sign.

    In our orientation X ≈ S Aᵀ; the S update is
    ``S ← S ⊙ sqrt( ((X A)⁺ + S (AᵀA)⁻) / ((X A)⁻ + S (AᵀA)⁺) )`` with F⁺ = (|F|+F)/2,
    F⁻ = (|F|−F)/2; the A update from the summed statistics is the least-squares ``A = XᵀS (SᵀS)⁻¹``
    (:func:`semi_update_A`). Returns (S_new, stats) with ``XtS``, ``StS`` and the incoming
    ``loss_X``, ``norm_X`` like :func:`block_step`.
    """
    X, _, norm_X = observed(X, None)
    dt = S.dtype
    A = A.astype(dt, copy=False)
    if AtA is None:
        AtA = A.T @ A
    AtA = AtA.astype(dt, copy=False)
    XA = sparse_times(X, A)
    loss = norm_X - 2.0 * float(np.einsum("ij,ij->", S, XA, dtype=np.float64)) + float(
        np.einsum("ij,ij->", S, S @ AtA, dtype=np.float64)
    )
    if update_S:
        pos = lambda F: (np.abs(F) + F) / 2  # noqa: E731
        neg = lambda F: (np.abs(F) - F) / 2  # noqa: E731
        num = pos(XA) + S @ neg(AtA)
        den = neg(XA) + S @ pos(AtA)
        S = (S * np.sqrt(_safe_ratio(num, den))).astype(dt, copy=False)
    stats = {"loss_X": max(loss, 0.0), "norm_X": norm_X, "XtS": sparse_t_times(X, S).astype(np.float64, copy=False),
             "StS": (S.T @ S).astype(np.float64)}
    return S, stats


def semi_update_A(XtS, StS, dtype):
    """Least-squares A = XᵀS (SᵀS)⁻¹ (pseudo-inverse when SᵀS is singular)."""
    try:
        A = np.linalg.solve(StS, XtS.T).T
    except np.linalg.LinAlgError:
        A = XtS @ np.linalg.pinv(StS)
    return A.astype(dtype)
