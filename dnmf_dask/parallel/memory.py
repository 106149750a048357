"""What the workers' memory allows: their ``memory_limit`` and the malloc settings of their processes.

Two things the library decides from the workers it runs on:

* whether ``persist="auto"`` may load X into the workers' memory (:func:`persist_fits`): only
  when X takes a small share of their total ``memory_limit`` (a corpus larger than the cluster
  is streamed from its store every pass instead);
* the environment of the worker processes it starts (:func:`worker_environ`). distributed's
  nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker, which also pins glibc's mmap
  threshold at 128 KiB: every array over 128 KiB (a decoded block, ``X @ A``, ``XᵀS``) is then a
  fresh ``mmap`` whose pages fault in on first touch and go back to the OS on ``free``. On this
  library's passes that made reading a sparse block ~1.5x and the MU kernel ~1.4x more CPU in a
  worker than in the driver (5-30x the page faults). With ``MALLOC_MMAP_THRESHOLD_`` and
  ``MALLOC_TRIM_THRESHOLD_`` at 32 MiB the heap reuses those buffers, and free memory above 32
  MiB at the top of the heap still goes back to the OS. The price is memory: the heap keeps
  what fragmentation leaves in it (reading and updating 40 blocks of 2M nonzeros in one process:
  43.6 ns/nz of CPU and 255 MB peak RSS against distributed's 67.3 ns/nz and 179 MB), so the
  setting is only applied to workers with at least :data:`HEAP_MALLOC_MIN_LIMIT` of memory;
  small workers (out-of-core runs) keep distributed's settings.
* small workers (under :data:`HEAP_MALLOC_MIN_LIMIT`) also run without numba
  (:data:`SMALL_WORKER_ENV`): importing numba, defining the compiled kernels of
  :mod:`dnmf_dask.kernels.fused` and loading them from the on-disk cache took a worker process
  from ~95 to ~235 MB (measured, BENCHMARKS.md "Out of core"), a third of a 400 MB worker and
  all of its headroom under distributed's 70% spill threshold; every result then went to disk
  and back. Without it the tasks run the numpy/scipy kernels, which the tests compare the
  compiled ones with: on a 4,900-row out-of-core block of 2M nonzeros the batched numpy NNLS
  forward and gradient cost ~0.18 s of CPU against 0.14 s compiled; the fused KL sweep is lost
  too (~2x the CPU of a KL pass). A ``DNMF_DASK_NUMBA`` set in this process's environment wins.

And one thing the workers do for themselves: after a task that read a stored block, a worker
gives the free pages inside its heap back to the OS once its RSS has grown enough
(:func:`release_free_heap`); the heap settings above keep freed block buffers in the heap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import warnings

import dask
import dask.local
import numpy as np
from dask.system import CPU_COUNT

from .scheduler import local_scheduler

#: glibc malloc settings for worker processes (see the module docstring); the values are bytes
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": 32 * 2**20, "MALLOC_TRIM_THRESHOLD_": 32 * 2**20}

#: workers with a smaller memory_limit keep distributed's malloc settings (see the module docstring)
HEAP_MALLOC_MIN_LIMIT = 2**30

#: environment of worker processes with a memory_limit under HEAP_MALLOC_MIN_LIMIT (see the module
#: docstring): no numba, the numpy/scipy kernels
SMALL_WORKER_ENV = {"DNMF_DASK_NUMBA": "0"}

#: a worker gives its heap's free pages back to the OS (glibc ``malloc_trim``) after a task that
#: read a stored block once its RSS has grown by this share of its ``memory_limit`` since the last
#: trim (see :func:`release_free_heap`)
HEAP_TRIM_GROWTH_SHARE = 1 / 16

#: ... and by at least this many bytes (a trim costs page faults when the memory is used again)
HEAP_TRIM_GROWTH_MIN = 64 * 2**20

#: ... and only once the RSS is above this share of the worker's memory_limit: the trim is there
#: to keep workers under distributed's 70% spill threshold, and below half the limit the page
#: faults it causes were pure cost (2 x 1.2 GB workers streaming a 4 GB corpus: 11% of the
#: wall time of an NMF iteration, BENCHMARKS.md, 2026-12-07 afternoon)
HEAP_TRIM_AT_SHARE = 0.5

#: a block's in-memory size is kept under this share of a worker thread's memory_limit (a pass's
#: working set is a few times the block: compressed and decoded buffers, a float64 copy for
#: Neural NMF, X·A and XᵀS), beside the worker's own ~150 MB and its share of S
BLOCK_SHARE_OF_MEMORY = 1 / 8

#: ``persist="auto"`` loads X only when it takes at most this share of the workers' total memory_limit
PERSIST_SHARE_OF_MEMORY = 0.25

#: X held in a distributed cluster's memory for a whole fit is cut into blocks of up to this much
#: work per pass (nonzeros of sparse X, entries of dense X; but at least one block per worker
#: thread): ~50 ms of an MU step at ~3 ns per nonzero, so the ~2-3 ms a task costs the scheduler
#: and the driver stays small beside it (:func:`persisted_block_count`)
PERSISTED_WORK_PER_BLOCK = 16_000_000


_HEAP_LOCK = threading.Lock()
_LIBC = []  # [libc or None], looked up once per process
_RSS_AFTER_TRIM = [0]  # this process's RSS after its last trim (bytes)


def _glibc():
    with _HEAP_LOCK:
        if not _LIBC:
            lib = None
            try:
                cand = ctypes.CDLL("libc.so.6")
                if hasattr(cand, "malloc_trim"):
                    cand.malloc_trim.argtypes = [ctypes.c_size_t]
                    lib = cand
            except OSError:  # not glibc (macOS, Windows, musl)
                pass
            _LIBC.append(lib)
        return _LIBC[0]


def _rss():
    """This process's resident set size in bytes (Linux ``/proc``; psutil elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().memory_info().rss


