"""Checkpoints and resume (Python API and `dnmf fit --resume` after SIGKILL), atomicity, progress."""

import io
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.errors import DNMFValueError
from dnmf_dask.store import checkpoint as ckmod
from dnmf_dask.store.model import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _data(n=120, f=14, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.random((n, f)) * (rng.random((n, f)) < 0.7)
    y = np.where(rng.random(n) < 0.5, np.arange(n) % 3, -1)
    return X, y


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


class _Stop(Exception):
    pass


def _interrupt_after(monkeypatch, n_saves, phase=""):
    """Make the fit die right after its n-th complete checkpoint of ``phase`` (as a kill would)."""
    orig = ckmod.Checkpointer.save
    count = []

    def save(self, **kw):
        out = orig(self, **kw)
        if kw["phase"].startswith(phase):
            count.append(kw["iteration"])
            if len(count) == n_saves:
                raise _Stop()
        return out

    monkeypatch.setattr(ckmod.Checkpointer, "save", save)
    return count


_neural_pgd = lambda: dd.NeuralNMF((5, 3), epochs=9, tol=0, init_max_iter=15, random_state=0, chunk_rows=30,  # noqa: E731
                                   scheduler="threads")
MODELS = {  # factory, phase of the checkpoints after whose second one the fit dies
    "nmf": (lambda: dd.NMF(4, max_iter=25, tol=0, random_state=0, chunk_rows=30, scheduler="threads"), "mu"),
    "ssnmf": (lambda: dd.SSNMF(4, max_iter=25, tol=0, random_state=0, chunk_rows=30, scheduler="threads"), "mu"),
    "neural-pgd": (_neural_pgd, "neural"),
    "neural-pgd-in-init": (_neural_pgd, "layer"),  # dies inside the hierarchical initialisation
    "neural-sgd": (lambda: dd.NeuralNMF((5, 3), solver="sgd", epochs=9, learning_rate=1e-3, init="random", random_state=0,
                                        chunk_rows=30, scheduler="threads"), "neural"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, name):
    X, y = _data()
    make, phase = MODELS[name]
    ref = make().fit(X, y)
    saves = _interrupt_after(monkeypatch, 2, phase)
    with pytest.raises(_Stop):
        make().fit(X, y, checkpoint=tmp_path / "ck", checkpoint_every=3)
    folder = tmp_path / "ck" / ("init" if name.endswith("init") else "")
    assert saves == [3, 6] and [p.name for p in folder.glob("ckpt-*")] == ["ckpt-000002.zarr"]  # older ones deleted
    monkeypatch.undo()
    m = make().fit(X, y, checkpoint=tmp_path / "ck", checkpoint_every=3, resume=True)
    for a, b in zip(m.A_, ref.A_):
        assert _rel(a, b) < 1e-8
    if getattr(ref, "B_", None) is not None:
        assert _rel(m.B_, ref.B_) < 1e-8
    assert m.n_iter_ == ref.n_iter_ and m.stop_reason_ == ref.stop_reason_
    key = "objective" if "objective" in ref.history_ else "cost"
    np.testing.assert_allclose(m.history_[key], ref.history_[key], rtol=1e-10)


_REBLOCK = {  # estimator factories without chunk_rows: the blocking comes from the dask input
    "ssnmf": (lambda: dd.SSNMF(4, max_iter=25, tol=0, random_state=0, scheduler="threads"), "mu"),
    "hierarchical": (lambda: dd.HierarchicalNMF((5, 3), max_iter=12, tol=0, random_state=0, scheduler="threads"), "layer"),
    "neural-pgd-in-init": (lambda: dd.NeuralNMF((5, 3), epochs=9, tol=0, init_max_iter=15, random_state=0,
                                                scheduler="threads"), "layer"),
}


@pytest.mark.parametrize("name", list(_REBLOCK))
def test_resume_with_another_blocking(tmp_path, monkeypatch, name):
    """A checkpoint written with blocks of 30 rows resumes with blocks of 45 (another cluster's
    default blocking): the stored S rows are re-split, and the model equals the uninterrupted one."""
    import dask.array as da

    X, y = _data()
    make, phase = _REBLOCK[name]
    ref = make().fit(da.from_array(X, chunks=(45, -1)), y)
    saves = _interrupt_after(monkeypatch, 2, phase)
    with pytest.raises(_Stop):
        make().fit(da.from_array(X, chunks=(30, -1)), y, checkpoint=tmp_path / "ck", checkpoint_every=3)
    assert len(saves) == 2
    monkeypatch.undo()
    read = []
    orig = ckmod._read_S_rows
    monkeypatch.setattr(ckmod, "_read_S_rows", lambda *a: read.append(a[2:]) or orig(*a))
    m = make().fit(da.from_array(X, chunks=(45, -1)), y, checkpoint=tmp_path / "ck", checkpoint_every=3, resume=True)
    assert (0, 45) in read and (90, 120) in read  # the stored 30-row blocks were re-split
    for a, b in zip(m.A_, ref.A_):
        assert _rel(a, b) < 1e-8
    assert m.n_iter_ == ref.n_iter_ and m.stop_reason_ == ref.stop_reason_


def test_sgd_checkpoint_pins_the_blocking(tmp_path, monkeypatch):
    """SGD's mini-batches are the row blocks, so its checkpoint refuses another blocking, by name."""
    import dask.array as da

    X, y = _data()
    make = MODELS["neural-sgd"][0]
    make_nochunk = lambda: make().set_params(chunk_rows=None)  # noqa: E731
    _interrupt_after(monkeypatch, 2, "neural")
    with pytest.raises(_Stop):
        make_nochunk().fit(da.from_array(X, chunks=(30, -1)), y, checkpoint=tmp_path / "ck", checkpoint_every=3)
    monkeypatch.undo()
    with pytest.raises(DNMFValueError, match=r"differing in \['data.row_offsets'\]"):
        make_nochunk().fit(da.from_array(X, chunks=(45, -1)), y, checkpoint=tmp_path / "ck", resume=True)


def test_failed_checkpoint_write_leaves_previous_one(tmp_path, monkeypatch):
    """A write that dies half-way (here: the 3rd S block of the 2nd checkpoint) leaves no visible
    checkpoint behind; the previous one stays complete and resuming from it gives the same model."""
    X, y = _data()
    ref = MODELS["ssnmf"][0]().fit(X, y)
    orig = ckmod._write_S
    calls = []

    def flaky(path, i, S):
        calls.append(i)
        if len(calls) == 4 + 3:  # 4 blocks per checkpoint: fail inside the second one
            raise OSError("disk full (simulated)")
        return orig(path, i, S)

    monkeypatch.setattr(ckmod, "_write_S", flaky)
    with pytest.raises(OSError, match="simulated"):
        MODELS["ssnmf"][0]().fit(X, y, checkpoint=tmp_path / "ck", checkpoint_every=4)
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "ck").iterdir() if not p.name.startswith("."))
    assert names == ["ckpt-000001.zarr"]  # the half-written one never got its name, the first is intact
    ck = ckmod.Checkpointer(tmp_path / "ck", 4, None)
    assert ck._existing()[0][0] == 1
    m = MODELS["ssnmf"][0]().fit(X, y, checkpoint=tmp_path / "ck", checkpoint_every=4, resume=True)
    assert _rel(m.A_[0], ref.A_[0]) < 1e-8 and _rel(m.B_, ref.B_) < 1e-8


