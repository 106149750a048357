"""Default blocking chosen from the data's size, and one BLAS thread per in-process task."""

import dask
import numpy as np
import pytest

from dnmf_dask.parallel.mapreduce import map_reduce, one_blas_thread
from dnmf_dask.store.corpus import (
    BLOCK_MULTIPLE,
    MIN_NNZ_PER_BLOCK,
    TARGET_NNZ_PER_BLOCK,
    auto_chunk_rows,
)


def n_blocks(n, nnz):
    return -(-n // auto_chunk_rows(n, 1000, nnz, 4))


@pytest.mark.parametrize(
    "nnz, expected",
    [
        (500, 1),                                  # tiny: one block
        (int(1.5 * MIN_NNZ_PER_BLOCK), 1),         # two blocks would fall under the minimum
        (3 * MIN_NNZ_PER_BLOCK, 2),                # 4 would be too small, 2 are not
        (5 * TARGET_NNZ_PER_BLOCK, 2 * BLOCK_MULTIPLE),  # 5 blocks rounded up to 8, not 3 rounds on 2 workers
    ],
)
def test_auto_chunk_rows_balances_blocks(nnz, expected):
    n = 200_000
    assert n_blocks(n, nnz) == expected
    # every block but the last has the chosen rows, and blocks keep at least the minimum
    if expected > 1:
        assert nnz / n_blocks(n, nnz) >= MIN_NNZ_PER_BLOCK


def test_auto_chunk_rows_dense_and_small():
    assert auto_chunk_rows(10, 5, None, 8) == 10
    rows = auto_chunk_rows(20_000, 1000, None, 4)  # 80 MB float32 -> 4 blocks of 20 MB
    assert -(-20_000 // rows) == 4


def _blas_threads(x):
    from threadpoolctl import threadpool_info

    n = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)
    return None, {"n": np.array([n])}


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_in_process_tasks_use_one_blas_thread(scheduler):
    before = _blas_threads(None)[1]["n"][0]
    with dask.config.set(scheduler=scheduler):
        _, st = map_reduce(_blas_threads, [(1,), (2,)], keep_outputs=False)
    assert st["n"][0] == 2  # summed over 2 blocks: one thread each
    assert _blas_threads(None)[1]["n"][0] == before  # the limit is lifted afterwards


def test_no_blas_limit_for_a_client_scheduler():
    import contextlib

    class FakeClient:
        def get(self, *a, **k):  # pragma: no cover - never called
            raise AssertionError

    with dask.config.set(scheduler=FakeClient().get):
        assert isinstance(one_blas_thread(), contextlib.nullcontext)


def test_driver_blas_limited_for_a_client_scheduler():
    """fit_mu's own GEMMs run with one BLAS thread on a Client too (driver=True)."""

    class FakeClient:
        def get(self, *a, **k):  # pragma: no cover - never called
            raise AssertionError

    with dask.config.set(scheduler=FakeClient().get), one_blas_thread(driver=True):
        assert _blas_threads(None)[1]["n"][0] == 1


def test_blas_limit_shared_by_fits_in_two_threads():
    """threadpoolctl's limit is process-wide: a fit leaving it must not lift it under a fit still
    running in another thread, and the last to leave must restore the original threads (not the
    limit it found when it entered). The two fits' enter / exit order is played in this thread
    (OpenBLAS does not show a limit set by one Python thread to another after the main thread
    has set one)."""
    before = _blas_threads(None)[1]["n"][0]
    fit_a, fit_b = one_blas_thread(driver=True), one_blas_thread(driver=True)
    fit_a.__enter__()
    fit_b.__enter__()
    fit_a.__exit__(None, None, None)
    assert _blas_threads(None)[1]["n"][0] == 1  # fit b still runs
    fit_b.__exit__(None, None, None)
    assert _blas_threads(None)[1]["n"][0] == before


def test_merge_bounds_keeps_whole_blocks_and_balances_rows():
    from dnmf_dask.parallel.blocks import merge_bounds

    off = np.arange(0, 90, 10)  # 8 blocks of 10 rows
    assert merge_bounds(off, 2).tolist() == [0, 4, 8]
    assert merge_bounds(off, 3).tolist() == [0, 3, 5, 8]  # 26.7 -> 30 rows, 53.3 -> 50 rows
    assert merge_bounds(off, 8).tolist() == list(range(9))
    assert merge_bounds(off, 50).tolist() == list(range(9))  # blocks are only merged, never split
    # one block holds most rows: every run still gets at least one block
    assert merge_bounds([0, 1, 2, 100, 101], 3).tolist() == [0, 2, 3, 4]
    assert merge_bounds([0, 98, 99, 100, 101], 3).tolist() == [0, 1, 2, 4]


def test_persisted_block_count_of_a_cluster(local_cluster):
    from dnmf_dask.parallel.memory import PERSISTED_WORK_PER_BLOCK, persisted_block_count
    from dnmf_dask.parallel.scheduler import scheduler_context

    with dask.config.set(scheduler="threads"):
        assert persisted_block_count(10**9, 10**9, 64) is None  # dask's own schedulers: in_memory_block_count
    with scheduler_context(local_cluster):  # 2 workers x 1 thread, 2 GiB each: 256 MiB per block at most
        assert persisted_block_count(10_000, 80_000, 8) == 2  # one per worker thread
        assert persisted_block_count(2 * PERSISTED_WORK_PER_BLOCK + 1, 1, 64) == 4  # 3, rounded up to a multiple of 2
        assert persisted_block_count(10_000, 3 * 2**30, 64) == 12  # 3 GiB in blocks of at most 256 MiB
        assert persisted_block_count(10**10, 1, 5) == 5  # never more blocks than there are
        assert persisted_block_count(None, 1, 5) is None  # work unknown (sparse dask input)


def test_in_memory_block_count_on_dask_schedulers(local_cluster):
    from dnmf_dask.parallel.memory import PERSISTED_WORK_PER_BLOCK, in_memory_block_count
    from dnmf_dask.parallel.scheduler import scheduler_context

    with dask.config.set(scheduler="threads", num_workers=3):
        assert in_memory_block_count(10_000, 8) == 3  # one per thread
        assert in_memory_block_count(4 * PERSISTED_WORK_PER_BLOCK + 1, 64) == 6  # 5, rounded up to a multiple of 3
        assert in_memory_block_count(10**10, 5) == 5  # never more than the default blocking's
        assert in_memory_block_count(None, 5) is None
    with dask.config.set(scheduler="synchronous"):
        assert in_memory_block_count(10_000, 8) == 1
    with scheduler_context(local_cluster):
        assert in_memory_block_count(10_000, 8) is None  # a cluster merges as it loads (persisted_block_count)


def test_in_memory_x_is_cut_into_one_block_per_thread(rng, monkeypatch):
    """numpy / sparse X on threads, no chunk_rows: the fit holds X in memory, so it takes about one
    block per thread instead of the default blocking (made small here); same fit either way"""
    import scipy.sparse as sp

    import dnmf_dask as dd
    from dnmf_dask.parallel import blocks as blocks_mod
    from dnmf_dask.store import corpus as corpus_mod

    monkeypatch.setattr(corpus_mod, "TARGET_NNZ_PER_BLOCK", 2_000)
    monkeypatch.setattr(corpus_mod, "MIN_NNZ_PER_BLOCK", 1)
    X = sp.random(400, 60, density=0.3, format="csr", random_state=0) + sp.random(400, 60, density=0.01, random_state=1)
    with dask.config.set(scheduler="threads", num_workers=2):
        default, _ = blocks_mod.as_blocks(X)
        few, _ = blocks_mod.as_blocks(X, few_blocks=True)
        assert default.n_blocks >= 4 and few.n_blocks == 2
        groups = np.repeat(np.arange(100), 4)
        assert blocks_mod.as_blocks(X, groups=groups, few_blocks=True)[0].offsets.tolist() == [0, 200, 400]
        fits = [dd.NMF(4, init="random", max_iter=15, tol=0, random_state=0, chunk_rows=rows).fit(X)
                for rows in (None, int(np.diff(default.offsets).max()))]
    np.testing.assert_allclose(fits[0].components_, fits[1].components_, rtol=1e-9, atol=1e-12)
