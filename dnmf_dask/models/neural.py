"""Neural NMF (Gao, Haddock, Molitor, Needell, Sadovnik, Will, Zhang): the A matrices are the
variables, S(l) = q(A(l), S(l−1)) is an exact NNLS solve per sample, and the cost is minimised by
projected gradient descent with the exact gradient through q.

Distributed shape: every pass maps :func:`~dnmf_dask.kernels.neural.chunk_cost_grad` over the
row blocks (forward NNLS for all layers + the block's gradient contributions) and tree-sums cost
and gradients; the projected step is taken on the driver. Full-batch results are therefore
independent of the chunking and the scheduler up to floating-point summation order, which the
default B refit (``classifier_iter="auto"``: the minimiser of a ridge-penalised, strictly convex
problem, a continuous function of the codes) does not amplify. A refit stopped after a fixed
number of L-BFGS-B iterations, above all an unpenalised softmax one (no minimiser on separable
codes), can: on sparse data it gave factors 30% apart between chunkings after 10 iterations.
The exact NNLS layers make the cost only piecewise smooth; where a code sits at zero to within
rounding, the summation order can still pick the other piece of the gradient (seen once in 12
3-layer fits of 30 iterations: costs 8e-9 apart from then on). PGD's passes start each
block's NNLS from the supports of the block's previous pass (in memory, or kept on the cluster:
:mod:`dnmf_dask.parallel.neural`): the same solutions, fewer pivots.
"""

from __future__ import annotations

import contextlib

import dask
import numpy as np
import scipy.sparse as sp

from .._validation import check_choice, check_nonneg_float, check_positive_int
from ..errors import DNMFValueError
from ..kernels.init import random_matrix
from ..kernels.neural import LABEL_LOSSES, BlockPass, fit_classifier, unit_columns
from ..kernels.solvers import canonical_loss
from ..parallel.mapreduce import add_stats, one_blas_thread
from .. import progress
from ..parallel.scheduler import scheduler_context
from ..parallel.neural import NeuralPasses
from ..parallel.tasks import neural_block_stats as _block_stats
from ..store.checkpoint import rng_from_json, rng_state_to_json
from .base import data_summary, seed_from
from .hierarchical import HierarchicalNMF, check_ranks

ARMIJO_SIGMA = 1e-4
ARMIJO_SHRINK = 0.5
ARMIJO_MAX_TRIALS = 30
#: with step_scaling='block', no factor moves by more than this fraction of its norm in one step
#: (larger steps zero whole columns by projection and make the NNLS layers rank-deficient)
MAX_RELATIVE_STEP = 0.25
#: with n_init > 1, start r ≥ 1 multiplies every entry of the initial factors (and B) by
#: exp(INIT_JITTER · z), z ~ N(0, 1) from its own stream of the seed
INIT_JITTER = 0.1
#: ``classifier_l2="auto"``: the ridge weight μ on B per label loss (cost λ (label term + μ ||B||²)).
#: Softmax cross-entropy gets a small one, as scikit-learn's LogisticRegression has a default L2
#: penalty: without it the refit on separable labeled codes has no minimiser, B grows without
#: bound and the fit depends on the rounding of the summed statistics (on the chunking). The
#: squared error and the I-divergence have bounded minimisers without one. (NeuralNMF docstring.)
CLASSIFIER_L2_AUTO = {"cross-entropy": 1e-6, "frobenius": 0.0, "kullback-leibler": 0.0}


def _sum_blocks(parts):
    """Blocks' statistics added in block order (lists concatenate), as the dask path adds them."""
    return parts[0] if len(parts) == 1 else add_stats(*parts)


