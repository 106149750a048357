"""Neural NMF (Gao, Haddock, Molitor, Needell, Sadovnik, Will, Zhang): forward pass and exact
gradients for one in-memory block of rows.

Orientation (DESIGN.md §1): rows are samples.  ``X`` is ``(n, n_features)`` (dense or
scipy.sparse CSR, never densified), ``A[0]`` is ``(n_features, k0)``, ``A[l]`` is
``(k_{l-1}, k_l)``, ``S[l]`` is ``(n, k_l)``, ``B`` is ``(n_classes, k_L)``.

Forward propagation (the paper's eq. 6, transposed)::

    S[-1] = X,   S[l] = q(A[l], S[l-1]) = argmin_{S >= 0} ||S[l-1] - S A[l]^T||_F^2 (row-wise)

solved exactly by :mod:`dnmf_dask.kernels.nnls`.

Costs (sums over the block's rows, so chunk results add up to the full-batch value):

* ``cost="reconstruction"`` (paper eq. 7)::

      C = ||X - S[L] (A[0] A[1] ... A[L])^T||^2 + lam ||Lmask * (Y - S[L] B^T)||^2

* ``cost="layerwise"`` (the hierarchical-NMF energy)::

      C = sum_l ||S[l-1] - S[l] A[l]^T||^2 + lam ||Lmask * (Y - S[L] B^T)||^2

``Y`` is the one-hot matrix of ``y`` and ``Lmask`` selects the labeled rows (``y >= 0``); with
``y`` None or all ``-1`` the cost is unsupervised.

Gradient (exact, through every ``q``).  For one sample with ``s = q(A, x)`` and support
``T = {j : s_j > 0}``, ``s_T = (A_T^T A_T)^{-1} A_T^T x`` is a smooth function of ``(A, x)``
as long as the support does not change.  For an upstream gradient ``g = dC/ds`` put
``d_T = (A_T^T A_T)^{-1} g_T`` (``d = 0`` off ``T``) and ``r = x - A s``; then::

    dC/dA += r d^T - A d s^T        dC/dx = A d

This is the paper's ``Phi``/``U`` chain rule in implicit-differentiation (adjoint) form:
instead of forming the products ``Phi`` of restricted pseudo-inverses for every pair of layers
``(l, l')``, the upstream gradient is pulled back one layer at a time (reverse mode), and
``d = (A_T^T A_T)^{-1} g_T`` plays the role of the paper's ``d^{(l, l')}`` summed over ``l'``
(the accumulated upstream gradient).  In matrix form for a block, with
``R = S[l-1] - S[l] A[l]^T`` and ``D`` the stacked ``d`` rows::

    dC/dA[l] += R^T D - A[l] (D^T S[l]) = S[l-1]^T D - A[l] (S[l]^T D + D^T S[l])
    dC/dS[l-1] += D A[l]^T

(for ``l = 0`` the first product is ``X.T @ D``, a sparse-times-dense product when ``X`` is
sparse).  The ``d`` rows are computed by the same grouped passive-set solver as the NNLS
(rows with equal support share one factorisation), never a Python loop over samples.  The
total gradient is the direct one (``S`` held fixed) plus the sum of those terms over all
layers, accumulated by reverse-mode propagation from ``S[L]`` down to ``S[0]``.

``q`` is only piecewise smooth: the gradient is the gradient of the smooth piece the current
supports select (it is exact away from support changes, which is "nearly always").
"""

from __future__ import annotations

import numbers
import time
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.kernels._env import spmm_module, spmm_wanted
from dnmf_dask.kernels.nmf import EPS, sparse_t_times, sparse_times
from dnmf_dask.kernels.solvers import canonical_loss
from dnmf_dask.kernels.nnls import (
    _PassiveSolver,
    _as_data_2d,
    _as_dense_2d,
    _check_max_iter,
    _check_tol,
    _float_dtype,
    _nnls_core,
)

__all__ = ["forward", "chunk_cost_grad", "BlockPass", "Supports", "fit_classifier", "CLASSIFIER_GTOL", "classifier_objective", "unit_columns", "sum_results", "COSTS", "LABEL_LOSSES"]

#: the supported cost functions.
COSTS = ("reconstruction", "layerwise")
#: label terms: squared error ||L ⊙ (Y − B S)||² (paper eq. 7), the I-divergence
#: D(Y || B S) = Σ [y log(y / z) − y + z] (B ≥ 0, "kl" / "i-divergence" are aliases) or softmax
#: cross-entropy over B S (the classifier of the Neural NMF authors' code)
LABEL_LOSSES = ("frobenius", "kullback-leibler", "cross-entropy")

#: ``fit_classifier(max_iter="auto")`` with the I-divergence: L-BFGS-B stops when the gradient's
#: largest entry is at most this fraction of its value at B = 0, a scale set by the codes and
#: labels alone, not by the start or the path of the iteration
CLASSIFIER_GTOL = 1e-12
#: at most this many Newton steps (cross-entropy) or L-BFGS-B iterations (kullback-leibler)
#: for ``max_iter="auto"`` (a softmax without ridge on separable codes has no minimiser)
CLASSIFIER_AUTO_MAX_ITER = 200
#: the Newton refit's last steps: full steps (no line search) once the decrement is below this
#: fraction of the objective, while it keeps falling (quadratic convergence: to the rounding floor)
_NEWTON_LAST_STEP = 1e-12
#: rows of the labeled codes per slice when forming the softmax Hessian (bounds its memory)
_HESSIAN_ROWS = 4096


#: a profiler's dict (``pipelines/bench/bench_neural_block.py`` sets it): the forward pass and
#: :func:`_cost_then_grad` then add the CPU seconds of each of their stages to it under the
#: stage's name; None (the default) times nothing
STAGE_TIMES = None


def _no_tick(name):
    pass


