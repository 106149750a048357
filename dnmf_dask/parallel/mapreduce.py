"""Map a per-block kernel over the row blocks and tree-reduce its small statistics.

Every pass of every model has the same shape, as in dask's tsqr: one task per row block calls a
pure kernel that returns ``(block_output, stats)``; the ``stats`` (dicts of small arrays and
numbers that add across blocks) are summed by a fixed-order tree of ``add_stats`` tasks; the
per-block outputs (e.g. the block's new S rows) stay where they were computed (persisted) for
the next pass. The fixed tree makes the result independent of the scheduler.

On dask's own (in-process) schedulers a pass is written straight as a task graph of its few
tasks and handed to the scheduler's ``get`` (:func:`_run_local`): building it from ``Delayed``
calls and ``dask.persist`` (tokenizing, graph expressions, ordering, culling), and a ``compute``
for its scalars, cost 2.0 ms more per pass (threads: 2.73 against 0.73 ms per NMF iteration,
``pipelines/bench/bench_overhead.py``), ~5% of a 2e7-nonzero MU iteration on a 2-core machine.
The tasks, the tree and the results are the same; what comes back is :class:`Known`: Delayed
that also hold their value.
"""

from __future__ import annotations

import contextlib
import operator
import threading
import uuid

import dask
import dask.threaded
import numpy as np
from dask.delayed import Delayed

from ..store.corpus import StoredBlock
from .memory import _workers, release_free_heap
from .scheduler import local_scheduler

FAN_IN = 8

class _OneBlasThread:
    """The process-wide BLAS limit of :func:`one_blas_thread`, counted across threads.

    threadpoolctl's limit is process-wide and restores what it found on exit. Two fits entering
    it from two threads would each restore in turn: the first to leave lifted the limit under the
    second, and the second then "restored" one thread for the rest of the process. Here the first
    to enter sets the limit and the last to leave lifts it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._limit = None
        self._controller = None  # threadpoolctl controller, made on first use (it scans the loaded libraries once)

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                try:
                    if self._controller is None:
                        from threadpoolctl import ThreadpoolController

                        self._controller = ThreadpoolController()
                    self._limit = self._controller.limit(limits=1, user_api="blas")
                except Exception:  # pragma: no cover - no BLAS found / threadpoolctl unavailable
                    self._limit = None
            self._depth += 1
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None
        return False


_blas = _OneBlasThread()


def one_blas_thread(driver=False):
    """Context in which the tasks of an in-process scheduler call BLAS with one thread each.

    dask's threaded scheduler runs one task per core; each task's small GEMMs (k x k grams,
    n_block x k updates) would otherwise start every core's worth of BLAS threads too, and that
    oversubscription made a pass up to 100x slower than its arithmetic on a busy 2-core machine.
    One thread per task is also what distributed's workers use (their nanny sets
    ``OPENBLAS_NUM_THREADS=1``), so every scheduler runs the same BLAS code path. Distributed
    schedulers are left alone (their tasks run in other processes) unless ``driver=True``: the
    driver's own k-column GEMMs (AᵀA, the A update of ``fit_mu``) then run with one thread too.
    With BLAS's default 2 threads, a 20,000 x 20 AᵀA on the driver of a LocalCluster took from
    0.4 ms up to 0.77 s (median 0.58 s per pass in a profile at load 8): the spinning BLAS
    threads wait for cores the worker processes hold. Fits in several threads of one process
    share the limit; it is lifted when the last of them leaves it.
    """
    if not driver and not local_scheduler():  # a distributed Client
        return contextlib.nullcontext()
    return _blas


#: key of a block's stats dict naming the float64 arrays it carries as float32 (:func:`compact_stats`)
FLOAT32_EXACT = "_float32_exact"

#: arrays smaller than this many entries are not worth checking (k x k grams, counts)
COMPACT_MIN_SIZE = 4096


def compact_stats(stats):
    """A block's stats with every large float64 array that float32 holds exactly sent as float32.

    A block's sum computed in float32 and widened (``XᵀS`` of a float32 block, n_features x k:
    3.2 MB in float64 for 20,000 x 20) loses nothing in float32; until the tree reduction adds
    it, it is held by its worker (and spilled, and sent to the worker that adds it) at half the
    bytes. :func:`add_stats` widens it back before adding, so the sums are bit-identical. Arrays
    that float32 does not hold exactly (float64 arithmetic) stay as they are.
    """
    narrow = []
    out = dict(stats)
    for k, v in stats.items():
        if isinstance(v, np.ndarray) and v.dtype == np.float64 and v.size >= COMPACT_MIN_SIZE:
            v32 = v.astype(np.float32)
            if np.array_equal(v32, v):
                out[k] = v32
                narrow.append(k)
    if narrow:
        out[FLOAT32_EXACT] = tuple(narrow)
    return out


def _stats_of(part):
    """The stats dict of a tree input: a block task's result is ``(output, stats)`` (the tree's
    first level takes the block tasks themselves, no ``getitem`` task per block in between), the
    upper levels pass stats dicts."""
    return part[1] if isinstance(part, tuple) else part


def add_stats(*parts):
    """Sum dicts of arrays / numbers key by key (keys missing in some parts are allowed); arrays
    that :func:`compact_stats` narrowed are widened to float64 first. A part may also be a block
    task's ``(output, stats)`` result (:func:`_stats_of`)."""
    out = {}
    for p in map(_stats_of, parts):
        narrow = p.get(FLOAT32_EXACT, ())
        for k, v in p.items():
            if k == FLOAT32_EXACT:
                continue
            if k in narrow:
                v = v.astype(np.float64)  # a new array: nothing below aliases the part
            elif isinstance(v, np.ndarray) and k not in out:
                v = v.copy()
            out[k] = out[k] + v if k in out else v
    return out