def _local_blocks(blocks, info):
    """Every block of X as an array in this process, when the data is in-memory (numpy / scipy)
    input on an in-process scheduler (its blocks are literal values of their tasks), else None.

    The fit then calls the kernel on each block directly every pass (one
    :class:`~dnmf_dask.kernels.neural.BlockPass` per block, in block order) instead of mapping
    it through a dask graph: no graph per Armijo trial, X checked and ||X||² formed once, the
    NNLS warm-started, and a trial's backward pass only when it is accepted.
    """
    if info.get("kind") not in ("numpy", "sparse"):
        return None
    if blocks.n_blocks == 1:
        one = _in_memory_block(blocks, info)
        return None if one is None else [one]
    out = [_held_value(Xb) for Xb in blocks.X]
    # (a block sent to a distributed cluster is a future: the dask path runs there)
    return None if any(Xv is None for Xv in out) else out


def _held_value(Xb):
    """The array a block's Delayed holds in this process (a literal, or persisted here), else None."""
    if not (hasattr(Xb, "dask") and hasattr(Xb, "key")):
        return None
    Xv = Xb.__dask_graph__().get(Xb.key)
    Xv = getattr(Xv, "value", Xv)  # a literal block not sent anywhere: dask's DataNode holds it
    return Xv if isinstance(Xv, np.ndarray) or sp.issparse(Xv) else None


def _in_memory_block(blocks, info):
    """The only block of X when the data is one in-memory (numpy / scipy) block, else None.

    The caller then summarises it and calls the kernel directly on it every pass (a
    :class:`~dnmf_dask.kernels.neural.BlockPass`) instead of mapping it through a dask graph.
    """
    if blocks.n_blocks != 1 or info.get("kind") not in ("numpy", "sparse"):
        return None
    Xb = blocks.X[0]
    if hasattr(Xb, "dask"):  # persisted in this process: the graph holds the block itself
        Xv = _held_value(Xb)
        if Xv is not None:
            return Xv
        # else, e.g. persisted on a distributed cluster (a future): fetched through the current
        # scheduler, once (the synchronous scheduler cannot resolve a future)
        Xb = dask.compute(Xb)[0]
    return Xb


