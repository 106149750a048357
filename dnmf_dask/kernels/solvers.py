"""Losses, penalties and solvers beyond Frobenius MU, on one row block (pure numpy/scipy).

Orientation as in :mod:`dnmf_dask.kernels.nmf`: a block X (n, n_features) ≈ S Aᵀ, S (n, k),
A (n_features, k); labels Y (n, n_classes) one-hot on labeled rows ≈ S Bᵀ, B (n_classes, k).

Objective (``history_["objective"]``)::

    c_X · D_X(X, S Aᵀ)/c_X  + λ · D_Y(Y, S Bᵀ) + c_X · P(S, A)

where ``D_X`` is ``loss_X``: ||W⊙(X − S Aᵀ)||² (``"frobenius"``, c_X = 2) or the generalized
Kullback–Leibler (I-)divergence Σ_W [x log(x / x̂) − x + x̂] (``"kullback-leibler"``, c_X = 1),
``D_Y`` is ``loss_Y`` over labeled rows (Frobenius, I-divergence or cross-entropy of
softmax(S Bᵀ)), and the penalty is scikit-learn's
``P = l1_S Σ S + ½ l2_S ||S||² + l1_A Σ A + ½ l2_A ||A||²`` (its objective is
½||X − WH||² + P, hence the factor c_X = 2 in front of P when the data term is the unhalved
squared error).

Multiplicative updates split the gradient of each term into a positive part (denominator) and a
negative part (numerator), each weighted by the term's factor (2 for a squared error, 1 for a
divergence, λ for the label term), as the ``ssnmf`` package does for its six models:
``S ← S ⊙ Σ w·num / Σ w·den``. KL terms use X ⊘ (S Aᵀ) only at the stored entries of a sparse X
(values of S Aᵀ below ``EPS`` are clipped to ``EPS`` there, as scikit-learn does).

HALS (scikit-learn's ``solver="cd"``: exact coordinate minimisation, columns in order) and
ANLS (exact NNLS by block principal pivoting, :func:`~dnmf_dask.kernels.nnls.nnls_gram`) solve
the Frobenius objective; both update S from X A and AᵀA, and A from XᵀS and SᵀS.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._env import fused_module as _fused
from .nmf import EPS, _mu, gram_den, observed, one_hot

#: float64 machine epsilon: A entries below it are set to 0 after a KL update (as scikit-learn)
TINY = float(np.finfo(np.float64).eps)

DATA_LOSSES = ("frobenius", "kullback-leibler")
LABEL_LOSSES = ("frobenius", "kullback-leibler", "cross-entropy")
LOSS_ALIASES = {"kl": "kullback-leibler", "idiv": "kullback-leibler", "i-divergence": "kullback-leibler",
                "ce": "cross-entropy", "cross_entropy": "cross-entropy", "fro": "frobenius"}
SOLVERS = ("mu", "hals", "anls")


def canonical_loss(name):
    """The canonical name of a loss (``"kl"`` → ``"kullback-leibler"``); unknown names unchanged."""
    return LOSS_ALIASES.get(name, name) if isinstance(name, str) else name


def weight(loss):
    """Gradient factor of a loss term: 2 for a squared error, 1 for a divergence/cross-entropy."""
    return 2.0 if loss == "frobenius" else 1.0


# -- the data term -------------------------------------------------------------------------
def _values_at(X, S, A):
    """(S Aᵀ) at the stored entries of csr X, in X.data order."""
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    return np.einsum("ij,ij->i", S[rows], A[X.indices])


def kl_ratio(X, S, A):
    """X ⊘ max(S Aᵀ, EPS): csr with X's pattern for sparse X, dense otherwise; and Σ x log(x/x̂)."""
    if sp.issparse(X):
        X = X.tocsr()
        x = X.data
        xh = np.maximum(_values_at(X, S, A), EPS)
        R = sp.csr_matrix((x / xh, X.indices, X.indptr), shape=X.shape)
    else:
        x = X
        xh = np.maximum(S @ A.T, EPS)
        R = X / xh
    pos = x > 0
    xlog = float(np.sum(x[pos] * np.log(x[pos] / xh[pos]), dtype=np.float64))
    return R, xlog


