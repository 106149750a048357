"""Shared estimator machinery: input handling, the data-summary pass, seeds, outputs, history."""

from __future__ import annotations

import numbers
import warnings

import dask
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state

from .._validation import check_label_coverage, check_labels, check_nonneg_float, check_positive_int
from ..errors import ConvergenceWarning, DNMFValueError
from ..parallel.blocks import Blocks, as_blocks
from ..parallel.mapreduce import map_reduce
from ..parallel.memory import persist_fits, persisted_block_count
from ..parallel.tasks import summary_block as _summary_block
from ..store.corpus import Corpus

#: dask inputs smaller than this are loaded into (cluster) memory once for the whole fit
PERSIST_LIMIT_BYTES = 2 * 2**30


def seed_from(random_state) -> int:
    """An integer seed: the int itself, or one drawn from a RandomState / None."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def data_summary(blocks: Blocks, block=None) -> dict:
    """One pass over X: mean of observed entries, min, NaN count, nnz (validates dask inputs).

    ``block``: X's only block, already in memory (numpy / scipy.sparse, no mask): summarised
    directly instead of through a dask pass (which costs milliseconds of graph handling).
    """
    if block is not None and not blocks.W and blocks.n_blocks == 1:
        st = _summary_block(block, None)[1]
    else:
        Ws = blocks.W or [None] * blocks.n_blocks
        _, st = map_reduce(_summary_block, list(zip(blocks.X, Ws)), keep_outputs=False)
    st["min"] = min(st["min"]) if st["min"] else 0.0
    st["mean"] = st["sum"] / max(st["count"], 1)
    st["mean_abs"] = st["abs_sum"] / max(st["count"], 1)
    return st


def check_rank_fits(k, n_samples, n_features, name, what):
    """Raise unless rank ``k`` <= min(n_samples, n_features) (SVD starts, hierarchical layer 0)."""
    if k > min(n_samples, n_features):
        raise DNMFValueError(
            f"{name}: expected {what} <= min(n_samples, n_features) = {min(n_samples, n_features)}, found {k} "
            f"(n_samples = {n_samples}, n_features = {n_features})"
        )


class BaseFactorization(TransformerMixin, BaseEstimator):
    """Common parts of the estimators of this package (not for direct use)."""

    #: whether negative data is allowed (Semi-NMF)
    _allow_negative = False
    #: whether missing data is allowed (NaN in dense X, or an ``observed=`` mask)
    _allow_missing = True
    #: X held in memory is cut into (on a cluster: merged into) fewer, larger blocks, about one per
    #: thread, when the user chose no ``chunk_rows`` (:func:`~dnmf_dask.parallel.memory.persisted_block_count`)
    _merge_persisted_blocks = True

    def __sklearn_tags__(self):
        """scikit-learn tags: sparse input accepted; positivity and NaN (missing data) as the model allows."""
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.positive_only = not self._allow_negative
        tags.input_tags.allow_nan = bool(self._allow_missing)
        if tags.transformer_tags is not None:  # codes come back in the input's float dtype
            tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _validate_common(self):
        """Checks of the parameters every MU-based estimator has (max_iter, tol, chunk_rows, persist)."""
        check_positive_int(self.max_iter, "max_iter")
        check_nonneg_float(self.tol, "tol")
        check_positive_int(self.chunk_rows, "chunk_rows", allow_none=True)
        if self.persist not in ("auto", True, False):
            raise DNMFValueError(f"persist: expected 'auto', True or False, found {self.persist!r}")

    def _prepare(self, X, y=None, groups=None, observed=None, *, need_labels=False, chunk_rows=None):
        """Validate input and build row blocks. Returns (blocks, y or None, info).

        ``chunk_rows`` overrides the parameter of the same name (without changing it).
        """
        if isinstance(X, Corpus) and y is None:
            y = X.y
        if observed is not None and not self._allow_missing:
            raise DNMFValueError(f"observed: expected None ({type(self).__name__} does not support missing data here), found a mask")
        blocks, info = as_blocks(
            X, groups=groups, observed=observed, chunk_rows=chunk_rows or self.chunk_rows, allow_negative=self._allow_negative,
            allow_nan=bool(self._allow_missing), few_blocks=self._merge_persisted_blocks and self.persist is not False,
        )
        if y is not None:
            y = check_labels(y, blocks.n_samples, "y")
            if isinstance(X, Corpus) and X.label_names is not None and hasattr(self, "predict"):
                check_label_coverage(y, X.label_names)
        elif need_labels:
            raise DNMFValueError("y: expected labels (int, -1 = unlabeled) for this model, found None")
        persist = self.persist
        if persist == "auto":
            # in-memory input is loaded anyway; dask / corpus input only when it fits the workers
            persist = info["kind"] in ("numpy", "sparse") or persist_fits(blocks.nbytes_estimate(info.get("nnz")), PERSIST_LIMIT_BYTES)
        if persist:
            n_blocks = None
            if self._merge_persisted_blocks and (chunk_rows or self.chunk_rows) is None:
                work = info.get("nnz") if blocks.sparse else blocks.n_samples * blocks.n_features
                n_blocks = persisted_block_count(work, blocks.nbytes_estimate(info.get("nnz")), blocks.n_blocks)
            blocks = blocks.persist(n_blocks)
        return blocks, y, info

    def _check_summary(self, summary):
        if summary["nonfinite"]:
            raise DNMFValueError(f"X: expected finite values (NaN only for missing entries), found {summary['nonfinite']} inf entries")
        if not self._allow_negative and summary["min"] < 0:
            raise DNMFValueError(f"X: expected nonnegative values, found minimum {summary['min']:g} (Negative values in data)")
        if summary["nan"] and not self._allow_missing:
            raise DNMFValueError(
                f"X: expected no NaN ({type(self).__name__} does not support missing data here), found {summary['nan']} NaN entries"
            )
        if summary["count"] == 0:
            raise DNMFValueError("X: expected at least one observed entry, found none")
        if summary["nnz"] == 0:  # all-zero rows or columns alone are fine (zero codes / loadings)
            raise DNMFValueError("X: expected at least one nonzero observed entry, found only zeros (nothing to factorize)")

    def _check_feature_space(self, X, n_features):
        """Data given to a fitted model must have its features: the count, and the names when both are known.

        ``feature_names_`` is set on models read from a model store (:func:`~dnmf_dask.store.model.load_model`).
        """
        if n_features != self.n_features_in_:
            raise DNMFValueError(
                f"X: expected {self.n_features_in_} features (as in fit), found {n_features} "
                f"(X has {n_features} features, but {type(self).__name__} is expecting {self.n_features_in_} features as input)"
            )
        mine, theirs = getattr(self, "feature_names_", None), getattr(X, "feature_names", None)
        if isinstance(X, Corpus) and mine is not None and theirs is not None:
            diff = np.flatnonzero(np.asarray(mine) != np.asarray(theirs))
            if diff.size:
                i = int(diff[0])
                raise DNMFValueError(
                    f"X: expected the model's feature space (feature_names as in fit), found {diff.size} of {n_features} "
                    f"features differing, first at column {i}: {str(theirs[i])!r} where the model has {str(mine[i])!r}"
                )

    @staticmethod
    def _gather(blocks: Blocks, parts, n_cols, dtype, kind):
        """Per-block (n_i, n_cols) results as numpy (in-memory input) or a lazy dask array."""
        if kind in ("dask", "corpus"):
            return blocks.to_dask(parts, n_cols, dtype)
        arrs = dask.compute(*parts)
        return np.concatenate(arrs, axis=0) if arrs else np.zeros((0, n_cols), dtype)

    def _finish(self, n_iter, stop_reason, max_iter):
        self.n_iter_ = int(n_iter)
        self.stop_reason_ = stop_reason
        if stop_reason == "max_iter" and self.tol > 0:
            warnings.warn(
                f"{type(self).__name__}: reached max_iter={max_iter} before the relative decrease fell below tol={self.tol}",
                ConvergenceWarning,
                stacklevel=3,
            )

    @property
    def components_(self):
        """(k0, n_features) = ``A_[0].T``, as in scikit-learn's NMF."""
        return self.A_[0].T

    @property
    def n_components_(self):
        return self.A_[-1].shape[1]