class NeuralNMF(HierarchicalNMF):
    """Neural NMF: multilayer NMF trained by backpropagation through exact NNLS layers.

    Cost (``cost="reconstruction"``, the paper's eq. (7))::

        ||X − S_L (A0 … AL)ᵀ||² + λ ||L ⊙ (Y − S_L Bᵀ)||²,   S(l) = q(A(l), S(l−1))

    or ``cost="layerwise"``: Σ_l ||S(l−1) − S(l) A(l)ᵀ||² + the same label term. Unsupervised
    when ``y`` is None or all −1, semi-supervised when some labels are −1, supervised otherwise.
    With ``label_loss="cross-entropy"`` the label term is λ Σ_labeled −log softmax(B s_m)[y_m]
    (the classifier of the authors' code) and B is an unconstrained linear classifier; with
    "frobenius" B ≥ 0 as in SSNMF.

    Parameters
    ----------
    ranks : sequence of int (k0, …, kL)
    lam : float, default 1.0 — weight λ of the label term
    label_loss : {'frobenius', 'kullback-leibler', 'cross-entropy'} — squared error on one-hot
        labels (B ≥ 0), I-divergence D(Y || B S_L) (aliases 'kl', 'i-divergence'; B ≥ 0) or softmax
        cross-entropy (B signed). A 9-class problem read off a 2- or 4-dimensional last
        layer needs the latter: no B ≥ 0 separates it by squared error (pipelines/table1.py).
    cost : {'reconstruction', 'layerwise'}
    solver : {'pgd', 'sgd'}
        'pgd': full-batch projected gradient descent with an Armijo backtracking step (one pass
        over X for the gradient plus one per trial step); 'sgd': projected stochastic gradient
        descent over row blocks (a block = a mini-batch of ``batch_size`` rows), learning rate
        ``learning_rate / (1 + decay · epoch)``.
    epochs : int — iterations (pgd) or passes over the data (sgd)
    tol : float — stop when the relative decrease of the cost is below tol (pgd)
    init : {'hierarchical', 'random'} — start from a HierarchicalNMF fit (default; fitted with the same
        labels, label_loss and λ, its B then refitted) or random A
    init_max_iter : int — iterations per layer of the hierarchical initialisation
    step_scaling : {'block', 'none'} — pgd search direction: every factor's gradient scaled to
        the factor's norm (a block-diagonal positive scaling, still a descent direction), or the
        plain gradient with one step for all factors
    classifier_iter : 'auto' or int, default 'auto' — after every step of the factors, B is
        refitted to the current last layer (the label term is convex in B: an exact
        block-coordinate step; B ≥ 0 unless 'cross-entropy'). 'auto': to the minimiser of label
        term + μ ||B||² (``classifier_l2``) itself, by exact NNLS ('frobenius'), Newton's method
        ('cross-entropy') or L-BFGS-B to a tight gradient test ('kullback-leibler'), see
        :func:`~dnmf_dask.kernels.neural.fit_classifier`: B is then a continuous function of the
        labeled codes, whatever the start of the refit, so that full-batch fits agree across
        chunkings and schedulers to rounding. An int: at most that many L-BFGS-B iterations from
        the previous B (the former default, 50), an approximate step whose stopping point also
        depends on the rounding of the codes; 0 = B only moves with the joint gradient step.
        Without a ridge, a softmax B refitted on separable labeled codes grows until the labeled
        loss vanishes and the label term stops moving the layers: fewer iterations per step keep
        it behind and the classes further apart, which generalised better in the Table 1
        pipeline (k_L = 4: 20 iterations lifted the semi-supervised accuracy from 0.944 to 0.986,
        ``classifier_l2=0``); a 2-dim last layer separates classes by angle only and needs the
        larger B (pipelines/table1.py, BENCHMARKS.md)
    n_init : int, default 1 — number of starts: start 0 is ``init`` (or ``warm_start``) as
        given, start r ≥ 1 the same factors with every entry multiplied by exp(0.1 z), z ~ N(0, 1)
        drawn from ``random_state`` and r (:data:`INIT_JITTER`; the hierarchical init is fitted
        once). The fit with the lowest final training cost (the cost above, on the labels given
        to ``fit``) is kept, as scikit-learn's KMeans does; ``n_init`` times the training passes.
        Not combinable with ``checkpoint``.
    classifier_l2 : 'auto' or float, default 'auto' — ridge weight μ on B: the cost gets
        λ μ ||B||² (with λ = ``lam``; the label term is then λ (label term + μ ||B||²)), so the B
        refit (``classifier_iter``) minimises label term + μ ||B||² and the joint step sees its
        gradient. 'auto' is :data:`CLASSIFIER_L2_AUTO` of the label loss: μ = 1e-6 for
        'cross-entropy', 0 for the others. A softmax refit without a ridge is ill-posed: it is
        invariant to adding one vector to every row of B, and on separable labeled codes (the
        usual case once the layers have learned the labels) it has no minimiser at all, B grows
        without bound and where the refit stops depends on the rounding of its input, so two
        chunkings of the same data gave factors 30% apart after 10 iterations. Any μ > 0 makes
        the minimiser unique and bounded (the minimum-norm one), as scikit-learn's
        LogisticRegression has a default L2 penalty; the default is the small end, because a
        2-dim last layer tells 9 classes apart by angle only and needs a large B. On the
        Table 1 data (3 seeds, 100 iterations, accuracy / rel. error), 3 layers, semi-supervised:
        μ = 1e-6: 0.90 / 0.49 at λ = 1, 0.99 / 0.59 at λ = 300; μ = 1e-4: 0.47 / 0.49 and
        0.81 / 0.52; the former default (μ = 0, 50 iterations): 0.85 / 0.50 and 0.87 / 0.51;
        2 layers: 1.0 for every μ ≤ 1e-4 (0.93 / 0.99 formerly). The minimiser's sensitivity to
        rounding grows as 1/μ (B agreed across chunkings to ~1e-13 there): a larger μ is better
        conditioned. μ is relative to the scale of the codes (scale it with their squared
        norm for data of very different magnitude). The squared error and the
        I-divergence have bounded minimisers without a ridge. On separable codes, pair a ridge
        with ``unit_topics``, or the layers can scale the codes up instead (A(L) ↔ S(L)). The
        ``cost`` in ``history_`` (and the ``n_init`` choice) includes the penalty.
    unit_topics : bool, default False — every column of every A(l) is kept at unit Euclidean
        norm: after the initialisation and after every step the factors are rescaled by
        :func:`~dnmf_dask.kernels.neural.unit_columns` (each layer's column scale passed on to
        the next layer's rows, the last layer's to B's columns), and the cost of a trial step is
        evaluated at the rescaled factors, so the Armijo test, ``tol`` and the ``n_init`` choice
        compare costs of the constrained problem. The rescaling leaves the last layer's
        reconstruction and scores exactly as they were; an inner layer's per-column scale
        reweights the next layer's least squares, which is the constraint's effect. Pins the
        scale of the codes S(l) to the data's, so it cannot drift into B.
    learning_rate, decay, batch_size : sgd settings (batch_size sets the rows per block for
        in-memory X; dask/corpus inputs use their blocks)

    Attributes
    ----------
    A_, B_, classes_ : factors (A_[l] ≥ 0 after every step) and classifier
    history_ : dict of lists per iteration/epoch: ``cost``, ``rel_error``
        (||X − S_L(A0…AL)ᵀ||/||X||), ``loss_Y``, ``accuracy_labeled``, ``step``
    n_iter_, stop_reason_ ('tol', 'max_iter', 'step' = no Armijo step found)
    start_costs_ : final training cost of every start; best_start_ : the start kept
    init_model_ : the HierarchicalNMF used to initialise (init='hierarchical')
    """

    def __init__(self, ranks=(9, 4), *, lam=1.0, label_loss="frobenius", cost="reconstruction", solver="pgd",
                 epochs=100, tol=1e-6, classifier_iter="auto",
                 init="hierarchical", init_max_iter=200, step_scaling="block", learning_rate=1e-3, decay=0.0,
                 batch_size=None, n_init=1, classifier_l2="auto", unit_topics=False, random_state=None, chunk_rows=None, scheduler=None, persist="auto", verbose=0):
        self.ranks = ranks
        self.lam = lam
        self.label_loss = label_loss
        self.cost = cost
        self.solver = solver
        self.epochs = epochs
        self.tol = tol
        self.classifier_iter = classifier_iter
        self.init = init
        self.init_max_iter = init_max_iter
        self.step_scaling = step_scaling
        self.learning_rate = learning_rate
        self.decay = decay
        self.batch_size = batch_size
        self.n_init = n_init
        self.classifier_l2 = classifier_l2
        self.unit_topics = unit_topics
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.scheduler = scheduler
        self.persist = persist
        self.verbose = verbose

    _allow_negative = False
    _allow_missing = False  # the exact NNLS layers need every entry of X
    # its blocks are SGD's mini-batches, and a block task already carries ~5x an MU step's work
    _merge_persisted_blocks = False

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
        check_choice(canonical_loss(self.label_loss), "label_loss", LABEL_LOSSES)
        check_choice(self.solver, "solver", ("pgd", "sgd"))
        check_choice(self.init, "init", ("hierarchical", "random"))
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.init_max_iter, "init_max_iter")
        check_positive_int(self.n_init, "n_init")
        check_nonneg_float(self.tol, "tol")
        if not (isinstance(self.classifier_iter, str) and self.classifier_iter == "auto"):
            if isinstance(self.classifier_iter, str):
                raise DNMFValueError(f"classifier_iter: expected 'auto' or an integer >= 0, found {self.classifier_iter!r}")
            check_positive_int(self.classifier_iter, "classifier_iter", minimum=0)
        self._ridge_weight()
        if not isinstance(self.unit_topics, (bool, np.bool_)):
            raise DNMFValueError(f"unit_topics: expected True or False, found {self.unit_topics!r}")
        check_nonneg_float(self.learning_rate, "learning_rate")
        check_nonneg_float(self.decay, "decay")
        check_positive_int(self.batch_size, "batch_size", allow_none=True)
        check_positive_int(self.chunk_rows, "chunk_rows", allow_none=True)
        return ranks

    def _ridge_weight(self):
        """μ, the ridge weight on B: ``classifier_l2``, or for "auto" the label loss's
        :data:`CLASSIFIER_L2_AUTO`."""
        if isinstance(self.classifier_l2, str):
            if self.classifier_l2 != "auto":
                raise DNMFValueError(f"classifier_l2: expected 'auto' or a finite number >= 0, found {self.classifier_l2!r}")
            return CLASSIFIER_L2_AUTO[canonical_loss(self.label_loss)]
        return check_nonneg_float(self.classifier_l2, "classifier_l2")

    @property
    def max_iter(self):  # HierarchicalNMF's API name for the iteration budget
        return self.epochs

    def fit(self, X, y=None, *, groups=None, observed=None, checkpoint=None, checkpoint_every=None, resume=False,
            warm_start=None):
        """Train on X (numpy, scipy.sparse, dask array or corpus) and labels y (−1 = unlabeled),
        from ``n_init`` starts (see the class docstring); the arguments are those of one start
        (:meth:`_fit_start`)."""
        self._validate_params()
        if self.n_init > 1 and (checkpoint is not None or resume):
            raise DNMFValueError(f"checkpoint: expected None with n_init > 1 (one fit per checkpoint), found n_init={self.n_init}")
        self._init_cache = {}  # the hierarchical init, fitted once for all starts
        try:
            best, costs = None, []
            for start in range(self.n_init):
                self._fit_start(X, y, groups=groups, observed=observed, checkpoint=checkpoint,
                                checkpoint_every=checkpoint_every, resume=resume, warm_start=warm_start, start=start)
                costs.append(float(self.history_["cost"][-1]))
                if best is None or costs[-1] < costs[best[0]]:
                    best = (start, {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")})
        finally:
            del self._init_cache
        vars(self).update(best[1])
        self.start_costs_, self.best_start_ = costs, best[0]
        return self

    def _fit_start(self, X, y=None, *, groups=None, observed=None, checkpoint=None, checkpoint_every=None, resume=False,
                   warm_start=None, start=0):
        """One start of :meth:`fit`: train on X (numpy, scipy.sparse, dask array or corpus) and
        labels y (−1 = unlabeled).

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
        with scheduler_context(self.scheduler), contextlib.ExitStack() as held:
            chunk_rows = self.chunk_rows if self.chunk_rows is not None else self.batch_size
            blocks, y, info = self._prepare(X, y, groups, None, chunk_rows=chunk_rows)
            X_mem = _in_memory_block(blocks, info)
            summary = data_summary(blocks, block=X_mem)
            self._check_summary(summary)
            seed = seed_from(self.random_state)
            codes, n_classes = self._encode_labels(y)
            dtype = np.float64
            ce = canonical_loss(self.label_loss) == "cross-entropy"
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
                # label-aware start: the hierarchical SSNMF with the same label term and λ (its B is
                # then refitted exactly, refit_B below); for cross-entropy this lifted the 3-layer
                # supervised Table 1 accuracy from 0.96 to 0.99 over an unsupervised start
                cache = getattr(self, "_init_cache", None)  # set by fit() for its starts
                h = cache.get("hierarchical") if cache is not None else None
                if h is None:
                    h = HierarchicalNMF(ranks, lam=self.lam, label_loss=canonical_loss(self.label_loss),
                                        max_iter=self.init_max_iter, tol=1e-4,
                                        random_state=seed, chunk_rows=chunk_rows, persist=self.persist)
                    import warnings

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        init_run = {}
                        if ck is not None:  # the initial fit checkpoints into a sub-folder
                            ck._mkdir()
                            init_run = dict(checkpoint=ck.path / "init", checkpoint_every=ck.every, resume=resume)
                        h.fit(X, y, groups=groups, **init_run)
                    if cache is not None:
                        cache["hierarchical"] = h
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
            if start > 0:  # another start of fit(n_init > 1): the same factors, jittered
                rj = np.random.default_rng([seed, 77, start])
                As = [A * np.exp(INIT_JITTER * rj.standard_normal(A.shape)) for A in As]
                if B is not None:
                    B = B * np.exp(INIT_JITTER * rj.standard_normal(B.shape))
            if self.unit_topics:
                As, B = unit_columns(As, B)
            lam = self.lam if n_classes else 0.0
            mu = self._ridge_weight()
            ridge = lam * mu if B is not None else 0.0  # the cost's λ μ ||B||²
            # B ≥ 0 for the squared-error classifier (SSNMF); softmax logits are signed
            project_B = (lambda M: M) if ce else (lambda M: np.maximum(M, 0.0))
            y_parts = blocks.split(codes)
            per_block = list(zip(blocks.X, y_parts))
            task_kw = dict(lam=lam, cost=self.cost, label_loss=self.label_loss)
            # one in-memory block: every pass is one kernel call, so the epochs run without
            # building a dask graph each (the graph would cost more than the arithmetic); the
            # kernel and its arguments are those of the dask task, and its NNLS start from the
            # supports of the previous pass (the same solutions, 1e-10 in the tests, fewer pivots)
            direct = None
            # several blocks only for full-batch PGD: SGD's steps on one block at a time carried
            # the per-block warm starts into factors whose NNLS can be rank-deficient, where a warm
            # start may pick another of the equal-cost solutions than the dask path's cold start
            X_local = [X_mem] if X_mem is not None else (_local_blocks(blocks, info) if self.solver == "pgd" else None)
            if X_local is not None:  # (the fit does not report the layer energies)
                direct = [BlockPass(Xb, yb, **task_kw, layer_energies=False) for Xb, yb in zip(X_local, y_parts)]
            # BLAS on one thread, as in the dask tasks; held for the whole fit on the direct path
            # (entering threadpoolctl's limit costs ~0.1-0.4 ms, as much as a pass on Table 1)
            # (driver=True: this is the driver's own arithmetic, limited on a Client too, where
            # BLAS's spinning threads wait for the cores the workers hold)
            blas_limit = (lambda: one_blas_thread(driver=True)) if direct is None else contextlib.nullcontext
            # the dask path: a PGD pass starts every block's NNLS from the supports of its last
            # pass, kept on the cluster; SGD's passes stay cold (parallel/neural.py says why)
            passes = NeuralPasses(per_block, warm=None if self.solver == "pgd" else False, **task_kw) \
                if direct is None else None
            if passes is not None:  # the kept supports (and on a cluster their lineage) go with the fit
                held.callback(passes.release)
            if direct is not None:
                held.enter_context(one_blas_thread(driver=True))

            def ridge_cost(B, idx=None):
                """The ridge on B, once for all blocks (for a mini-batch, its share): (share, value)."""
                share = 1.0 if idx is None else sum(blocks.sizes[i] for i in idx) / blocks.n_samples
                return share, share * ridge * float(np.sum(B * B))

            def with_ridge(st, B, idx=None):
                if ridge > 0:
                    share, value = ridge_cost(B, idx)
                    st["cost"] = st["cost"] + value
                    st["gB"] = st["gB"] + share * 2.0 * ridge * B
                return st

            def evaluate(As, B, idx=None):
                if direct is not None:
                    # the NNLS of every layer starts from the supports of the last pass
                    parts = direct if idx is None else [direct[i] for i in idx]
                    st = _sum_blocks([_block_stats(bp(list(As), B), bp.y) for bp in parts])
                else:
                    st = passes(As, B, idx)
                return with_ridge(st, B, idx)

            def evaluate_cost(As, B):
                """``(cost, finish)``: the cost at (As, B) and a function that gives the full
                statistics there. On the direct path the backward pass runs only in ``finish``
                (an Armijo trial that is rejected never needs it); call it before the next
                evaluation."""
                if direct is None:
                    st = evaluate(As, B)
                    return st["cost"], lambda: st
                firsts = [bp.cost_at(list(As), B) for bp in direct]
                c = _sum_blocks([{"cost": ci} for ci, _ in firsts])["cost"]  # the finished stats' sum
                cost = c + ridge_cost(B)[1] if ridge > 0 else c  # (with_ridge's sum)
                return cost, lambda: with_ridge(_sum_blocks(
                    [_block_stats((ci, *bp.grads(), ex), bp.y) for bp, (ci, ex) in zip(direct, firsts)]), B)

            hist = {k: [] for k in ("cost", "rel_error", "loss_Y", "accuracy_labeled", "step")}

            def record(st, step):
                hist["cost"].append(float(st["cost"]))
                hist["rel_error"].append(float(np.sqrt(st["recon_sq"] / st["x_sq"])) if st["x_sq"] > 0 else 0.0)
                hist["loss_Y"].append(float(st["label_loss"]))
                nl = st["n_labeled"]
                hist["accuracy_labeled"].append(st["n_correct"] / nl if nl else float("nan"))
                hist["step"].append(float(step))

            refits_B = B is not None and lam > 0 and self.classifier_iter != 0 and n_classes > 0

            def refit_B(st, As, B):
                """The exact block-coordinate step for B, then the statistics (and the gradients,
                which depend on B through the label term) at the new point: one more pass."""
                if not refits_B or st["n_labeled"] == 0:
                    return st, B
                SLl, yl = np.vstack(st["SL_lab"]), np.concatenate(st["y_lab"])
                with blas_limit():  # multithreaded BLAS made L-BFGS-B's tiny products 25x slower
                    B_new, _ = fit_classifier(SLl, yl, B, self.label_loss, self.classifier_iter, l2=mu)
                B_new = B_new.astype(dtype)
                return evaluate(As, B_new), B_new

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
                st, B = refit_B(evaluate(As, B), As, B)
                record(st, 0.0)

            def save(it, step=None, rng=None):
                if ck is None or not ck.due(it) or it >= self.epochs:
                    return
                arrays = {f"A{l}": A for l, A in enumerate(As)}
                arrays["B"] = B
                arrays.update({f"st_{k}": v for k, v in st.items() if isinstance(v, np.ndarray)})
                # (the labeled rows' codes SL_lab / y_lab are not needed to continue)
                scal = {k: v for k, v in st.items() if not isinstance(v, (np.ndarray, list))}
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
                    # B joins the gradient step unless it has its own exact step (refit_B): its
                    # near-zero gradient, scaled to ||B||, would only force tiny steps on the A's
                    step_B = B is not None and not refits_B
                    gB = self._direction(B, st["gB"]) if step_B else None
                    raw = [st[f"gA{l}"] for l in range(L)] + ([st["gB"]] if step_B else [])
                    accepted = False
                    for _ in range(ARMIJO_MAX_TRIALS):
                        As_new = [np.maximum(A - t * g, 0.0) for A, g in zip(As, grads)]
                        B_new = project_B(B - t * gB) if step_B else B
                        if self.unit_topics:  # the rest of the projection: unit columns
                            As_new, B_new = unit_columns(As_new, B_new)
                        olds = As + ([B] if step_B else [])
                        news = As_new + ([B_new] if step_B else [])
                        decrease = sum(np.sum(g * (F - Fn)) for g, F, Fn in zip(raw, olds, news))
                        if self.unit_topics:  # (≥ 0 for the box projection alone, not after rescaling)
                            decrease = max(decrease, 0.0)
                        cost_new, finish = evaluate_cost(As_new, B_new)
                        if cost_new <= st["cost"] - ARMIJO_SIGMA * decrease:
                            accepted = True
                            break
                        t *= ARMIJO_SHRINK
                    n_iter = it
                    if not accepted:
                        stop_reason = "step"
                        break
                    st_new = finish()
                    prev = st["cost"]
                    As, B, st = As_new, B_new, st_new
                    st, B = refit_B(st, As, B)
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
                            B = project_B(B - lr * w * sb["gB"])
                        if self.unit_topics:
                            As, B = unit_columns(As, B)
                    st, B = refit_B(evaluate(As, B), As, B)
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