def _sum_x(X):
    return float(X.sum(dtype=np.float64)) if sp.issparse(X) else float(np.sum(X, dtype=np.float64))


def _mask_dot(W, F, dtype):
    """W @ F for a bool mask W (dense or sparse), as a dense float array."""
    return np.asarray((W.astype(dtype) if sp.issparse(W) else W.astype(dtype)) @ F)


def data_term(X, S, A, W, loss, AtA, norm_X):
    """Loss and MU gradient parts (num, den) of the data term for S at (S, A).

    Returns ``(loss_X, num, den)``, num/den (n, k) without the factor c_X.
    """
    if loss == "frobenius":
        XA = np.asarray(X @ A)
        if W is None:
            SAtA = S @ AtA
            lossX = norm_X - 2.0 * float(np.einsum("ij,ij->", S, XA, dtype=np.float64)) + float(
                np.einsum("ij,ij->", S, SAtA, dtype=np.float64))
            return max(lossX, 0.0), XA, gram_den(S, AtA, SAtA)
        from .nmf import masked_product

        WSA = masked_product(S, A, W)
        R = X - WSA
        lossX = float(R.multiply(R).sum()) if sp.issparse(R) else float(np.einsum("ij,ij->", R, R, dtype=np.float64))
        return lossX, XA, np.asarray(WSA @ A)
    R, xlog = kl_ratio(X, S, A)
    if W is None:
        den = np.broadcast_to(A.sum(axis=0), S.shape)
        xhat_sum = float(S.sum(axis=0, dtype=np.float64) @ A.sum(axis=0, dtype=np.float64))
    else:
        den = _mask_dot(W, A, S.dtype)
        xhat_sum = float(np.sum(den * S, dtype=np.float64))
    return max(xlog - _sum_x(X) + xhat_sum, 0.0), np.asarray(R @ A), den


# -- the label term ------------------------------------------------------------------------
def softmax(Z):
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def label_term(Y, labeled, S, B, loss):
    """Loss and MU gradient parts (num, den) of the label term for S; unlabeled rows give 0."""
    SB = S @ B.T
    lab = labeled[:, None]
    if loss == "frobenius":
        LSB = SB * lab
        return float(np.sum((Y - LSB) ** 2, dtype=np.float64)), Y @ B, LSB @ B
    if loss == "kullback-leibler":
        yh = np.maximum(SB, EPS)
        R = np.where(lab, Y / yh, 0.0)
        pos = Y > 0
        lossY = float(np.sum(Y[pos] * np.log(Y[pos] / yh[pos])) - Y.sum() + np.sum(SB * lab))
        return max(lossY, 0.0), R @ B, lab * B.sum(axis=0)
    # cross-entropy of softmax(S Bᵀ): gradient (P − Y) B split into Y B (num) and P B (den)
    P = softmax(SB) * lab
    lossY = -float(np.sum(Y * np.log(np.maximum(softmax(SB), 1e-300))))
    return lossY, Y @ B, P @ B


def label_stats(Y, labeled, S, B, loss):
    """The block's sums for the B update at S (rows of labeled samples only)."""
    SL, YL = S[labeled], Y[labeled]
    if loss == "frobenius":
        return {"YtS": (YL.T @ SL).astype(np.float64), "StS_L": (SL.T @ SL).astype(np.float64)}
    if loss == "kullback-leibler":
        R = YL / np.maximum(SL @ B.T, EPS)
        return {"RYtS": (R.T @ SL).astype(np.float64), "S_L_sum": SL.sum(axis=0).astype(np.float64)}
    P = softmax(SL @ B.T)
    return {"YtS": (YL.T @ SL).astype(np.float64), "PtS": (P.T @ SL).astype(np.float64)}


