"""What a dask worker imports to run the library's tasks, and the small-worker environment.

A worker's memory_limit counts its whole process (RSS): modules a task pulls in are memory the
data cannot use (BENCHMARKS.md, "Out of core"). The task functions live in kernels/ and
parallel/, the package's public names load lazily, and numba is loaded only by the kernels that
use it, so running an NMF pass must not import scikit-learn, numba or scipy.optimize.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import scipy.sparse as sp

import dnmf_dask
from dnmf_dask.parallel.memory import SMALL_WORKER_ENV, worker_malloc_config

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("sklearn", "numba", "scipy.optimize", "matplotlib", "dnmf_dask.models", "dnmf_dask.cli")


def _modules_after(code):
    """The HEAVY modules loaded by a fresh interpreter: the last two JSON lines it prints (``code``
    prints the first, the probe the second, after all of ``code`` ran)."""
    env = {k: v for k, v in os.environ.items() if k != "DNMF_DASK_FUSED_FROBENIUS"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-2:]]


def test_worker_tasks_import_no_estimators_and_numba_only_when_used():
    # what a worker does for an NMF fit from a corpus store: unpickle the task functions
    # (parallel.tasks, parallel.mu's kernels, the store's block loader) and run them; then the
    # fused KL sweep, the first kernel that needs numba
    code = (
        "import numpy as np, scipy.sparse as sp\n"
        "import dnmf_dask.parallel.tasks as t, dnmf_dask.parallel.mu, dnmf_dask.store.corpus\n"
        "from dnmf_dask.kernels.nmf import block_step\n"
        "from dnmf_dask.kernels.solvers import general_block_step\n"
        "X = sp.random(30, 20, density=0.3, format='csr', dtype=np.float32, random_state=0)\n"
        "S = np.ones((30, 3), np.float32); A = np.ones((20, 3), np.float32)\n"
        "t.summary_block(X, None); block_step(X, S, A)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
        "general_block_step(X, S, A, loss='kullback-leibler')\n"
    )
    before, after = _modules_after(code)
    assert before == []
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover
        assert after == []
    else:
        assert after == ["numba"]


def test_public_names_load_on_first_use():
    from dnmf_dask import models
    from dnmf_dask.models import selection

    assert dnmf_dask.NMF is models.NMF and dnmf_dask.NeuralNMF is models.NeuralNMF
    assert dnmf_dask.select_ranks is selection.select_ranks
    assert dnmf_dask.kernels.nmf.block_step is not None  # subpackages as attributes
    assert set(dnmf_dask.__all__) <= set(dir(dnmf_dask))
    ns = {}
    exec("from dnmf_dask import *", ns)
    assert all(name in ns for name in dnmf_dask.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dnmf_dask.nope  # noqa: B018


def test_fused_frobenius_switch_without_importing_numba(monkeypatch):
    """kernels.nmf asks kernels.fused for its Frobenius sweep only when the switch is on."""
    from dnmf_dask.kernels import nmf

    X = sp.random(30, 20, density=0.3, format="csr", dtype=np.float32, random_state=0)
    S = np.ones((30, 3), np.float32)
    monkeypatch.delitem(sys.modules, "dnmf_dask.kernels.fused", raising=False)
    monkeypatch.delenv("DNMF_DASK_FUSED_FROBENIUS", raising=False)
    assert nmf._fused_frobenius(X, S) is None
    assert "dnmf_dask.kernels.fused" not in sys.modules  # not imported to find out
    monkeypatch.setenv("DNMF_DASK_FUSED_FROBENIUS", "1")
    got = nmf._fused_frobenius(X, S)
    from dnmf_dask.kernels import fused  # (the package attribute, if an earlier test imported it)

    assert got is (fused if fused.FROBENIUS and fused.AVAILABLE else None)


def test_small_workers_run_without_numba(monkeypatch):
    monkeypatch.delenv("DNMF_DASK_NUMBA", raising=False)
    with worker_malloc_config("400MB"):
        assert dask.config.get("distributed.nanny.environ")["DNMF_DASK_NUMBA"] == "0"
        assert "DNMF_DASK_NUMBA" not in os.environ  # set in the workers, not in this process
    with worker_malloc_config("4GB"):
        assert "DNMF_DASK_NUMBA" not in (dask.config.get("distributed.nanny.environ") or {})
    monkeypatch.setenv("DNMF_DASK_NUMBA", "1")  # the user's choice wins
    with worker_malloc_config("400MB"):
        assert "DNMF_DASK_NUMBA" not in (dask.config.get("distributed.nanny.environ") or {})
    assert SMALL_WORKER_ENV == {"DNMF_DASK_NUMBA": "0"}


def test_small_worker_cluster_footprint_and_results(monkeypatch):
    """A started 400 MB LocalCluster's worker fits NMF and NeuralNMF without loading scikit-learn
    or numba, and gets the synchronous scheduler's results (numpy kernels there, compiled here)."""
    monkeypatch.delenv("DNMF_DASK_NUMBA", raising=False)
    X = sp.random(60, 40, density=0.3, format="csr", dtype=np.float64, random_state=1)
    X.data = np.ceil(X.data * 4)
    kw = dict(init="random", random_state=0, tol=0)
    ref_nmf = dnmf_dask.NMF(4, max_iter=3, scheduler="synchronous", chunk_rows=20, **kw).fit(X)
    ref_nn = dnmf_dask.NeuralNMF((4, 2), epochs=1, scheduler="synchronous", chunk_rows=20, **kw).fit(X)
    with dnmf_dask.scheduler_context("local", n_workers=1, threads_per_worker=1, memory_limit="400MB",
                                     verbose=False, dashboard_address=None) as client:
        m = dnmf_dask.NMF(4, max_iter=3, scheduler=client, chunk_rows=30, **kw).fit(X)
        nn = dnmf_dask.NeuralNMF((4, 2), epochs=1, scheduler=client, chunk_rows=30, **kw).fit(X)
        loaded = client.run(lambda: [m for m in HEAVY if m in sys.modules])
    assert list(loaded.values()) == [[]]
    np.testing.assert_allclose(m.A_[0], ref_nmf.A_[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(nn.A_, ref_nn.A_):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- block statistics' size

def test_compact_stats_narrows_only_exact_float64_arrays():
    from dnmf_dask.parallel.mapreduce import FLOAT32_EXACT, add_stats, compact_stats

    rng = np.random.default_rng(0)
    exact = rng.random((5000, 2)).astype(np.float32).astype(np.float64)  # a float32 product, widened
    inexact = rng.random((5000, 2))
    small = rng.random((3, 3)).astype(np.float32).astype(np.float64)
    st = {"XtS": exact, "g": inexact, "StS": small, "loss": 1.5, "rows": [1]}
    c = compact_stats(st)
    assert c["XtS"].dtype == np.float32 and c[FLOAT32_EXACT] == ("XtS",)
    assert c["g"] is inexact and c["StS"] is small and c["loss"] == 1.5
    parts = [st, {k: v * 2 if isinstance(v, np.ndarray) else v for k, v in st.items()}]
    ref = add_stats(*parts)
    got = add_stats(*[compact_stats(p) for p in parts])
    assert FLOAT32_EXACT not in got and got["XtS"].dtype == np.float64
    for k in ("XtS", "g", "StS"):
        np.testing.assert_array_equal(got[k], ref[k])  # bit-identical sums
    assert add_stats(c)["XtS"].dtype == np.float64  # a single part is widened too


@pytest.mark.parametrize("chunk_rows", [40, 200])  # 5 blocks; 1 block (no add_stats task)
def test_nmf_float32_fit_unchanged_by_compact_stats(monkeypatch, chunk_rows):
    """The narrowed XᵀS must give exactly the fit of the float64 statistics (it would not if the
    reduction added float32 arrays in float32, or the driver got a single block's float32 sums)."""
    from dnmf_dask.parallel import mu

    X = sp.random(200, 5000, density=0.01, format="csr", dtype=np.float32, random_state=3)
    kw = dict(init="random", random_state=0, tol=0, max_iter=6, scheduler="synchronous", chunk_rows=chunk_rows)
    got = dnmf_dask.NMF(3, **kw).fit(X)
    monkeypatch.setattr(mu, "compact_stats", lambda st: st)
    ref = dnmf_dask.NMF(3, **kw).fit(X)
    np.testing.assert_array_equal(got.A_[0], ref.A_[0])
    assert got.history_["rel_error"] == ref.history_["rel_error"]
