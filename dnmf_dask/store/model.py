"""The model store: a fitted estimator as a zarr v3 group (never pickle).

Layout (``format_version`` 1)::

    model.zarr/        attrs: dnmf_format="model", format_version, class, params, state, created,
                       data (fingerprint / provenance of the training data, optional)
      A/<l>            float (rows, k_l), one per layer
      B                float (n_classes, k_L)          (classifiers)
      classes_         int64 (n_classes,)             (classifiers)
      feature_names    str (n_features,)              (optional)

``params`` are the estimator's ``get_params()`` (JSON values only; a Client object is stored
as null), ``state`` the JSON-able fitted attributes (``n_iter_``, ``history_``, ...).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import zarr

from ..errors import DNMFValueError, StoreError
from .atomic import atomic_directory, open_store

FORMAT = "model"
FORMAT_VERSION = 1

#: fitted attributes stored as JSON (when present on the estimator)
STATE_ATTRS = (
    "n_iter_", "stop_reason_", "reconstruction_err_", "n_features_in_", "history_", "_transform_scale",
    "ranks_", "layer_n_iter_", "pool_size_", "epoch_",
)
#: per-layer fit records of the multilayer models (kept for reports: loss curves, errors per layer)
STATE_ATTRS += ("layer_history_", "layer_rel_error_", "layer_stop_reason_")
#: NeuralNMF(n_init > 1): the final training cost of every start and the start kept
STATE_ATTRS += ("start_costs_", "best_start_")


def _jsonable(v):
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _to_json(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    return v


def _registry():
    from .. import models

    return {name: getattr(models, name) for name in models.__all__}


def save_model(model, path, *, data=None, feature_names=None, overwrite=False, config=None, corpus_fingerprint=None):
    """Write a fitted estimator to ``path`` atomically. ``data``: JSON provenance of the training data.

    ``config`` (JSON dict: how the fit was run) is stored with its ``config_sha256``, and
    ``corpus_fingerprint`` identifies the training corpus; together they make a rerun of the
    same fit on the same data recognisable (:mod:`.versions`).
    """
    if not hasattr(model, "A_"):
        raise DNMFValueError(f"model: expected a fitted estimator, found an unfitted {type(model).__name__}")
    cls = type(model).__name__
    if cls not in _registry():
        raise DNMFValueError(f"model: expected one of {sorted(_registry())}, found {cls}")
    params = {k: (_to_json(v) if _jsonable(_to_json(v)) else None) for k, v in model.get_params().items()}
    state = {k: _to_json(getattr(model, k)) for k in STATE_ATTRS if hasattr(model, k)}
    with atomic_directory(path, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w-")
        ag = root.create_group("A")
        for i, A in enumerate(model.A_):
            ag.create_array(str(i), data=np.ascontiguousarray(A))
        if getattr(model, "B_", None) is not None:
            root.create_array("B", data=np.ascontiguousarray(model.B_))
        if hasattr(model, "classes_"):
            root.create_array("classes_", data=np.asarray(model.classes_))
        if feature_names is not None:
            fn = np.asarray(feature_names).astype(str)
            a = root.create_array("feature_names", shape=fn.shape, dtype=str)
            a[:] = fn
        from .. import __version__

        root.attrs.update(
            {
                "dnmf_format": FORMAT,
                "format_version": FORMAT_VERSION,
                "class": cls,
                "params": params,
                "state": state,
                "data": _to_json(data or {}),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                "dnmf_version": __version__,
            }
        )
        if config is not None:
            from .versions import config_sha256

            root.attrs.update({"config": _to_json(config), "config_sha256": config_sha256(_to_json(config))})
        if corpus_fingerprint is not None:
            root.attrs["corpus_fingerprint"] = corpus_fingerprint
    return Path(path)


def load_model(path):
    """Read an estimator written by :func:`save_model`; returns it fitted."""
    root, a, p = open_store(path, FORMAT, FORMAT_VERSION)
    reg = _registry()
    if a.get("class") not in reg:
        raise StoreError(f"model {str(p)!r}: unknown class {a.get('class')!r}, expected one of {sorted(reg)}")
    cls = reg[a["class"]]
    params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in a["params"].items()}
    model = cls(**params)
    if "A" not in root:
        raise StoreError(f"model {str(p)!r}: the factors 'A' are missing")
    ag = root["A"]
    n_layers = len(list(ag.array_keys()))
    model.A_ = [ag[str(i)][:] for i in range(n_layers)]
    if "B" in root:
        model.B_ = root["B"][:]
    if "classes_" in root:
        model.classes_ = root["classes_"][:]
    for k, v in a.get("state", {}).items():
        setattr(model, k, v)
    model.feature_names_ = np.asarray(root["feature_names"][:].tolist(), dtype=str) if "feature_names" in root else None
    model.data_info_ = a.get("data", {})
    return model
