"""Run-time options shared by the estimators' ``fit``: checkpoints, resume and warm starts.

These are arguments of ``fit`` (not estimator parameters): they change where a fit starts and
what it writes on the way, never the model it converges to.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import DNMFValueError
from ..store.checkpoint import Checkpointer, estimator_meta

#: default checkpoint interval when only ``checkpoint=`` is given
DEFAULT_CHECKPOINT_EVERY = 10


def blocking_matters(estimator) -> bool:
    """Whether the fitted model depends on the row blocking, not only on the data.

    Only mini-batch SGD (NeuralNMF ``solver="sgd"``, whose mini-batches are the row blocks) does;
    every other fit agrees across chunkings to rounding, so its checkpoints can be resumed with
    another blocking (another cluster's default, see :meth:`Checkpoint.S_blocks`).
    """
    return getattr(estimator, "solver", None) == "sgd"


def data_fingerprint(blocks, y=None, with_offsets=True) -> dict:
    """What identifies the training data for a checkpoint: shape, dtype, labels (and blocking)."""
    fp = {
        "n_samples": int(blocks.n_samples),
        "n_features": int(blocks.n_features),
        "dtype": np.dtype(blocks.dtype).name,
        "sparse": bool(blocks.sparse),
    }
    if with_offsets:
        fp["row_offsets"] = [int(o) for o in blocks.offsets]
    if y is not None:
        fp["y_sha256"] = hashlib.sha256(np.ascontiguousarray(np.asarray(y, dtype=np.int64)).tobytes()).hexdigest()
    return fp


def make_checkpointer(estimator, checkpoint, checkpoint_every, resume, blocks, y):
    """A :class:`Checkpointer` for this fit, or None; checks the combination of options."""
    if checkpoint is None:
        if checkpoint_every is not None:
            raise DNMFValueError(f"checkpoint: expected a folder together with checkpoint_every={checkpoint_every}, found None")
        if resume:
            raise DNMFValueError("checkpoint: expected the checkpoint folder to resume from, found None")
        return None
    every = DEFAULT_CHECKPOINT_EVERY if checkpoint_every is None else checkpoint_every
    return Checkpointer(checkpoint, every, estimator_meta(estimator, data_fingerprint(blocks, y, blocking_matters(estimator))))


def mu_saver(ck, phase, A_name):
    """The ``checkpoint`` callback of :func:`~dnmf_dask.parallel.mu.fit_mu` for ``ck`` (None
    without a checkpointer): saves A (as ``A_name``), B, the S blocks and the history under
    ``phase`` at the iterations ``ck`` is due."""
    if ck is None:
        return None

    def save(it, S, A, B, hist):
        if ck.due(it):
            return ck.save(phase=phase, iteration=it, arrays={A_name: A, "B": B}, S_blocks=S, state={"history": hist})
        return None
    return save


def resume_point(ck, resume, phases):
    """The checkpoint to resume from (or None), checking it was written by one of ``phases``."""
    if ck is None or not resume:
        return None
    found = ck.latest()
    if found is not None and found.phase not in phases:
        raise DNMFValueError(f"checkpoint: expected a checkpoint of phase {phases}, found {found.phase!r} in {str(found.path)!r}")
    return found


def check_warm_start(estimator, model, n_features):
    """Check that ``model`` (a fitted estimator) can start ``estimator``: same class and shapes."""
    if model is None:
        return None
    if type(model) is not type(estimator):
        raise DNMFValueError(f"warm_start: expected a fitted {type(estimator).__name__}, found {type(model).__name__}")
    if not hasattr(model, "A_"):
        raise DNMFValueError(f"warm_start: expected a fitted {type(estimator).__name__}, found an unfitted one")
    if model.A_[0].shape[0] != n_features:
        raise DNMFValueError(f"warm_start: expected a model of {n_features} features, found {model.A_[0].shape[0]}")
    return model
