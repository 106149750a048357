"""Neural NMF (Gao, Haddock, Molitor, Needell, Sadovnik, Will, Zhang): the A matrices are the
variables, S(l) = q(A(l), S(l−1)) is an exact NNLS solve per sample, and the cost is minimised by
projected gradient descent with the exact gradient through q.

Distributed shape: every pass maps :func:`~dnmf_dask.kernels.neural.chunk_cost_grad` over the
row blocks (forward NNLS for all layers + the block's gradient contributions) and tree-sums cost
and gradients; the projected step is taken on the driver. Full-batch results are therefore
independent of the chunking and the scheduler (up to floating-point summation order).
"""

from __future__ import annotations

import dask
import numpy as np

from .._validation import check_choice, check_nonneg_float, check_positive_int
from ..errors import DNMFValueError
from ..kernels.init import random_matrix
from ..kernels.neural import chunk_cost_grad
from ..parallel.mapreduce import map_reduce
from .. import progress
from ..parallel.scheduler import scheduler_context
from ..store.checkpoint import rng_from_json, rng_state_to_json
from .base import data_summary, seed_from
from .hierarchical import HierarchicalNMF, check_ranks

ARMIJO_SIGMA = 1e-4
ARMIJO_SHRINK = 0.5
ARMIJO_MAX_TRIALS = 30
#: with step_scaling='block', no factor moves by more than this fraction of its norm in one step
#: (larger steps zero whole columns by projection and make the NNLS layers rank-deficient)
MAX_RELATIVE_STEP = 0.25


def _cost_grad_task(X, y, *, As, B, lam, cost):
    c, gA, gB, ex = chunk_cost_grad(X, list(As), B, y, lam, cost)
    st = {"cost": c, "recon_sq": ex["recon_sq"], "x_sq": ex["x_sq"], "label_sq": ex["label_sq"],
          "n_labeled": ex["n_labeled"], "n_correct": ex["n_correct"]}
    for l, g in enumerate(gA):
        st[f"gA{l}"] = np.asarray(g, dtype=np.float64)
    if gB is not None:
        st["gB"] = np.asarray(gB, dtype=np.float64)
    return None, st


