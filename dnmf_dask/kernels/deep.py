"""Deep NMF (Flenner & Hunter): energy functional and multiplicative updates, per row chunk.

Orientation (DESIGN.md §1): rows = samples. Layer ``l`` has input ``X_l`` (n_l, d_l) — the data
chunk for ``l = 0`` (numpy or scipy.sparse, never densified) and ``p(S[l-1])`` for ``l >= 1`` —
coefficients ``S[l]`` (n_l, k_l) and dictionary ``A[l]`` (d_l, k_l) with ``d_0 = n_features``,
``d_l = k_{l-1}``; the model is ``X_l ≈ S[l] @ A[l].T`` (the paper's ``X = A S`` transposed).
``B`` is (n_classes, k_L); labels ``y`` are ints with ``-1`` = unlabeled (Y one-hot, the label
mask L = labeled rows); ``observed`` is the data mask W of ``X`` (layer 0 only, see
docs/deep_nmf_math.md) — a boolean array like X, or a scipy.sparse matrix whose stored
nonzeros are the observed entries — or None (all observed).

Energy (paper §3.2.2, in our orientation), summed over the rows of a chunk::

    E = 1/2 ||W ⊙ (X - S0 A0ᵀ)||² + 1/2 Σ_{l=1..L} ||p(S[l-1]) - S[l] A[l]ᵀ||²
        + lam/2 D_Y(Y, S[L] Bᵀ)

with ``D_Y`` the label loss: the paper's ``||L ⊙ (Y - S[L] Bᵀ)||²`` (``"frobenius"``), or the
I-divergence / softmax cross-entropy over the labeled rows (SSNMF's label terms,
:mod:`dnmf_dask.kernels.solvers`; see :func:`label_energy`).

Every update is split in three parts so that the distributed code reads X once per iteration:

(a) per chunk, *local*: new S rows of the chunk (:func:`s_update`; one full sweep of Algorithm 3
    over all layers of a chunk: :func:`backprop_chunk_step`; one layer-wise MU step of
    Algorithms 1/2: :func:`layer_chunk_step`);
(b) per chunk, *sufficient statistics* that add across chunks (:func:`a_stats`, :func:`b_stats`;
    combine with :func:`add_stats`);
(c) driver side, tiny: :func:`apply_a_update`, :func:`apply_b_update`,
    :func:`apply_backprop_update`.

Every multiplicative update is ``F ← F ⊙ num / max(den, eps)`` with ``eps = DEFAULT_EPS``
unless given: a 0/0 entry becomes 0 (never NaN), and with nonnegative inputs every result is
nonnegative. Inputs are assumed nonnegative and finite (the estimators validate data once).

Pure numpy/scipy; never imports dask. Pooling is chunk-local because chunks hold whole groups.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from ..errors import DNMFTypeError, DNMFValueError
from . import nmf as _nmf
from .pooling import apply_pool_index, max_pool, max_pool_backward, pool_counts, pool_labels
from .solvers import (LABEL_LOSSES, LOSS_ALIASES, canonical_loss, label_stats, label_term, ls_S_update, update_A,
                      update_B, weight)

__all__ = [
    "DEFAULT_EPS",
    "BACKPROP_SOLVERS",
    "LayerInput",
    "one_hot",
    "reconstruction_energy",
    "label_energy",
    "label_gradient_parts",
    "layer_inputs",
    "energy_parts",
    "s_update",
    "a_stats",
    "b_stats",
    "add_stats",
    "apply_a_update",
    "apply_b_update",
    "layer_chunk_step",
    "backprop_chunk_step",
    "apply_backprop_update",
]

#: Lower bound on every multiplicative-update denominator (guards 0/0 and x/0).
DEFAULT_EPS = 1e-10

#: update rules of the backpropagation: eq. (4)'s multiplicative updates (the paper's) or HALS
#: (exact coordinate minimisation of the same energy with the pooling Jacobian frozen)
BACKPROP_SOLVERS = ("mu", "hals")


# --------------------------------------------------------------------------- validation helpers

def _check_X(X, name="X"):
    if sp.issparse(X):
        if X.ndim != 2:
            raise DNMFValueError(f"{name}: expected a 2-D matrix, found shape {X.shape}")
        if X.format != "csr":
            X = X.tocsr()
        if X.dtype.kind not in "iubf":
            raise DNMFTypeError(f"{name}: expected a numeric dtype, found {X.dtype}")
        return X
    X = np.asarray(X)
    if X.ndim != 2:
        raise DNMFValueError(f"{name}: expected a 2-D array (n_samples, n_features), found {X.ndim}-D shape {X.shape}")
    if X.dtype.kind not in "iubf":
        raise DNMFTypeError(f"{name}: expected a numeric dtype, found {X.dtype}")
    return X


def _default_groups(groups, n, pool_size):
    """``groups`` as given, or one group for the block when there is no pooling."""
    if groups is not None:
        return groups
    if pool_size not in (0, 1):
        raise DNMFValueError(
            "groups: expected an int vector (n,) of group ids when pool_size > 1, found None "
            "(pass np.zeros(n, int) to pool the whole block as one group)"
        )
    return np.zeros(n, dtype=np.int64)


def _check_dense(M, name, shape=None):
    if sp.issparse(M):
        raise DNMFTypeError(f"{name}: expected a dense numpy array, found a sparse matrix")
    M = np.asarray(M)
    if M.ndim != 2:
        raise DNMFValueError(f"{name}: expected a 2-D array, found {M.ndim}-D shape {M.shape}")
    if M.dtype.kind != "f":
        raise DNMFTypeError(f"{name}: expected a floating dtype (float32 or float64), found {M.dtype}")
    if shape is not None:
        for want, got in zip(shape, M.shape):
            if want is not None and want != got:
                exp = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
                raise DNMFValueError(f"{name}: expected shape {exp}, found {M.shape}")
    return M


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not np.isfinite(eps) or eps <= 0:
        raise DNMFValueError(f"eps: expected a finite number > 0, found {eps!r}")
    return float(eps)


def _check_lam(lam):
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not np.isfinite(lam) or lam < 0:
        raise DNMFValueError(f"lam: expected a finite number >= 0, found {lam!r}")
    return float(lam)


def _check_label_loss(label_loss):
    """Canonical name of a label loss ('frobenius', 'kullback-leibler', 'cross-entropy'; aliases kl, ce, ...)."""
    name = canonical_loss(label_loss)
    if not isinstance(name, str) or name not in LABEL_LOSSES:
        allowed = sorted(LABEL_LOSSES + tuple(a for a, v in LOSS_ALIASES.items() if v in LABEL_LOSSES))
        raise DNMFValueError(f"label_loss: expected one of {allowed}, found {label_loss!r}")
    return name


def _check_backprop_solver(solver, label_loss, W):
    """'mu' or 'hals'; HALS needs the squared-error label term and fully observed X."""
    if solver not in BACKPROP_SOLVERS:
        why = " (exact NNLS would need one Gram matrix per sample: the pooling adds J_cᵀJ_c to each row's)" \
            if solver == "anls" else ""
        raise DNMFValueError(f"solver: expected one of {list(BACKPROP_SOLVERS)} for the backpropagation{why}, "
                             f"found {solver!r}")
    if solver == "hals" and label_loss != "frobenius":
        raise DNMFValueError(f"solver: expected 'mu' for label_loss={label_loss!r} (HALS minimises the squared-error "
                             f"label term), found 'hals'")
    if solver == "hals" and W is not None:
        raise DNMFValueError("solver: expected 'mu' for data with missing entries (observed=), found 'hals' "
                             "(its Gram matrix is shared by all rows)")
    return solver


def _check_observed(W, shape):
    """None, a dense bool array of ``shape``, or a CSR matrix whose stored nonzeros = observed."""
    if W is None:
        return None
    if sp.issparse(W):
        if W.shape != shape:
            raise DNMFValueError(f"observed: expected shape {shape} like X, found {W.shape}")
        W = sp.csr_matrix(W, dtype=bool, copy=True)
        W.eliminate_zeros()
        W.sum_duplicates()
        W.sort_indices()
        return W
    W = np.asarray(W)
    if W.shape != shape:
        raise DNMFValueError(f"observed: expected a boolean mask of shape {shape} like X, found shape {W.shape}")
    if W.dtype != bool:
        if W.dtype.kind not in "iuf" or not np.isin(W, (0, 1)).all():
            raise DNMFTypeError(f"observed: expected a boolean mask, found dtype {W.dtype} with values other than 0/1")
        W = W.astype(bool)
    return W


def _check_labels(y, n, n_classes, name="y"):
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DNMFValueError(f"{name}: expected shape ({n},) (one label per sample of the layer), found shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise DNMFTypeError(f"{name}: expected integer labels (-1 = unlabeled), found dtype {y.dtype}")
    if y.size and (y.min() < -1 or y.max() >= n_classes):
        raise DNMFValueError(
            f"{name}: expected labels in [0, {n_classes}) or -1 for unlabeled, found range [{y.min()}, {y.max()}]"
        )
    return y


# --------------------------------------------------------------------------- masked products

def _masked_X(X, W):
    """W ⊙ X: dense when X and W are dense, otherwise sparse (X is never densified)."""
    if W is None:
        return X
    dtype = X.dtype if X.dtype.kind == "f" else np.float64
    if sp.issparse(W):
        return sp.csr_matrix(W.astype(dtype).multiply(X))
    if sp.issparse(X):
        return sp.csr_matrix(X.astype(dtype).multiply(W.astype(dtype)))
    return np.where(W, X, 0)


def _masked_recon(S, A, W):
    """W ⊙ (S Aᵀ): dense (n, d) for a dense mask; CSR with W's pattern for a sparse mask."""
    if sp.issparse(W):
        rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
        cols = W.indices
        vals = np.empty(cols.shape[0], dtype=np.result_type(S.dtype, A.dtype))
        step = max(1, 2_000_000 // max(1, S.shape[1]))  # bound the (nnz, k) temporaries
        for s in range(0, cols.shape[0], step):
            e = s + step
            vals[s:e] = np.einsum("ij,ij->i", S[rows[s:e]], A[cols[s:e]])
        return sp.csr_matrix((vals, cols.copy(), W.indptr.copy()), shape=W.shape)
    return np.where(W, S @ A.T, 0)


def _mm(M, B):
    """M @ B as an ndarray (M dense or sparse, B dense)."""
    return np.asarray(M @ B)


def _mtm(M, B):
    """Mᵀ @ B as an ndarray (M dense or sparse, B dense)."""
    return np.asarray(M.T @ B)


def _div(num, den, eps):
    return num / np.maximum(den, eps)


# --------------------------------------------------------------------------- energy

def one_hot(y, n_classes, dtype=np.float64):
    """``(Y, labeled)``: one-hot Y (n, n_classes) with zero rows for ``y == -1``; labeled (n,) bool."""
    y = np.asarray(y)
    y = _check_labels(y, y.shape[0] if y.ndim == 1 else -1, n_classes)
    return _nmf.one_hot(y, n_classes, dtype), y >= 0


def reconstruction_energy(X, S, A, observed=None):
    """``1/2 ||W ⊙ (X - S Aᵀ)||²_F`` over the chunk's rows, as a Python float (float64 accumulation).

    X (n, d) dense or sparse, S (n, k), A (d, k), observed like X or None. Sparse X without a
    mask uses ``||X||² - 2<X A, S> + <AᵀA, SᵀS>`` (no dense residual; clipped at 0).
    """
    X = _check_X(X)
    n, d = X.shape
    S = _check_dense(S, "S", (n, None))
    A = _check_dense(A, "A", (d, S.shape[1]))
    return _recon_energy(X, S, A, _check_observed(observed, X.shape))


def _recon_energy(X, S, A, W, XA=None):
    """reconstruction_energy on checked inputs; ``XA`` = X @ A if already computed."""
    if W is None:
        if sp.issparse(X):
            x2 = float(np.sum(np.square(X.data, dtype=np.float64)))
            XA = _mm(X, A) if XA is None else XA
            cross = float(np.sum(XA.astype(np.float64) * S))
            quad = float(np.sum((A.T.astype(np.float64) @ A) * (S.T.astype(np.float64) @ S)))
            return 0.5 * max(x2 - 2.0 * cross + quad, 0.0)
        R = X - S @ A.T
        return 0.5 * float(np.sum(np.square(R, dtype=np.float64)))
    Xw = _masked_X(X, W)
    M = _masked_recon(S, A, W)
    R = Xw - M
    if sp.issparse(R):
        R = sp.csr_matrix(R)
        return 0.5 * float(np.sum(np.square(R.data, dtype=np.float64)))
    return 0.5 * float(np.sum(np.square(np.asarray(R), dtype=np.float64)))


def label_energy(S, B, y, lam, label_loss="frobenius"):
    """``lam/2 · D_Y(Y, S Bᵀ)`` over the chunk's labeled rows (float). S (n, k), B (C, k), y (n,).

    ``D_Y`` is ``label_loss``: ``||L ⊙ (Y - S Bᵀ)||²_F`` (``"frobenius"``, the paper's term), the
    I-divergence ``Σ_L [y log(y / ŷ) - y + ŷ]`` (``"kullback-leibler"``, ŷ = S Bᵀ clipped at
    float32 eps) or the cross-entropy ``-Σ_L y log softmax(S Bᵀ)`` (``"cross-entropy"``, softmax
    over the classes of each sample), as SSNMF's :func:`~dnmf_dask.kernels.solvers.label_term`.
    The factor ``lam/2`` keeps DeepNMF's ``lam`` equal to SSNMF's (whose objective is
    ``||X − S Aᵀ||² + lam · D_Y``, twice ours).
    """
    S = _check_dense(S, "S")
    B = _check_dense(B, "B", (None, S.shape[1]))
    lam = _check_lam(lam)
    loss = _check_label_loss(label_loss)
    y = _check_labels(y, S.shape[0], B.shape[0])
    lab = np.flatnonzero(y >= 0)
    if lab.size == 0 or lam == 0:
        return 0.0
    if loss != "frobenius":
        Y, labeled = one_hot(y[lab], B.shape[0])
        lossY, _, _ = label_term(Y, labeled, S[lab].astype(np.float64), B.astype(np.float64), loss)
        return 0.5 * lam * lossY
    R = -(S[lab] @ B.T).astype(np.float64)
    R[np.arange(lab.size), y[lab]] += 1.0
    return 0.5 * lam * float(np.sum(R * R))


class LayerInput(NamedTuple):
    """Input of one layer: ``X`` (n_l, d_l), ``groups`` (n_l,) and ``index`` — the pooling argmax
    (n_l, k_{l-1}) that produced X from S[l-1] (None for layer 0) — and ``y`` (n_l,) or None."""

    X: object
    groups: object
    index: object
    y: object


def _check_layers(S_list, A_list):
    if not isinstance(S_list, (list, tuple)) or not isinstance(A_list, (list, tuple)):
        raise DNMFTypeError(
            f"S, A: expected lists of per-layer arrays, found {type(S_list).__name__} and {type(A_list).__name__}"
        )
    if len(S_list) != len(A_list) or len(S_list) == 0:
        raise DNMFValueError(
            f"S, A: expected one S and one A per layer (same length >= 1), found {len(S_list)} and {len(A_list)}"
        )


def layer_inputs(X, S_list, groups=None, pool_size=0, stride=1, keep_size=False, y=None):
    """Forward propagation of the inputs: ``[X_0 = X, X_1 = p(S[0]), ..., X_L = p(S[L-1])]``.

    Returns a list of :class:`LayerInput` (one per layer). ``y`` (labels of the rows of X) is
    carried along: unchanged for stride-1 pooling, pooled with
    :func:`~dnmf_dask.kernels.pooling.pool_labels` otherwise. ``groups`` may be None only
    without pooling (``pool_size`` 0 or 1).
    """
    X = _check_X(X)
    n = X.shape[0]
    groups = _default_groups(groups, n, pool_size)
    out = [LayerInput(X, np.asarray(groups), None, None if y is None else np.asarray(y))]
    for l in range(len(S_list) - 1):
        prev = out[-1]
        S = _check_dense(S_list[l], f"S[{l}]", (prev.X.shape[0], None))
        P, index, g = max_pool(S, prev.groups, pool_size, stride, keep_size)
        yl = None if prev.y is None else pool_labels(prev.y, prev.groups, pool_size, stride, keep_size)
        out.append(LayerInput(P, g, index, yl))
    return out


def energy_parts(X, S_list, A_list, *, groups=None, pool_size=0, stride=1, keep_size=False,
                 observed=None, B=None, y=None, lam=0.0, label_loss="frobenius"):
    """Parts of the deep NMF energy over the chunk's rows: float64 array (L+2,).

    ``[E_0, ..., E_L, E_label]`` with ``E_0 = 1/2||W⊙(X - S0 A0ᵀ)||²``,
    ``E_l = 1/2||p(S[l-1]) - S[l] A[l]ᵀ||²`` and ``E_label = lam/2 D_Y(Y, S[L] Bᵀ)``
    (:func:`label_energy` with ``label_loss``; 0 without B/y). ``y`` labels the rows of X (pooled along with the samples if stride > 1).
    Their sum is E; every part adds across chunks.
    """
    _check_layers(S_list, A_list)
    L = len(A_list) - 1
    inputs = layer_inputs(X, S_list, groups, pool_size, stride, keep_size, y)
    parts = np.zeros(L + 2, dtype=np.float64)
    for l, inp in enumerate(inputs):
        parts[l] = reconstruction_energy(inp.X, S_list[l], A_list[l], observed if l == 0 else None)
    if B is not None and y is not None:
        parts[L + 1] = label_energy(S_list[L], B, inputs[L].y, lam, label_loss)
    return parts


# --------------------------------------------------------------------------- (a) local S update

def s_update(X, S, A, *, observed=None, pool_index=None, S_up=None, A_up=None,
             B=None, y=None, lam=0.0, label_loss="frobenius", eps=DEFAULT_EPS):
    """One multiplicative update of the chunk's coefficients S of one layer (paper eq. (4)).

    X (n, d) the layer's input, S (n, k), A (d, k), observed: mask of X (layer 0) or None.

    * Coupling to the layer above (intermediate layers, Algorithm 3): ``pool_index`` (n_up, k)
      — the argmax of ``p(S)`` at the *current* S, from :func:`max_pool` — with that layer's
      ``S_up`` (n_up, k_up) and ``A_up`` (k, k_up). Without pooling pass the identity index
      (``max_pool(S, groups, 0)``). Adds ``Jᵀ(S_up A_upᵀ)`` to the numerator and
      ``Jᵀ p(S)`` to the denominator.
    * Label term (last layer): ``B`` (C, k), ``y`` (n,) labels of this layer's samples, ``lam``.
      Adds the negative and positive parts of the gradient of ``lam/2 D_Y`` (:func:`label_energy`)
      to the numerator and denominator (:func:`label_gradient_parts`): for ``"frobenius"``
      ``lam (L⊙Y) B`` and ``lam (L⊙(S Bᵀ)) B`` (eq. (4)); for ``"kullback-leibler"``
      ``lam/2 (L⊙Y ⊘ S Bᵀ) B`` and ``lam/2 L 1 B``; for ``"cross-entropy"`` ``lam/2 (L⊙Y) B``
      and ``lam/2 (L⊙softmax(S Bᵀ)) B``.

    Returns the new S (n, k), same dtype as S, ``S ⊙ num / max(den, eps)``.
    """
    return _s_update(X, S, A, observed=observed, pool_index=pool_index, S_up=S_up, A_up=A_up,
                     B=B, y=y, lam=lam, label_loss=label_loss, eps=eps)[0]


def label_gradient_parts(S, B, y, lam, label_loss="frobenius"):
    """``(num, den)`` (n, k): the MU split of the gradient of :func:`label_energy` in S.

    ``∂(lam/2 D_Y)/∂S = den − num`` with both parts ≥ 0, from SSNMF's
    :func:`~dnmf_dask.kernels.solvers.label_term` weighted by ``lam/2 · c_Y`` (c_Y = 2 for the
    squared error, 1 for the I-divergence and the cross-entropy). Unlabeled rows get zeros.
    """
    S = _check_dense(S, "S")
    B = _check_dense(B, "B", (None, S.shape[1]))
    lam = _check_lam(lam)
    loss = _check_label_loss(label_loss)
    Y, labeled = one_hot(_check_labels(y, S.shape[0], B.shape[0]), B.shape[0], dtype=S.dtype)
    _, num, den = label_term(Y, labeled, S, B, loss)
    c = 0.5 * lam * weight(loss)
    return c * np.broadcast_to(num, S.shape), c * np.broadcast_to(den, S.shape)


def _s_update(X, S, A, *, observed=None, pool_index=None, S_up=None, A_up=None,
              B=None, y=None, lam=0.0, label_loss="frobenius", eps=DEFAULT_EPS):
    """s_update, also returning ``X @ A`` (unmasked case, else None) for reuse in the energy."""
    X = _check_X(X)
    n, d = X.shape
    S = _check_dense(S, "S", (n, None))
    k = S.shape[1]
    A = _check_dense(A, "A", (d, k))
    W = _check_observed(observed, X.shape)
    eps = _check_eps(eps)
    lam = _check_lam(lam)
    loss = _check_label_loss(label_loss)
    XA = None
    if W is None:
        num = XA = _mm(X, A)
        den = S @ (A.T @ A)
    else:
        num = _mm(_masked_X(X, W), A)
        den = _mm(_masked_recon(S, A, W), A)
    coupled = [v is not None for v in (pool_index, S_up, A_up)]
    if any(coupled):
        if not all(coupled):
            raise DNMFValueError(
                "pool_index, S_up, A_up: expected all three (coupling to the layer above) or none, "
                f"found {'/'.join(nm for nm, c in zip(('pool_index', 'S_up', 'A_up'), coupled) if c)} only"
            )
        A_up = _check_dense(A_up, "A_up", (k, None))
        S_up = _check_dense(S_up, "S_up", (None, A_up.shape[1]))
        index = np.asarray(pool_index)
        if index.shape != (S_up.shape[0], k):
            raise DNMFValueError(
                f"pool_index: expected shape ({S_up.shape[0]}, {k}) (samples of the layer above, k), found {index.shape}"
            )
        num = num + max_pool_backward(S_up @ A_up.T, index, n)  # new array: XA stays intact
        den = den + max_pool_backward(apply_pool_index(S, index), index, n)
    if B is not None and y is not None and lam > 0:
        B = _check_dense(B, "B", (None, k))
        if num is XA:
            num = num.copy()
        Y, labeled = one_hot(_check_labels(y, n, B.shape[0]), B.shape[0], dtype=S.dtype)
        lab = np.flatnonzero(labeled)
        if lab.size and loss == "frobenius":
            num[lab] += lam * (Y[lab] @ B)
            den[lab] += lam * ((S[lab] @ B.T) @ B)
        elif lab.size:  # I-divergence / cross-entropy: SSNMF's label term on the labeled rows
            num_y, den_y = label_gradient_parts(S[lab], B, y[lab], lam, loss)
            num[lab] += num_y
            den[lab] += den_y
    return (S * _div(num, den, eps)).astype(S.dtype, copy=False), XA


def _hals_sweep_diag(S, G, C, D):
    """Exact coordinate minimisation of ``Σ_i ½ s_i G s_iᵀ − c_i s_iᵀ + ½ Σ_t D[i,t] s_it²`` column
    by column (in order), in place: the HALS of a layer whose rows are coupled to the layer above
    through a frozen max-pooling Jacobian (``D = Jᵀ1``, the counts; ``JᵀJ`` is diagonal)."""
    for t in range(S.shape[1]):
        grad = S @ G[:, t] - C[:, t] + D[:, t] * S[:, t]
        hess = G[t, t] + D[:, t]
        nz = hess > 0
        S[nz, t] = np.maximum(S[nz, t] - grad[nz] / hess[nz], 0.0)
    return S


def _s_update_hals(X, S, A, *, pool_index=None, S_up=None, A_up=None, B=None, y=None, lam=0.0):
    """One HALS sweep of a layer's S (no mask) for the energy of :func:`energy_parts`.

    Intermediate layers (``pool_index``, ``S_up``, ``A_up`` as in :func:`s_update`): the pooling is
    frozen at ``pool_index`` (the surrogate that eq. (4)'s MU majorises too), so the coupling term
    ``½||J S − S_up A_upᵀ||²`` adds ``Jᵀ(S_up A_upᵀ)`` to the linear term and the counts ``Jᵀ1``
    to each entry's curvature. Last layer with labels: SSNMF's HALS
    (:func:`~dnmf_dask.kernels.solvers.ls_S_update`) of ``½||X − S Aᵀ||² + lam/2||L⊙(Y − S Bᵀ)||²``.
    Returns ``(S_new, X @ A)``.
    """
    XA = _mm(X, A)
    AtA = A.T.astype(np.float64) @ A
    if pool_index is not None:
        n, k = S.shape
        index = np.asarray(pool_index)
        if index.shape != (S_up.shape[0], k):
            raise DNMFValueError(
                f"pool_index: expected shape ({S_up.shape[0]}, {k}) (samples of the layer above, k), found {index.shape}"
            )
        C = XA + max_pool_backward(S_up @ A_up.T, index, n)
        S_new = _hals_sweep_diag(np.array(S, dtype=np.float64), AtA, C, pool_counts(index, n))
    elif B is not None and y is not None and lam > 0:
        Y, labeled = one_hot(_check_labels(y, S.shape[0], B.shape[0]), B.shape[0])
        S_new = ls_S_update(S, XA, AtA, solver="hals", Y=Y, labeled=labeled, B=B.astype(np.float64), lam=lam)
    else:
        S_new = ls_S_update(S, XA, AtA, solver="hals")
    return S_new.astype(S.dtype, copy=False), XA


# --------------------------------------------------------------------------- (b) statistics

def a_stats(X, S, A=None, *, observed=None):
    """Per-chunk sufficient statistics of the A update of one layer (they add across chunks).

    Without a mask: ``{"XtS": Xᵀ S (d, k), "StS": Sᵀ S (k, k)}`` (A not needed).
    With a mask W: ``{"XtS": (W⊙X)ᵀ S (d, k), "den": (W⊙(S Aᵀ))ᵀ S (d, k)}`` (needs the current A).
    """
    X = _check_X(X)
    n, d = X.shape
    S = _check_dense(S, "S", (n, None))
    W = _check_observed(observed, X.shape)
    if W is None:
        return {"XtS": _mtm(X, S), "StS": S.T @ S}
    if A is None:
        raise DNMFValueError("A: expected the current A (d, k) when observed is given, found None")
    A = _check_dense(A, "A", (d, S.shape[1]))
    return {"XtS": _mtm(_masked_X(X, W), S), "den": _mtm(_masked_recon(S, A, W), S)}


def b_stats(S, y, n_classes, *, B=None, label_loss="frobenius"):
    """Per-chunk statistics of the B update over labeled rows (they add across chunks).

    ``"frobenius"``: ``{"YtS": (L⊙Y)ᵀ S (C, k), "StS": S_labᵀ S_lab (k, k)}`` (B not needed).
    ``"kullback-leibler"`` / ``"cross-entropy"``: SSNMF's
    :func:`~dnmf_dask.kernels.solvers.label_stats` at the current ``B`` (C, k):
    ``{"RYtS": (Y ⊘ S Bᵀ)ᵀ S, "S_L_sum": (k,)}`` / ``{"YtS", "PtS": softmax(S Bᵀ)ᵀ S}``.
    S (n, k), y (n,) labels of these samples.
    """
    S = _check_dense(S, "S")
    if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 1:
        raise DNMFValueError(f"n_classes: expected an integer >= 1, found {n_classes!r}")
    y = _check_labels(y, S.shape[0], int(n_classes))
    loss = _check_label_loss(label_loss)
    lab = np.flatnonzero(y >= 0)
    k = S.shape[1]
    if loss != "frobenius":
        if B is None:
            raise DNMFValueError(f"B: expected the current classifier ({int(n_classes)}, {k}) for "
                                 f"label_loss={label_loss!r}, found None")
        B = _check_dense(B, "B", (int(n_classes), k))
        Y, labeled = one_hot(y, int(n_classes), dtype=S.dtype)
        return label_stats(Y, labeled, S, B, loss)
    YtS = np.zeros((int(n_classes), k), dtype=S.dtype)
    np.add.at(YtS, y[lab], S[lab])
    Sl = S[lab]
    return {"YtS": YtS, "StS": Sl.T @ Sl}


def add_stats(a, b):
    """Sum two statistics structures (nested dicts / lists / tuples of arrays, None kept)."""
    if a is None and b is None:
        return None
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            raise DNMFValueError(f"b: expected statistics with keys {sorted(a)}, found {b!r:.80}")
        return {key: add_stats(a[key], b[key]) for key in a}
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            raise DNMFValueError(f"b: expected a sequence of {len(a)} statistics, found {type(b).__name__}")
        return type(a)(add_stats(x, z) for x, z in zip(a, b))
    if a is None or b is None:
        raise DNMFValueError("b: expected statistics of the same structure, found None on one side only")
    return a + b


# --------------------------------------------------------------------------- (c) driver side

def apply_a_update(A, stats, eps=DEFAULT_EPS):
    """``A ⊙ XtS / max(A StS, eps)`` (or ``/ max(den, eps)`` for masked stats); returns (d, k)."""
    A = _check_dense(A, "A")
    eps = _check_eps(eps)
    if not isinstance(stats, dict) or "XtS" not in stats or not ({"StS", "den"} & stats.keys()):
        raise DNMFValueError(f"stats: expected a dict from a_stats (XtS and StS or den), found {stats!r:.80}")
    num = np.asarray(stats["XtS"])
    den = A @ np.asarray(stats["StS"]) if "StS" in stats else np.asarray(stats["den"])
    if num.shape != A.shape or den.shape != A.shape:
        raise DNMFValueError(f"stats: expected statistics for A of shape {A.shape}, found XtS {num.shape}")
    return (A * _div(num, den, eps)).astype(A.dtype, copy=False)


def apply_b_update(B, stats, eps=DEFAULT_EPS):
    """MU of B from summed :func:`b_stats` (lam cancels); the label loss is read from the keys.

    ``"frobenius"`` (paper eq. (4)): ``B ⊙ YtS / max(B StS, eps)``; ``"kullback-leibler"``:
    ``B ⊙ RYtS / max(1 S_L_sum, eps)``; ``"cross-entropy"``: ``B ⊙ YtS / max(PtS, eps)`` (as
    SSNMF's :func:`~dnmf_dask.kernels.solvers.update_B`). Returns (C, k).
    """
    B = _check_dense(B, "B")
    eps = _check_eps(eps)
    keys = stats.keys() if isinstance(stats, dict) else set()
    if {"YtS", "StS"} <= keys:
        num, den = np.asarray(stats["YtS"]), B @ np.asarray(stats["StS"])
    elif {"RYtS", "S_L_sum"} <= keys:
        num, den = np.asarray(stats["RYtS"]), np.broadcast_to(np.asarray(stats["S_L_sum"]), B.shape)
    elif {"YtS", "PtS"} <= keys:
        num, den = np.asarray(stats["YtS"]), np.asarray(stats["PtS"])
    else:
        raise DNMFValueError(f"stats: expected a dict from b_stats (YtS and StS, RYtS and S_L_sum, or YtS and "
                             f"PtS), found {stats!r:.80}")
    if num.shape != B.shape or den.shape != B.shape:
        raise DNMFValueError(f"stats: expected statistics of the shape of B {B.shape}, found {num.shape}")
    return (B * _div(num, den, eps)).astype(B.dtype, copy=False)


# --------------------------------------------------------------------------- whole steps

def layer_chunk_step(X, S, A, *, observed=None, B=None, y=None, lam=0.0, label_loss="frobenius",
                     eps=DEFAULT_EPS, compute_energy=True):
    """One layer-wise MU step (Algorithms 1/2: NMF, or SSNMF with B/y/lam) on one chunk.

    Returns ``(S_new (n, k), stats)`` with ``stats = {"A": a_stats, "B": b_stats or None,
    "energy": float64 (2,) [1/2||W⊙(X - S_new Aᵀ)||², lam/2 D_Y(Y, S_new Bᵀ)]}``
    (energy at the new S and the current A, B; zeros if ``compute_energy`` is False).
    The driver then applies :func:`apply_a_update` / :func:`apply_b_update` to the summed stats.
    """
    X = _check_X(X)
    W = _check_observed(observed, X.shape)
    S_new, XA = _s_update(X, S, A, observed=W, B=B, y=y, lam=lam, label_loss=label_loss, eps=eps)
    stats = {"A": a_stats(X, S_new, A, observed=W), "B": None, "energy": np.zeros(2)}
    if B is not None and y is not None:
        stats["B"] = b_stats(S_new, y, B.shape[0], B=B, label_loss=label_loss)
    if compute_energy:
        stats["energy"][0] = _recon_energy(X, S_new, A, W, XA)
        if B is not None and y is not None:
            stats["energy"][1] = label_energy(S_new, B, y, lam, label_loss)
    return S_new, stats


def backprop_chunk_step(X, S_list, A_list, *, groups=None, pool_size=0, stride=1, keep_size=False,
                        observed=None, B=None, y=None, lam=0.0, label_loss="frobenius", eps=DEFAULT_EPS,
                        compute_energy=True, solver="mu"):
    """One sweep of deep NMF with backpropagation (Algorithm 3 / eq. (4)) over one chunk.

    For ``l = 0 .. L-1`` (bottom-up, as in Algorithm 3): pool S[l] to get the Jacobian at the
    current S[l], update S[l] with the coupling to layer l+1 (its current S[l+1], A[l+1]),
    recompute ``X_{l+1} = p(S[l])``; then update S[L] with the label term; then emit the A and
    B statistics at the new S (A and B are updated by the driver, after the reduction).

    X (n, n_features) the chunk, S_list[l] (n_l, k_l), A_list[l] (d_l, k_l), groups (n,),
    observed (mask of X, layer 0 only), B (C, k_L), y (n,) labels of the rows of X, label_loss
    of the last layer's label term (see :func:`label_energy`). ``solver``: ``"mu"`` (eq. (4), the
    paper's rule) or ``"hals"`` (exact coordinate minimisation of E per column of each S[l], the
    pooling Jacobian frozen at the current S[l]; squared-error label term, no mask). The driver
    must then use the same solver in :func:`apply_backprop_update`.

    Returns ``(S_new_list, stats)`` with ``stats = {"A": [a_stats per layer], "B": b_stats or
    None, "energy": float64 (L+2,) energy_parts at the new S and the current A, B}``.
    """
    _check_layers(S_list, A_list)
    eps = _check_eps(eps)
    L = len(A_list) - 1
    X = _check_X(X)
    n = X.shape[0]
    groups = _default_groups(groups, n, pool_size)
    W0 = _check_observed(observed, X.shape)
    solver = _check_backprop_solver(solver, _check_label_loss(label_loss), W0)
    S_new = list(S_list)
    Xl, gl, yl = X, np.asarray(groups), (None if y is None else np.asarray(y))
    inputs, XAs = [], []
    for l in range(L + 1):
        W = W0 if l == 0 else None
        S = _check_dense(S_list[l], f"S[{l}]", (Xl.shape[0], A_list[l].shape[1]))
        inputs.append((Xl, yl))
        if l < L:
            _, index, _ = max_pool(S, gl, pool_size, stride, keep_size)
            if solver == "hals":
                A_up = _check_dense(A_list[l + 1], f"A[{l + 1}]", (S.shape[1], None))
                S_up = _check_dense(S_list[l + 1], f"S[{l + 1}]", (None, A_up.shape[1]))
                S_new[l], XA = _s_update_hals(Xl, S, _check_dense(A_list[l], f"A[{l}]", (Xl.shape[1], S.shape[1])),
                                              pool_index=index, S_up=S_up, A_up=A_up)
            else:
                S_new[l], XA = _s_update(Xl, S, A_list[l], observed=W, pool_index=index,
                                         S_up=S_list[l + 1], A_up=A_list[l + 1], eps=eps)
            P, _, g_next = max_pool(S_new[l], gl, pool_size, stride, keep_size)
            if yl is not None:
                yl = pool_labels(yl, gl, pool_size, stride, keep_size)
            Xl, gl = P, g_next
        else:
            if solver == "hals":
                S_new[l], XA = _s_update_hals(Xl, S, _check_dense(A_list[l], f"A[{l}]", (Xl.shape[1], S.shape[1])),
                                              B=None if B is None else _check_dense(B, "B", (None, S.shape[1])),
                                              y=yl, lam=_check_lam(lam))
            else:
                S_new[l], XA = _s_update(Xl, S, A_list[l], observed=W, B=B, y=yl, lam=lam, label_loss=label_loss,
                                         eps=eps)
        XAs.append(XA)
    stats = {
        "A": [a_stats(inputs[l][0], S_new[l], A_list[l], observed=W0 if l == 0 else None)
              for l in range(L + 1)],
        "B": None,
        "energy": np.zeros(L + 2, dtype=np.float64),
    }
    if B is not None and yl is not None:
        stats["B"] = b_stats(S_new[L], yl, B.shape[0], B=B, label_loss=label_loss)
    if compute_energy:
        for l in range(L + 1):
            stats["energy"][l] = _recon_energy(inputs[l][0], S_new[l], A_list[l],
                                               W0 if l == 0 else None, XAs[l])
        if B is not None and yl is not None:
            stats["energy"][L + 1] = label_energy(S_new[L], B, yl, lam, label_loss)
    return S_new, stats


def apply_backprop_update(A_list, B, stats, eps=DEFAULT_EPS, solver="mu"):
    """Driver side of :func:`backprop_chunk_step`: ``(A_new_list, B_new)`` from the summed stats.

    Every A[l] is updated from its own statistics (the A blocks are separable given the S's);
    B is updated if ``stats["B"]`` is not None, else returned unchanged. ``solver="mu"``:
    eq. (4)'s multiplicative updates; ``"hals"``: one HALS sweep of every A[l] and of B on the
    same statistics (:func:`~dnmf_dask.kernels.solvers.update_A` / ``update_B``; unmasked,
    squared-error label term).
    """
    if len(stats["A"]) != len(A_list):
        raise DNMFValueError(f"stats: expected A statistics for {len(A_list)} layers, found {len(stats['A'])}")
    if solver == "hals":
        if any("StS" not in st for st in stats["A"]) or (stats.get("B") is not None and "StS" not in stats["B"]):
            raise DNMFValueError("stats: expected unmasked statistics with the squared-error label term for "
                                 "solver='hals' (XtS, StS; YtS, StS), found others")
        A_new = [update_A(A, st, loss="frobenius", solver="hals") for A, st in zip(A_list, stats["A"])]
        if B is None or stats.get("B") is None:
            return A_new, B
        st = {"YtS": stats["B"]["YtS"], "StS_L": stats["B"]["StS"]}
        return A_new, update_B(B, st, label_loss="frobenius", solver="hals")
    if solver != "mu":
        _check_backprop_solver(solver, "frobenius", None)
    A_new = [apply_a_update(A, st, eps) for A, st in zip(A_list, stats["A"])]
    B_new = B if (B is None or stats.get("B") is None) else apply_b_update(B, stats["B"], eps)
    return A_new, B_new