def _worker_memory_limit():
    """``memory_limit`` (bytes) of the distributed worker running this task, or None."""
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return None
    limit = getattr(getattr(w, "memory_manager", None), "memory_limit", None)
    return int(limit) if limit else None


def release_free_heap(limit=None):
    """Give the free pages inside this process's heap back to the OS when the RSS has grown.

    Called by the tasks that read a stored block (:func:`dnmf_dask.parallel.mapreduce._reading`)
    on a distributed worker. glibc keeps freed memory in the heap: the heap shrinks only from its
    top, so a pass that allocates a block's buffers (tens of MB) between the small S blocks it
    keeps leaves holes that count as the worker's "unmanaged" memory. Measured on 1.2 GB workers
    streaming a 12 GB corpus (NMF, BENCHMARKS.md "Out of core"): 530 MB of the heap free against
    50 MB in use at the end of a fit, the workers at distributed's 70% spill threshold, and 2.2 GB
    of S blocks spilled to disk and read back. ``malloc_trim(0)`` returns every free page of every
    arena (``madvise``), not only the top. It runs when the RSS has grown by more than
    :data:`HEAP_TRIM_GROWTH_SHARE` of the worker's ``memory_limit`` (and at least
    :data:`HEAP_TRIM_GROWTH_MIN`) since the last trim and is above :data:`HEAP_TRIM_AT_SHARE` of
    the limit, so a worker whose memory stays level, or well below its limit, never pays for it
    (the pages it gives back fault in again when the heap reuses them).

    ``limit``: the memory_limit in bytes (default: the current distributed worker's; nothing is
    done outside a worker or without a limit). Returns the bytes the RSS shrank by (0 when it
    did not trim). Does nothing where glibc's ``malloc_trim`` is missing.
    """
    if limit is None:
        limit = _worker_memory_limit()
    if not limit:
        return 0
    libc = _glibc()
    if libc is None:
        return 0
    rss = _rss()
    with _HEAP_LOCK:
        base = _RSS_AFTER_TRIM[0] = min(_RSS_AFTER_TRIM[0] or rss, rss)
        if rss <= base + max(HEAP_TRIM_GROWTH_MIN, HEAP_TRIM_GROWTH_SHARE * limit) or rss <= HEAP_TRIM_AT_SHARE * limit:
            return 0
        libc.malloc_trim(0)
        after = _RSS_AFTER_TRIM[0] = _rss()
    return max(rss - after, 0)


def worker_environ() -> dict:
    """distributed's ``pre-spawn-environ`` for worker processes, with :data:`WORKER_MALLOC_ENV`."""
    import distributed  # noqa: F401  (its config defaults are loaded on import)

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.update(WORKER_MALLOC_ENV)
    return env