# -- S updates -----------------------------------------------------------------------------
def hals_sweep(S, G, C):
    """One pass of exact coordinate minimisation over the columns of S (in order), in place.

    Minimises ``½ s Gᵢ sᵀ − cᵢ sᵀ`` row by row, column t at a time:
    ``S[:, t] ← max(S[:, t] − (S Gᵢ[:, t] − C[:, t]) / Gᵢ[t, t], 0)``. ``G`` is (k, k) (shared)
    or (n, k, k)-like given as a pair ``(G0, G1, rows)`` (rows in ``rows`` use ``G0 + G1``).
    Returns S.
    """
    if isinstance(G, tuple):
        G0, G1, rows = G
        extra = rows.astype(S.dtype)
    else:
        G0, G1, extra = G, None, None
    for t in range(S.shape[1]):
        grad = S @ G0[:, t] - C[:, t]
        hess = np.full(S.shape[0], G0[t, t], dtype=np.float64)
        if G1 is not None:
            grad = grad + extra * (S @ G1[:, t])
            hess = hess + extra * G1[t, t]
        nz = hess != 0
        S[nz, t] = np.maximum(S[nz, t] - grad[nz] / hess[nz], 0.0)
    return S


def _regularized(G, C, l1, l2):
    G = G.copy()
    if l2:
        G.flat[:: G.shape[0] + 1] += l2
    return G, (C - l1 if l1 else C)


def ls_S_update(S, XA, AtA, *, solver, Y=None, labeled=None, B=None, lam=0.0, l1=0.0, l2=0.0):
    """HALS sweep or exact NNLS for the block's S under the Frobenius objective (+ labels)."""
    from .nnls import nnls_gram

    G, C = _regularized(AtA, XA, l1, l2)
    with_labels = B is not None and lam > 0 and labeled is not None and labeled.any()
    if with_labels:
        C = C + lam * (Y @ B)
        BtB = lam * (B.T @ B)
    if solver == "hals":
        S = np.array(S, dtype=np.float64)
        hals_sweep(S, (G, BtB, labeled) if with_labels else G, C)
        return S
    out = np.empty(S.shape, dtype=np.float64)
    un = ~labeled if with_labels else np.ones(S.shape[0], bool)
    if un.any():
        out[un] = nnls_gram(G, C[un], S0=S[un])
    if with_labels:
        out[labeled] = nnls_gram(G + BtB, C[labeled], S0=S[labeled])
    return out


