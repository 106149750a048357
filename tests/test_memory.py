"""The workers' memory: persist='auto' against their memory_limit, and their malloc settings."""

import os

import dask
import numpy as np
import pytest
import scipy.sparse as sp

from dnmf_dask.parallel.memory import WORKER_MALLOC_ENV, persist_fits, worker_memory_limits, worker_environ
from dnmf_dask.parallel.scheduler import scheduler_context


def test_no_limits_on_local_schedulers():
    with dask.config.set(scheduler="threads"):
        assert worker_memory_limits() is None
        assert persist_fits(10**9, 2 * 2**30)
        assert not persist_fits(3 * 2**30, 2 * 2**30)  # the fixed cap still holds


def test_persist_follows_the_workers_memory_limit(local_cluster):
    with scheduler_context(local_cluster):
        limits = worker_memory_limits()
        assert limits == [2 * 2**30, 2 * 2**30]
        assert persist_fits(2**30, 2 * 2**30)  # a quarter of 4 GiB
        assert not persist_fits(2**30 + 1, 2 * 2**30)


def test_corpus_larger_than_a_quarter_of_the_workers_is_not_persisted(local_cluster, tmp_path, monkeypatch):
    from dnmf_dask import NMF, open_corpus
    from dnmf_dask.parallel import memory
    from dnmf_dask.store.corpus import write_corpus

    X = sp.random(200, 30, density=0.2, format="csr", random_state=0, dtype=np.float32)
    write_corpus(tmp_path / "c.zarr", X, chunk_rows=50)
    seen = []
    real = memory.persist_fits
    monkeypatch.setattr("dnmf_dask.models.base.persist_fits", lambda n, cap: seen.append(real(n, cap)) or seen[-1])
    monkeypatch.setattr(memory, "PERSIST_SHARE_OF_MEMORY", 1e-12)  # every corpus is "too large" now
    m = NMF(3, init="random", max_iter=3, tol=0, random_state=0, scheduler=local_cluster).fit(open_corpus(tmp_path / "c.zarr"))
    assert seen == [False]
    ref = NMF(3, init="random", max_iter=3, tol=0, random_state=0, scheduler="synchronous").fit(X)
    np.testing.assert_allclose(m.A_[0], ref.A_[0], rtol=1e-4, atol=1e-6)


def test_streamed_corpus_randomized_nndsvd_on_a_cluster(local_cluster, tmp_path, monkeypatch):
    """NMF's default init on a corpus wider than the exact SVD's limit, not persisted: the
    randomized SVD's passes read the store on the workers, and the fit equals the in-memory one."""
    from dnmf_dask import NMF, open_corpus
    from dnmf_dask.parallel import memory
    from dnmf_dask.parallel.init import GRAM_SVD_MAX_FEATURES
    from dnmf_dask.store.corpus import write_corpus

    X = sp.random(160, GRAM_SVD_MAX_FEATURES + 40, density=0.05, format="csr", random_state=1, dtype=np.float32)
    write_corpus(tmp_path / "c.zarr", X, chunk_rows=40)
    monkeypatch.setattr(memory, "PERSIST_SHARE_OF_MEMORY", 1e-12)  # the corpus stays in its store
    kw = dict(init="nndsvda", max_iter=3, tol=0, random_state=0)
    m = NMF(4, scheduler=local_cluster, **kw).fit(open_corpus(tmp_path / "c.zarr"))
    ref = NMF(4, scheduler="synchronous", chunk_rows=40, **kw).fit(X)
    np.testing.assert_allclose(m.A_[0], ref.A_[0], rtol=1e-4, atol=1e-6)


