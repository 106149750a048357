"""Versioned model folders for scheduled retraining: ``MODEL_DIR/v0001``, ``v0002``, ...

Each version is an ordinary model store (:mod:`.model`) whose attrs carry the fit ``config``
(JSON), its ``config_sha256`` and the ``corpus_fingerprint`` of the training data. A new fit
adds a version and never touches the older ones; :func:`up_to_date` tells whether the newest
version already holds this config on this data (then a rerun is a no-op).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import zarr

from ..errors import DNMFValueError

_VERSION = re.compile(r"^v(\d{4,})$")


def config_sha256(config: dict) -> str:
    """sha256 of the canonical JSON of a fit config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def versions(model_dir) -> list[Path]:
    """Complete versions in ``model_dir`` (oldest first); hidden temporary folders are ignored."""
    d = Path(model_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _VERSION.match(p.name)
        if m and (p / "zarr.json").exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_version(model_dir) -> Path | None:
    v = versions(model_dir)
    return v[-1] if v else None


def next_version(model_dir) -> Path:
    """Path of the version a new fit writes (the folder is created when missing)."""
    d = Path(model_dir)
    if d.exists() and not d.is_dir():
        raise DNMFValueError(f"out: expected a folder of model versions, found a file {str(d)!r}")
    if not d.parent.exists():
        raise DNMFValueError(f"out: expected a path whose parent folder exists, found missing folder {str(d.parent)!r}")
    d.mkdir(exist_ok=True)
    last = latest_version(d)
    n = int(_VERSION.match(last.name).group(1)) + 1 if last is not None else 1
    return d / f"v{n:04d}"


def run_attrs(path) -> dict:
    """``config_sha256`` and ``corpus_fingerprint`` of a stored model ({} when absent or unreadable)."""
    try:
        a = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return {}
    return {k: a.get(k) for k in ("config_sha256", "corpus_fingerprint")}


def up_to_date(path, config: dict, fingerprint: str) -> bool:
    """Whether the model store ``path`` was fitted with ``config`` on data with ``fingerprint``."""
    if path is None or not Path(path).exists():
        return False
    r = run_attrs(path)
    return r.get("config_sha256") == config_sha256(config) and r.get("corpus_fingerprint") == fingerprint