def general_block_step(X, S, A, *, loss="frobenius", B=None, y=None, lam=0.0, label_loss="frobenius",
                       W=None, update_S=True, solver="mu", l1_S=0.0, l2_S=0.0, AtA=None, a_stats=True):
    """One S update of a block (any loss / solver / penalty) and the block's sums for A and B.

    Parameters as :func:`dnmf_dask.kernels.nmf.block_step`, plus ``loss`` (data term),
    ``label_loss``, ``solver`` ('mu', 'hals', 'anls'; the last two Frobenius only, no mask),
    ``l1_S``, ``l2_S`` (scikit-learn-scaled penalties on S) and ``a_stats`` (False: skip the
    sums for the A and B updates, for S-only iterations).

    Returns
    -------
    S_new : (n, k)
    stats : dict, sums over the block's rows. Objective parts at the incoming (S, A, B):
        ``loss_X``, ``loss_Y``, ``norm_X`` (||W⊙X||²), ``S_l1`` (Σ S), ``S_sq`` (||S||²),
        ``n_labeled``, ``n_correct``. A-update sums at S_new: Frobenius ``XtS`` and ``StS``
        (or ``WSAtS`` with a mask); KL ``RtS`` = (X ⊘ S_new Aᵀ)ᵀ S_new and ``S_sum`` (k,)
        (or ``WtS`` = Wᵀ S_new with a mask). B-update sums: see :func:`label_stats`.
    """
    X, W, norm_X = observed(X, W)
    dt = S.dtype
    A = A.astype(dt, copy=False)
    if AtA is None:
        AtA = A.T @ A
    AtA = AtA.astype(dt, copy=False)
    # KL MU on a CSR block: one sweep of X does the S update, the divergence and the A sums
    fuse = loss != "frobenius" and W is None and solver == "mu" and _fused().usable(X, S)
    lossX, num, den = (None, None, None) if fuse else data_term(X, S, A, W, loss, AtA, norm_X)
    cX = weight(loss)
    stats = {"loss_X": lossX, "norm_X": norm_X, "S_l1": float(S.sum(dtype=np.float64)),
             "S_sq": float(np.einsum("ij,ij->", S, S, dtype=np.float64))}
    labeled = None
    if B is not None and y is not None:
        labeled = np.asarray(y) >= 0
        B = B.astype(dt, copy=False)
        Y = one_hot(y, B.shape[0], dt)
        lossY, numY, denY = label_term(Y, labeled, S, B, label_loss)
        stats["loss_Y"] = lossY
        stats["n_labeled"] = int(labeled.sum())
        stats["n_correct"] = int(np.sum((np.argmax(S @ B.T, axis=1) == y) & labeled))
    cY = lam * weight(label_loss) if labeled is not None and lam > 0 else None  # the label term's weight in MU
    if fuse:
        S_new, RtS, stats["loss_X"] = _kl_fused(X, S, A, cX, update_S, a_stats, l1_S, l2_S,
                                                None if cY is None else cY * numY, None if cY is None else cY * denY)
    elif not update_S:
        S_new = S
    elif solver == "mu":
        num, den = cX * num, cX * den
        if cY is not None:
            num, den = num + cY * numY, den + cY * denY
        if l1_S:
            den = den + cX * l1_S
        if l2_S:
            den = den + cX * l2_S * S
        S_new = _mu(S, num, den)
    else:
        kw = {} if labeled is None else {"Y": Y, "labeled": labeled, "B": B, "lam": lam}
        S_new = ls_S_update(S, num, AtA, solver=solver, l1=l1_S, l2=l2_S, **kw)
    S_new = np.asarray(S_new).astype(dt, copy=False)
    if not a_stats:
        return S_new, stats
    if loss == "frobenius":
        stats["XtS"] = np.asarray(X.T @ S_new, dtype=np.float64)
        if W is None:
            stats["StS"] = (S_new.T @ S_new).astype(np.float64)
        else:
            from .nmf import masked_product

            stats["WSAtS"] = np.asarray(masked_product(S_new, A, W).T @ S_new, dtype=np.float64)
    else:
        if fuse:
            stats["RtS"] = RtS
        else:
            R, _ = kl_ratio(X, S_new, A)
            stats["RtS"] = np.asarray(R.T @ S_new, dtype=np.float64)
        if W is None:
            stats["S_sum"] = S_new.sum(axis=0).astype(np.float64)
        else:
            stats["WtS"] = _mask_dot(W.T, S_new, np.float64)
    if labeled is not None:
        stats.update(label_stats(Y, labeled, S_new, B, label_loss))
    return S_new, stats


def _kl_fused(X, S, A, cX, update_S, a_stats, l1_S, l2_S, num_L, den_L):
    """The KL MU step of :func:`general_block_step` by :func:`~dnmf_dask.kernels.fused.kl_step`.

    ``num_L``, ``den_L`` are the weighted label terms (or None); the penalties join the
    denominator as in the numpy path. Returns (S_new, RtS, loss_X).
    """
    den_add = den_L
    for extra in ((cX * l1_S) if l1_S else None, (cX * l2_S * S) if l2_S else None):
        if extra is not None:
            den_add = extra if den_add is None else den_add + extra
    if den_add is not None:
        den_add = np.broadcast_to(den_add, S.shape)
    S_new, RtS, xlog = _fused().kl_step(X, S, A, cX=cX, num_add=num_L, den_add=den_add, update_S=update_S,
                                        a_stats=a_stats)
    xhat_sum = float(S.sum(axis=0, dtype=np.float64) @ A.sum(axis=0, dtype=np.float64))
    return S_new, RtS, max(xlog - _sum_x(X) + xhat_sum, 0.0)


