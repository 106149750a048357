"""Deep NMF (Flenner & Hunter), distributed: a pooled forward pass and backpropagation.

Forward pass (the paper's Algorithm 2): layer 0 factors X ≈ S0 A0ᵀ; layer l ≥ 1 factors the
pooled coefficients of the layer below, X(l) = p(S(l−1)) ≈ S(l) A(l)ᵀ, where p is max pooling
inside groups (documents / clips; see :mod:`dnmf_dask.kernels.pooling`). Every layer is a
distributed multiplicative-update fit (:func:`~dnmf_dask.parallel.mu.fit_mu`); with labels the last
layer is semi-supervised (SSNMF, weight ``lam``). Row blocks never split a group, so pooling is a
per-block task and the S blocks never leave the workers.

Backpropagation (Algorithm 3 / eq. (4) of docs/deep_nmf_math.md): every iteration is one pass over
the row blocks; each block runs :func:`~dnmf_dask.kernels.deep.backprop_chunk_step` (new S of every
layer, kept persisted per block, and the A/B statistics), the statistics are summed and the driver
applies :func:`~dnmf_dask.kernels.deep.apply_backprop_update`.

With ``pool_size`` 0 or 1 and ``backprop_iter=0`` the model is exactly :class:`HierarchicalNMF`.
"""

from __future__ import annotations

import dask
import numpy as np

from ..errors import DNMFValueError
from ..kernels.deep import BACKPROP_SOLVERS, apply_backprop_update
from ..kernels.pooling import pool_labels, pool_windows
from ..kernels.solvers import canonical_loss
from ..parallel.blocks import Blocks
from ..parallel.mapreduce import map_reduce
from ..parallel.scheduler import scheduler_context
from ..parallel.tasks import (backprop_task as _backprop_task, deep_forward_task as _deep_forward_task,
                              energy_task as _energy_task, pool_task as _pool_task)
from .hierarchical import HierarchicalNMF


