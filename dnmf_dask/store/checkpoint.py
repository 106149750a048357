"""Checkpoints of a running fit: the complete optimizer state, written atomically every N iterations.

A checkpoint folder holds numbered zarr stores ``ckpt-000001.zarr``, ``ckpt-000002.zarr``, ...
(and, for fits made of stages such as the layers of a hierarchical model, one
``stage-<l>.zarr`` per completed stage, kept until the fit ends);
each is written beside its final name and renamed into place (:mod:`.atomic`), and the older
ones are deleted only after the newer one is complete, so at every moment the folder holds at
least one complete checkpoint (once the first was written) and never a half-written one under a
visible name. Layout of one checkpoint (``format_version`` 1)::

    ckpt-000007.zarr/   attrs: dnmf_format="checkpoint", format_version, seq, phase, iteration,
                        meta (estimator class, params, data fingerprint), state (JSON: history,
                        step sizes, RNG state, ...)
      arrays/<name>     driver-side arrays (A/0, A/1, B, gradients, ...)
      S/<i>             per-row-block factors (written by the workers that hold them)

The per-block S arrays are written by tasks on the workers (the folder must be on a file system
the workers see, as the corpus store) and read back lazily on resume, so S never passes through
the driver. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import zarr

from ..errors import DNMFValueError, StoreError
from .atomic import atomic_directory, open_store

FORMAT = "checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{6,})\.zarr$")

#: estimator parameters that do not change the result (ignored when matching a checkpoint)
OPERATIONAL_PARAMS = ("scheduler", "verbose")


def _json_norm(v):
    return json.loads(json.dumps(v, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def estimator_meta(estimator, fingerprint: dict) -> dict:
    """What a checkpoint must match to be resumed: class, result-relevant params, data fingerprint."""
    params = {k: v for k, v in estimator.get_params().items() if k not in OPERATIONAL_PARAMS}
    return _json_norm({"class": type(estimator).__name__, "params": params, "data": fingerprint})


def _comparable_meta(stored: dict, meta: dict | None) -> dict:
    """``stored`` without the block offsets when ``meta`` does not pin them.

    Checkpoints written before the blocking stopped being part of the data fingerprint carry
    ``row_offsets``; a fit whose result does not depend on its blocking resumes them anyway.
    """
    data = stored.get("data")
    if meta is None or not isinstance(data, dict) or "row_offsets" in meta.get("data", {}):
        return stored
    return {**stored, "data": {k: v for k, v in data.items() if k != "row_offsets"}}


def _meta_diff(a: dict, b: dict, prefix: str = "") -> list:
    """Dotted names of the entries that differ between two meta dicts (one level into dicts)."""
    out = []
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict) and not prefix:
            out += _meta_diff(va, vb, f"{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _write_S(path: str, i: int, S) -> int:
    S = np.ascontiguousarray(S)
    zarr.create_array(f"{path}/S/{i}", data=S, overwrite=False)
    return i


def _read_S(path: str, i: int):
    return zarr.open_array(f"{path}/S/{i}", mode="r")[:]


def _read_S_rows(path: str, stored_offsets, start: int, stop: int):
    """Rows ``start:stop`` of the stored S, gathered from the stored blocks that overlap them."""
    parts = []
    for i in range(len(stored_offsets) - 1):
        lo, hi = max(start, stored_offsets[i]), min(stop, stored_offsets[i + 1])
        if lo < hi:
            parts.append(zarr.open_array(f"{path}/S/{i}", mode="r")[lo - stored_offsets[i] : hi - stored_offsets[i]])
    return np.concatenate(parts, axis=0)


@dataclass
class Checkpoint:
    """One loaded checkpoint: ``arrays`` (numpy), ``S_blocks`` (lazy per-block loads) and ``state``."""

    path: Path
    seq: int
    phase: str
    iteration: int
    arrays: dict
    n_S: int
    state: dict
    meta: dict

    def stored_offsets(self) -> np.ndarray:
        """Row offsets of the stored S blocks (from the stored arrays' shapes)."""
        rows = [zarr.open_array(f"{self.path}/S/{i}", mode="r").shape[0] for i in range(self.n_S)]
        return np.r_[0, np.cumsum(rows, dtype=np.int64)]

    def S_blocks(self, offsets=None):
        """Per-block S as persisted dask tasks reading this checkpoint (None without S).

        ``offsets`` (row offsets of the resumed fit's blocks, length n_blocks + 1) re-splits the
        stored rows when the fit is blocked differently from the one that wrote the checkpoint
        (e.g. resumed on a cluster whose workers' memory gives another default blocking); each
        new block reads only the rows it needs from the stored blocks.
        """
        if not self.n_S:
            return None
        p = str(self.path)
        tag = uuid.uuid4().hex[:12]
        stored = self.stored_offsets() if offsets is not None else None
        if stored is None or np.array_equal(stored, offsets):
            parts = [dask.delayed(_read_S, pure=True)(p, i, dask_key_name=f"ckpt-S-{tag}-{i}") for i in range(self.n_S)]
        else:
            offsets = np.asarray(offsets, dtype=np.int64)
            if offsets[-1] != stored[-1]:
                raise StoreError(f"checkpoint {p!r}: expected S of {int(offsets[-1])} rows, found {int(stored[-1])}")
            so = [int(o) for o in stored]
            parts = [dask.delayed(_read_S_rows, pure=True)(p, so, int(offsets[i]), int(offsets[i + 1]),
                                                           dask_key_name=f"ckpt-S-{tag}-{i}")
                     for i in range(len(offsets) - 1)]
        return list(dask.persist(*parts))


class Checkpointer:
    """Writes and finds checkpoints of one fit in the folder ``path``.

    Parameters
    ----------
    path : str or Path
        Checkpoint folder (created when missing; its parent must exist).
    every : int
        Write a checkpoint every ``every`` iterations (see :meth:`due`).
    meta : dict or None
        :func:`estimator_meta` of the fit; a checkpoint is only resumed when it matches
        (None: inspection only, no check).
    """

    def __init__(self, path, every, meta):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise DNMFValueError(f"checkpoint_every: expected a positive integer, found {every!r}")
        self.path = Path(path).absolute()
        self.every = int(every)
        self.meta = meta
        self._seq = None

    def due(self, iteration: int) -> bool:
        return iteration % self.every == 0

    def _existing(self):
        if not self.path.exists():
            return []
        out = []
        for p in self.path.iterdir():
            m = _NAME.match(p.name)
            if m and (p / "zarr.json").exists():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None. Raises when it belongs to another fit."""
        found = self._existing()
        if not found:
            return None
        seq, p = found[-1]
        self._seq = seq
        return self._load(p)

    def _load(self, p: Path) -> Checkpoint:
        root, a, _ = open_store(p, FORMAT, FORMAT_VERSION)
        stored = _comparable_meta(a.get("meta", {}), self.meta)
        if self.meta is not None and stored != self.meta:
            diff = sorted(_meta_diff(self.meta, stored))
            raise DNMFValueError(
                f"checkpoint: expected a checkpoint of the same model and data, found {str(p)!r} differing in {diff} "
                "(use another checkpoint folder or start without resume)"
            )
        arrays = {}
        if "arrays" in root:
            for name, arr in root["arrays"].arrays():
                arrays[name] = arr[:]
        n_S = len(list(root["S"].array_keys())) if "S" in root else 0
        if n_S != a.get("n_S", 0):
            raise StoreError(f"checkpoint {str(p)!r}: expected {a.get('n_S')} S blocks, found {n_S}")
        return Checkpoint(p, int(a.get("seq", 0)), a["phase"], int(a["iteration"]), arrays, n_S, a.get("state", {}), a["meta"])

    def _write(self, final: Path, *, phase, iteration, arrays, S_blocks, state, seq):
        with atomic_directory(final, overwrite=True) as tmp:
            root = zarr.open_group(str(tmp), mode="w-")
            ag = root.create_group("arrays")
            for name, arr in arrays.items():
                if arr is not None:
                    ag.create_array(name, data=np.ascontiguousarray(arr))
            n_S = 0
            if S_blocks is not None:
                root.create_group("S")
                tmp_s = str(tmp)
                dask.compute(*[dask.delayed(_write_S, pure=False)(tmp_s, i, S) for i, S in enumerate(S_blocks)])
                n_S = len(S_blocks)
            root.attrs.update(_json_norm({
                "dnmf_format": FORMAT, "format_version": FORMAT_VERSION, "seq": seq, "phase": phase,
                "iteration": int(iteration), "n_S": n_S, "meta": self.meta, "state": state or {},
            }))
        if S_blocks is None:
            return None
        return Checkpoint(final, seq, phase, iteration, {}, n_S, {}, self.meta).S_blocks()

    def save(self, *, phase: str, iteration: int, arrays: dict, S_blocks=None, state=None):
        """Write a checkpoint atomically; return S_blocks re-read from it (short lineage) or None.

        ``arrays``: name -> numpy array; ``S_blocks``: per-block Delayed/persisted S, written by
        the workers; ``state``: JSON-able dict. Older checkpoints are deleted afterwards.
        """
        self._mkdir()
        if self._seq is None:
            found = self._existing()
            self._seq = found[-1][0] if found else 0
        seq = self._seq + 1
        out = self._write(self.path / f"ckpt-{seq:06d}.zarr", phase=phase, iteration=iteration, arrays=arrays,
                          S_blocks=S_blocks, state=state, seq=seq)
        self._seq = seq
        for s, p in self._existing():
            if s < seq:
                shutil.rmtree(p, ignore_errors=True)
        return out

    # -- completed stages (e.g. the layers of a hierarchical fit), kept until the fit ends --------
    def save_stage(self, index: int, *, arrays: dict, S_blocks=None, state=None):
        """Write the result of completed stage ``index`` (``stage-<index>.zarr``), atomically.

        Stage stores are never deleted while the fit runs (S blocks read back from them keep
        their lineage valid); returns the S blocks re-read from the stage store.
        """
        self._mkdir()
        return self._write(self.path / f"stage-{index:03d}.zarr", phase=f"stage{index}", iteration=0, arrays=arrays,
                           S_blocks=S_blocks, state=state, seq=0)

    def stages(self) -> list:
        """The completed stages 0, 1, ... (consecutive, each checked against ``meta``)."""
        out = []
        while (p := self.path / f"stage-{len(out):03d}.zarr").exists():
            out.append(self._load(p))
        return out

    def _mkdir(self):
        if not self.path.parent.exists():
            raise DNMFValueError(f"checkpoint: expected a folder whose parent exists, found missing {str(self.path.parent)!r}")
        self.path.mkdir(exist_ok=True)

    def remove(self):
        """Delete the checkpoint folder (after the final model is stored)."""
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        # leftovers of interrupted writes sit inside the folder (hidden tmp names) and go with it
        return not os.path.exists(self.path)


def rng_state_to_json(rng: np.random.Generator) -> dict:
    """A numpy Generator's bit-generator state as JSON (PCG64: integers only)."""
    return _json_norm(rng.bit_generator.state)


def rng_from_json(state: dict) -> np.random.Generator:
    bg = getattr(np.random, state["bit_generator"])()
    bg.state = state
    return np.random.Generator(bg)