# -- driver-side updates of A and B ---------------------------------------------------------
def update_A(A, st, *, loss, solver, l1=0.0, l2=0.0):
    """New A (n_features, k) from the reduced block sums (see :func:`general_block_step`)."""
    if solver in ("hals", "anls"):
        G, C = _regularized(st["StS"], st["XtS"], l1, l2)
        if solver == "hals":
            return hals_sweep(np.array(A, dtype=np.float64), G, C).astype(A.dtype)
        from .nnls import nnls_gram

        return nnls_gram(G, C, S0=A).astype(A.dtype)
    if loss == "frobenius":
        num = st["XtS"]
        den = gram_den(A, st["StS"]) if "StS" in st else st["WSAtS"]
    else:
        num = st["RtS"]
        if "S_sum" in st:
            s = st["S_sum"].copy()
            s[s == 0] = 1.0  # as scikit-learn: a component unused by every sample keeps A
            den = np.broadcast_to(s, A.shape)
        else:
            den = st["WtS"]
    if l1:
        den = den + l1
    if l2:
        den = den + l2 * A
    A = _mu(A, num, den).astype(A.dtype, copy=False)
    if loss != "frobenius":
        A[A < TINY] = 0.0  # as scikit-learn after its KL update of H
    return A


def update_B(B, st, *, label_loss, solver="mu", lam=1.0):
    """New classifier B (n_classes, k) from the reduced label sums."""
    if label_loss == "frobenius":
        if solver == "hals":
            return hals_sweep(np.array(B, dtype=np.float64), st["StS_L"], st["YtS"]).astype(B.dtype)
        if solver == "anls":
            from .nnls import nnls_gram

            return nnls_gram(st["StS_L"], st["YtS"], S0=B).astype(B.dtype)
        return _mu(B, st["YtS"], B @ st["StS_L"]).astype(B.dtype, copy=False)
    if label_loss == "kullback-leibler":
        den = np.broadcast_to(st["S_L_sum"], B.shape)
        return _mu(B, st["RYtS"], den).astype(B.dtype, copy=False)
    return _mu(B, st["YtS"], st["PtS"]).astype(B.dtype, copy=False)


def penalty(st, A, l1_S, l2_S, l1_A, l2_A):
    """scikit-learn's penalty P = l1 Σ F + ½ l2 ||F||² on S (from block sums) and A."""
    return (l1_S * st.get("S_l1", 0.0) + 0.5 * l2_S * st.get("S_sq", 0.0)
            + l1_A * float(A.sum(dtype=np.float64)) + 0.5 * l2_A * float(np.sum(A * A, dtype=np.float64)))


def transform_block_general(X, A, S, *, max_iter=200, tol=1e-4, W=None, loss="frobenius", solver="mu",
                            l1_S=0.0, l2_S=0.0):
    """S of new samples with A fixed, by the fit's loss/solver/penalty (S updates only).

    Stops when the relative decrease of the block's objective (loss_X + c_X·P_S) falls below
    ``tol`` or after ``max_iter`` iterations; returns (S, n_iter).
    """
    AtA = A.T @ A
    prev, it = None, 0
    for it in range(1, max_iter + 1):
        S, st = general_block_step(X, S, A, W=W, loss=loss, solver=solver, l1_S=l1_S, l2_S=l2_S, AtA=AtA,
                                   a_stats=False)
        obj = st["loss_X"] + weight(loss) * (l1_S * st["S_l1"] + 0.5 * l2_S * st["S_sq"])
        if tol > 0 and prev is not None and abs(prev - obj) <= tol * max(abs(prev), 1e-300):
            break
        prev = obj
    return S, it