def test_streamed_corpus_blocks_are_read_by_the_pass_tasks(tmp_path):
    """A corpus left in its store reaches the passes as StoredBlocks: each block's task reads the
    block itself (no separate read task), and computes what it would on the loaded block."""
    from dnmf_dask import open_corpus
    from dnmf_dask.parallel.blocks import as_blocks
    from dnmf_dask.parallel.mapreduce import _block_tasks
    from dnmf_dask.parallel.tasks import summary_block
    from dnmf_dask.store.corpus import StoredBlock, write_corpus

    X = sp.random(90, 12, density=0.3, format="csr", random_state=2, dtype=np.float32)
    c = write_corpus(tmp_path / "c.zarr", X, chunk_rows=30)
    blocks, _ = as_blocks(open_corpus(tmp_path / "c.zarr"))
    assert blocks.streamed and [type(b) for b in blocks.X] == [StoredBlock] * 3
    (task,) = _block_tasks(summary_block, [(blocks.X[1], None)], {})
    graph = dict(task[1].__dask_graph__())
    assert not [k for k in graph if "load-corpus" in str(k)]  # the read is inside the block's task
    assert len(graph) == 2  # the task and the getitem of its stats
    assert dask.compute(task[1], scheduler="sync")[0] == summary_block(X[30:60], None)[1]
    # a whole pass: one task per block, whose (output, stats) results the tree's leaves take as
    # they are (no getitem task per block), and the sums are those of the loaded blocks
    from dnmf_dask.parallel.mapreduce import FAN_IN, tree_sum

    tasks = _block_tasks(summary_block, [(b, None) for b in blocks.X], {})
    total = tree_sum(tasks)
    assert len(dict(total.__dask_graph__())) == 3 + 1 and 3 <= FAN_IN
    got = dask.compute(total, scheduler="sync")[0]
    assert got["nnz"] == X.nnz and got["sum"] == pytest.approx(float(X.sum(dtype=np.float64)), rel=1e-12)
    # persisting (a corpus that fits) turns them into read tasks again, loaded once
    p = blocks.persist()
    assert not p.streamed and (abs(dask.compute(p.X[2])[0] - X[60:]).max() == 0)
    # a rechunked corpus (chunk_rows given) keeps dask's read-and-slice tasks
    r, _ = as_blocks(open_corpus(tmp_path / "c.zarr"), chunk_rows=45)
    assert not r.streamed and r.n_blocks == 2


def test_streamed_fit_on_a_cluster_submits_ahead_and_equals_the_persisted_fit(local_cluster, tmp_path, monkeypatch):
    """Reads inside the pass tasks wait for the previous pass's factors, so pass t+1 is
    submitted before the driver has pass t's objective (as for persisted X), and the streamed fit,
    stopped by tol, is the persisted one bit for bit (same blocks, same kernels, same sums)."""
    from dnmf_dask import SSNMF, open_corpus
    from dnmf_dask.parallel import memory, mu
    from dnmf_dask.store.corpus import write_corpus

    rng = np.random.default_rng(4)
    X = sp.random(240, 40, density=0.25, format="csr", random_state=3, dtype=np.float32)
    y = np.where(rng.random(240) < 0.5, np.arange(240) % 3, -1)
    write_corpus(tmp_path / "c.zarr", X, y=y, chunk_rows=60)
    events = []
    real_submit, real_stats = mu.submit_map_reduce, mu._Pass.stats
    monkeypatch.setattr(mu, "submit_map_reduce", lambda *a, **kw: events.append("submit") or real_submit(*a, **kw))
    monkeypatch.setattr(mu._Pass, "stats", lambda self: events.append("stats") or real_stats(self))
    kw = dict(init="random", max_iter=200, tol=1e-3, random_state=0, scheduler=local_cluster)
    monkeypatch.setattr(memory, "PERSIST_SHARE_OF_MEMORY", 1e-12)  # the corpus stays in its store
    streamed = SSNMF(3, persist="auto", **kw).fit(open_corpus(tmp_path / "c.zarr"))
    order = list(events)
    events.clear()
    # chunk_rows: the stored blocks (a cluster would otherwise merge the persisted ones)
    persisted = SSNMF(3, persist=True, chunk_rows=60, **kw).fit(open_corpus(tmp_path / "c.zarr"))
    assert streamed.stop_reason_ == persisted.stop_reason_ == "tol" and 2 < streamed.n_iter_ < 200
    assert streamed.n_iter_ == persisted.n_iter_
    np.testing.assert_array_equal(streamed.A_[0], persisted.A_[0])
    np.testing.assert_array_equal(streamed.B_, persisted.B_)
    assert streamed.history_["objective"] == persisted.history_["objective"]
    assert order[:3] == ["submit", "submit", "stats"] and order == events  # submitted one ahead, as persisted


def test_started_cluster_workers_get_the_malloc_settings():
    env = worker_environ()
    assert env["OPENBLAS_NUM_THREADS"] in (1, "1")  # distributed's own settings are kept
    with scheduler_context("local", n_workers=1, threads_per_worker=1, verbose=False, dashboard_address=None) as client:
        got = client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC_ENV})
    (worker_env,) = got.values()
    assert worker_env == {k: str(v) for k, v in WORKER_MALLOC_ENV.items()}