def test_checkpoint_of_another_fit_is_refused(tmp_path):
    X, y = _data()
    dd.SSNMF(4, max_iter=8, tol=0, random_state=0, scheduler="threads").fit(X, y, checkpoint=tmp_path / "ck", checkpoint_every=3)
    with pytest.raises(DNMFValueError, match="checkpoint: expected a checkpoint of the same model and data"):
        dd.SSNMF(5, max_iter=8, tol=0, random_state=0, scheduler="threads").fit(X, y, checkpoint=tmp_path / "ck", resume=True)
    with pytest.raises(DNMFValueError, match="checkpoint: expected a checkpoint of the same model and data"):
        dd.SSNMF(4, max_iter=8, tol=0, random_state=0, scheduler="threads").fit(X[:, :-1], y, checkpoint=tmp_path / "ck", resume=True)
    with pytest.raises(DNMFValueError, match="checkpoint_every"):
        dd.NMF(4, scheduler="threads").fit(X, checkpoint=tmp_path / "ck2", checkpoint_every=0)
    with pytest.raises(DNMFValueError, match="checkpoint: expected the checkpoint folder"):
        dd.NMF(4, scheduler="threads").fit(X, resume=True)


def _cli_env():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONWARNINGS": "ignore"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


@pytest.mark.timeout(300)
def test_cli_sigkill_then_resume(tmp_path):
    """`dnmf fit` killed with SIGKILL after a checkpoint appeared; `--resume` ends with the model
    of an undisturbed run (and the checkpoint folder is removed after success)."""
    X, y = _data(n=160)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    assert main(["ingest", "npz", str(tmp_path / "c.zarr"), "--input", str(tmp_path / "d.npz"), "--chunk-rows", "40", "--quiet"]) == 0
    args = ["fit", str(tmp_path / "c.zarr"), str(tmp_path / "m.zarr"), "--model", "ssnmf", "-k", "4", "--max-iter", "60",
            "--tol", "0", "--scheduler", "threads", "--checkpoint-every", "1", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "dnmf_dask.cli", *args], env=_cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    ck = tmp_path / "m.zarr.checkpoint"
    try:
        deadline = time.monotonic() + 120
        while not (ck.exists() and any(p.name.startswith("ckpt-") for p in ck.iterdir())):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        time.sleep(0.3)  # kill at a random moment of the following iterations (possibly during a write)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "m.zarr").exists()
    done = ckmod.Checkpointer(ck, 1, None).latest()
    assert done is not None and 1 <= done.iteration < 60
    print(f"killed after the checkpoint of iteration {done.iteration}")
    assert main([*args[:-3], "--checkpoint-every", "25", "--quiet", "--resume"]) == 0  # the interval may differ
    assert not ck.exists()
    m = load_model(tmp_path / "m.zarr")
    ref = dd.SSNMF(4, max_iter=60, tol=0, random_state=0, scheduler="threads").fit(dd.open_corpus(tmp_path / "c.zarr"))
    assert _rel(m.A_[0], ref.A_[0]) < 1e-8 and _rel(m.B_, ref.B_) < 1e-8 and m.n_iter_ == 60
    np.testing.assert_allclose(m.history_["objective"], ref.history_["objective"], rtol=1e-10)


