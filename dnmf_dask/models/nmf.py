"""NMF and semi-supervised NMF (Lee–Yoo–Choi) with Frobenius multiplicative updates."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin

from .._validation import check_choice, check_matrix, check_nonneg_float, check_positive_int
from ..errors import DNMFValueError
from ..kernels.init import random_matrix
from ..kernels.solvers import DATA_LOSSES, LABEL_LOSSES, LOSS_ALIASES, SOLVERS, canonical_loss
from ..parallel.init import nndsvd_init, random_init
from ..parallel.mapreduce import map_reduce
from ..parallel.mu import SolverOptions, fit_mu, init_B_lstsq
from ..parallel.scheduler import scheduler_context
from ..parallel.tasks import nmf_score_task as _score_task, nmf_transform_task as _transform_task
from .base import BaseFactorization, check_rank_fits, data_summary, seed_from

import dask


def solver_options(est, n_samples, n_features):
    """:class:`SolverOptions` of an estimator (``beta_loss``, ``label_loss``, ``solver``, ``alpha_W``,
    ``alpha_H``, ``l1_ratio``), with scikit-learn's scaling of the penalties: on S (= sklearn's W)
    by n_features, on A (= sklearn's Hᵀ) by n_samples; ``alpha_H="same"`` takes ``alpha_W``."""
    aW = float(getattr(est, "alpha_W", 0.0))
    aH = getattr(est, "alpha_H", "same")
    aH = aW if isinstance(aH, str) else float(aH)
    r = float(getattr(est, "l1_ratio", 0.0))
    return SolverOptions(
        loss=canonical_loss(getattr(est, "beta_loss", "frobenius")),
        label_loss=canonical_loss(getattr(est, "label_loss", "frobenius")),
        solver=getattr(est, "solver", "mu"),
        l1_S=n_features * aW * r, l2_S=n_features * aW * (1.0 - r),
        l1_A=n_samples * aH * r, l2_A=n_samples * aH * (1.0 - r),
    )


def validate_solver_params(est):
    """Checks of ``beta_loss``, ``label_loss``, ``solver``, ``alpha_W``, ``alpha_H``, ``l1_ratio``."""
    names = lambda c: tuple(c) + tuple(a for a, v in LOSS_ALIASES.items() if v in c)  # noqa: E731
    loss = canonical_loss(check_choice(getattr(est, "beta_loss", "frobenius"), "beta_loss", names(DATA_LOSSES)))
    if hasattr(est, "label_loss"):
        check_choice(est.label_loss, "label_loss", names(LABEL_LOSSES))
    solver = check_choice(getattr(est, "solver", "mu"), "solver", SOLVERS)
    if solver != "mu" and loss != "frobenius":
        raise DNMFValueError(f"solver: expected 'mu' for beta_loss={est.beta_loss!r} (HALS and ANLS solve the Frobenius loss), found {solver!r}")
    if solver != "mu" and canonical_loss(getattr(est, "label_loss", "frobenius")) != "frobenius":
        raise DNMFValueError(f"solver: expected 'mu' for label_loss={est.label_loss!r}, found {solver!r}")
    check_nonneg_float(getattr(est, "alpha_W", 0.0), "alpha_W")
    aH = getattr(est, "alpha_H", "same")
    if not (isinstance(aH, str) and aH == "same"):
        if isinstance(aH, str):
            raise DNMFValueError(f"alpha_H: expected a finite number >= 0 or 'same', found {aH!r}")
        check_nonneg_float(aH, "alpha_H")
    r = check_nonneg_float(getattr(est, "l1_ratio", 0.0), "l1_ratio")
    if r > 1:
        raise DNMFValueError(f"l1_ratio: expected a number in [0, 1], found {r!r}")


def check_solver_supports_mask(opts, blocks, summary):
    """HALS/ANLS need fully observed X (their Gram matrices are shared by all rows)."""
    if opts.solver != "mu" and (blocks.W is not None or summary.get("nan", 0)):
        raise DNMFValueError(f"solver: expected 'mu' for data with missing entries (observed= or NaN), found {opts.solver!r}")


class NMF(BaseFactorization):
    """Nonnegative matrix factorization X ≈ S Aᵀ by Frobenius multiplicative updates, on dask.

    Rows of ``X`` are samples (scikit-learn's orientation). The papers' A(0) is ``A_[0]``
    (n_features, k); ``transform`` returns S (n_samples, k); ``components_`` = ``A_[0].T``.

    Each iteration reads X once: every row block updates its S rows and emits its parts of XᵀS
    and SᵀS, which are tree-summed; A is updated where the sums are (the reduction's last task)
    and stays on the cluster, so only the pass's losses travel to the driver.

    Parameters
    ----------
    n_components : int
        Rank k.
    init : {'random', 'nndsvd', 'nndsvda', 'custom'}, default 'nndsvda'
        'random' draws S rows per row index (independent of chunking), 'nndsvd(a)' uses a
        randomized SVD computed blockwise, 'custom' takes ``W=`` (S) and ``H=`` (Aᵀ) in ``fit``.
    max_iter : int, default 200
    tol : float, default 1e-4
        Stop when the relative decrease of the objective over one iteration is below ``tol``
        (the objective of iteration t is evaluated during the pass of iteration t+1, so a fit
        that stops at ``n_iter_`` has applied one update after the check). 0 disables.
    random_state : int, RandomState or None
    chunk_rows : int, optional
        Rows per block when X is in memory (default chosen from the data's size); dask and corpus
        inputs keep their blocks.
    scheduler : see :mod:`dnmf_dask.parallel.scheduler`
    persist : 'auto', bool
        Keep X in (cluster) memory for the whole fit ('auto': in-memory inputs and dask inputs
        under 2 GiB) or stream it from its source each iteration (out of core).
    transform_max_iter : int, default 200
        Iterations of the S-only updates used by ``transform``.
    beta_loss : {'frobenius', 'kullback-leibler' (alias 'kl')}, default 'frobenius'
        Data term: ||X − S Aᵀ||² or the generalized KL (I-)divergence, evaluated only at the
        stored entries of a sparse X (as scikit-learn's ``beta_loss``).
    solver : {'mu', 'hals', 'anls'}, default 'mu'
        Multiplicative updates, HALS (exact coordinate descent, as scikit-learn's ``solver="cd"``),
        or alternating exact NNLS (block principal pivoting). HALS/ANLS: Frobenius, fully observed X.
        Every solver reads X once per iteration.
    alpha_W, alpha_H, l1_ratio : float, float or 'same', float; defaults 0, 'same', 0
        scikit-learn's penalties: alpha_W on S (= sklearn's W, scaled by n_features), alpha_H on A
        (= sklearn's H, scaled by n_samples), ``l1_ratio`` the L1 share. With penalties the
        objective in ``history_`` is loss_X + c·P, P scikit-learn's penalty, c = 2 for Frobenius
        (whose loss_X is not halved) and 1 for KL. No penalty by default.

    Attributes
    ----------
    A_ : list of one ndarray (n_features, k)
    components_ : ndarray (k, n_features)
    n_iter_ : int
    stop_reason_ : {'tol', 'max_iter'}
    history_ : dict of lists — per iteration ``objective``, ``loss_X`` (= ||X − S Aᵀ||² over
        observed entries), ``rel_error`` (= sqrt(loss_X / ||X||²)).
    reconstruction_err_ : float
        ||X − S Aᵀ||_F at the end of the fit (as scikit-learn).
    n_features_in_ : int
    """

    _model_name = "NMF"

    def __init__(
        self,
        n_components=10,
        *,
        init="nndsvda",
        max_iter=200,
        tol=1e-4,
        random_state=None,
        chunk_rows=None,
        scheduler=None,
        persist="auto",
        transform_max_iter=200,
        verbose=0,
        beta_loss="frobenius",
        solver="mu",
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
    ):
        self.n_components = n_components
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.scheduler = scheduler
        self.persist = persist
        self.transform_max_iter = transform_max_iter
        self.verbose = verbose
        self.beta_loss = beta_loss
        self.solver = solver
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio

    # -- parameter validation (one place) ------------------------------------------------
    def _validate_params(self):
        check_positive_int(self.n_components, "n_components")
        check_choice(self.init, "init", ("random", "nndsvd", "nndsvda", "custom"))
        self._validate_common()
        check_positive_int(self.transform_max_iter, "transform_max_iter")
        lam = getattr(self, "lam", 0.0)
        check_nonneg_float(lam, "lam")
        if hasattr(self, "init_B"):
            check_choice(self.init_B, "init_B", ("lstsq", "random"))
        validate_solver_params(self)

    # -- fitting -----------------------------------------------------------------------
    def fit(self, X, y=None, *, groups=None, observed=None, W=None, H=None, checkpoint=None, checkpoint_every=None,
            resume=False, warm_start=None):
        """Fit to X (numpy, scipy.sparse, dask array or an opened corpus). Returns self.

        Run options (they never change the model a fit converges to):

        checkpoint : folder, optional
            Write the whole state (A, B, every row block's S, iteration, history) there every
            ``checkpoint_every`` iterations (default 10), atomically (see
            :mod:`dnmf_dask.store.checkpoint`).
        resume : bool
            Continue from the newest checkpoint in ``checkpoint`` (start afresh when there is
            none); the result equals an uninterrupted fit.
        warm_start : fitted estimator of the same class, optional
            Start from its A (and B when the classes agree); S starts as its ``transform`` of X.
        """
        self._fit(X, y, groups=groups, observed=observed, W=W, H=H, return_S=False,
                  run=dict(checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, warm_start=warm_start))
        return self

    def fit_transform(self, X, y=None, *, groups=None, observed=None, W=None, H=None, **run):
        """Fit and return S (n_samples, k): numpy for in-memory X, a lazy dask array otherwise.

        ``run``: ``checkpoint``, ``checkpoint_every``, ``resume``, ``warm_start`` as in :meth:`fit`.
        """
        return self._fit(X, y, groups=groups, observed=observed, W=W, H=H, return_S=True, run=run)

    def _init_factors(self, blocks, summary, seed, W, H):
        k = self.n_components
        dtype = blocks.dtype
        if self.init == "custom" or W is not None or H is not None:
            if W is None or H is None:
                raise DNMFValueError("W, H: expected both initial factors with init='custom', found only one")
            W = check_matrix(W, "W", allow_dask=False)
            H = check_matrix(H, "H", allow_dask=False)
            if W.shape != (blocks.n_samples, k) or H.shape != (k, blocks.n_features):
                raise DNMFValueError(
                    f"W, H: expected shapes {(blocks.n_samples, k)} and {(k, blocks.n_features)}, found {W.shape} and {H.shape}"
                )
            W = np.asarray(W, dtype=dtype)
            S = [dask.delayed(W[blocks.offsets[i] : blocks.offsets[i + 1]].copy()) for i in range(blocks.n_blocks)]
            return list(dask.persist(*S)), np.ascontiguousarray(np.asarray(H, dtype=dtype).T)
        if self.init == "random":
            return random_init(blocks, k, seed, summary["mean"], dtype)
        return nndsvd_init(blocks, k, seed, summary["mean"], dtype, variant=self.init)

    def _init_B(self, n_classes, seed, dtype):
        return random_matrix(seed, (n_classes, self.n_components), 1.0 / np.sqrt(self.n_components), dtype, stream=3)

    def _labels(self, y):
        return None, None  # NMF ignores labels

    def _warm_factors(self, blocks, model, n_classes, summary):
        """S blocks (the model's transform of X), A and B (when the classes agree) of ``model``."""
        A = np.asarray(model.A_[0], dtype=blocks.dtype)
        if A.shape[1] != self.n_components:
            raise DNMFValueError(f"warm_start: expected a model with n_components={self.n_components}, found {A.shape[1]}")
        scale = getattr(model, "_transform_scale", float(np.sqrt(max(summary["mean"], 0.0) / self.n_components)))
        Ws = blocks.W or [None] * blocks.n_blocks
        S_blocks, _ = map_reduce(_transform_task, list(zip(blocks.X, Ws)), A=A, scale=scale,
                                 max_iter=self.transform_max_iter, tol=1e-4, dtype=blocks.dtype)
        B = None
        if n_classes and getattr(model, "B_", None) is not None and np.array_equal(getattr(model, "classes_", []), self.classes_):
            B = np.asarray(model.B_, dtype=blocks.dtype)
        return S_blocks, A, B

    def _fit(self, X, y, *, groups, observed, W, H, return_S, run=None, B_start=None):
        from ._run import check_warm_start, make_checkpointer, mu_saver, resume_point

        run = run or {}
        self._validate_params()
        with scheduler_context(self.scheduler):
            blocks, y, info = self._prepare(X, y, groups, observed, need_labels=False)
            summary = data_summary(blocks)
            self._check_summary(summary)
            k = self.n_components
            if self.init in ("nndsvd", "nndsvda"):
                check_rank_fits(k, blocks.n_samples, blocks.n_features, "n_components", f"k with init={self.init!r}")
            seed = seed_from(self.random_state)
            ck = make_checkpointer(self, run.get("checkpoint"), run.get("checkpoint_every"), run.get("resume"), blocks, y)
            resumed = resume_point(ck, run.get("resume"), ("mu",))
            warm = check_warm_start(self, run.get("warm_start"), blocks.n_features)
            y_codes, n_classes = self._labels(y)
            lam = float(getattr(self, "lam", 0.0))
            start, B = None, None
            if resumed is not None:
                S_blocks, A, B = resumed.S_blocks(blocks.offsets), resumed.arrays["A0"], resumed.arrays.get("B")
                start = {"iteration": resumed.iteration, "history": resumed.state["history"]}
            elif warm is not None:
                S_blocks, A, B = self._warm_factors(blocks, warm, n_classes, summary)
            else:
                S_blocks, A = self._init_factors(blocks, summary, seed, W, H)
            if n_classes and B is None:
                if B_start is not None:
                    B = check_matrix(B_start, "B", allow_dask=False)
                    if B.shape != (n_classes, k):
                        raise DNMFValueError(f"B: expected shape {(n_classes, k)}, found {B.shape}")
                    B = np.array(B, dtype=blocks.dtype)
                elif getattr(self, "init_B", "random") == "lstsq":
                    B = init_B_lstsq(blocks, S_blocks, y_codes, n_classes, blocks.dtype)
                else:
                    B = self._init_B(n_classes, seed, blocks.dtype)
            log = (lambda msg: print(f"{type(self).__name__}: {msg}")) if self.verbose else None
            save = mu_saver(ck, "mu", "A0")
            opts = solver_options(self, blocks.n_samples, blocks.n_features)
            check_solver_supports_mask(opts, blocks, summary)
            res = fit_mu(blocks, S_blocks, A, B=B, y=y_codes, lam=lam, max_iter=self.max_iter, tol=self.tol,
                         keep_S=return_S, log=log, start=start, checkpoint=save, progress_label=type(self).__name__,
                         opts=opts)
            A, B, hist, st, S_out = res.A, res.B, res.history, res.final, res.S_blocks
            n_iter, stop_reason = res.n_iter, res.stop_reason
            self.A_ = [A]
            if B is not None:
                self.B_ = B
            self.history_ = hist
            self.reconstruction_err_ = float(np.sqrt(st["loss_X"]))
            self.n_features_in_ = blocks.n_features
            self._transform_scale = float(np.sqrt(max(summary["mean"], 0.0) / k))
            self._finish(n_iter, stop_reason, self.max_iter)
            if return_S:
                return self._gather(blocks, S_out, k, blocks.dtype, info["kind"])
        return None

    # -- using a fitted model ------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "A_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit first.")

    def transform(self, X, *, groups=None, observed=None):
        """S (n_samples, k) for X with the learned A fixed (multiplicative updates on S only)."""
        with scheduler_context(self.scheduler):
            blocks, info, per_block, kw = self._transform_plan(X, groups, observed)
            parts, _ = map_reduce(_transform_task, per_block, **kw)
            return self._gather(blocks, parts, kw["A"].shape[1], blocks.dtype, info["kind"])

    def _transform_plan(self, X, groups, observed):
        """Row blocks of X and the arguments of the S-only updates shared by transform and score."""
        self._check_fitted()
        blocks, _, info = self._prepare(X, None, groups, observed)
        self._check_feature_space(X, blocks.n_features)
        A = self.A_[0].astype(blocks.dtype)
        W_parts = blocks.W or [None] * blocks.n_blocks
        kw = dict(A=A, scale=self._transform_scale, max_iter=self.transform_max_iter, tol=self.tol,
                  dtype=blocks.dtype, opts=self._transform_opts())
        return blocks, info, list(zip(blocks.X, W_parts)), kw

    def _transform_opts(self):
        """The fit's loss/solver/S penalty for the S-only updates (None: Frobenius MU); from the
        parameters, so a model loaded from a store transforms as it was fitted."""
        opts = solver_options(self, 0, self.n_features_in_)  # n_samples = 0: no A penalty (A is fixed)
        return None if opts.is_default else opts

    def inverse_transform(self, S):
        """S Aᵀ (n_samples, n_features)."""
        self._check_fitted()
        return S @ self.A_[0].T

    def score(self, X, y=None, *, observed=None):
        """Negative squared Frobenius reconstruction error ||W⊙(X − transform(X) Aᵀ)||² (higher is better).

        Computed block by block in one pass (X is never densified nor S gathered); missing entries
        (NaN in dense X, or ``observed=False``) are left out.
        """
        with scheduler_context(self.scheduler):
            _, _, per_block, kw = self._transform_plan(X, None, observed)
            _, st = map_reduce(_score_task, per_block, keep_outputs=False, **kw)
        return -float(st["loss_X"])


class SSNMF(ClassifierMixin, NMF):
    """Semi-supervised NMF (Lee, Yoo & Choi 2010) on dask: X ≈ S Aᵀ and Y ≈ S Bᵀ on labeled rows.

    Minimises ||W ⊙ (X − S Aᵀ)||² + λ ||L ⊙ (Y − S Bᵀ)||² with A, S, B ≥ 0, where W is the data
    mask (``observed=`` or NaN in dense X) and L marks labeled samples (``y != -1``).

    Parameters are those of :class:`NMF` plus ``lam`` (λ, default 1.0) and ``init_B``
    ('lstsq', default: NNLS fit of the labeled rows' initial S to their one-hot labels, so each
    class starts on the topics its samples use; 'random') and ``label_loss`` ('frobenius',
    'kullback-leibler' (alias 'kl'), or 'cross-entropy' of softmax(S Bᵀ)). With ``beta_loss`` these give
    the six models of the ``ssnmf`` package (same multiplicative updates); the cross-entropy
    term uses the split-gradient update S ⊙ (…+λ Y B)/(…+λ P B), P = softmax(S Bᵀ), whose
    objective is not guaranteed to decrease (watch ``history_``). ``fit(X, y)`` needs
    integer labels with -1 for unlabeled samples; at least one labeled sample.

    Attributes (besides NMF's): ``B_`` (n_classes, k), ``classes_``; ``history_`` also has
    ``loss_Y`` and ``accuracy_labeled`` (on the labeled samples, argmax of S Bᵀ).
    """

    _model_name = "SSNMF"

    def __init__(
        self,
        n_components=10,
        *,
        lam=1.0,
        init="nndsvda",
        init_B="lstsq",
        max_iter=200,
        tol=1e-4,
        random_state=None,
        chunk_rows=None,
        scheduler=None,
        persist="auto",
        transform_max_iter=200,
        verbose=0,
        beta_loss="frobenius",
        label_loss="frobenius",
        solver="mu",
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
    ):
        super().__init__(
            n_components,
            init=init,
            max_iter=max_iter,
            tol=tol,
            random_state=random_state,
            chunk_rows=chunk_rows,
            scheduler=scheduler,
            persist=persist,
            transform_max_iter=transform_max_iter,
            verbose=verbose,
            beta_loss=beta_loss,
            solver=solver,
            alpha_W=alpha_W,
            alpha_H=alpha_H,
            l1_ratio=l1_ratio,
        )
        self.lam = lam
        self.init_B = init_B
        self.label_loss = label_loss

    def fit(self, X, y=None, *, groups=None, observed=None, W=None, H=None, B=None, checkpoint=None,
            checkpoint_every=None, resume=False, warm_start=None):
        """Fit to X and labels y (-1 = unlabeled; taken from the corpus when X is one).

        ``B`` (n_classes, k), optional: the classifier's start (with ``init='custom'``'s W and H,
        e.g. to continue a run of another implementation); default: ``init_B``.
        ``checkpoint``, ``checkpoint_every``, ``resume``, ``warm_start``: see :meth:`NMF.fit`.
        """
        self._fit(X, y, groups=groups, observed=observed, W=W, H=H, return_S=False, B_start=B,
                  run=dict(checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, warm_start=warm_start))
        return self

    def fit_transform(self, X, y=None, *, groups=None, observed=None, W=None, H=None, B=None, **run):
        """Fit (as :meth:`fit`) and return S (n_samples, k)."""
        return self._fit(X, y, groups=groups, observed=observed, W=W, H=H, return_S=True, B_start=B, run=run)

    def _labels(self, y):
        if y is None:
            raise DNMFValueError("y: expected labels (int, -1 = unlabeled); SSNMF requires y to be passed, but the target y is None")
        labeled = y >= 0
        if not labeled.any():
            raise DNMFValueError("y: expected at least one labeled sample (y >= 0), found only -1")
        self.classes_ = np.unique(y[labeled])
        codes = np.full_like(y, -1)
        codes[labeled] = np.searchsorted(self.classes_, y[labeled])
        return codes, len(self.classes_)

    def decision_function(self, X, **kw):
        """S Bᵀ (n_samples, n_classes) for X."""
        S = self.transform(X, **kw)
        return S @ self.B_.T

    def predict(self, X, **kw):
        """Class of each sample: ``classes_[argmax(S Bᵀ)]``."""
        D = np.asarray(self.decision_function(X, **kw))
        return self.classes_[np.argmax(D, axis=1)]

    def score(self, X, y=None):
        """Accuracy on the labeled samples of y (-1 ignored); without y, NMF's score."""
        if y is None:
            return super().score(X)
        y = np.asarray(y)
        m = y >= 0
        return float(np.mean(self.predict(X)[m] == y[m]))