def tree_sum(items, fan_in=FAN_IN):
    """Reduce a list of Delayed stats dicts (or block tasks' ``(output, stats)`` results) with a
    fixed-shape tree of ``add_stats`` tasks."""
    level = _tree_levels(items, fan_in)
    if not level:
        return dask.delayed({})
    if len(level) == 1:
        return level[0] if len(items) > fan_in else level[0][1]  # one block: its stats, as they are
    return dask.delayed(add_stats, pure=True)(*level)


def _delayed_add_stats(parts):
    return dask.delayed(add_stats, pure=True)(*parts)


def _tree_levels(items, fan_in, node=_delayed_add_stats):
    """The tree's levels of ``add_stats`` tasks up to its root, whose (at most ``fan_in``) inputs are
    returned. ``node(parts)`` makes the task that adds ``parts`` (a Delayed call; a raw task in
    :func:`_run_local`): the one tree shape for every scheduler."""
    level = list(items)
    while len(level) > fan_in:
        level = [node(level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
    return level


def shared(value, prefix="shared"):
    """Wrap a driver-side value (A, B, ...) once per pass, so the graph carries it once."""
    if value is None:
        return None
    return dask.delayed(value, name=f"{prefix}-{uuid.uuid4().hex}")


def wait_for(collections):
    """Block until the persisted ``collections`` (Delayed) are in memory on a distributed cluster.

    A no-op on dask's in-process schedulers, where ``persist`` has computed them already. Used
    before a pass whose per-block inputs are still being computed: the first MU pass after a
    random init started while its S blocks were, and its block tasks then ran as the blocks
    arrived, ~220 per worker before the reduction tree added any (BENCHMARKS.md, 2026-12-07).
    """
    if local_scheduler():
        return
    try:
        from distributed import futures_of, wait
    except ImportError:  # pragma: no cover - distributed is a dependency
        return
    futures = futures_of(list(collections))
    if futures:
        wait(futures)


def _reading(func, *args, **kw):
    """``func(*args, **kw)`` with every :class:`StoredBlock` among ``args`` read from its store first.

    On a distributed worker the heap's free pages then go back to the OS when many have piled up
    (:func:`~dnmf_dask.parallel.memory.release_free_heap`): a streamed corpus allocates and frees
    a block's buffers in every task, and the holes they leave would count against the worker's
    memory_limit."""
    try:
        return func(*[a.load() if isinstance(a, StoredBlock) else a for a in args], **kw)
    finally:
        release_free_heap()


def tree_placement(n_blocks, fan_in=FAN_IN):
    """Per block, the distributed worker its task should prefer, or None (one worker, or not a
    distributed Client): the ``fan_in`` blocks that one ``add_stats`` task of the reduction tree
    adds run on one worker, the next ``fan_in`` on the next worker, and so on.

    A streamed pass's block tasks depend only on the factors, so the scheduler runs each where a
    thread is free, and an ``add_stats`` task then fetched most of its 8 inputs (``XᵀS``, 1.6 MB
    each at 20,000 x 20) from the other worker. Placed this way (loosely: ``allow_other_workers``,
    so work stealing still balances) only the tree's upper levels cross between workers."""
    workers = _workers()
    if not workers or len(workers) < 2:
        return None
    addrs = sorted(workers)
    return [addrs[(i // fan_in) % len(addrs)] for i in range(n_blocks)]


def _block_tasks(func, per_block, shared_kwargs, placement=None):
    """One ``func(*per_block[i], **shared_kwargs)`` task per block (nout=2: output, stats), the
    numpy arrays among ``shared_kwargs`` wrapped once with :func:`shared`. A block given as a
    :class:`~dnmf_dask.store.corpus.StoredBlock` is read by its task (:func:`_reading`)."""
    kw = {k: (shared(v, k) if isinstance(v, np.ndarray) else v) for k, v in shared_kwargs.items()}
    name = getattr(func, "__name__", "block")
    tasks = []
    for i, args in enumerate(per_block):
        key = f"{name}-{uuid.uuid4().hex}"
        where = (dask.annotate(workers=[placement[i]], allow_other_workers=True) if placement
                 else contextlib.nullcontext())
        call, call_args = _block_call(func, args)
        with where:
            tasks.append(dask.delayed(call, nout=2, pure=False)(*call_args, **kw, dask_key_name=key))
    return tasks


def _block_call(func, args):
    """``(callable, args)`` of a block's task: ``func`` itself, or :func:`_reading` first when a
    :class:`~dnmf_dask.store.corpus.StoredBlock` among ``args`` is to be read by the task."""
    if any(isinstance(a, StoredBlock) for a in args):
        return _reading, (func, *args)
    return func, tuple(args)


class Known(Delayed):
    """A Delayed whose value this process holds: a pass's result on one of dask's own schedulers.

    It is a literal Delayed like those ``dask.persist`` returns there (computing it, or passing
    it to a later pass or another collection, works as for any Delayed), and :func:`fetch` reads
    its value without a scheduler call (a ``compute`` of a literal costs ~0.5 ms).
    """

    __slots__ = ("value",)


def known(value, prefix="known"):
    """``value`` as a :class:`Known` under a fresh key."""
    d = dask.delayed(value, name=f"{prefix}-{uuid.uuid4().hex}", traverse=False)  # (a computed value holds no collection)
    out = Known(d.key, d.dask)
    out.value = value
    return out


def fetch(d):
    """The value of ``d``: a :class:`Known`'s at once, a persisted one's from its future (no new
    graph for the scheduler: a ``compute`` submits one), anything else computed."""
    if isinstance(d, Known):
        return d.value
    graph = d.__dask_graph__()
    if len(graph) == 1:
        try:
            from distributed import Future
        except ImportError:  # pragma: no cover - distributed is a dependency
            Future = ()
        f = graph.get(d.key)
        if isinstance(f, Future):
            return f.result()
    return d.compute()


class _Ref:
    """An argument of :class:`_Call` that is the value of the graph key ``key``."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


class _Slot:
    """Where a :class:`_Call` puts the ``i``-th value the scheduler passes it."""

    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


class _Nested:
    """A list, tuple or dict argument of a :class:`_Call` with slots among its items."""

    __slots__ = ("kind", "items")

    def __init__(self, kind, items):
        self.kind, self.items = kind, items


class _Call:
    """``func(*args, **kwargs)`` as the callable of a raw task ``(call, *keys)``.

    The arguments that are Delayed or :class:`_Ref`, also inside lists, tuples and dicts (as
    ``dask.delayed`` finds them), are the task's dependencies: their keys follow the callable in
    the task tuple, and the scheduler passes their values in that order. Everything else is kept
    here as it is, so that no list, tuple or string among the arguments is read as a task or a
    key (dask's tuple tasks parse their arguments).
    """

    __slots__ = ("func", "args", "kwargs", "keys")

    def __init__(self, func, args=(), kwargs=None):
        self.func = func
        self.keys = []
        self.args = tuple(self._slot(a) for a in args)
        self.kwargs = {k: self._slot(v) for k, v in (kwargs or {}).items()}

    def _slot(self, v):
        if isinstance(v, (Delayed, _Ref)):
            self.keys.append(v.key)
            return _Slot(len(self.keys) - 1)
        if type(v) in (list, tuple):
            items = [self._slot(x) for x in v]
            if any(isinstance(x, (_Slot, _Nested)) for x in items):
                return _Nested(type(v), items)
        elif type(v) is dict:
            items = {k: self._slot(x) for k, x in v.items()}
            if any(isinstance(x, (_Slot, _Nested)) for x in items.values()):
                return _Nested(dict, items)
        return v

    def task(self):
        return (self, *self.keys)

    def __call__(self, *values):
        return self.func(*[_fill(a, values) for a in self.args],
                         **{k: _fill(v, values) for k, v in self.kwargs.items()})


def _fill(v, values):
    """``v`` with its slots replaced by their values. (A module function: a recursive closure over
    ``values`` would be a reference cycle, holding a task's inputs, e.g. a block read from the
    store, until the garbage collector ran.)"""
    if isinstance(v, _Slot):
        return values[v.i]
    if isinstance(v, _Nested):
        if v.kind is dict:
            return {k: _fill(x, values) for k, x in v.items.items()}
        return v.kind([_fill(x, values) for x in v.items])
    return v


def _run_local(func, per_block, shared_kwargs, *, finish=None, finish_kwargs=None, keep_outputs=True):
    """A pass on the in-process scheduler in effect, as a raw graph; returns ``(outputs, root)``.

    The graph: one ``func`` task per block (a :class:`StoredBlock` among its arguments read by
    it, :func:`_reading`), a ``getitem`` per kept output, and :func:`_tree_levels`'s tree of
    ``add_stats`` tasks up to the root ``finish(*partial_sums, **finish_kwargs)`` (default: their
    sum, :func:`add_stats`). Delayed arguments bring their graphs along (each distinct graph once).
    ``outputs`` (or None without ``keep_outputs``) and ``root`` are :class:`Known`.
    """
    dsk = {}
    merged = {}  # id -> graph: held, so that no id is reused by a later graph while this one is merged

    def add(call, prefix):
        missing = [k for k in call.keys if k not in dsk]
        if missing:  # (a tuple task would take a key it does not find as a literal string)
            raise RuntimeError(f"pass graph: no task for the keys {missing}")
        key = f"{prefix}-{uuid.uuid4().hex}"
        dsk[key] = call.task()
        return _Ref(key)

    def merge(values):
        for v in values:
            if isinstance(v, Delayed):
                g = v.__dask_graph__()
                if id(g) not in merged:
                    merged[id(g)] = g
                    dsk.update(g)
            elif type(v) in (list, tuple):
                merge(v)
            elif type(v) is dict:
                merge(v.values())

    merge(shared_kwargs.values())
    name = getattr(func, "__name__", "block")
    tasks = []
    for args in per_block:
        merge(args)
        tasks.append(add(_Call(*_block_call(func, args), shared_kwargs), name))
    outs = [add(_Call(operator.getitem, (t, 0)), "output") for t in tasks] if keep_outputs else []
    level = _tree_levels(tasks, FAN_IN, node=lambda parts: add(_Call(add_stats, parts), "add_stats"))
    merge((finish_kwargs or {}).values())
    root = add(_Call(finish or add_stats, level, finish_kwargs), getattr(finish, "__name__", "add_stats"))
    get = dask.base.get_scheduler() or dask.threaded.get
    with one_blas_thread():
        values = get(dsk, [[o.key for o in outs], root.key])
    outputs = [known(v, "output") for v in values[0]] if keep_outputs else None
    return outputs, known(values[1], "root")


def map_reduce(func, per_block, *, keep_outputs=True, **shared_kwargs):
    """Run ``func(*per_block[i], **shared_kwargs)`` for every block and reduce the stats.

    Parameters
    ----------
    func : callable returning ``(output, stats_dict)``
    per_block : list of tuples
        Per-block positional arguments (Delayed blocks, numpy slices, None).
    keep_outputs : bool
        Persist and return the per-block outputs (else they are dropped).
    shared_kwargs :
        Keyword arguments common to all blocks; numpy arrays are wrapped with :func:`shared`.

    Returns
    -------
    outputs : list of Delayed (persisted) or None
    stats : dict (computed, on the driver)
    """
    if local_scheduler():
        outputs, total = _run_local(func, per_block, shared_kwargs, keep_outputs=keep_outputs)
        return outputs, _widened(total.value)
    tasks = _block_tasks(func, per_block, shared_kwargs)
    outputs = [t[0] for t in tasks]
    total = tree_sum(tasks)
    with one_blas_thread():
        if keep_outputs:
            outputs, total = dask.persist(outputs, total)
            return list(outputs), _widened(total.compute())
        return None, _widened(total.compute())


def _tree_leaves(tasks, placement):
    """What the reduction tree adds on a distributed cluster: the block tasks' stats alone
    (``task[1]``, a ``getitem`` on the block's worker) when the blocks may sit on several workers
    with no placement that puts each tree node beside its blocks, else the block tasks' whole
    ``(output, stats)`` results (no extra task; :func:`_stats_of`).

    A tree node that takes a block task's result from another worker receives all of it: with X
    persisted on 2 workers (one block each), the A update's task fetched the other block's new
    S rows (8.5 MB at 107,000 × 20 float32) with its 1.6 MB ``XᵀS``, every iteration.
    """
    if placement is not None or len(tasks) < 2:  # (one block: nothing to gather)
        return tasks
    workers = _workers()
    if workers is None or len(workers) < 2:
        return tasks
    return [t[1] for t in tasks]


def submit_map_reduce(func, per_block, *, finish, finish_kwargs=None, finish_items=(), keep_outputs=True,
                      placement=None, **shared_kwargs):
    """Submit a pass like :func:`map_reduce` without waiting for it, reducing into ``finish``.

    The tree's root is the task ``finish(*partial_sums, **finish_kwargs)``: it adds its inputs
    with :func:`add_stats` (the same fixed tree as :func:`map_reduce`, so the same sums) and can
    use them where they are, e.g. update a factor on the worker, so that only what the driver
    needs comes back.

    Returns ``(outputs, root, items)``: the per-block outputs (persisted Delayed, or None when
    not ``keep_outputs``), ``finish``'s value (persisted Delayed) and ``root[i]`` for each ``i``
    in ``finish_items`` (persisted Delayed each: e.g. the part the driver fetches; a next pass
    that takes ``root`` itself waits for one task less than for one of its items). On a
    distributed Client these are futures still running when this returns, so the driver can
    submit the next pass, which takes them as inputs, before it has the results of this one;
    in-process schedulers compute the pass here (:func:`_run_local`), and all three are
    :class:`Known`.
    """
    if local_scheduler():
        outputs, root = _run_local(func, per_block, shared_kwargs, finish=finish, finish_kwargs=finish_kwargs,
                                   keep_outputs=keep_outputs)
        return outputs, root, [known(root.value[i], "item") for i in finish_items]
    tasks = _block_tasks(func, per_block, shared_kwargs, placement)
    root = dask.delayed(finish, pure=False)(
        *_tree_levels(_tree_leaves(tasks, placement), FAN_IN), **(finish_kwargs or {}),
        dask_key_name=f"{getattr(finish, '__name__', 'finish')}-{uuid.uuid4().hex}")
    outputs = [t[0] for t in tasks] if keep_outputs else []
    with one_blas_thread():
        outputs, root, items = dask.persist(outputs, root, [root[i] for i in finish_items])
    return (list(outputs) if keep_outputs else None), root, list(items)


def _widened(stats):
    """The reduced stats with any float32-carried arrays back in float64 (a single block's stats
    reach the driver without an ``add_stats`` task)."""
    return add_stats(stats) if FLOAT32_EXACT in stats else stats
