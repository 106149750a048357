"""Hierarchical (multilayer) NMF: factor S again and again, X ≈ S_L (A0 A1 … AL)ᵀ.

Layer 0 factors X ≈ S0 A0ᵀ, layer l factors S(l−1) ≈ S(l) A(l)ᵀ (the papers' X ≈ A0 A1 … AL SL).
Each layer is a distributed multiplicative-update fit (:func:`~dnmf_dask.parallel.mu.fit_mu`)
whose data are the previous layer's S blocks, which never leave the workers. With labels the
last layer is semi-supervised (SSNMF with λ). ``semi=True`` gives Wang's multilayer Semi-NMF:
the first factor A0 is free in sign, so X may have negative entries.
"""

from __future__ import annotations

import dask
import numpy as np
from sklearn.base import ClassifierMixin

from .._validation import check_choice, check_nonneg_float, check_positive_int
from ..errors import DNMFValueError
from ..kernels.init import random_matrix
from ..kernels.nmf import semi_update_A
from ..parallel.blocks import Blocks
from ..parallel.init import nndsvd_init, random_init
from ..parallel.mapreduce import map_reduce
from ..parallel.mu import fit_mu, init_B_lstsq
from ..parallel.scheduler import scheduler_context
from ..parallel.tasks import (forward_task as _forward_task, layers_score_task as _score_task, recon_task as _recon_task,
                              semi_stats_task as _semi_stats_task)
from .base import BaseFactorization, check_rank_fits, data_summary, seed_from
from ..kernels.solvers import canonical_loss
from .nmf import check_solver_supports_mask, solver_options, validate_solver_params


def check_ranks(ranks, name="ranks"):
    if isinstance(ranks, (int, np.integer)):
        ranks = (int(ranks),)
    try:
        ranks = tuple(ranks)
    except TypeError:
        raise DNMFValueError(f"{name}: expected a sequence of positive integers (k0, k1, ...), found {ranks!r}") from None
    if not ranks:
        raise DNMFValueError(f"{name}: expected at least one rank, found an empty sequence")
    for r in ranks:
        check_positive_int(r, name)
    return tuple(int(r) for r in ranks)