def test_progress_line_with_eta():
    X, y = _data()
    buf = io.StringIO()
    with dd.progress_bar(stream=buf, min_interval=0):
        dd.SSNMF(3, max_iter=6, tol=0, random_state=0, scheduler="threads").fit(X, y)
    lines = [s.strip() for s in buf.getvalue().replace("\n", "\r").split("\r") if s.strip()]
    assert lines[0].startswith("SSNMF 1/6") and "ETA" in lines[0]
    assert lines[-1].startswith("SSNMF 6/6 100%") and "ETA 0:00:00" in lines[-1]
    buf2 = io.StringIO()  # without a bar: nothing
    dd.SSNMF(3, max_iter=3, tol=0, random_state=0, scheduler="threads").fit(X, y)
    assert buf2.getvalue() == ""


LAYERED = {
    "hierarchical": lambda: dd.HierarchicalNMF((5, 3), max_iter=12, tol=0, random_state=0, chunk_rows=30, scheduler="threads"),
    "deep": lambda: dd.DeepNMF((5, 3), pool_size=2, backprop_iter=3, max_iter=12, tol=0, random_state=0, chunk_rows=30,
                               scheduler="threads"),
}


@pytest.mark.parametrize("name", list(LAYERED))
@pytest.mark.parametrize("n_saves", [2, 3])  # interrupted inside layer 0 / inside layer 1 (after layer 0 was stored)
def test_layered_resume_equals_uninterrupted(tmp_path, monkeypatch, name, n_saves):
    X, y = _data()
    groups = np.repeat(np.arange(len(y) // 4), 4)
    ref = LAYERED[name]().fit(X, y, groups=groups)
    saves = _interrupt_after(monkeypatch, n_saves)
    with pytest.raises(_Stop):
        LAYERED[name]().fit(X, y, groups=groups, checkpoint=tmp_path / "ck", checkpoint_every=4)
    stages = sorted(p.name for p in (tmp_path / "ck").glob("stage-*"))
    assert stages == ([] if n_saves == 2 else ["stage-000.zarr"]) and len(saves) == n_saves
    monkeypatch.undo()
    m = LAYERED[name]().fit(X, y, groups=groups, checkpoint=tmp_path / "ck", checkpoint_every=4, resume=True)
    for a, b in zip(m.A_, ref.A_):
        assert _rel(a, b) < 1e-8
    assert _rel(m.B_, ref.B_) < 1e-8 and m.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(m.layer_rel_error_, ref.layer_rel_error_, rtol=1e-10)


def test_old_checkpoints_with_offsets_still_match():
    """Checkpoints written while the offsets were part of every fingerprint still resume a fit
    whose result does not depend on the blocking, and only such a fit."""
    old = {"class": "NMF", "data": {"n_samples": 4, "row_offsets": [0, 2, 4]}}
    assert ckmod._comparable_meta(old, {"class": "NMF", "data": {"n_samples": 4}}) == {"class": "NMF", "data": {"n_samples": 4}}
    pinned = {"class": "NMF", "data": {"n_samples": 4, "row_offsets": [0, 4]}}
    assert ckmod._comparable_meta(old, pinned) == old
    assert ckmod._meta_diff(pinned, old) == ["data.row_offsets"]