class NeuralNMF(HierarchicalNMF):
    """Neural NMF: multilayer NMF trained by backpropagation through exact NNLS layers.

    Cost (``cost="reconstruction"``, the paper's eq. (7))::

        ||X − S_L (A0 … AL)ᵀ||² + λ ||L ⊙ (Y − S_L Bᵀ)||²,   S(l) = q(A(l), S(l−1))

    or ``cost="layerwise"``: Σ_l ||S(l−1) − S(l) A(l)ᵀ||² + the same label term. Unsupervised
    when ``y`` is None or all −1, semi-supervised when some labels are −1, supervised otherwise.

    Parameters
    ----------
    ranks : sequence of int (k0, …, kL)
    lam : float, default 1.0 — weight λ of the label term
    cost : {'reconstruction', 'layerwise'}
    solver : {'pgd', 'sgd'}
        'pgd': full-batch projected gradient descent with an Armijo backtracking step (one pass
        over X for the gradient plus one per trial step); 'sgd': projected stochastic gradient
        descent over row blocks (a block = a mini-batch of ``batch_size`` rows), learning rate
        ``learning_rate / (1 + decay · epoch)``.
    epochs : int — iterations (pgd) or passes over the data (sgd)
    tol : float — stop when the relative decrease of the cost is below tol (pgd)
    init : {'hierarchical', 'random'} — start from a HierarchicalNMF fit (default) or random A
    init_max_iter : int — iterations per layer of the hierarchical initialisation
    step_scaling : {'block', 'none'} — pgd search direction: every factor's gradient scaled to
        the factor's norm (a block-diagonal positive scaling, still a descent direction), or the
        plain gradient with one step for all factors
    learning_rate, decay, batch_size : sgd settings (batch_size sets the rows per block for
        in-memory X; dask/corpus inputs use their blocks)

    Attributes
    ----------
    A_, B_, classes_ : factors (A_[l] ≥ 0 after every step) and classifier
    history_ : dict of lists per iteration/epoch: ``cost``, ``rel_error``
        (||X − S_L(A0…AL)ᵀ||/||X||), ``loss_Y``, ``accuracy_labeled``, ``step``
    n_iter_, stop_reason_ ('tol', 'max_iter', 'step' = no Armijo step found)
    init_model_ : the HierarchicalNMF used to initialise (init='hierarchical')
    """

    def __init__(self, ranks=(9, 4), *, lam=1.0, cost="reconstruction", solver="pgd", epochs=100, tol=1e-6,
                 init="hierarchical", init_max_iter=200, step_scaling="block", learning_rate=1e-3, decay=0.0,
                 batch_size=None, random_state=None, chunk_rows=None, scheduler=None, persist="auto", verbose=0):
        self.ranks = ranks
        self.lam = lam
        self.cost = cost
        self.solver = solver
        self.epochs = epochs
        self.tol = tol
        self.init = init
        self.init_max_iter = init_max_iter
        self.step_scaling = step_scaling
        self.learning_rate = learning_rate
        self.decay = decay
        self.batch_size = batch_size
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.scheduler = scheduler
        self.persist = persist
        self.verbose = verbose

    _allow_negative = False

    def _direction(self, F, g):
        """Search direction of one factor: its gradient, scaled to the factor's size ('block')."""
        if self.step_scaling != "block":
            return g
        gn = np.linalg.norm(g)
        return g * (max(np.linalg.norm(F), 1e-12) / gn) if gn > 0 else g

    def _validate_params(self):
        ranks = check_ranks(self.ranks)
        check_nonneg_float(self.lam, "lam")
        check_choice(self.step_scaling, "step_scaling", ("block", "none"))
        check_choice(self.cost, "cost", ("reconstruction", "layerwise"))
        check_choice(self.solver, "solver", ("pgd", "sgd"))
        check_choice(self.init, "init", ("hierarchical", "random"))
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.init_max_iter, "init_max_iter")
        check_nonneg_float(self.tol, "tol")
        check_nonneg_float(self.learning_rate, "learning_rate")
        check_nonneg_float(self.decay, "decay")
        check_positive_int(self.batch_size, "batch_size", allow_none=True)
        check_positive_int(self.chunk_rows, "chunk_rows", allow_none=True)
        return ranks

    @property
    def max_iter(self):  # HierarchicalNMF's API name for the iteration budget
        return self.epochs

    def fit(self, X, y=None, *, groups=None, observed=None, checkpoint=None, checkpoint_every=None, resume=False,
            warm_start=None):
        """Train on X (numpy, scipy.sparse, dask array or corpus) and labels y (−1 = unlabeled).

        checkpoint, checkpoint_every, resume : write the training state (A, B, the current
            cost and gradients, step size, iteration / epoch, RNG state, history) to the folder
            ``checkpoint`` every ``checkpoint_every`` iterations (pgd) or epochs (sgd), and with
            ``resume=True`` continue from the newest one (see :meth:`dnmf_dask.NMF.fit`). The
            hierarchical initialisation checkpoints into ``checkpoint/init``.
        warm_start : a fitted NeuralNMF with the same ranks; its A and B replace the initialisation.
        """
        from ._run import check_warm_start, make_checkpointer, resume_point

        if observed is not None:
            raise DNMFValueError("observed: expected None (Neural NMF does not support missing data), found a mask")
        ranks = self._validate_params()
        with scheduler_context(self.scheduler):
            if self.batch_size is not None and self.chunk_rows is None:
                self.chunk_rows = self.batch_size
            blocks, y, info = self._prepare(X, y, groups, None)
            summary = data_summary(blocks)
            self._check_summary(summary)
            seed = seed_from(self.random_state)
            codes, n_classes = self._encode_labels(y)
            dtype = np.float64
            ck = make_checkpointer(self, checkpoint, checkpoint_every, resume, blocks, y)
            resumed = resume_point(ck, resume, ("neural",))
            warm = check_warm_start(self, warm_start, blocks.n_features)
            if warm is not None and [A.shape[1] for A in warm.A_] != list(ranks):
                raise DNMFValueError(f"warm_start: expected a model with ranks {ranks}, found {[A.shape[1] for A in warm.A_]}")
            if resumed is not None:
                As = [resumed.arrays[f"A{l}"] for l in range(len(ranks))]
                B = resumed.arrays.get("B")
                self.init_model_ = None
            elif warm is not None:
                As = [np.asarray(A, dtype=dtype) for A in warm.A_]
                B = None
                if n_classes and getattr(warm, "B_", None) is not None and np.array_equal(warm.classes_, self.classes_):
                    B = np.asarray(warm.B_, dtype=dtype)
                self.init_model_ = None
            elif self.init == "hierarchical":
                h = HierarchicalNMF(ranks, lam=self.lam, max_iter=self.init_max_iter, tol=1e-4, random_state=seed,
                                    chunk_rows=self.chunk_rows, persist=self.persist)
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    init_run = {}
                    if ck is not None:  # the initial fit checkpoints into a sub-folder
                        ck._mkdir()
                        init_run = dict(checkpoint=ck.path / "init", checkpoint_every=ck.every, resume=resume)
                    h.fit(X, y, groups=groups, **init_run)
                As = [A.astype(dtype) for A in h.A_]
                B = h.B_.astype(dtype) if getattr(h, "B_", None) is not None else None
                self.init_model_ = h
            else:
                scale = np.sqrt(max(summary["mean"], 1e-12) / ranks[0])
                As = [random_matrix(seed, (blocks.n_features, ranks[0]), scale, dtype, stream=2)]
                for l in range(1, len(ranks)):
                    As.append(random_matrix(seed, (ranks[l - 1], ranks[l]), 1.0 / np.sqrt(ranks[l - 1]), dtype, stream=10 + l))
                B = None
            if n_classes and B is None:
                B = random_matrix(seed, (n_classes, ranks[-1]), 1.0 / np.sqrt(ranks[-1]), dtype, stream=3)
            lam = self.lam if n_classes else 0.0
            y_parts = blocks.split(codes)
            per_block = list(zip(blocks.X, y_parts))

            def evaluate(As, B, idx=None):
                items = per_block if idx is None else [per_block[i] for i in idx]
                _, st = map_reduce(_cost_grad_task, items, keep_outputs=False, As=dask.delayed(list(As)), B=B,
                                   lam=lam, cost=self.cost)
                return st

            hist = {k: [] for k in ("cost", "rel_error", "loss_Y", "accuracy_labeled", "step")}

            def record(st, step):
                hist["cost"].append(float(st["cost"]))
                hist["rel_error"].append(float(np.sqrt(st["recon_sq"] / st["x_sq"])) if st["x_sq"] > 0 else 0.0)
                hist["loss_Y"].append(float(st["label_sq"]))
                nl = st["n_labeled"]
                hist["accuracy_labeled"].append(st["n_correct"] / nl if nl else float("nan"))
                hist["step"].append(float(step))

            L = len(ranks)
            first, t, rng = 1, None, None
            if resumed is not None:
                first = resumed.iteration + 1
                hist = {k: list(v) for k, v in resumed.state["history"].items()}
                st = dict(resumed.state["stats"])
                st.update({k[3:]: v for k, v in resumed.arrays.items() if k.startswith("st_")})
                t = resumed.state.get("step")
                if resumed.state.get("rng") is not None:
                    rng = rng_from_json(resumed.state["rng"])
            else:
                st = evaluate(As, B)
                record(st, 0.0)

            def save(it, step=None, rng=None):
                if ck is None or not ck.due(it) or it >= self.epochs:
                    return
                arrays = {f"A{l}": A for l, A in enumerate(As)}
                arrays["B"] = B
                arrays.update({f"st_{k}": v for k, v in st.items() if isinstance(v, np.ndarray)})
                scal = {k: v for k, v in st.items() if not isinstance(v, np.ndarray)}
                ck.save(phase="neural", iteration=it, arrays=arrays, state={
                    "history": hist, "stats": scal, "step": step,
                    "rng": None if rng is None else rng_state_to_json(rng)})

            stop_reason, n_iter = "max_iter", first - 1
            bar = progress.Progress(f"NeuralNMF {self.solver}", self.epochs, start=first - 1)
            if self.solver == "pgd":
                # per-variable scaling: each factor moves relative to its own size, so that B and
                # the deep factors are not frozen by the step the large A0 gradient allows
                if t is None:
                    t = 0.1 if self.step_scaling == "block" else 1.0 / max(
                        np.sqrt(sum(np.sum(st[f"gA{l}"] ** 2) for l in range(L))), 1e-300)
                for it in range(first, self.epochs + 1):
                    grads = [self._direction(A, st[f"gA{l}"]) for l, A in enumerate(As)]
                    gB = None if B is None else self._direction(B, st["gB"])
                    raw = [st[f"gA{l}"] for l in range(L)] + ([st["gB"]] if B is not None else [])
                    accepted = False
                    for _ in range(ARMIJO_MAX_TRIALS):
                        As_new = [np.maximum(A - t * g, 0.0) for A, g in zip(As, grads)]
                        B_new = None if B is None else np.maximum(B - t * gB, 0.0)
                        olds = As + ([B] if B is not None else [])
                        news = As_new + ([B_new] if B is not None else [])
                        decrease = sum(np.sum(g * (F - Fn)) for g, F, Fn in zip(raw, olds, news))
                        st_new = evaluate(As_new, B_new)
                        if st_new["cost"] <= st["cost"] - ARMIJO_SIGMA * decrease:
                            accepted = True
                            break
                        t *= ARMIJO_SHRINK
                    n_iter = it
                    if not accepted:
                        stop_reason = "step"
                        break
                    prev = st["cost"]
                    As, B, st = As_new, B_new, st_new
                    record(st, t)
                    if self.verbose:
                        print(f"NeuralNMF iteration {it}: cost {st['cost']:.6g} rel_error {hist['rel_error'][-1]:.4f} step {t:.3g}")
                    t *= 2.0  # try a longer step next time
                    if self.step_scaling == "block":
                        t = min(t, MAX_RELATIVE_STEP)
                    bar.update(it)
                    if self.tol > 0 and prev - st["cost"] <= self.tol * abs(prev):
                        stop_reason = "tol"
                        break
                    save(it, step=t)
            else:
                if rng is None:
                    rng = np.random.default_rng([seed, 99])
                n = blocks.n_samples
                for ep in range(first, self.epochs + 1):
                    lr = self.learning_rate / (1.0 + self.decay * (ep - 1))
                    for i in rng.permutation(blocks.n_blocks):
                        sb = evaluate(As, B, idx=[i])
                        w = n / blocks.sizes[i]  # unbiased estimate of the full-batch gradient
                        As = [np.maximum(A - lr * w * sb[f"gA{l}"], 0.0) for l, A in enumerate(As)]
                        if B is not None:
                            B = np.maximum(B - lr * w * sb["gB"], 0.0)
                    st = evaluate(As, B)
                    record(st, lr)
                    n_iter = ep
                    if self.verbose:
                        print(f"NeuralNMF epoch {ep}: cost {st['cost']:.6g} rel_error {hist['rel_error'][-1]:.4f}")
                    bar.update(ep)
                    save(ep, rng=rng)
            bar.close()
            for A in As:
                if A.min() < 0:  # pragma: no cover - projection guarantees it
                    raise AssertionError("NeuralNMF: a factor became negative")
            self.A_ = As
            self.B_ = B
            self.ranks_ = list(ranks)
            self.history_ = hist
            self.n_features_in_ = blocks.n_features
            self.reconstruction_err_ = float(np.sqrt(st["recon_sq"]))
            self.n_iter_ = n_iter
            self.stop_reason_ = stop_reason
        return self