def test_block_budget_caps_the_default_blocking():
    from dnmf_dask.store.corpus import auto_chunk_rows

    n, f, nnz = 100_000, 1000, 8_000_000  # 64 MB as CSR float32: 4 blocks by default
    assert -(-n // auto_chunk_rows(n, f, nnz, 4)) == 4
    # 64e6 B / 10 MiB -> 7 blocks, rounded up to a multiple of 4 (blocks keep >= 1M nnz)
    assert -(-n // auto_chunk_rows(n, f, nnz, 4, max_block_bytes=10 * 2**20)) == 8
    assert -(-n // auto_chunk_rows(n, f, nnz, 4, max_block_bytes=5 * 2**20)) == 13  # 1M nnz per block would be too few
    assert -(-n // auto_chunk_rows(n, f, None, 4, max_block_bytes=40 * 2**20)) == 12  # dense 400 MB: 10 -> 12


def test_block_budget_of_the_cluster_and_the_corpus_warning(local_cluster, tmp_path, monkeypatch):
    from dnmf_dask.parallel import memory
    from dnmf_dask.parallel.blocks import as_blocks
    from dnmf_dask.store.corpus import open_corpus, write_corpus

    X = sp.random(400, 50, density=0.5, format="csr", random_state=0, dtype=np.float32)  # 10,000 nnz, 80 kB
    write_corpus(tmp_path / "c.zarr", X, chunk_rows=200)
    with dask.config.set(scheduler="threads"):
        assert memory.block_bytes_budget() is None  # the cluster is not the current scheduler
    with scheduler_context(local_cluster):
        assert memory.block_bytes_budget() == 2 * 2**30 // 8  # 1 thread per worker
        monkeypatch.setattr(memory, "BLOCK_SHARE_OF_MEMORY", 30_000 / (2 * 2**30))  # 30 kB blocks
        blocks, _ = as_blocks(X)
        assert blocks.n_blocks == 3  # 80 kB in blocks of at most 30 kB (too small to round to 4)
        with pytest.warns(ResourceWarning, match="chunk_rows"):
            as_blocks(open_corpus(tmp_path / "c.zarr"))  # stored blocks of 40 kB


def test_small_workers_keep_distributed_malloc_settings(monkeypatch):
    from dnmf_dask.parallel.memory import worker_malloc_config

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with worker_malloc_config("400MB"):
        assert "MALLOC_MMAP_THRESHOLD_" not in dask.config.get("distributed.nanny.pre-spawn-environ")
    with worker_malloc_config("4GB"):
        assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_MMAP_THRESHOLD_"] == 32 * 2**20
        assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20)
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ  # restored


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "client"])
def test_in_memory_blocks_are_sent_only_to_a_cluster(local_cluster, scheduler):
    """numpy / scipy input persisted: on an in-process scheduler the blocks already are where the
    tasks run (only marked persisted, no dask.persist: ~0.7 ms of a small fit's set-up); on a
    distributed Client they are sent to the workers once (the graph then holds futures)."""
    from dnmf_dask.models.neural import _in_memory_block
    from dnmf_dask.parallel.blocks import as_blocks

    X = np.random.default_rng(0).random((60, 5))
    blocks, info = as_blocks(X, chunk_rows=100)
    assert blocks.in_memory and not blocks.persisted
    with scheduler_context(local_cluster if scheduler == "client" else scheduler):
        calls = []
        real = dask.persist
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dask, "persist", lambda *a, **k: calls.append(1) or real(*a, **k))
            p = blocks.persist()
        assert p.persisted
        assert bool(calls) == (scheduler == "client")
        got = _in_memory_block(p, info)  # the fast single-block path gets the array itself
        np.testing.assert_array_equal(got, X)
        if scheduler != "client":
            assert np.shares_memory(got, X)  # the block itself, not a computed copy