def _ticker():
    """``tick(name)``: adds the CPU time since the previous tick to ``STAGE_TIMES[name]``
    (``tick(None)`` only restarts the clock); a no-op unless a profiler set :data:`STAGE_TIMES`."""
    times = STAGE_TIMES
    if times is None:
        return _no_tick
    last = [time.process_time()]

    def tick(name):
        now = time.process_time()
        if name is not None:
            times[name] = times.get(name, 0.0) + now - last[0]
        last[0] = now

    return tick


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _check_solver(solver):
    if solver is None:
        return {}
    if not isinstance(solver, dict):
        raise DNMFTypeError(f"solver: expected a dict of nnls options or None, found {type(solver).__name__}")
    unknown = set(solver) - {"max_iter", "tol"}
    if unknown:
        raise DNMFValueError(f"solver: expected keys among ('max_iter', 'tol'), found {sorted(unknown)}")
    return dict(solver)


def _check_inputs(X, A_list):
    X = _as_data_2d("X", X)
    As = _check_factors(A_list, X.shape[1])
    dt = _float_dtype(X.dtype, *[A.dtype for A in As])
    As = [np.asarray(A, dtype=dt) for A in As]
    return _data_in(X, dt), As, dt


def _data_in(X, dt):
    """X as the kernels of dtype ``dt`` use it: a sparse X with float32 values is kept as it is
    (its products with float64 factors widen each value as they read it, which is exact: the
    results of a float64 copy, without the copy's time and memory per pass); anything else is
    converted to ``dt``."""
    if sp.issparse(X) and X.dtype == np.float32:
        return X
    return X.astype(dt, copy=False)


def _check_model(A_list, X, y, B, lam):
    """Factors, classifier and labels for the checked data ``X``: ``(As, B, y, labeled, dt)``
    with every factor (and B) in the common floating dtype ``dt`` (X is to be converted to it)."""
    As = _check_factors(A_list, X.shape[1])
    dt = _float_dtype(X.dtype, *[A.dtype for A in As])
    y, B, labeled = _check_labels(y, B, lam, X.shape[0], As[-1].shape[1], dt)
    if B is not None and B.dtype != dt:
        dt = np.result_type(dt, B.dtype)
    return [np.asarray(A, dtype=dt) for A in As], B, y, labeled, dt


def _check_cost(cost, label_loss):
    """Check ``cost``; return ``label_loss`` by its canonical name (checked)."""
    if cost not in COSTS:
        raise DNMFValueError(f"cost: expected one of {COSTS}, found {cost!r}")
    label_loss = canonical_loss(label_loss)
    if label_loss not in LABEL_LOSSES:
        raise DNMFValueError(f"label_loss: expected one of {LABEL_LOSSES}, found {label_loss!r}")
    return label_loss


def _check_factors(A_list, n_features):
    """The factors as 2-D finite arrays whose shapes chain from ``n_features`` rows (unconverted)."""
    if isinstance(A_list, np.ndarray) or not isinstance(A_list, (list, tuple)):
        raise DNMFTypeError(f"A_list: expected a list of 2-D arrays, found {type(A_list).__name__}")
    if len(A_list) == 0:
        raise DNMFValueError("A_list: expected at least one factor matrix, found an empty list")
    As = []
    rows_expected = n_features
    for l, A in enumerate(A_list):
        A = _as_dense_2d(f"A_list[{l}]", A)
        if A.shape[0] != rows_expected:
            what = "n_features of X" if l == 0 else f"A_list[{l - 1}].shape[1]"
            raise DNMFValueError(
                f"A_list[{l}]: expected {rows_expected} rows ({what}), found shape {A.shape}"
            )
        if A.shape[1] < 1:
            raise DNMFValueError(f"A_list[{l}]: expected at least one column, found shape {A.shape}")
        As.append(A)
        rows_expected = A.shape[1]
    return As


def _solver_opts(solver, k):
    opts = _check_solver(solver)
    return _check_max_iter(opts.get("max_iter"), k), _check_tol(opts.get("tol", 1e-10))


class Supports(NamedTuple):
    """The supports ``S[l] > 0`` of a forward pass, one bit per entry: all a warm start needs.

    ``shapes[l]`` is ``(n, k_l)`` and ``bits[l]`` the row-major ``np.packbits`` of layer l's
    boolean support (``ceil(n k_l / 8)`` uint8, so 3.75 KB per 1,000 rows for ranks (20, 10):
    1/64 of the float64 S). What a Neural NMF pass on a dask cluster keeps of each block between
    passes (:func:`dnmf_dask.parallel.tasks.cost_grad_task`); :func:`chunk_cost_grad` takes it
    as ``S0``. Build it with :meth:`of`."""

    shapes: tuple
    bits: tuple

    @classmethod
    def of(cls, S_list):
        """The supports of a forward pass ``[S[0], ..., S[L]]`` (arrays; an entry > 0 is in)."""
        S_list = [np.asarray(Sl) for Sl in S_list]
        return cls(tuple(tuple(int(d) for d in Sl.shape) for Sl in S_list),
                   tuple(np.packbits(Sl > 0, axis=None) for Sl in S_list))

    def layer(self, l):
        """Layer ``l``'s support as a boolean ``shapes[l]`` array."""
        n, k = self.shapes[l]
        return np.unpackbits(self.bits[l], count=n * k).reshape(n, k).view(bool)

    @property
    def nbytes(self):
        return sum(b.nbytes for b in self.bits)


def _check_warm(S0, n, As):
    """Passive sets of a warm start ``S0`` or Nones: ``S0`` is a forward pass at nearby factors
    (one (n, k_l) array per layer, float codes or booleans: an entry > 0 is in the support) or
    its :class:`Supports`."""
    if S0 is None:
        return [None] * len(As)
    if isinstance(S0, Supports):
        return _check_supports(S0, n, As)
    if not isinstance(S0, (list, tuple)) or len(S0) != len(As):
        raise DNMFValueError(f"S0: expected a list of {len(As)} arrays (one per layer), their Supports or None, "
                             f"found {type(S0).__name__}" + (f" of length {len(S0)}" if isinstance(S0, (list, tuple)) else ""))
    P0 = []
    for l, (Sl, A) in enumerate(zip(S0, As)):
        Sl = np.asarray(Sl)
        if Sl.shape != (n, A.shape[1]):
            raise DNMFValueError(f"S0[{l}]: expected shape {(n, A.shape[1])}, found {Sl.shape}")
        P0.append(Sl > 0)
    return P0


