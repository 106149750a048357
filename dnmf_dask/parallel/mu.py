"""The distributed multiplicative-update solver shared by NMF, SSNMF and every layer of the
hierarchical and deep models: one pass over the row blocks per iteration, the A/B updates in the
pass's reduction (on the cluster), passes submitted one ahead of the driver's convergence check.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import dask
import numpy as np

from .. import progress
from ..kernels.nmf import block_step, semi_block_step, semi_update_A, update_factor
from ..kernels.solvers import general_block_step, penalty, update_A, update_B
from .blocks import Blocks
from .mapreduce import add_stats, compact_stats, fetch, map_reduce, one_blas_thread, submit_map_reduce, tree_placement, wait_for
from .scheduler import local_scheduler


def _mu_task(X, S, y, W, *, A, AtA, B, lam, update_S, semi, opts=None, compact=True):
    S_new, stats = _mu_step(X, S, y, W, A=A, AtA=AtA, B=B, lam=lam, update_S=update_S, semi=semi, opts=opts)
    # XᵀS of a float32 block travels between workers as float32 (exactly); in one process it
    # does not travel, and narrowing and widening it again cost 1 ms per 2e7-nonzero block pass
    return S_new, (compact_stats(stats) if compact else stats)


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


def _initial_state(A, B):
    """The state a pass reads, as :func:`_mu_finish` returns it: ``(factors, None)`` with the
    factors A, its Gram AᵀA (formed once, shared by all blocks) and B."""
    return dask.delayed(({"A": A, "AtA": A.T @ A, "B": B}, None), name=f"mu-state-{uuid.uuid4().hex}")


def _mu_pass_task(X, S, y, W, *, state, **kw):
    f = state[0]
    return _mu_task(X, S, y, W, A=f["A"], AtA=f["AtA"], B=f["B"], **kw)


def _update_factors(A, B, st, *, lam, semi, opts):
    """A and B after one iteration, from the pass's summed statistics ``st``."""
    if opts is not None:
        A_new = update_A(A, st, loss=opts.loss, solver=opts.solver, l1=opts.l1_A, l2=opts.l2_A)
        if B is not None and st.get("n_labeled"):
            B = update_B(B, st, label_loss=opts.label_loss, solver=opts.solver, lam=lam)
        return A_new, B
    if semi:
        A = semi_update_A(st["XtS"], st["StS"], A.dtype)
    elif "WSAtS" in st:
        A = update_factor(A, st["XtS"], den_full=st["WSAtS"])
    else:
        A = update_factor(A, st["XtS"], den_gram=st["StS"])
    if B is not None and "YtS" in st:
        B = update_factor(B, st["YtS"], den_gram=st["StS_L"])
    return A, B


def _mu_finish(*partial_sums, state, lam, semi, opts):
    """Root of a pass's reduction, run where the sums are: the next state and the driver's scalars.

    ``state`` is the previous pass's result (or :func:`_initial_state`). Returns
    ``(factors_new, small)``: the factors after this pass's updates with their Gram AᵀA (they
    stay on the cluster: the next pass reads them from this task's result), and the summed
    scalars of the pass (loss_X, norm_X, loss_Y, n_labeled, ... at the pass's incoming state),
    with ``penalty`` of that state when ``opts`` has penalties. Only ``small`` travels to the
    driver each iteration.
    """
    st = add_stats(*partial_sums)
    A, B = state[0]["A"], state[0]["B"]
    small = {k: v for k, v in st.items() if not isinstance(v, np.ndarray)}
    if opts is not None:
        small["penalty"] = penalty(st, A, opts.l1_S, opts.l2_S, opts.l1_A, opts.l2_A)
    A_new, B_new = _update_factors(A, B, st, lam=lam, semi=semi, opts=opts)
    return {"A": A_new, "AtA": A_new.T @ A_new, "B": B_new}, small