class HierarchicalNMF(ClassifierMixin, BaseFactorization):
    """Hierarchical / multilayer NMF (and Wang's multilayer Semi-NMF), distributed.

    Parameters
    ----------
    ranks : sequence of int (k0, k1, …, kL)
        Topics per layer; layer l groups the k_{l−1} topics into k_l supertopics.
    lam : float, default 1.0
        Weight of the label term on the last layer when ``fit`` gets labels (SSNMF).
    semi : bool, default False
        Semi-NMF on layer 0 (A0 free in sign; X may be negative). Deeper layers are NMF.
    init_B : {'lstsq', 'random'}, default 'lstsq'
        Start of the classifier: NNLS fit of the labeled rows' initial S to their labels, or random.
    init, max_iter, tol, random_state, chunk_rows, scheduler, persist, verbose
        As for :class:`~dnmf_dask.NMF`, applied to every layer (``max_iter`` per layer).
    solver, beta_loss, label_loss : as for :class:`~dnmf_dask.SSNMF`, applied to every layer
        (``label_loss`` to the last layer's label term); defaults: Frobenius multiplicative updates.
    ranks='auto', rank_candidates, n_layers
        ``ranks="auto"`` chooses the ranks by :func:`~dnmf_dask.select_ranks` (reconstruction
        elbow, each layer on the previous layer's S) over ``rank_candidates`` (default 2..20) for
        ``n_layers`` layers (default 2); the selection is kept in ``rank_selection_``.

    Attributes
    ----------
    A_ : list of ndarrays, ``A_[0]`` (n_features, k0), ``A_[l]`` (k_{l−1}, k_l)
    B_, classes_ : classifier of the last layer (when fitted with labels)
    layer_history_ : list of per-layer histories (see ``NMF.history_``)
    history_ : the last layer's history
    layer_n_iter_, layer_stop_reason_ : per layer; ``n_iter_`` is their sum
    layer_rel_error_ : ||X − S_l (A0…Al)ᵀ|| / ||X|| for every layer l, after the fit
    """

    def __init__(self, ranks=(10, 5), *, lam=1.0, semi=False, init="nndsvda", init_B="lstsq", max_iter=200, tol=1e-4,
                 random_state=None, chunk_rows=None, scheduler=None, persist="auto", verbose=0, solver="mu",
                 beta_loss="frobenius", label_loss="frobenius", rank_candidates=None, n_layers=2):
        self.solver = solver
        self.beta_loss = beta_loss
        self.label_loss = label_loss
        self.rank_candidates = rank_candidates
        self.n_layers = n_layers
        self.ranks = ranks
        self.lam = lam
        self.semi = semi
        self.init_B = init_B
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.scheduler = scheduler
        self.persist = persist
        self.verbose = verbose

    @property
    def _allow_negative(self):
        return bool(self.semi)

    @property
    def _allow_missing(self):  # the Semi-NMF layer has no masked update
        return not self.semi

    #: whether ``ranks="auto"`` is supported (the selection runs on unpooled layers)
    _auto_ranks = True

    def _validate_params(self):
        if isinstance(self.ranks, str) and self.ranks == "auto" and self._auto_ranks:
            check_positive_int(getattr(self, "n_layers", 2), "n_layers")
            ranks = "auto"
        else:
            ranks = check_ranks(self.ranks)
        validate_solver_params(self)
        if getattr(self, "semi", False) and getattr(self, "solver", "mu") != "mu":
            raise DNMFValueError(f"solver: expected 'mu' with semi=True (Semi-NMF has its own update), found {self.solver!r}")
        if getattr(self, "semi", False) and canonical_loss(getattr(self, "beta_loss", "frobenius")) != "frobenius":
            raise DNMFValueError(f"beta_loss: expected 'frobenius' with semi=True (Semi-NMF fits a signed A0), found {self.beta_loss!r}")
        check_nonneg_float(self.lam, "lam")
        check_choice(self.init, "init", ("random", "nndsvd", "nndsvda"))
        check_choice(self.init_B, "init_B", ("lstsq", "random"))
        self._validate_common()
        return ranks

    def _encode_labels(self, y):
        if y is None or not (y >= 0).any():
            return None, 0
        labeled = y >= 0
        self.classes_ = np.unique(y[labeled])
        codes = np.full_like(y, -1)
        codes[labeled] = np.searchsorted(self.classes_, y[labeled])
        return codes, len(self.classes_)

    def fit(self, X, y=None, *, groups=None, observed=None, checkpoint=None, checkpoint_every=None, resume=False):
        """Fit layer by layer. ``y`` (-1 = unlabeled) makes the last layer semi-supervised.

        ``checkpoint``, ``checkpoint_every``, ``resume``: as :meth:`dnmf_dask.NMF.fit`; every
        completed layer is stored as well, so a resumed fit skips the finished layers and
        continues the current one from its last checkpoint.
        """
        self._fit(X, y, groups=groups, observed=observed,
                  run=dict(checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume))
        return self

    # hooks that DeepNMF overrides --------------------------------------------------------
    def _layer_groups(self, g, n_samples):
        """Groups the layer inputs are built with (None: not needed)."""
        return g

    def _next_input(self, S_blocks, data, k, g_parts, y_parts):
        """The next layer's data from this layer's S blocks: here S itself (no pooling)."""
        return Blocks(S_blocks, data.offsets, k, data.dtype, False, None, persisted=True), g_parts, y_parts

    def _fit_layers(self, X, y, *, groups, observed, run=None):
        """The forward pass shared by HierarchicalNMF, DeepNMF and NeuralNMF's initialisation.

        Returns a dict with the blocks, input info, group ids and label codes, and per layer the
        S blocks (``forward_S``) and the data blocks each layer was fitted on (``inputs``).
        ``run``: checkpoint options (see :meth:`fit`).
        """
        from ._run import make_checkpointer, mu_saver, resume_point

        run = run or {}
        ranks = self._validate_params()
        blocks, y, info = self._prepare(X, y, groups, observed)
        ck = make_checkpointer(self, run.get("checkpoint"), run.get("checkpoint_every"), run.get("resume"), blocks, y)
        done = ck.stages() if (ck is not None and run.get("resume")) else []
        partial = resume_point(ck, run.get("resume"), tuple(f"layer{l}" for l in range(len(ranks))))
        if partial is not None and partial.phase != f"layer{len(done)}":
            partial = None  # a checkpoint of a layer that has been completed since
        g = self._layer_groups(info["groups"], blocks.n_samples)
        summary = data_summary(blocks)
        self._check_summary(summary)
        if ranks == "auto":
            ranks = self._select_ranks(X, min(blocks.n_samples, blocks.n_features))
        check_rank_fits(ranks[0], blocks.n_samples, blocks.n_features, "ranks", "k0")
        seed = seed_from(self.random_state)
        codes, n_classes = self._encode_labels(y)
        g_parts, y_parts = blocks.split(g), blocks.split(codes)  # of the current layer's samples
        data = blocks
        As, S_layers, hists, n_iters, reasons, inputs = [], [], [], [], [], [blocks.X]
        B = None
        for l, k in enumerate(ranks):
            last = l == len(ranks) - 1
            semi = getattr(self, "semi", False) and l == 0
            codes_l = None if codes is None else np.concatenate(y_parts)
            if l < len(done):  # finished before the interruption
                d = done[l]
                S_l = d.S_blocks(data.offsets)
                As.append(d.arrays["A"])
                S_layers.append(S_l)
                hists.append(d.state["history"])
                n_iters.append(int(d.state["n_iter"]))
                reasons.append(d.state["stop_reason"])
                B = d.arrays.get("B")
                if not last:
                    data, g_parts, y_parts = self._next_input(S_l, data, k, g_parts, y_parts)
                    inputs.append(data.X)
                continue
            B0, start = None, None
            if partial is not None:
                S_blocks, A, B0 = partial.S_blocks(data.offsets), partial.arrays["A"], partial.arrays.get("B")
                start = {"iteration": partial.iteration, "history": partial.state["history"]}
                partial = None
            else:
                S_blocks, A, B0 = self._init_layer(data, l, k, last, seed, summary if l == 0 else None, semi,
                                                   codes_l, n_classes)
            log = (lambda msg, l=l: print(f"{type(self).__name__} layer {l}: {msg}")) if self.verbose else None
            save = mu_saver(ck, f"layer{l}", "A")
            opts = solver_options(self, data.n_samples, data.n_features)
            check_solver_supports_mask(opts, data, summary if l == 0 else {})
            res = fit_mu(data, S_blocks, A, B=B0, y=codes_l if B0 is not None else None,
                         lam=self.lam if B0 is not None else 0.0, max_iter=self.max_iter, tol=self.tol,
                         semi=semi, keep_S=True, log=log, start=start, checkpoint=save, opts=opts,
                         progress_label=f"{type(self).__name__} layer {l}")
            if ck is not None:
                res.S_blocks = ck.save_stage(l, arrays={"A": res.A, "B": res.B if B0 is not None else None},
                                             S_blocks=res.S_blocks, state={"history": res.history, "n_iter": res.n_iter,
                                                                           "stop_reason": res.stop_reason})
            As.append(res.A)
            S_layers.append(res.S_blocks)
            hists.append(res.history)
            n_iters.append(res.n_iter)
            reasons.append(res.stop_reason)
            B = res.B if B0 is not None else None
            if not last:
                data, g_parts, y_parts = self._next_input(res.S_blocks, data, k, g_parts, y_parts)
                inputs.append(data.X)
        state = self._store_layers(As, B, ranks, hists, n_iters, reasons, blocks, info, g, codes, S_layers, inputs)
        state["summary"] = summary  # X's data summary (NaN count, ...) for checks after the forward pass
        return state

    def _init_layer(self, data, l, k, last, seed, summ, semi, codes_l, n_classes):
        """Initial S blocks, A and (last layer with labels) B of layer ``l``."""
        if summ is None:
            summ = data_summary(data)
        if semi:
            # Semi-NMF: strictly positive random S (zeros would stay zero under the
            # multiplicative S update) and the least-squares A for it
            S_blocks, _ = random_init(data, k, seed + l, summ["mean_abs"], data.dtype)
            _, st0 = map_reduce(_semi_stats_task, list(zip(data.X, S_blocks)), keep_outputs=False)
            A = semi_update_A(st0["XtS"], st0["StS"], data.dtype)
        elif self.init == "random":
            S_blocks, A = random_init(data, k, seed + l, summ["mean"], data.dtype)
        else:
            if l > 0:  # an SVD start has at most k_{l-1} directions (it used to drop the rest silently)
                check_rank_fits(k, data.n_samples, data.n_features, "ranks",
                                f"k{l} with init={self.init!r} (layer {l} factors the k{l - 1} = {data.n_features} codes of layer {l - 1})")
            S_blocks, A = nndsvd_init(data, k, seed + l, summ["mean"], data.dtype, variant=self.init)
        B0 = None
        if last and n_classes and (codes_l >= 0).any():
            if self.init_B == "lstsq":
                B0 = init_B_lstsq(data, S_blocks, codes_l, n_classes, data.dtype)
            else:
                B0 = random_matrix(seed, (n_classes, k), 1.0 / np.sqrt(k), data.dtype, stream=3)
        return S_blocks, A, B0

    def _store_layers(self, As, B, ranks, hists, n_iters, reasons, blocks, info, g, codes, S_layers, inputs):
        self.A_ = As
        self.B_ = B
        self.ranks_ = list(ranks)
        self.layer_history_ = hists
        self.history_ = hists[-1]
        self.layer_n_iter_ = n_iters
        self.layer_stop_reason_ = reasons
        self.n_iter_ = int(sum(n_iters))
        self.stop_reason_ = reasons[-1]
        self.n_features_in_ = blocks.n_features
        return {"blocks": blocks, "info": info, "groups": g, "codes": codes, "forward_S": S_layers,
                "inputs": inputs, "forward_A": list(As), "forward_B": B}

    def _select_ranks(self, X, max_rank):
        """Ranks of every layer by :func:`~dnmf_dask.select_ranks` (elbow), kept in ``rank_selection_``."""
        from .selection import select_ranks

        cands = self.rank_candidates if self.rank_candidates is not None else range(2, 21)
        sel = select_ranks(X, [k for k in cands if k <= max_rank], method="elbow", n_layers=self.n_layers,
                           random_state=seed_from(self.random_state), max_samples=20000)
        self.rank_selection_ = sel
        return tuple(sel.ranks)

    def _rel_errors(self, blocks, S_layers):
        """``layer_rel_error_`` and ``reconstruction_err_``: one pass over X per layer."""
        rel, P, st = [], None, None
        for l in range(len(self.A_)):
            P = self.A_[0] if l == 0 else P @ self.A_[l]
            if S_layers[l] is None:  # e.g. pooled layers with fewer rows than X
                rel.append(float("nan"))
                continue
            _, st = map_reduce(_recon_task, list(zip(blocks.X, S_layers[l])), keep_outputs=False, P=P)
            rel.append(float(np.sqrt(st["loss_X"] / st["norm_X"])) if st["norm_X"] > 0 else 0.0)
        self.layer_rel_error_ = rel
        if st is not None and np.isfinite(rel[-1]):
            self.reconstruction_err_ = rel[-1] * float(np.sqrt(st["norm_X"]))  # ||X − S_L (A0…AL)ᵀ||

    def _fit(self, X, y, *, groups, observed, run=None):
        with scheduler_context(self.scheduler):
            state = self._fit_layers(X, y, groups=groups, observed=observed, run=run)
            self._rel_errors(state["blocks"], state["forward_S"])
        return state

    # -- using a fitted model --------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "A_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit first.")

    def transform(self, X, *, layer=-1, groups=None):
        """S(layer) (n_samples, k_layer) by the exact forward pass S(l) = q(A(l), S(l−1)) (NNLS)."""
        layer = self._check_layer(layer)
        with scheduler_context(self.scheduler):
            blocks, info = self._blocks_for(X, groups)
            As = dask.delayed(list(self.A_))  # one graph key for all blocks
            parts, _ = map_reduce(_forward_task, [(b,) for b in blocks.X], As=As, layer=layer)
            k = self.A_[layer].shape[1]
            return self._gather(blocks, parts, k, blocks.dtype, info["kind"])

    def _check_layer(self, layer):
        self._check_fitted()
        L = len(self.A_)
        if not -L <= layer < L:
            raise DNMFValueError(f"layer: expected an integer in [-{L}, {L - 1}], found {layer}")
        return layer % L

    def _blocks_for(self, X, groups):
        blocks, _, info = self._prepare(X, None, groups, None)
        self._check_feature_space(X, blocks.n_features)
        return blocks, info

    def decision_function(self, X, **kw):
        self._check_fitted()
        if getattr(self, "B_", None) is None:
            raise DNMFValueError("model: expected a model fitted with labels (it has no classifier B_), found none")
        return self.transform(X, **kw) @ self.B_.T

    def predict(self, X, **kw):
        D = np.asarray(self.decision_function(X, **kw))
        return self.classes_[np.argmax(D, axis=1)]

    def inverse_transform(self, S, layer=-1):
        """S(layer) (A0 … A_layer)ᵀ: (n_samples, k_layer) → (n_samples, n_features)."""
        layer = self._check_layer(layer)
        P = self.A_[0]
        for A in self.A_[1: layer + 1]:
            P = P @ A
        return S @ P.T

    def score(self, X, y=None):
        """Accuracy on the labeled samples of y (-1 ignored); without y, the negative squared
        reconstruction error of the last layer, ||X − S_L (A0 … AL)ᵀ||², computed block by block
        (X is never densified; NaN entries of a dense X are left out)."""
        if y is None:
            self._check_fitted()
            with scheduler_context(self.scheduler):
                blocks, _ = self._blocks_for(X, None)
                _, st = map_reduce(_score_task, [(b,) for b in blocks.X], keep_outputs=False, As=dask.delayed(list(self.A_)))
            return -float(st["loss_X"])
        y = np.asarray(y)
        m = y >= 0
        return float(np.mean(self.predict(X)[m] == y[m]))