@contextlib.contextmanager
def small_worker_config():
    """Context in which workers spawned by a Nanny get :data:`SMALL_WORKER_ENV` (distributed's
    ``nanny.environ``, set inside each worker process at its start; this process's environment is
    left alone), except for variables already set in this process's environment."""
    env = {k: v for k, v in SMALL_WORKER_ENV.items() if k not in os.environ}
    if not env:
        yield
        return
    import distributed  # noqa: F401  (its config defaults are loaded on import)

    current = dict(dask.config.get("distributed.nanny.environ", {}) or {})
    with dask.config.set({"distributed.nanny.environ": {**current, **env}}):
        yield


@contextlib.contextmanager
def worker_malloc_config(memory_limit="auto"):
    """Context in which workers spawned by a Nanny (e.g. a ``LocalCluster``) get :func:`worker_environ`.

    ``memory_limit``: the workers' limit as given to the cluster (bytes, a string like "400MB",
    "auto", None or 0 = no limit); below :data:`HEAP_MALLOC_MIN_LIMIT` the malloc settings are
    left alone and the workers get :func:`small_worker_config` instead.

    The nanny reads these variables from this process's ``os.environ`` first, and copies its
    settings there when it spawns a worker (so after any earlier cluster ``os.environ`` holds
    distributed's ``MALLOC_TRIM_THRESHOLD_=65536``). A value there that is distributed's default
    or unset is replaced for the duration of the context; any other value (set by the user) wins.
    """
    if isinstance(memory_limit, str) and memory_limit != "auto":
        from dask.utils import parse_bytes

        memory_limit = parse_bytes(memory_limit)
    if isinstance(memory_limit, (int, float)) and 0 < memory_limit < HEAP_MALLOC_MIN_LIMIT:
        with small_worker_config():
            yield
        return
    env = worker_environ()
    defaults = {"MALLOC_TRIM_THRESHOLD_": "65536"}
    saved = {k: os.environ.get(k) for k in WORKER_MALLOC_ENV}
    try:
        for k, v in WORKER_MALLOC_ENV.items():
            if saved[k] is None or saved[k] == defaults.get(k):
                os.environ[k] = str(v)
            else:
                env[k] = saved[k]
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _workers():
    """The active distributed Client's ``scheduler_info()["workers"]``, or None."""
    if local_scheduler():
        return None
    client = getattr(dask.base.get_scheduler(), "__self__", None)  # a Client's bound get
    if client is None or not hasattr(client, "scheduler_info"):
        return None
    try:
        return client.scheduler_info(n_workers=-1)["workers"] or None
    except Exception:
        return None


def worker_memory_limits():
    """``memory_limit`` in bytes of every worker of the active distributed Client, or None.

    None when no Client is the current scheduler (threads, synchronous, processes) or when a
    worker has no limit (0 / None): there is then nothing to fit into.
    """
    return _memory_limits(_workers())


def _memory_limits(workers):
    limits = [w.get("memory_limit") for w in (workers or {}).values()]
    if not limits or any(not lim for lim in limits):
        return None
    return [int(lim) for lim in limits]


def persist_fits(nbytes: int, limit_bytes: int) -> bool:
    """Whether ``persist="auto"`` should load ``nbytes`` of X for the whole fit.

    At most ``limit_bytes`` (the library's fixed cap) and, on a distributed cluster whose workers
    have a ``memory_limit``, at most :data:`PERSIST_SHARE_OF_MEMORY` of their sum (X beside the
    per-block S, the passes' temporaries and each worker's own ~150 MB).
    """
    if nbytes > limit_bytes:
        return False
    limits = worker_memory_limits()
    return limits is None or nbytes <= PERSIST_SHARE_OF_MEMORY * sum(limits)


def block_bytes_budget():
    """Largest in-memory block (bytes) the default blocking makes for the active cluster, or None.

    :data:`BLOCK_SHARE_OF_MEMORY` of the smallest worker ``memory_limit`` per worker thread (each
    thread runs its own block); None without a distributed Client with memory limits.
    """
    return _block_budget(_workers())  # one request to the scheduler for both the limits and the threads


def _threads(w):
    return max(1, int(w.get("nthreads", 1) or 1))