def _check_supports(S0, n, As):
    """The boolean supports of a :class:`Supports`, checked against the block (n rows) and the factors."""
    shapes, bits = S0
    if not (isinstance(shapes, (list, tuple)) and isinstance(bits, (list, tuple))
            and len(shapes) == len(bits) == len(As)):
        found = [len(v) if isinstance(v, (list, tuple)) else type(v).__name__ for v in (shapes, bits)]
        raise DNMFValueError(f"S0: expected Supports of {len(As)} layers, found {found[0]} shapes and {found[1]} bit arrays")
    for l, (shape, b, A) in enumerate(zip(shapes, bits, As)):
        want = (n, A.shape[1])
        if tuple(shape) != want:
            raise DNMFValueError(f"S0.shapes[{l}]: expected {want}, found {tuple(shape)}")
        b = np.asarray(b)
        nbytes = -(-n * want[1] // 8)
        if b.dtype != np.uint8 or b.shape != (nbytes,):
            raise DNMFValueError(f"S0.bits[{l}]: expected {nbytes} packed uint8 (np.packbits of {want} booleans), "
                                 f"found dtype {b.dtype} shape {b.shape}")
    return [S0.layer(l) for l in range(len(As))]


def _forward(X, As, dt, solver, P0s=None, tick=_no_tick):
    """Forward pass; returns (S list, passive solvers, C0 = X @ A[0]).

    ``P0s``: optional supports (one boolean (n, k_l) array or None per layer, see
    :func:`_check_warm`) of a previous forward pass; they start the BPP of every layer (the
    solution is the same; a support that is already right ends the pivoting at once)."""
    S, solvers = [], []
    prev = X
    C0 = None
    for A, P0 in zip(As, P0s if P0s is not None else [None] * len(As)):
        k = A.shape[1]
        max_iter, tol = _solver_opts(solver, k)
        A64 = np.asarray(A, dtype=np.float64)
        ps = _PassiveSolver(A64.T @ A64)
        if C0 is None:
            C0 = C = sparse_times(X, A)  # (kernels/spmm.py's kernel for a large CSR block)
            tick("X @ A0")
        else:
            C = prev @ A
            tick("S @ A (dense)")
        if C.shape[0] == 0:
            Sl = np.zeros((0, k), dtype=dt)
        else:
            S64, _ = _nnls_core(ps, np.asarray(C, dtype=np.float64), P0, max_iter, tol)
            Sl = S64.astype(dt, copy=False)
        tick(f"nnls layer {len(S)}")
        S.append(Sl)
        solvers.append(ps)
        prev = Sl
    return S, solvers, C0


def forward(X, A_list, *, solver=None):
    """Neural NMF forward propagation: ``[S[0], ..., S[L]]`` with ``S[l] = q(A[l], S[l-1])``.

    Parameters
    ----------
    X : (n, n_features) dense array or scipy.sparse matrix.
    A_list : list of factors, ``A_list[0]`` (n_features, k0), ``A_list[l]`` (k_{l-1}, k_l).
    solver : dict, optional
        Options of :func:`dnmf_dask.kernels.nnls.nnls_gram` (``max_iter``, ``tol``).

    Returns
    -------
    list of (n, k_l) arrays (float32 if every input is float32, else float64).
    """
    X, As, dt = _check_inputs(X, A_list)
    return _forward(X, As, dt, solver)[0]


def _check_labels(y, B, lam, n, kL, dt):
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise DNMFTypeError(f"lam: expected a real number >= 0, found {type(lam).__name__}")
    if not (np.isfinite(lam) and lam >= 0):
        raise DNMFValueError(f"lam: expected a finite number >= 0, found {lam!r}")
    if B is not None:
        B = _as_dense_2d("B", B)
        if B.shape[1] != kL:
            raise DNMFValueError(
                f"B: expected shape (n_classes, {kL}) (k of the last layer), found {B.shape}"
            )
        B = np.asarray(B, dtype=np.result_type(dt, _float_dtype(B.dtype)))
    if y is None:
        return None, B, np.zeros(n, dtype=bool)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DNMFValueError(f"y: expected a 1-D int array of length {n} (rows of X), found shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise DNMFTypeError(f"y: expected an integer array (-1 = unlabeled), found dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    labeled = y >= 0
    if np.any(y < -1):
        raise DNMFValueError(f"y: expected labels >= -1 (-1 = unlabeled), found {int(y.min())}")
    if labeled.any():
        if B is None:
            if lam > 0:
                raise DNMFValueError(
                    "B: expected a (n_classes, k_L) classifier when lam > 0 and y has labels, found None"
                )
        elif y.max() >= B.shape[0]:
            raise DNMFValueError(
                f"y: expected labels < n_classes = {B.shape[0]} (rows of B), found {int(y.max())}"
            )
    return y, B, labeled


def _label_term(Z, Yl, label_loss):
    """Unweighted label term of the scores Z = S_L Bᵀ (labeled rows) and its gradient dC/dZ."""
    if label_loss == "frobenius":
        R = Yl - Z
        return _sqnorm(R), -2.0 * R  # ||Y - Z||^2
    if label_loss == "kullback-leibler":
        # Σ y log(y / z) − y + z, with z clipped to EPS inside the log (as kernels.solvers);
        # where z < EPS the log part is constant, so only the "+ z" part has a gradient there
        zc = np.maximum(Z, EPS)
        pos = Yl > 0
        term = float(np.sum(Yl[pos] * np.log(Yl[pos] / zc[pos])) - np.sum(Yl) + np.sum(Z, dtype=np.float64))
        return term, 1.0 - np.where(Z > EPS, Yl / zc, 0.0)
    logp = _log_softmax(Z)
    return -float(np.sum(logp[Yl > 0])), np.exp(logp) - Yl  # summed cross-entropy


def classifier_objective(B, SL, y, label_loss="frobenius", l2=0.0):
    """What :func:`fit_classifier` minimises over B, and its gradient.

    ``label term(S_L Bᵀ) + l2 ||B||_F²`` on the labeled codes (the label term unweighted by λ,
    as :func:`chunk_cost_grad` reports it in ``extras["label_loss"]``).

    Parameters
    ----------
    B : (n_classes, k_L) classifier; SL : (n_labeled, k_L) codes of the labeled rows; y :
    (n_labeled,) their labels in [0, n_classes); label_loss : as :func:`chunk_cost_grad`;
    l2 : float >= 0, ridge weight on B.

    Returns
    -------
    value : float, the objective; label_term : float, its label part alone; grad : array like B.
    """
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not (np.isfinite(l2) and l2 >= 0):
        raise DNMFValueError(f"l2: expected a finite number >= 0, found {l2!r}")
    l2 = float(l2)
    label_loss = canonical_loss(label_loss)
    SL = np.asarray(SL, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    Yl = _one_hot(y, SL.shape[0], B.shape[0])
    term, dZ = _label_term(SL @ B.T, Yl, label_loss)
    grad = dZ.T @ SL
    value = term
    if l2 > 0:
        value += l2 * float(np.sum(B * B))
        grad = grad + 2.0 * l2 * B
    return value, term, grad


def fit_classifier(SL, y, B, label_loss="frobenius", max_iter=50, l2=0.0):
    """Refit the classifier B to fixed last-layer codes: argmin_B of the label term
    (+ ``l2 ||B||²``, :func:`classifier_objective`).

    The objective is convex in B for all three losses; B ≥ 0 for "frobenius" (SSNMF) and
    "kullback-leibler", signed for "cross-entropy". Returns the new B and its (unweighted,
    unpenalised) label term; the objective at the result is never above the start's.

    ``max_iter`` int: at most that many L-BFGS-B iterations from ``B`` (scipy's default stopping
    tests), an approximate step whose result depends on the start and, near those tests'
    thresholds, on the rounding of ``SL``.

    ``max_iter="auto"``: the minimiser itself, to rounding, so that B is a continuous function of
    the codes (the same B, up to rounding, for any start and any summation order of ``SL``):

    * "frobenius": ``min_{B ≥ 0} ||Y − SL Bᵀ||² + l2 ||B||²`` is an NNLS problem per class,
      solved exactly by :func:`~dnmf_dask.kernels.nnls.nnls_gram` on ``G = SLᵀ SL + l2 I``
      (unique when G is positive definite: l2 > 0 or SL of full column rank);
    * "cross-entropy": Newton's method with the exact Hessian (``(n_classes k_L)²`` entries,
      ``O(n_labeled (n_classes k_L)²)`` to form) and an Armijo backtracking step, then, once the
      Newton decrement is below ``1e-12 |objective|`` (where an Armijo test only sees rounding),
      full steps while the decrement still falls: B is the minimiser to the rounding of the
      gradient divided by the flattest curvature (≥ 2 l2). Strictly convex when ``l2 > 0`` (its
      minimiser has rows summing to zero, as softmax ignores a common shift); with ``l2 = 0`` a
      minimiser exists only for non-separable codes, else B grows until
      :data:`CLASSIFIER_AUTO_MAX_ITER` steps (steps by least squares, minimum norm);
    * "kullback-leibler": L-BFGS-B from ``B`` with that gradient test and no test on the
      decrease of the objective, up to :data:`CLASSIFIER_AUTO_MAX_ITER` iterations (not exact).

    Parameters
    ----------
    SL : (n_labeled, k_L) codes of the labeled rows; y : (n_labeled,) their labels in
    [0, n_classes); B : (n_classes, k_L) starting classifier; max_iter : int >= 0 or "auto";
    l2 : float >= 0, ridge weight (a softmax B on separable codes otherwise grows without bound).
    """
    from scipy.optimize import minimize

    label_loss = canonical_loss(label_loss)
    B = np.asarray(B, dtype=np.float64)
    auto = isinstance(max_iter, str)
    if auto and max_iter != "auto":
        raise DNMFValueError(f"max_iter: expected an integer >= 0 or 'auto', found {max_iter!r}")

    def f(b):
        value, _, grad = classifier_objective(b.reshape(B.shape), SL, y, label_loss, l2)
        return value, grad.ravel()

    start, start_term, _ = classifier_objective(B, SL, y, label_loss, l2)
    if np.asarray(SL).shape[0] == 0 or max_iter == 0:
        return B, start_term
    nonneg = label_loss != "cross-entropy"
    if auto and label_loss == "frobenius":
        Bn = _ridge_nnls(SL, y, B.shape[0], l2)
    elif auto and label_loss == "cross-entropy":
        Bn = _softmax_newton(SL, y, B, l2)
    else:
        options = {"maxiter": int(max_iter)} if not auto else {
            "maxiter": CLASSIFIER_AUTO_MAX_ITER, "ftol": 0.0,
            "gtol": CLASSIFIER_GTOL * np.linalg.norm(_gradient_at_zero(SL, y, B.shape[0], label_loss), np.inf)}
        bounds = [(0.0, None)] * B.size if nonneg else None
        res = minimize(f, B.ravel(), jac=True, method="L-BFGS-B", bounds=bounds, options=options)
        if not np.isfinite(res.fun) or res.fun > start:
            return B, start_term
        Bn = res.x.reshape(B.shape)
        if nonneg:
            Bn = np.maximum(Bn, 0.0)
        return Bn, classifier_objective(Bn, SL, y, label_loss, l2)[1]
    value, term, _ = classifier_objective(Bn, SL, y, label_loss, l2)
    if not np.isfinite(value) or value > start:
        return B, start_term
    return Bn, term


def _one_hot(y, n_rows, n_classes):
    Y = np.zeros((n_rows, n_classes))
    Y[np.arange(n_rows), np.asarray(y, dtype=np.int64)] = 1.0
    return Y


def _gradient_at_zero(SL, y, n_classes, label_loss):
    """Gradient of the unpenalised label term at B = 0: depends on the codes and labels only."""
    SL = np.asarray(SL, dtype=np.float64)
    return classifier_objective(np.zeros((n_classes, SL.shape[1])), SL, y, label_loss)[2]


def _ridge_nnls(SL, y, n_classes, l2):
    """argmin_{B ≥ 0} ||Y − SL Bᵀ||² + l2 ||B||², exactly: one NNLS per class (row of B) on the
    Gram matrix SLᵀ SL + l2 I."""
    from dnmf_dask.kernels.nnls import nnls_gram

    SL = np.asarray(SL, dtype=np.float64)
    G = SL.T @ SL + l2 * np.eye(SL.shape[1])
    return nnls_gram(G, _one_hot(y, SL.shape[0], n_classes).T @ SL)


def _softmax_hessian(SL, P, l2):
    """Hessian of Σ −log softmax(SL Bᵀ)[y] + l2 ||B||² over B raveled row-major (entry (c, j)
    at c k + j): Σ_i (diag(p_i) − p_i p_iᵀ) ⊗ s_i s_iᵀ + 2 l2 I, formed in row slices."""
    n, k = SL.shape
    C = P.shape[1]
    H = np.zeros((C * k, C * k))
    for a in range(0, n, _HESSIAN_ROWS):
        S, Pa = SL[a:a + _HESSIAN_ROWS], P[a:a + _HESSIAN_ROWS]
        U = (Pa[:, :, None] * S[:, None, :]).reshape(S.shape[0], C * k)
        H -= U.T @ U
        for c in range(C):
            H[c * k:(c + 1) * k, c * k:(c + 1) * k] += S.T @ (Pa[:, c:c + 1] * S)
    H[np.diag_indices_from(H)] += 2.0 * l2
    return H


def _softmax_newton(SL, y, B, l2):
    """The minimiser of the ridge softmax objective by Newton's method (see :func:`fit_classifier`)."""
    import scipy.linalg

    SL = np.asarray(SL, dtype=np.float64)
    n, C = SL.shape[0], B.shape[0]
    Y = _one_hot(y, n, C)
    rows = np.arange(n)
    ys = np.asarray(y, dtype=np.int64)

    def objective(B):
        logp = _log_softmax(SL @ B.T)
        value = -float(np.sum(logp[rows, ys])) + l2 * float(np.sum(B * B))
        return value, np.exp(logp)

    value, P = objective(B)
    last_full = np.inf  # the decrement before the last of the final full steps
    for _ in range(CLASSIFIER_AUTO_MAX_ITER):
        g = ((P - Y).T @ SL + 2.0 * l2 * B).ravel()
        gn = np.linalg.norm(g)
        if gn == 0:
            break
        H = _softmax_hessian(SL, P, l2)
        try:
            d = scipy.linalg.cho_solve(scipy.linalg.cho_factor(H), g)
        except np.linalg.LinAlgError:  # l2 = 0 (softmax's shift invariance) or rounding
            d = scipy.linalg.lstsq(H, g)[0]
        decrease = float(g @ d)  # (the Newton decrement²: about twice the gap to the minimum)
        if not decrease > 0:
            break
        if decrease <= _NEWTON_LAST_STEP * max(1.0, abs(value)):
            # too small for the rounding of the objective to show (an Armijo test would fail at
            # random): full steps while the decrement still falls (quadratically), then stop at
            # the rounding floor of the gradient
            if not decrease < 0.5 * last_full:
                break
            last_full = decrease
            B = B - d.reshape(B.shape)
            value, P = objective(B)
            continue
        t = 1.0
        while t > 1e-12:
            Bt = B - t * d.reshape(B.shape)
            vt, Pt = objective(Bt)
            if vt <= value - 1e-4 * t * decrease:
                break
            t *= 0.5
        else:
            # no decrease the rounding of the objective can show: the full step still counts
            # when it lowers the gradient (near the minimiser), else B is as good as it gets
            Bt = B - d.reshape(B.shape)
            vt, Pt = objective(Bt)
            if not np.linalg.norm(((Pt - Y).T @ SL + 2.0 * l2 * Bt).ravel()) < gn:
                break
        B, value, P = Bt, vt, Pt
    return B


def unit_columns(A_list, B=None):
    """Rescale every column of every factor to unit Euclidean norm, passing each layer's scale
    on to the next layer's rows (and the last layer's to B's columns).

    With ``N_l = diag(column norms of A[l])`` (after the previous layer's scale was passed on):
    ``A[l] ← A[l] N_l⁻¹``, ``A[l+1] ← N_l A[l+1]``, and ``B ← B N_L⁻¹``. The product
    ``A[0] … A[L]`` becomes ``A[0] … A[L] N_L⁻¹`` while ``q`` gives ``S[L] N_L``: the
    reconstruction, and the scores ``S[L] Bᵀ``, are unchanged **exactly** for the last layer's
    rescaling (NNLS is equivariant under a positive column scaling of its matrix) and for one
    layer; an inner layer's per-column scaling reweights the next layer's least-squares problem
    (``||(S[l] − S A[l+1]ᵀ) N_l||``), so there the cost changes unless that layer fits exactly.
    Zero columns are left as they are. Used as part of NeuralNMF's projection (``unit_topics``):
    with every column at unit norm the scale of the codes is pinned to the data's and cannot
    drift into B.

    Returns new lists/arrays (the inputs are not modified): ``(As, B)``.
    """
    As = [np.array(A, dtype=np.result_type(A.dtype, np.float32), copy=True) for A in A_list]
    B = None if B is None else np.array(B, copy=True)
    for l, A in enumerate(As):
        norms = np.linalg.norm(A, axis=0)
        scale = np.where(norms > 0, norms, 1.0).astype(A.dtype, copy=False)
        A /= scale
        if l + 1 < len(As):
            As[l + 1] *= scale[:, None]
        elif B is not None:
            B = B / scale
    return As, B


def _log_softmax(Z):
    """Row-wise log softmax, shifted by the row maximum so that exp never overflows."""
    Zs = Z - Z.max(axis=1, keepdims=True)
    return Zs - np.log(np.sum(np.exp(Zs), axis=1, keepdims=True))


def _sqnorm(M):
    """||M||_F² summed in float64 (a sparse M's duplicate entries summed first)."""
    if sp.issparse(M):
        if not M.has_canonical_format:
            M = M.copy()
            M.sum_duplicates()
        d = M.data
        if d.dtype in (np.float32, np.float64) and spmm_wanted(M, 1):
            return spmm_module().sq_norm(d)  # one streaming pass, no float64 copy
    else:
        d = np.asarray(M).ravel()
    return float(np.dot(d.astype(np.float64, copy=False), d.astype(np.float64, copy=False)))


def _fsum_prod(a, b):
    """sum(a * b) accumulated in float64."""
    return float(np.sum(np.multiply(a, b, dtype=np.float64)))


# --------------------------------------------------------------------------------------------
# cost and gradient of one block
# --------------------------------------------------------------------------------------------
def chunk_cost_grad(X, A_list, B=None, y=None, lam=0.0, cost="reconstruction", *, solver=None,
                    return_S=False, label_loss="frobenius", S0=None, layer_energies=True):
    """Cost of one block of rows and its exact gradients (sums over the block's rows).

    Parameters
    ----------
    X : (n, n_features) dense array or scipy.sparse CSR matrix (never densified).
    A_list : list of factors ``A[0]`` (n_features, k0), ``A[l]`` (k_{l-1}, k_l).
    B : (n_classes, k_L) array, optional; required when ``lam > 0`` and some row is labeled.
    y : (n,) int array, optional; ``-1`` marks unlabeled rows.
    lam : float >= 0, weight of the classification term.
    cost : "reconstruction" (paper eq. 7) or "layerwise" (sum of the layers' energies).
    solver : dict, optional, options of the NNLS (``max_iter``, ``tol``).
    return_S : bool, also put the forward pass ``[S[0], ..., S[L]]`` in ``extras["S"]``.
    label_loss : "frobenius" (``||L ⊙ (Y − B S_L)||²``, the paper's eq. 7), "kullback-leibler"
        (alias "kl", "i-divergence": ``Σ_labeled y log(y / z) − y + z`` with ``z = B s_m``, clipped
        to ``EPS`` inside the log; B ≥ 0) or "cross-entropy" (``−Σ_labeled log softmax(B s_m)[y_m]``;
        B is then an unconstrained linear classifier).
    S0 : list of (n, k_l) arrays, or :class:`Supports`, optional — a forward pass at nearby
        factors (e.g. the previous iteration's ``extras["S"]``; boolean arrays or ``Supports.of``
        of it carry the same information) whose supports warm-start the NNLS of every layer (the
        solution is the same; a support that is already right ends the pivoting at once).
    layer_energies : bool, default True — False: ``extras["layer_sq"]`` is None unless
        ``cost="layerwise"`` (a pass that does not report them skips their products).

    Returns
    -------
    cost_sum : float
    grads : list of arrays, ``dC/dA[l]`` with the shapes of ``A_list``
    grad_B : array like ``B`` (``dC/dB``), or None when ``B`` is None
    extras : dict of per-block sums for reporting:
        ``"recon_sq"``  ||X - S[L] (A[0]...A[L])^T||^2,
        ``"x_sq"``      ||X||^2,
        ``"layer_sq"``  (L+1,) array of ||S[l-1] - S[l] A[l]^T||^2 (None if not ``layer_energies``),
        ``"label_sq"``  ||Lmask * (Y - S[L] B^T)||^2 (unweighted; 0 without B or labels),
        ``"label_loss"`` the unweighted label term of ``label_loss`` (equals ``label_sq`` for
        "frobenius"),
        ``"n_labeled"`` number of labeled rows, ``"n_correct"`` labeled rows whose
        ``argmax(S[L] @ B.T)`` equals the label (0 without B), ``"n_rows"`` rows of the block.
    """
    label_loss = _check_cost(cost, label_loss)
    if not isinstance(return_S, (bool, np.bool_)):
        raise DNMFTypeError(f"return_S: expected a bool, found {type(return_S).__name__}")
    X, x_sq = _checked_data(X)
    As, B, y, labeled, dt = _check_model(A_list, X, y, B, lam)
    return _cost_grad(_data_in(X, dt), As, B, y, labeled, float(lam), cost, label_loss, dt, solver, return_S,
                      _check_warm(S0, X.shape[0], As), x_sq=x_sq, layer_energies=bool(layer_energies))


def _checked_data(X):
    """``(X, ||X||²)`` of a checked block (:func:`_as_data_2d`: dense or CSR, finite values).

    A sparse block's values are checked through ||X||², which the cost needs anyway: it is
    finite when they all are (float64 squares overflow only beyond 1e154), and only when it is
    not are the values looked at one by one (one pass over the block instead of two)."""
    if not sp.issparse(X):
        X = _as_data_2d("X", X)
        return X, _sqnorm(X)
    X = _as_data_2d("X", X, check_finite=False)
    x_sq = _sqnorm(X)
    if not np.isfinite(x_sq):
        X = _as_data_2d("X", X)  # raises on NaN or inf (else the squares overflowed)
    return X, x_sq


#: a dense block of at least this many entries takes the Gram form of :func:`_cost_then_grad`
#: (the sparse one): forming the (n, n_features) residual and its products cost more than the
#: k-column products there (5000 × 2000, ranks (20, 10): 2.4× less time per epoch). Smaller
#: blocks (Table 1's 87 × 90) keep the residual form, which is exact without cancellation.
DENSE_GRAM_MIN_SIZE = 1_000_000


def _cost_grad(*args, **kwargs):
    """:func:`chunk_cost_grad` on checked input (the arguments of :func:`_cost_then_grad`):
    ``(cost, grads, grad_B, extras)``."""
    steps = _cost_then_grad(*args, **kwargs)
    total, extras = next(steps)
    grads, grad_B = next(steps)
    return total, grads, grad_B, extras


def _cost_then_grad(X, As, B, y, labeled, lam, cost, label_loss, dt, solver, return_S, P0, x_sq=None,
                    layer_energies=True):
    """:func:`chunk_cost_grad` on checked input in two steps, a generator: it yields
    ``(cost, extras)`` after the forward pass and the cost, then ``(grads, grad_B)``.

    X, As, B are in dtype ``dt``, y and its mask ``labeled`` as :func:`_check_labels` returns
    them, ``P0`` the warm start's supports. ``x_sq``: ||X||² if already known.
    ``layer_energies=False`` skips the layer-wise energies when the cost does not need them
    (``extras["layer_sq"]`` is then None; for a dense X with several layers they cost one more
    (n, n_features) product and difference per pass). A caller that needs only the cost (an
    Armijo trial that may be rejected) stops after the first step and skips the backward pass,
    ~40% of a pass on Table 1; the two steps together are exactly :func:`_cost_grad`.
    """
    n = X.shape[0]
    L = len(As) - 1
    kL = As[-1].shape[1]
    # Gram form (sparse X, or dense X of at least DENSE_GRAM_MIN_SIZE entries): the residuals
    # X − S Aᵀ are never formed; the costs and gradients come from the forward pass's X A[0],
    # one product Xᵀ R0 (k0 columns) and k-column dense products and k × k Grams
    gram = sp.issparse(X) or X.size >= DENSE_GRAM_MIN_SIZE
    tick = _ticker()

    S, solvers, C0 = _forward(X, As, dt, solver, P0, tick)
    SL = S[L]
    if x_sq is None:
        x_sq = _sqnorm(X)
        tick("||X||^2")

    # products P = A0 A1 ... AL (prefix) and suffixes A_{l+1} ... A_L
    pre = [As[0]]
    for A in As[1:]:
        pre.append(pre[-1] @ A)
    P = pre[L]
    suf = [None] * (L + 1)
    suf[L] = np.eye(kL, dtype=dt)
    for l in range(L - 1, -1, -1):
        suf[l] = As[l + 1] @ suf[l + 1]

    # --- full-product reconstruction error (reported always; the cost for "reconstruction")
    StS_L = SL.T @ SL
    if gram:
        # X P = (X A[0]) A[1] ... A[L]: from the forward pass's X A[0], no second product with X
        XP = C0 if L == 0 else C0 @ suf[0]
        PtP = P.T @ P
        recon_sq = x_sq - 2.0 * _fsum_prod(SL, XP) + _fsum_prod(StS_L, PtP)
    else:
        E = X - SL @ P.T
        recon_sq = _sqnorm(E)

    # --- layer-wise energies ||S[l-1] - S[l] A[l]^T||^2 (reported unless not wanted)
    layer_sq = np.zeros(L + 1, dtype=np.float64)
    layer_terms = []  # (l, E_l) for l >= 1, dense (n, k_{l-1})
    if not (layer_energies or cost == "layerwise"):
        layer_sq = None
    elif gram:
        G0 = As[0].T @ As[0]
        StS0 = S[0].T @ S[0]
        layer_sq[0] = x_sq - 2.0 * _fsum_prod(S[0], C0) + _fsum_prod(StS0, G0)
    else:
        E0 = E if L == 0 else X - S[0] @ As[0].T
        layer_sq[0] = recon_sq if L == 0 else _sqnorm(E0)
    for l in range(1, L + 1 if layer_sq is not None else 1):
        El = S[l - 1] - S[l] @ As[l].T
        layer_sq[l] = _sqnorm(El)
        layer_terms.append((l, El))

    total = recon_sq if cost == "reconstruction" else float(np.sum(layer_sq))

    # --- classification term (its cost; its gradient below)
    n_labeled = int(labeled.sum())
    n_correct = 0
    label_sq = 0.0
    label_term = 0.0
    if B is not None and n_labeled:
        lab = np.flatnonzero(labeled)
        Z = SL[lab] @ B.T
        Yl = np.zeros_like(Z)
        Yl[np.arange(lab.size), y[lab]] = 1.0
        label_sq = _sqnorm(Yl - Z)
        n_correct = int(np.sum(np.argmax(Z, axis=1) == y[lab]))
        label_term, dZ = _label_term(Z, Yl, label_loss)
        if lam > 0:
            total += lam * label_term

    extras = {
        "recon_sq": float(recon_sq),
        "x_sq": float(x_sq),
        "layer_sq": layer_sq,
        "label_sq": float(label_sq),
        "label_loss": float(label_term),
        "n_labeled": n_labeled,
        "n_correct": n_correct,
        "n_rows": int(n),
    }
    if return_S:
        extras["S"] = S
    tick("cost")
    yield float(total), extras
    tick(None)

    grads = [np.zeros_like(A) for A in As]
    gS = [np.zeros_like(Sl) for Sl in S]  # direct dC/dS[l] (then accumulated adjoints)
    # grads[0] += X.T @ R0 collects every product with X^T, done once at the end
    R0 = np.zeros_like(S[0])

    # --- the chosen cost's direct (S fixed) gradients
    if cost == "reconstruction":
        if gram:
            gS[L] += -2.0 * (XP - SL @ PtP)
            dP_rest = 2.0 * (P @ StS_L)  # dP = -2 X^T S_L + 2 P S_L^T S_L
            # dC/dA[l]|_S = pre[l-1]^T dP suf[l]^T with dP = -2 X^T S_L + 2 P S_L^T S_L
            for l in range(L + 1):
                left = pre[l - 1] if l > 0 else None
                rest = dP_rest @ suf[l].T
                grads[l] += rest if left is None else left.T @ rest
            # and the X^T parts -2 pre[l-1]^T (X^T S_L) suf[l]^T: for l = 0 into R0 (X^T R0
            # at the end), for l >= 1 as -2 (X pre[l-1])^T S_L suf[l]^T with
            # X pre[l-1] = (X A[0]) A[1] ... A[l-1] from the forward pass (no product with X)
            R0 += -2.0 * (SL @ suf[0].T)
            Xpre = C0
            for l in range(1, L + 1):
                grads[l] += -2.0 * ((Xpre.T @ SL) @ suf[l].T)
                if l < L:
                    Xpre = Xpre @ As[l]
        else:
            gS[L] += -2.0 * (E @ P)
            dP_full = -2.0 * (E.T @ SL)
            for l in range(L + 1):
                t = dP_full @ suf[l].T
                grads[l] += t if l == 0 else pre[l - 1].T @ t
    else:
        if gram:
            # l = 0: -2 (X^T S0 - A0 S0^T S0);  dC/dS0 = -2 (X A0 - S0 G0)
            grads[0] += 2.0 * (As[0] @ StS0)
            R0 += -2.0 * S[0]
            gS[0] += -2.0 * (C0 - S[0] @ G0)
        else:
            grads[0] += -2.0 * (E0.T @ S[0])
            gS[0] += -2.0 * (E0 @ As[0])
        for l, El in layer_terms:
            grads[l] += -2.0 * (El.T @ S[l])
            gS[l] += -2.0 * (El @ As[l])
            gS[l - 1] += 2.0 * El

    # --- classification term's gradient
    grad_B = None
    if B is not None:
        grad_B = np.zeros_like(B)
        if n_labeled and lam > 0:
            gS[L][lab] += lam * (dZ @ B)
            grad_B += lam * (dZ.T @ SL[lab])

    # --- reverse-mode propagation through q(A[l], S[l-1]), l = L..0
    tick("backward (dense)")
    for l in range(L, -1, -1):
        g = gS[l]
        supp = S[l] > 0
        D = solvers[l].solve(np.asarray(g, dtype=np.float64), supp).astype(dt, copy=False)
        tick("backward (passive solves)")
        StD = S[l].T @ D
        grads[l] -= As[l] @ (StD + StD.T)
        if l == 0:
            R0 += D
        else:
            grads[l] += S[l - 1].T @ D
            gS[l - 1] += D @ As[l].T
        tick("backward (dense)")

    # --- the one product with X^T (kernels/spmm.py's kernel for a large CSR block)
    grads[0] += sparse_t_times(X, R0)
    tick("X.T @ R0")
    yield grads, grad_B


class BlockPass:
    """:func:`chunk_cost_grad` of one fixed block, evaluated once per pass of a fit.

    The single-block fast path of :class:`dnmf_dask.NeuralNMF`: ``X`` is checked (finite
    values, format) and converted to each floating dtype once instead of every pass (a sparse
    float32 block is not converted at all, :func:`_data_in`), and every
    call warm-starts each layer's NNLS from the supports of the previous call's forward pass
    (the solutions are the same; a support that is already right ends the pivoting at once).
    A call returns what ``chunk_cost_grad(X, A_list, B, y, lam, cost,
    label_loss=label_loss, return_S=True, S0=<previous forward pass>)`` returns; the factors,
    B and the labels are checked as there on every call.

    Parameters
    ----------
    X : (n, n_features) dense array or scipy.sparse matrix; y : (n,) int array or None;
    lam, cost, label_loss : as :func:`chunk_cost_grad`.
    layer_energies : bool, default True
        False: ``extras["layer_sq"]`` is None unless ``cost="layerwise"`` (the fit does not
        report the layer energies, and on dense X they cost a product of the size of X per pass).
    """

    def __init__(self, X, y=None, lam=0.0, cost="reconstruction", label_loss="frobenius", *, layer_energies=True):
        label_loss = _check_cost(cost, label_loss)
        self._X = {}
        self.X, self.x_sq = _checked_data(X)
        self.y, self.lam, self.cost, self.label_loss = y, lam, cost, label_loss
        self.layer_energies = layer_energies
        self.S = None  # the last call's forward pass
        self._steps = None  # the last cost() call's backward pass, not yet run

    def _X_as(self, dt):
        dt = np.dtype(dt)
        if dt not in self._X:
            self._X[dt] = _data_in(self.X, dt)
        return self._X[dt]

    def __call__(self, A_list, B=None):
        """``(cost, grads, grad_B, extras)`` at ``A_list`` and ``B`` (see :func:`chunk_cost_grad`)."""
        total, extras = self.cost_at(A_list, B)
        return (total, *self.grads(), extras)

    def cost_at(self, A_list, B=None):
        """``(cost, extras)`` at ``A_list`` and ``B``: the forward pass and the cost only.

        :meth:`grads` then gives that point's ``(grads, grad_B)`` from the same forward pass
        (until the next call), so an Armijo trial that is rejected costs no backward pass.
        """
        As, B, y, labeled, dt = _check_model(A_list, self.X, self.y, B, self.lam)
        P0 = _check_warm(self.S, self.X.shape[0], As)
        self._steps = _cost_then_grad(self._X_as(dt), As, B, y, labeled, float(self.lam), self.cost,
                                      self.label_loss, dt, None, True, P0, x_sq=self.x_sq,
                                      layer_energies=self.layer_energies)
        total, extras = next(self._steps)
        self.S = extras["S"]
        return total, extras

    def grads(self):
        """``(grads, grad_B)`` at the point of the last :meth:`cost_at` call (once per call)."""
        steps, self._steps = self._steps, None
        if steps is None:
            raise DNMFValueError("BlockPass.grads: expected a cost_at() call first (each gives its gradients once)")
        return next(steps)


def sum_results(results):
    """Add up ``chunk_cost_grad`` results of several blocks (the driver's tree reduction).

    ``extras["S"]`` (if present) is not summable and is dropped.
    """
    results = list(results)
    if not results:
        raise DNMFValueError("results: expected at least one chunk result, found none")
    cost, grads, gB, extras = results[0]
    grads = [g.copy() for g in grads]
    gB = None if gB is None else gB.copy()
    extras = {key: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
              for key, v in extras.items() if key != "S"}
    for c, gr, b, ex in results[1:]:
        cost += c
        if len(gr) != len(grads):
            raise DNMFValueError(f"results: expected {len(grads)} gradients per chunk, found {len(gr)}")
        for g, h in zip(grads, gr):
            g += h
        if (gB is None) != (b is None):
            raise DNMFValueError("results: expected grad_B to be None in all chunks or in none")
        if gB is not None:
            gB += b
        for key in extras:
            extras[key] = extras[key] + ex[key]
    return cost, grads, gB, extras