def _check_int_min(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DNMFValueError(f"{name}: expected an integer >= {minimum}, found {value!r}")
    return int(value)


# --------------------------------------------------------------------------- per-block stats (tasks: parallel/tasks.py)

def _unflatten_stats(flat, n_layers):
    A = [{} for _ in range(n_layers)]
    B = {}
    for key, v in flat.items():
        if key.startswith("A"):
            l, name = key[1:].split("/", 1)
            A[int(l)][name] = v
        elif key.startswith("B/"):
            B[key[2:]] = v
    return {"A": A, "B": B or None, "energy": flat["energy"]}


def _pooled_groups(g, pool_size, stride):
    """Groups (and the pooling windows) of the pooled samples of one block."""
    _, _, out = pool_windows(g, pool_size, stride)
    return np.asarray(out)


class DeepNMF(HierarchicalNMF):
    """Deep NMF with max pooling inside groups and backpropagation (Flenner & Hunter), distributed.

    Parameters
    ----------
    ranks : sequence of int (k0, k1, …, kL)
        Topics per layer.
    pool_size : int, default 0
        Max pooling window between layers (0 or 1 = none). Needs ``groups`` (or a Corpus with groups)
        when > 1; a window never crosses a group.
    stride : int, default 1
        1 = the paper's centred sliding window (sample count unchanged); 1 < stride <= pool_size =
        windows anchored at each group's start (fewer samples in deeper layers; their labels are
        pooled with :func:`~dnmf_dask.kernels.pooling.pool_labels`).
    lam : float, default 1.0
        Weight of the label term on the last layer when ``fit`` gets labels.
    label_loss : {'frobenius', 'kullback-leibler' (alias 'kl'), 'cross-entropy' (alias 'ce')}, default 'frobenius'
        Label term ``lam/2 · D_Y(Y, S_L Bᵀ)`` of the last layer, in the forward pass (SSNMF with that
        label loss) and in the backpropagation: the paper's squared error ``||L⊙(Y − S_L Bᵀ)||²``, the
        I-divergence, or the cross-entropy of softmax(S_L Bᵀ) over the labeled samples
        (:func:`~dnmf_dask.kernels.deep.label_energy`).
    solver : {'mu', 'hals', 'anls'}, default 'mu'
        Update rule of every forward layer, as for :class:`HierarchicalNMF` ('hals' and 'anls' need the
        Frobenius label loss and fully observed X).
    backprop_iter : int, default 0
        Iterations of backpropagation (Algorithm 3) after the forward pass.
    backprop_solver : {'mu', 'hals'}, default 'mu'
        Update rule of the backpropagation: the paper's multiplicative updates (eq. (4)), or HALS —
        exact coordinate minimisation of the same energy, column by column of every S(l), A(l) and B,
        with the pooling Jacobian frozen at the current S(l) (squared-error label term, fully
        observed X). 'anls' is refused: with pooling every sample has its own Gram matrix.
    init_B : {'lstsq', 'random'}, default 'lstsq'
        Start of the classifier, as in :class:`HierarchicalNMF`.
    init, max_iter, tol, random_state, chunk_rows, scheduler, persist, verbose
        As for :class:`HierarchicalNMF` (``max_iter`` per forward layer; ``tol`` also stops the
        backpropagation on |ΔE|/E).

    Attributes
    ----------
    A_, B_, classes_, layer_history_, layer_n_iter_, layer_stop_reason_ : as in HierarchicalNMF
    history_ : backpropagation history, per iteration: ``energy`` (E at the new S and the A, B of
        that iteration), ``energy_layers`` (array (L+1,) of the per-layer reconstruction terms),
        ``loss_Y`` (the label term lam/2 · D_Y(Y, S_L Bᵀ)) and ``rel_change`` (|ΔE|/E); plus
        ``energy_final`` (one number: E at the final S, A, B). Without backpropagation it is the last
        forward layer's history (as in HierarchicalNMF).
    n_iter_, stop_reason_ : backpropagation iterations and why it stopped ('tol' / 'max_iter');
        the forward layers' sum and the last layer's reason when ``backprop_iter=0``.
    layer_rel_error_ : ||X − S_l (A0…Al)ᵀ|| / ||X|| per layer (NaN for l ≥ 1 when stride > 1)
    """

    def __init__(self, ranks=(10, 5), *, pool_size=0, stride=1, lam=1.0, backprop_iter=0, init="nndsvda",
                 init_B="lstsq", max_iter=200, tol=1e-4, random_state=None, chunk_rows=None, scheduler=None,
                 persist="auto", verbose=0, label_loss="frobenius", solver="mu", backprop_solver="mu"):
        self.label_loss = label_loss
        self.solver = solver
        self.backprop_solver = backprop_solver
        self.ranks = ranks
        self.pool_size = pool_size
        self.stride = stride
        self.lam = lam
        self.backprop_iter = backprop_iter
        self.init = init
        self.init_B = init_B
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.scheduler = scheduler
        self.persist = persist
        self.verbose = verbose

    semi = False  # HierarchicalNMF machinery reads it; deep NMF is nonnegative throughout
    _auto_ranks = False  # rank selection does not model the pooling between layers

    @property
    def _allow_negative(self):
        return False

    def _validate_params(self):
        ranks = super()._validate_params()  # ranks, lam, init, init_B and the common ones
        pool_size = _check_int_min(self.pool_size, "pool_size", 0)
        stride = _check_int_min(self.stride, "stride", 1)
        if pool_size <= 1 and stride != 1:
            raise DNMFValueError(f"stride: expected 1 when pool_size is {pool_size} (no pooling), found {stride}")
        if stride > max(pool_size, 1):
            raise DNMFValueError(f"stride: expected an integer in [1, pool_size={pool_size}], found {stride}")
        _check_int_min(self.backprop_iter, "backprop_iter", 0)
        if self.backprop_solver not in BACKPROP_SOLVERS:
            raise DNMFValueError(f"backprop_solver: expected one of {list(BACKPROP_SOLVERS)} (eq. (4)'s multiplicative "
                                 f"updates or HALS; exact NNLS would need one Gram matrix per pooled sample), "
                                 f"found {self.backprop_solver!r}")
        if self.backprop_solver == "hals" and canonical_loss(self.label_loss) != "frobenius":
            raise DNMFValueError(f"backprop_solver: expected 'mu' for label_loss={self.label_loss!r} (HALS minimises "
                                 f"the squared-error label term), found 'hals'")
        return ranks

    @property
    def _pooling(self):
        return int(self.pool_size) > 1

    def fit(self, X, y=None, *, groups=None, observed=None, checkpoint=None, checkpoint_every=None, resume=False):
        """Forward pass layer by layer, then ``backprop_iter`` iterations of backpropagation.

        ``y`` (-1 = unlabeled) makes the last layer semi-supervised; ``groups`` (contiguous ids, one
        per sample; taken from a Corpus if not given) bound the pooling windows.
        ``checkpoint``, ``checkpoint_every``, ``resume``: checkpoints of the forward pass (every
        layer, and within a layer every ``checkpoint_every`` iterations), as
        :meth:`HierarchicalNMF.fit`; the backpropagation phase is rerun from its start on resume.
        """
        self._fit_deep(X, y, groups=groups, observed=observed,
                       run=dict(checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume))
        return self

    # -- hooks into HierarchicalNMF's forward pass -------------------------------------------
    def _layer_groups(self, g, n_samples):
        if self._pooling and g is None:
            raise DNMFValueError(
                f"groups: expected group ids (one per sample, or a Corpus with groups) when pool_size={self.pool_size} > 1, "
                "found None (pooling never crosses a group; pass np.zeros(n, int) for one group)"
            )
        return np.zeros(n_samples, dtype=np.int64) if g is None else g

    def _next_input(self, S_blocks, data, k, g_parts, y_parts):
        """X(l+1) = p(S(l)): group-bounded max pooling of every block (blocks hold whole groups)."""
        if not self._pooling:
            return super()._next_input(S_blocks, data, k, g_parts, y_parts)
        pool_size, stride = int(self.pool_size), int(self.stride)
        pooled, _ = map_reduce(_pool_task, list(zip(S_blocks, g_parts)), pool_size=pool_size, stride=stride)
        if stride > 1:
            new_g = [_pooled_groups(gp, pool_size, stride) for gp in g_parts]
            if y_parts[0] is not None:
                y_parts = [pool_labels(yp, gp, pool_size, stride) for yp, gp in zip(y_parts, g_parts)]
            g_parts = new_g
        offsets = np.r_[0, np.cumsum([len(gp) for gp in g_parts])].astype(np.int64)
        return Blocks(pooled, offsets, k, data.dtype, False, None, persisted=True), g_parts, y_parts

    # -- fitting ---------------------------------------------------------------------------
    def _fit_deep(self, X, y, *, groups, observed, debug=False, run=None):
        pool_size, stride = int(self.pool_size), int(self.stride)
        with scheduler_context(self.scheduler):
            state = self._fit_layers(X, y, groups=groups, observed=observed, run=run)
            blocks, g, codes = state["blocks"], state["groups"], state["codes"]
            S_final = state["forward_S"]
            if self.backprop_iter > 0 and self.backprop_solver == "hals" and (blocks.W is not None
                                                                             or state["summary"].get("nan", 0)):
                raise DNMFValueError("backprop_solver: expected 'mu' for data with missing entries (observed= or NaN), "
                                     "found 'hals'")
            if self.backprop_iter > 0:
                S_final = self._backprop(blocks, g, codes, S_final, pool_size, stride)
            # layers after a strided pooling have fewer rows than X: no reconstruction error there
            self._rel_errors(blocks, [S if (l == 0 or stride <= 1) else None for l, S in enumerate(S_final)])
            if debug:
                state["S"] = S_final
                return state
        return None

    def _backprop(self, blocks, g, codes, S_layers, pool_size, stride):
        L1 = len(self.A_)
        B = self.B_
        lam = float(self.lam) if B is not None else 0.0
        label_loss = canonical_loss(self.label_loss)
        W_parts = blocks.W or [None] * blocks.n_blocks
        y_parts = blocks.split(codes) if B is not None else [None] * blocks.n_blocks
        g_parts = blocks.split(g)
        S_blocks = [list(s) for s in zip(*S_layers)]  # per block: [S0_i, S1_i, ...] (Delayed)
        As = list(self.A_)
        hist = {"energy": [], "energy_layers": [], "loss_Y": [], "rel_change": []}
        stop_reason, n_iter = "max_iter", 0
        for it in range(1, int(self.backprop_iter) + 1):
            per_block = list(zip(blocks.X, W_parts, y_parts, g_parts, S_blocks))
            S_blocks, st = map_reduce(_backprop_task, per_block, As=dask.delayed(As), B=B, lam=lam,
                                      label_loss=label_loss, solver=self.backprop_solver, pool_size=pool_size,
                                      stride=stride)
            stats = _unflatten_stats(st, L1)
            As, B = apply_backprop_update(As, B, stats, solver=self.backprop_solver)
            parts = np.asarray(stats["energy"], dtype=np.float64)
            E = float(parts.sum())
            hist["energy"].append(E)
            hist["energy_layers"].append(parts[:L1].copy())
            hist["loss_Y"].append(float(parts[L1]))
            prev = hist["energy"][-2] if len(hist["energy"]) > 1 else np.nan
            rel = abs(prev - E) / abs(E) if (np.isfinite(prev) and E != 0) else np.nan
            hist["rel_change"].append(float(rel))
            n_iter = it
            if self.verbose:
                print(f"{type(self).__name__} backprop {it}: energy {E:.6g}")
            if self.tol > 0 and np.isfinite(rel) and rel <= self.tol:
                stop_reason = "tol"
                break
        per_block = list(zip(blocks.X, W_parts, y_parts, g_parts, S_blocks))
        _, st = map_reduce(_energy_task, per_block, keep_outputs=False, As=dask.delayed(As), B=B, lam=lam,
                           label_loss=label_loss, pool_size=pool_size, stride=stride)
        hist["energy_final"] = float(np.sum(st["energy"]))
        self.A_ = As
        self.B_ = B
        self.history_ = hist
        self.n_iter_ = n_iter
        self.stop_reason_ = stop_reason
        # per layer, the S blocks as separate Delayed objects
        return [[sb[l] for sb in S_blocks] for l in range(L1)]

    # -- using a fitted model --------------------------------------------------------------
    def transform(self, X, *, layer=-1, groups=None):
        """S(layer) by the exact forward pass S(0) = q(A0, X), S(l) = q(A(l), p(S(l−1))) (NNLS).

        With ``stride > 1`` layers l ≥ 1 have fewer samples (one per pooling window).
        """
        if not self._pooling:
            return super().transform(X, layer=layer, groups=groups)
        layer = self._check_layer(layer)
        pool_size, stride = int(self.pool_size), int(self.stride)
        with scheduler_context(self.scheduler):
            blocks, info = self._blocks_for(X, groups)
            g = info["groups"]
            if g is None and layer > 0:
                raise DNMFValueError(
                    f"groups: expected group ids (one per sample) to pool between layers (pool_size={pool_size}), found None"
                )
            if g is None:
                g = np.zeros(blocks.n_samples, dtype=np.int64)
            g_parts = blocks.split(g)
            As = dask.delayed(list(self.A_))
            parts, _ = map_reduce(_deep_forward_task, list(zip(blocks.X, g_parts)), As=As, layer=layer,
                                  pool_size=pool_size, stride=stride)
            k = self.A_[layer].shape[1]
            out_blocks = blocks
            if stride > 1 and layer > 0:
                sizes = []
                for gp in g_parts:
                    for _ in range(layer):
                        gp = _pooled_groups(gp, pool_size, stride)
                    sizes.append(len(gp))
                out_blocks = Blocks(parts, np.r_[0, np.cumsum(sizes)].astype(np.int64), k, blocks.dtype, False)
            return self._gather(out_blocks, parts, k, blocks.dtype, info["kind"])

    def score(self, X, y=None):
        """Accuracy on the labeled samples of y (-1 ignored); without y, the negative squared
        reconstruction error of the last layer — defined only without pooling."""
        if y is None and self._pooling:
            raise DNMFValueError(
                f"y: expected labels to score a pooled DeepNMF (pool_size={self.pool_size}), found None; its upper layers "
                "have one code per pooling window, not per sample, so X has no reconstruction from them (see layer_rel_error_)"
            )
        return super().score(X, y)