def _block_budget(workers):
    limits = _memory_limits(workers)
    if limits is None:
        return None
    return int(BLOCK_SHARE_OF_MEMORY * min(limits) / max(_threads(w) for w in workers.values()))


def _blocks_for(work, slots, n_blocks, nbytes=0, budget=None):
    """``work`` / :data:`PERSISTED_WORK_PER_BLOCK` blocks, at least ``slots``, at most ``budget``
    bytes each (``nbytes`` in all), rounded up to a multiple of ``slots``, at most ``n_blocks``."""
    n = max(slots, -(-int(work) // PERSISTED_WORK_PER_BLOCK))
    if budget is not None:
        n = max(n, -(-int(nbytes) // max(1, budget)))
    n = -(-n // slots) * slots
    return int(min(n, n_blocks))


def persisted_block_count(work: int, nbytes: int, n_blocks: int) -> int | None:
    """How many blocks X should have while a distributed cluster holds it in memory for a fit, or None.

    A stored or auto-chunked block is sized for a pass that reads it (a few million nonzeros,
    ~10 ms of an MU step); held in memory, such blocks made each pass a burst of short tasks
    whose scheduler and driver time (~20 ms per pass for 8 blocks of a 2e7-nonzero corpus) ate
    the second worker's gain: 2 workers ran 0.97-1.16x the throughput of 1, against 1.52x with
    2 blocks (BENCHMARKS.md, 2026-12-07). So: ``work`` / :data:`PERSISTED_WORK_PER_BLOCK`
    blocks, at least one per worker thread, rounded up to a multiple of the threads, never
    larger than :func:`block_bytes_budget` (``nbytes`` in all) and never more than the
    ``n_blocks`` there are (blocks are only merged). None on dask's own schedulers (numpy and
    scipy.sparse input is cut to size there instead, :func:`in_memory_block_count`; dask and
    corpus input keep their blocks) and when ``work`` is not known.
    """
    workers = _workers()
    if not workers or not work:
        return None
    slots = sum(_threads(w) for w in workers.values())
    return _blocks_for(work, slots, n_blocks, nbytes, _block_budget(workers))


def _local_slots():
    """Threads (or processes) of dask's own scheduler in effect: 1 for the synchronous one, else
    dask's ``num_workers`` or the CPUs this process may use."""
    if dask.base.get_scheduler() is dask.local.get_sync:
        return 1
    return max(1, int(dask.config.get("num_workers", None) or CPU_COUNT))


def in_memory_block_count(work: int, n_blocks: int) -> int | None:
    """The blocks of a numpy / scipy.sparse X that a fit on dask's own scheduler holds in memory:
    :func:`persisted_block_count`'s rule with the scheduler's threads, at most ``n_blocks`` (the
    default blocking's, sized for passes that read their blocks). On threads the 8 default blocks
    of a 2e7-nonzero X cost 22% of an iteration against 2 (0.054 against 0.045 s, ~1 ms per
    task; BENCHMARKS.md, 2026-12-07). None on a distributed cluster (which merges the blocks as
    it loads them) and when ``work`` is not known."""
    if not work or not local_scheduler():
        return None
    return _blocks_for(work, _local_slots(), n_blocks)


def warn_if_blocks_exceed(corpus):
    """Warn when a corpus' stored blocks are larger than :func:`block_bytes_budget` (they are
    the unit of work and cannot be split when read: re-ingest with a smaller ``chunk_rows``)."""
    budget = block_bytes_budget()
    a = corpus.attrs
    n_blocks = len(a["row_offsets"]) - 1
    if budget is None or not n_blocks:
        return
    item = np.dtype(a["dtype"]).itemsize
    per_block = (int(a["nnz"] or 0) * (item + 4) if a.get("sparse") else a["n_samples"] * a["n_features"] * item) / n_blocks
    if per_block > budget:
        warnings.warn(
            f"corpus {str(corpus.path)!r}: its blocks hold {per_block / 2**20:.0f} MiB on average, more than "
            f"{budget / 2**20:.0f} MiB ({BLOCK_SHARE_OF_MEMORY:.3g} of the workers' memory_limit per thread); "
            f"workers may spill or pause. Write it with a smaller chunk_rows.", ResourceWarning, stacklevel=3)