@dataclass
class _Pass:
    """One submitted pass: its inputs (S blocks, state) and its persisted results."""

    S_in: list | None
    state_in: object
    S_out: list
    state_out: object
    small: object

    def stats(self):
        """The pass's scalars (waits for the pass)."""
        return fetch(self.small)

    def factors(self, after=False):
        """(A, B) as numpy: those the pass read, or (``after``) those its updates made."""
        f = fetch(self.state_out if after else self.state_in)[0]
        return f["A"], f["B"]


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
    blocks : row blocks of the data; S_blocks : per-block initial S (Delayed), taken over: a list
        is emptied (its blocks are freed as the first pass consumes them); A : (n_features, k)
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
    pass evaluates the final state. The A and B updates run in the root task of each pass's
    reduction (:func:`_mu_finish`), where the summed statistics are, and the new factors stay
    there for the next pass: only the pass's scalars travel to the driver. Without a
    ``checkpoint`` and with X in (cluster) memory (``blocks.persisted``) or read by the pass's own
    tasks (``blocks.streamed``), pass t+1 is submitted
    before the driver has pass t's scalars, so a
    distributed cluster starts it as soon as pass t's updates are done; when those scalars then
    end the fit (``tol``), pass t+1 is the evaluation of the final state (its S update is
    dropped), so ``n_iter``, ``stop_reason`` and the result are the same as without it.
    ``history`` lists, per iteration, ``objective``, ``loss_X``, ``loss_Y``, ``rel_error`` and
    ``accuracy_labeled``.
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

    def record(st):
        lossY = st.get("loss_Y", 0.0)
        hist["loss_X"].append(st["loss_X"])
        hist["loss_Y"].append(lossY)
        obj = st["loss_X"] + lam * lossY
        if opts is not None:
            obj += opts.penalty_weight * st["penalty"]
        hist["objective"].append(obj)
        hist["rel_error"].append(float(np.sqrt(st["loss_X"] / st["norm_X"])) if st["norm_X"] > 0 else 0.0)
        nl = st.get("n_labeled", 0)
        hist["accuracy_labeled"].append(st["n_correct"] / nl if nl else float("nan"))

    def submit(S_in, state, update_S):
        # the pass takes over the S blocks: a cluster frees each old block once its task has run
        # (the caller's _Pass keeps them only until it knows they are not the fit's result); an
        # evaluation pass (update_S False) keeps no outputs: its S blocks are its inputs, and kept
        # outputs would hold a second reference to each (counted twice in a worker's memory)
        S_out, state_out, (small,) = submit_map_reduce(
            _mu_pass_task, list(zip(blocks.X, S_in, y_parts, W_parts)), state=state,
            finish=_mu_finish, finish_kwargs={"state": state, "lam": lam, "semi": semi, "opts": opts}, finish_items=(1,),
            keep_outputs=bool(update_S), placement=placement, lam=lam, update_S=update_S, semi=semi, opts=opts,
            compact=not local,
        )
        return _Pass(S_in, state, S_out, state_out, small)

    # pass t+1 is submitted before the driver has the objective of pass t (see the docstring),
    # except with a checkpoint (it needs each iteration's factors first) and when X comes from
    # separate read tasks: those wait for nothing, so the next pass's reads would run early and
    # hold decoded blocks in the workers' memory until the current pass's updates are done. A
    # corpus streamed from its store is read inside the pass's tasks, which wait for the factors.
    speculate = checkpoint is None and (blocks.persisted or blocks.streamed)
    local = local_scheduler()
    # a streamed pass's tasks go where the tree adds them (persisted blocks stay where they are)
    placement = tree_placement(blocks.n_blocks) if blocks.streamed else None
    # the driver's k-column GEMMs (the first AᵀA) are as small as the tasks' ones, on every scheduler
    with one_blas_thread(driver=True):
        stop_reason, n_iter = "max_iter", first - 1
        bar = progress.Progress(progress_label, max_iter, start=first - 1)
        # the first pass starts from S blocks that are in memory, as every later pass does: with
        # a random init still running, its block tasks ran in the order the S blocks arrived and
        # their (S, XᵀS) results piled up before the tree added them (~400 MB per 1.2 GB worker
        # on the 12 GB corpus, against ≤ 60 MB once the blocks are there)
        wait_for(S_blocks)
        cur = submit(list(S_blocks), _initial_state(A, B), first <= max_iter)
        if isinstance(S_blocks, list):
            # the caller's list too: a fit's initial S blocks (e.g. a random init's) must not
            # outlive the first pass's tasks, which consume them (S_in keeps them when needed)
            S_blocks.clear()
        S_blocks = None
        if first <= max_iter:
            cur.S_in = None  # only an evaluation pass's input S is the result
        for it in range(first, max_iter + 1):
            nxt = submit(cur.S_out, cur.state_out, it < max_iter) if speculate else None
            st = cur.stats()
            if it > 1:
                record(st)  # objective after iteration it-1
            n_iter = it
            if log is not None and hist["objective"]:
                log(f"iteration {it}: objective {hist['objective'][-1]:.6g}, rel_error {hist['rel_error'][-1]:.4f}")
            bar.update(it)
            h = hist["objective"]
            if tol > 0 and len(h) >= 2 and (h[-2] - h[-1]) <= tol * abs(h[-2]):
                stop_reason = "tol"
                cur = nxt or submit(cur.S_out, cur.state_out, False)  # the evaluation of iteration it
                break
            if nxt is None:
                S_next = cur.S_out
                if checkpoint is not None and it < max_iter:
                    A_it, B_it = cur.factors(after=True)
                    S_next = checkpoint(it, S_next, A_it, B_it, hist) or S_next
                nxt = submit(S_next, cur.state_out, it < max_iter)
                S_next = None  # (held here, S_it would stay on the cluster through pass it+1)
            if it < max_iter:
                nxt.S_in = None  # pass it+1 is no evaluation: S_it is freed as its tasks consume it
            cur = nxt
        bar.close()
        # cur evaluates the state after the last iteration: its inputs are the fit's result
        st = cur.stats()
        record(st)
        A, B = cur.factors()
        S_out = cur.S_in
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
