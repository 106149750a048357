"""The distributed multiplicative-update solver shared by NMF, SSNMF and every layer of the
hierarchical and deep models: one pass over the row blocks per iteration, driver-side A/B updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import progress
from ..kernels.nmf import block_step, semi_block_step, semi_update_A, update_factor
from ..kernels.solvers import general_block_step, penalty, update_A, update_B
from .blocks import Blocks
from .mapreduce import compact_stats, map_reduce, one_blas_thread


def _mu_task(X, S, y, W, *, A, AtA, B, lam, update_S, semi, opts=None):
    S_new, stats = _mu_step(X, S, y, W, A=A, AtA=AtA, B=B, lam=lam, update_S=update_S, semi=semi, opts=opts)
    return S_new, compact_stats(stats)  # XᵀS of a float32 block travels as float32 (exactly)


def _mu_step(X, S, y, W, *, A, AtA, B, lam, update_S, semi, opts=None):
    if opts is not None:
        return general_block_step(X, S, A, B=B, y=y, lam=lam, W=W, update_S=update_S, AtA=AtA,
                                  loss=opts.loss, label_loss=opts.label_loss, solver=opts.solver,
                                  l1_S=opts.l1_S, l2_S=opts.l2_S)
    if semi:
        return semi_block_step(X, S, A, AtA=AtA, update_S=update_S)
    return block_step(X, S, A, B=B, y=y, lam=lam, W=W, update_S=update_S, AtA=AtA)


@dataclass(frozen=True)
class SolverOptions:
    """Loss, label loss, solver and scikit-learn-scaled penalties of a fit (defaults: Frobenius MU)."""

    loss: str = "frobenius"
    label_loss: str = "frobenius"
    solver: str = "mu"
    l1_S: float = 0.0
    l2_S: float = 0.0
    l1_A: float = 0.0
    l2_A: float = 0.0

    @property
    def is_default(self):
        return self == SolverOptions()

    @property
    def penalty_weight(self):
        """c_X: the penalty enters the objective as c_X·P (2 for the unhalved squared error)."""
        return 2.0 if self.loss == "frobenius" else 1.0


@dataclass
class MUResult:
    S_blocks: list
    A: np.ndarray
    B: np.ndarray | None
    history: dict
    n_iter: int
    stop_reason: str
    final: dict


def fit_mu(blocks: Blocks, S_blocks, A, *, B=None, y=None, lam=0.0, max_iter=200, tol=1e-4, semi=False,
           keep_S=True, log=None, start=None, checkpoint=None, progress_label="iteration",
           opts: SolverOptions | None = None) -> MUResult:
    """Run multiplicative updates until ``tol`` or ``max_iter``.

    Parameters
    ----------
    blocks : row blocks of the data; S_blocks : per-block initial S (Delayed); A : (n_features, k)
    B, y, lam : classifier start, label codes (-1 = unlabeled) and weight (SSNMF); None = NMF.
    semi : Semi-NMF (A free in sign) instead of NMF.
    keep_S : keep the final S blocks (persisted) in the result.
    log : callable(str) for progress lines, or None.
    start : dict or None
        Resume after iteration ``start["iteration"]`` with its ``history`` (``S_blocks``, ``A``,
        ``B`` are then the state after that iteration, e.g. from a checkpoint).
    checkpoint : callable(iteration, S_blocks, A, B, history) -> S_blocks, or None
        Called after every iteration that does not end the fit; returns the S blocks to go on
        with (a checkpoint re-reads them from the store it wrote, which shortens their lineage).
    opts : :class:`SolverOptions` (loss, label loss, solver 'mu'/'hals'/'anls', penalties); None or
        the defaults run the Frobenius multiplicative updates of :func:`~dnmf_dask.kernels.nmf.block_step`.
        With penalties the objective is loss_X + λ loss_Y + c_X·P (see :mod:`dnmf_dask.kernels.solvers`).

    The objective of iteration t is computed by the pass of iteration t+1 (at no cost); one last
    pass evaluates the final state. ``history`` lists, per iteration, ``objective``, ``loss_X``,
    ``loss_Y``, ``rel_error`` and ``accuracy_labeled``.
    """
    y_parts = blocks.split(y)
    W_parts = blocks.W or [None] * blocks.n_blocks
    hist = {k: [] for k in ("objective", "loss_X", "loss_Y", "rel_error", "accuracy_labeled")}
    if opts is not None and (opts.is_default or semi):
        opts = None  # the Frobenius MU path, unchanged
    first = 1
    if start is not None:
        first = int(start["iteration"]) + 1
        hist = {k: list(start["history"].get(k, [])) for k in hist}

    def record(st, A):
        lossY = st.get("loss_Y", 0.0)
        hist["loss_X"].append(st["loss_X"])
        hist["loss_Y"].append(lossY)
        obj = st["loss_X"] + lam * lossY
        if opts is not None:
            obj += opts.penalty_weight * penalty(st, A, opts.l1_S, opts.l2_S, opts.l1_A, opts.l2_A)
        hist["objective"].append(obj)
        hist["rel_error"].append(float(np.sqrt(st["loss_X"] / st["norm_X"])) if st["norm_X"] > 0 else 0.0)
        nl = st.get("n_labeled", 0)
        hist["accuracy_labeled"].append(st["n_correct"] / nl if nl else float("nan"))

    def run(update_S, keep):
        # the pass takes over the S blocks (consume=True): a cluster frees each old block once
        # its task has run, so S is not held twice during the pass
        nonlocal S_blocks
        per_block, S_blocks = list(zip(blocks.X, S_blocks, y_parts, W_parts)), None
        return map_reduce(
            _mu_task, per_block, keep_outputs=keep, consume=keep,
            A=A, AtA=A.T @ A, B=B, lam=lam, update_S=update_S, semi=semi, opts=opts,
        )

    # the driver's k-column GEMMs (AᵀA, the A update) are as small as the tasks' ones
    with one_blas_thread():
        stop_reason, n_iter = "max_iter", first - 1
        bar = progress.Progress(progress_label, max_iter, start=first - 1)
        for it in range(first, max_iter + 1):
            S_blocks, st = run(True, True)
            if it > 1:
                record(st, A)  # objective after iteration it-1
            if opts is not None:
                A_new = update_A(A, st, loss=opts.loss, solver=opts.solver, l1=opts.l1_A, l2=opts.l2_A)
                if B is not None and st.get("n_labeled"):
                    B = update_B(B, st, label_loss=opts.label_loss, solver=opts.solver, lam=lam)
                A = A_new
            else:
                if semi:
                    A = semi_update_A(st["XtS"], st["StS"], A.dtype)
                elif "WSAtS" in st:
                    A = update_factor(A, st["XtS"], den_full=st["WSAtS"])
                else:
                    A = update_factor(A, st["XtS"], den_gram=st["StS"])
                if B is not None and "YtS" in st:
                    B = update_factor(B, st["YtS"], den_gram=st["StS_L"])
            n_iter = it
            if log is not None and hist["objective"]:
                log(f"iteration {it}: objective {hist['objective'][-1]:.6g}, rel_error {hist['rel_error'][-1]:.4f}")
            bar.update(it)
            h = hist["objective"]
            if tol > 0 and len(h) >= 2 and (h[-2] - h[-1]) <= tol * abs(h[-2]):
                stop_reason = "tol"
                break
            if checkpoint is not None and it < max_iter:
                S_blocks = checkpoint(it, S_blocks, A, B, hist) or S_blocks
        bar.close()
        S_out, st = run(False, keep_S)
        record(st, A)
    return MUResult(S_out if keep_S else None, A, B, hist, n_iter, stop_reason, st)


def _label_gram_task(S, y, *, n_classes):
    lab = np.asarray(y) >= 0
    SL = S[lab].astype(np.float64)
    Y = np.zeros((SL.shape[0], n_classes))
    Y[np.arange(SL.shape[0]), np.asarray(y)[lab]] = 1
    return None, {"YtS": Y.T @ SL, "StS_L": SL.T @ SL}


def init_B_lstsq(blocks: Blocks, S_blocks, y, n_classes, dtype):
    """B ≥ 0 that best maps the labeled rows' initial S to their one-hot labels (NNLS per class).

    Starting B this way ties each class to the topics its labeled samples already use; from a
    random B the few labeled rows can instead bend their S towards arbitrary topics and the
    classifier ends up permuted against the data's topics.
    """
    from ..kernels.nnls import nnls_gram

    _, st = map_reduce(_label_gram_task, list(zip(S_blocks, blocks.split(y))), keep_outputs=False, n_classes=n_classes)
    B = nnls_gram(st["StS_L"], st["YtS"])
    k = B.shape[1]
    B[B.sum(axis=1) == 0] = 1.0 / k  # a class whose labeled rows have all-zero S: neutral start
    return B.astype(dtype)