_FRAGMENT = r"""
import sys, numpy as np
from dnmf_dask.parallel import memory
limit = 2 * memory._rss() + 2 * 2**20  # a limit the RSS will be above half of once the holes are made
memory.release_free_heap(limit=limit)  # the first call takes the RSS as its base
kept, holes = [], []
for _ in range(160):  # 1 MiB buffers between small arrays that stay: freeing them leaves holes
    holes.append(np.ones(2**17))
    kept.append(np.ones(2**13))
del holes
before = memory._rss()
freed = memory.release_free_heap(limit=limit)
again = memory.release_free_heap(limit=limit)
print(before, freed, again, memory._rss(), memory.release_free_heap())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc and glibc")
def test_release_free_heap_gives_back_the_holes_once():
    import subprocess
    import sys

    from dnmf_dask.parallel import memory

    if memory._glibc() is None:
        pytest.skip("not glibc")
    # the heap settings of the library's large workers: 1 MiB buffers come from the heap
    env = {**os.environ, **{k: str(v) for k, v in WORKER_MALLOC_ENV.items()}}
    out = subprocess.run([sys.executable, "-c", _FRAGMENT], env=env, capture_output=True, text=True, check=True)
    before, freed, again, after, outside = (int(v) for v in out.stdout.split())
    assert freed >= 100 * 2**20, (before, freed, after)  # most of the 160 MiB of holes
    assert after <= before - 100 * 2**20
    assert again == 0  # the RSS has not grown since: no second trim
    assert outside == 0  # not on a distributed worker: nothing to do


def test_release_free_heap_waits_for_the_rss_to_grow(monkeypatch):
    from dnmf_dask.parallel import memory

    trims = []

    class FakeLibc:
        def malloc_trim(self, pad):
            trims.append(pad)

    rss = [1100 * 2**20]  # above half of the limit (HEAP_TRIM_AT_SHARE): growth decides
    monkeypatch.setattr(memory, "_glibc", lambda: FakeLibc())
    monkeypatch.setattr(memory, "_rss", lambda: rss[0])
    monkeypatch.setattr(memory, "_RSS_AFTER_TRIM", [0])
    limit = 2**31  # growth threshold: max(64 MiB, limit / 16 = 128 MiB)
    assert memory.release_free_heap(limit=limit) == 0 and not trims  # the first call sets the base
    rss[0] += 100 * 2**20
    assert memory.release_free_heap(limit=limit) == 0 and not trims  # grown by less than 128 MiB
    rss[0] += 100 * 2**20
    memory.release_free_heap(limit=limit)
    assert trims == [0]
    rss[0] -= 300 * 2**20  # shrank below the base: the base follows it down
    memory.release_free_heap(limit=limit)
    rss[0] += 129 * 2**20
    memory.release_free_heap(limit=limit)
    assert trims == [0, 0]
    assert memory.release_free_heap() == 0  # outside a worker: no limit, nothing done
    # a worker well below its limit does not trim, however much its RSS grew
    monkeypatch.setattr(memory, "_RSS_AFTER_TRIM", [0])
    rss[0] = 100 * 2**20
    memory.release_free_heap(limit=limit)
    rss[0] = 1000 * 2**20  # grown by 900 MiB, but under half of the 2 GiB limit
    assert memory.release_free_heap(limit=limit) == 0 and trims == [0, 0]
    rss[0] = 1100 * 2**20  # above half of it
    memory.release_free_heap(limit=limit)
    assert trims == [0, 0, 0]


def test_reading_tasks_release_the_heap(tmp_path, monkeypatch):
    from dnmf_dask.parallel import mapreduce
    from dnmf_dask.store.corpus import open_corpus, stored_blocks, write_corpus

    X = sp.random(60, 10, density=0.3, format="csr", random_state=0, dtype=np.float32)
    write_corpus(tmp_path / "c.zarr", X, chunk_rows=20)
    calls = []
    monkeypatch.setattr(mapreduce, "release_free_heap", lambda: calls.append(1))
    blocks = stored_blocks(open_corpus(tmp_path / "c.zarr"), np.float32)
    nnz = mapreduce._reading(lambda Xb, k: (Xb.nnz * k, {}), blocks[1], 2)
    assert nnz == (X[20:40].nnz * 2, {}) and calls == [1]
    with pytest.raises(ZeroDivisionError):  # released on errors too
        mapreduce._reading(lambda Xb: 1 / 0, blocks[0])
    assert calls == [1, 1]


def test_fit_releases_the_initial_S_after_the_first_pass(local_cluster, tmp_path, monkeypatch):
    """The initial S blocks (a random init's) are the caller's list, which ``fit_mu`` empties: the
    cluster frees them once the first pass has consumed them, not at the end of the fit."""
    from distributed import Client

    from dnmf_dask import NMF, open_corpus
    from dnmf_dask.parallel import mu
    from dnmf_dask.store.corpus import write_corpus

    X = sp.random(400, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)
    write_corpus(tmp_path / "c.zarr", X, chunk_rows=100)
    initial, alive, lists = [], [], []
    real_fit, real_stats = mu.fit_mu, mu._Pass.stats

    def fit_mu(blocks, S_blocks, *a, **kw):
        initial.extend(str(d.key) for d in S_blocks)
        lists.append(S_blocks)
        return real_fit(blocks, S_blocks, *a, **kw)

    def stats(self):
        out = real_stats(self)
        import gc

        gc.collect()
        alive.append(sum(k in Client.current().refcount for k in initial))
        return out

    monkeypatch.setattr("dnmf_dask.models.nmf.fit_mu", fit_mu)
    monkeypatch.setattr(mu._Pass, "stats", stats)
    NMF(3, init="random", max_iter=4, tol=0, random_state=0, chunk_rows=100,  # the 4 stored blocks, not merged
        scheduler=local_cluster).fit(open_corpus(tmp_path / "c.zarr"))
    assert len(initial) == 4 and lists == [[]]
    assert alive[0] == 0  # already after the first pass (the driver holds none of them)


def test_first_pass_waits_for_the_initial_S(local_cluster, tmp_path, monkeypatch):
    """On a cluster the first MU pass is submitted once the initial S blocks are in memory (a
    pass submitted while a random init was still computing ran its block tasks in the order the
    blocks arrived, and their results piled up before the reduction tree added them)."""
    from dnmf_dask import NMF, open_corpus
    from dnmf_dask.parallel import mapreduce, mu
    from dnmf_dask.store.corpus import write_corpus

    X = sp.random(400, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)
    write_corpus(tmp_path / "c.zarr", X, chunk_rows=100)
    events = []
    real_wait, real_submit = mapreduce.wait_for, mu.submit_map_reduce

    def wait_for(collections):
        real_wait(collections)
        events.append(("wait", [d.key for d in collections],
                       [f.status for f in __import__("distributed").futures_of(list(collections))]))

    def submit(*a, **kw):
        events.append(("submit",))
        return real_submit(*a, **kw)

    monkeypatch.setattr(mu, "wait_for", wait_for)
    monkeypatch.setattr(mu, "submit_map_reduce", submit)
    NMF(3, init="random", max_iter=2, tol=0, random_state=0, chunk_rows=100,  # the 4 stored blocks, not merged
        scheduler=local_cluster).fit(open_corpus(tmp_path / "c.zarr"))
    assert events[0][0] == "wait" and events[1] == ("submit",)
    keys, status = events[0][1], events[0][2]
    assert len(keys) == 4 and status == ["finished"] * 4  # every initial block in memory first


def test_wait_for_is_a_no_op_on_local_schedulers():
    from dnmf_dask.parallel.mapreduce import wait_for

    with dask.config.set(scheduler="threads"):
        wait_for([dask.delayed(1)])  # nothing to wait for (and nothing computed)


def test_evaluation_pass_keeps_no_S_outputs(local_cluster, tmp_path, monkeypatch):
    """Only updating passes persist their S blocks: the final evaluation pass's S are its inputs
    (the fit's result), so it keeps nothing more on the workers; the result is unchanged."""
    from dnmf_dask import NMF, open_corpus
    from dnmf_dask.parallel import mu
    from dnmf_dask.store.corpus import write_corpus

    X = sp.random(400, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)
    write_corpus(tmp_path / "c.zarr", X, chunk_rows=100)
    seen, real = [], mu.submit_map_reduce

    def submit(*a, keep_outputs=True, update_S=None, **kw):
        seen.append((bool(update_S), keep_outputs))
        return real(*a, keep_outputs=keep_outputs, update_S=update_S, **kw)

    monkeypatch.setattr(mu, "submit_map_reduce", submit)
    S = NMF(3, init="random", max_iter=3, tol=0, random_state=0, scheduler=local_cluster).fit_transform(
        open_corpus(tmp_path / "c.zarr"))
    assert seen == [(True, True)] * 3 + [(False, False)]
    monkeypatch.setattr(mu, "submit_map_reduce", real)
    S_threads = NMF(3, init="random", max_iter=3, tol=0, random_state=0, scheduler="threads").fit_transform(X)
    np.testing.assert_allclose(np.asarray(S), S_threads, rtol=1e-6, atol=1e-7)


def test_persisted_corpus_is_merged_into_larger_blocks_on_a_cluster(local_cluster, tmp_path, monkeypatch):
    """On a cluster, a persisted corpus of many small stored blocks runs as one block per worker
    thread (each pass's tasks carry enough work), with the same fit as the threaded scheduler on
    the stored blocks; a chunk_rows given by the user is kept."""
    from dnmf_dask import NMF
    from dnmf_dask.parallel.blocks import Blocks
    from dnmf_dask.store.corpus import open_corpus, write_corpus

    rng = np.random.default_rng(3)
    X = sp.random(640, 60, density=0.2, format="csr", random_state=rng, dtype=np.float64)
    X.data = rng.poisson(3.0, X.nnz) + 1.0
    write_corpus(tmp_path / "c.zarr", X, chunk_rows=80)  # 8 stored blocks
    merged = []
    original = Blocks._merged
    monkeypatch.setattr(Blocks, "_merged", lambda self, n: merged.append((self.n_blocks, n)) or original(self, n))

    def fit(scheduler, **kw):
        m = NMF(n_components=4, max_iter=30, tol=0, random_state=0, init="nndsvda", scheduler=scheduler,
                persist=True, **kw)
        S = m.fit_transform(open_corpus(tmp_path / "c.zarr"))
        return m, S

    ref, S_ref = fit("threads")
    assert merged == []  # dask's own schedulers keep the stored blocks
    got, S = fit(local_cluster)
    assert merged == [(8, 2)]  # 2 workers x 1 thread
    np.testing.assert_allclose(got.components_, ref.components_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(S, S_ref, rtol=1e-9, atol=1e-12)  # rows in their order
    assert got.n_iter_ == ref.n_iter_ == 30
    merged.clear()
    fit(local_cluster, chunk_rows=80)
    assert merged == []


def test_streamed_pass_tasks_run_where_the_tree_adds_them(local_cluster, tmp_path):
    """On a cluster of 2 workers the block tasks of a streamed pass prefer the worker of their
    add_stats group (8 consecutive blocks per worker, in turn), so the reduction tree's first
    level fetches nothing from the other worker; on dask's own schedulers there is no placement."""
    from distributed import get_task_stream

    from dnmf_dask import NMF, open_corpus
    from dnmf_dask.parallel import memory
    from dnmf_dask.parallel.mapreduce import FAN_IN, tree_placement
    from dnmf_dask.parallel.scheduler import scheduler_context
    from dnmf_dask.store.corpus import write_corpus

    with dask.config.set(scheduler="threads"):
        assert tree_placement(20) is None
    with scheduler_context(local_cluster):
        addrs = sorted(local_cluster.scheduler_info()["workers"])
        assert tree_placement(20) == [addrs[0]] * 8 + [addrs[1]] * 8 + [addrs[0]] * 4

    X = sp.random(1600, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)
    write_corpus(tmp_path / "c.zarr", X, chunk_rows=100)  # 16 blocks: two add_stats groups
    old = memory.PERSIST_SHARE_OF_MEMORY
    try:
        memory.PERSIST_SHARE_OF_MEMORY = 1e-12  # the corpus stays in its store: streamed passes
        with get_task_stream(local_cluster) as ts:
            NMF(3, init="random", max_iter=3, tol=0, random_state=0, scheduler=local_cluster).fit(open_corpus(tmp_path / "c.zarr"))
    finally:
        memory.PERSIST_SHARE_OF_MEMORY = old
    ran = [t for t in ts.data if str(t["key"]).startswith("_mu_pass_task")]
    assert len(ran) == 16 * 4  # 3 iterations and the evaluation pass
    # each worker ran about half, and the tree's first level (2 add_stats per pass) fetched
    # (almost) nothing from the other worker
    per_worker = {a: sum(t["worker"] == a for t in ran) for a in addrs}
    assert min(per_worker.values()) >= 16, per_worker
    moved = [t for t in ts.data if str(t["key"]).startswith("add_stats")
             for s in t["startstops"] if s["action"] == "transfer"]
    assert len(moved) <= 5, len(moved)  # measured: 3 with the placement, 11 without
