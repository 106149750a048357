"""The pass runner of parallel/mapreduce.py: a pass on dask's own schedulers is a raw graph run
by the scheduler's ``get`` (_run_local); it must give what the Delayed path gives on a cluster."""

import gc

import dask
import numpy as np
import pytest
from dask.delayed import Delayed

from dnmf_dask.parallel import mapreduce
from dnmf_dask.parallel.mapreduce import FLOAT32_EXACT, Known, add_stats, fetch, map_reduce, submit_map_reduce


def _block(x, scale=1.0, *, extra=0.0):
    x = np.asarray(x, dtype=np.float64)
    return x * scale + extra, {"sum": x.sum(keepdims=True) * scale, "n": x.size, "sq": x @ x}


def _plain_reference(parts, scale=1.0, extra=0.0):
    outs, stats = zip(*[_block(p, scale, extra=extra) for p in parts])
    return list(outs), add_stats(*stats)


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
@pytest.mark.parametrize("n_blocks", [1, 3, 8, 9, 70])  # one block, one tree level, two and three levels
def test_local_pass_equals_plain_loop(scheduler, n_blocks):
    rng = np.random.default_rng(n_blocks)
    parts = [rng.random(5) for _ in range(n_blocks)]
    ref_out, ref_st = _plain_reference(parts, 2.0, 0.5)
    with dask.config.set(scheduler=scheduler):
        outs, st = map_reduce(_block, [(dask.delayed(p),) for p in parts], scale=2.0, extra=0.5)
    assert all(isinstance(o, Known) for o in outs)
    for o, r in zip(outs, ref_out):
        np.testing.assert_array_equal(o.value, r)
        np.testing.assert_array_equal(o.compute(), r)  # still an ordinary Delayed
    assert st["n"] == ref_st["n"] == 5 * n_blocks
    np.testing.assert_allclose(st["sum"], ref_st["sum"], rtol=1e-14)
    np.testing.assert_allclose(st["sq"], ref_st["sq"], rtol=1e-14)


def test_local_pass_equals_the_cluster_pass(local_cluster):
    rng = np.random.default_rng(1)
    parts = [rng.random(7) for _ in range(11)]
    per_block = [(dask.delayed(p),) for p in parts]
    with dask.config.set(scheduler="threads"):
        outs_l, st_l = map_reduce(_block, per_block, scale=3.0)
    with dask.config.set(scheduler=local_cluster):
        outs_c, st_c = map_reduce(_block, per_block, scale=3.0)
        outs_c = dask.compute(*outs_c)
    assert not any(isinstance(o, Known) for o in (outs_c))
    for a, b in zip(outs_l, outs_c):
        np.testing.assert_array_equal(a.value, b)
    for k in st_l:  # the same fixed tree: the same sums, bit for bit
        np.testing.assert_array_equal(st_l[k], st_c[k])


def _echo(*args, **kw):
    return args, {"kw": kw}


def test_arguments_are_not_parsed_as_tasks_or_keys():
    """A tuple task would run a (callable, ...) tuple argument and take a string equal to a key for
    that key's value; the pass's arguments reach the kernel as they are."""
    d = dask.delayed(np.arange(3), name="some-key")
    literal = (np.sum, [1, 2])
    with dask.config.set(scheduler="threads"):
        outs, _ = map_reduce(_echo, [(d, literal, "some-key")], word="some-key", pair=(len, "x"))
    args = outs[0].value
    np.testing.assert_array_equal(args[0], np.arange(3))
    assert args[1] is literal and args[2] == "some-key"


def test_delayed_inside_lists_tuples_and_dicts_are_dependencies():
    a, b = dask.delayed(np.ones(2)), dask.delayed(np.full(2, 2.0))
    with dask.config.set(scheduler="threads"):
        outs, _ = map_reduce(_echo, [([a, (b, 3)], {"x": a, "y": [4]})], shared=[b, "s"])
    lst, dct = outs[0].value
    np.testing.assert_array_equal(lst[0], np.ones(2))
    np.testing.assert_array_equal(lst[1][0], np.full(2, 2.0))
    assert isinstance(lst[1], tuple) and lst[1][1] == 3
    np.testing.assert_array_equal(dct["x"], np.ones(2))
    assert dct["y"] == [4]


class _FreshGraph(Delayed):
    """A Delayed that makes a new graph object at each ``__dask_graph__()`` call, as
    ``dask.delayed(value)`` (a DelayedLeaf: the in-memory blocks of X) does, and frees the last
    one first, so that the new one is likely to get its address (its ``id``)."""

    __slots__ = ()

    def __dask_graph__(self):
        gc.collect()
        return dict(self._dask)


def test_inputs_with_short_lived_graphs_are_all_merged():
    """The ids of freed graphs are reused: a pass that merged graphs by id alone skipped some
    (their keys then reached the kernel as strings, at random, a few times in a hundred fits)."""
    parts = []
    for i in range(40):
        d = dask.delayed(np.full(3, float(i)), name=f"part-{i}")
        parts.append(_FreshGraph(d.key, dict(d.dask)))
    with dask.config.set(scheduler="threads"):
        outs, st = map_reduce(_block, [(p,) for p in parts])
    assert st["n"] == 120
    np.testing.assert_allclose(st["sum"], [3 * sum(range(40))])


def test_a_missing_dependency_is_an_error_not_a_string(monkeypatch):
    d = dask.delayed(np.ones(2), name="not-merged")
    monkeypatch.setattr(Delayed, "__dask_graph__", lambda self: {})
    with dask.config.set(scheduler="threads"), pytest.raises(RuntimeError, match="not-merged"):
        map_reduce(_block, [(d,)])


def _finish(*parts, offset):
    st = add_stats(*parts)
    return {"total": st["sum"] + offset}, st["n"]


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_submitted_pass_returns_known_results_and_chains(scheduler):
    parts = [np.arange(4.0) + i for i in range(10)]
    with dask.config.set(scheduler=scheduler):
        outs, root, (n,) = submit_map_reduce(_block, [(p,) for p in parts], finish=_finish,
                                             finish_kwargs={"offset": 1.0}, finish_items=(1,), scale=2.0)
        assert isinstance(root, Known) and isinstance(n, Known) and fetch(n) == 40
        np.testing.assert_allclose(fetch(root)[0]["total"], [2 * sum(p.sum() for p in parts) + 1])
        # the next pass takes the outputs and the root as inputs, as fit_mu's passes do
        outs2, root2, _ = submit_map_reduce(_block, [(o,) for o in outs], finish=_finish,
                                            finish_kwargs={"offset": root[0]["total"]}, scale=0.5)
    P = sum(p.sum() for p in parts)
    np.testing.assert_allclose(fetch(root2)[0]["total"], [0.5 * 2 * P + (2 * P + 1)])
    np.testing.assert_array_equal(outs2[3].value, parts[3])


def test_fetch_computes_what_is_not_known():
    assert fetch(dask.delayed(sum)([1, 2])) == 3


def test_local_mu_pass_sends_stats_unnarrowed_and_cluster_pass_narrowed(local_cluster, monkeypatch):
    """On a cluster the block's float32 XᵀS travels as float32 (compact_stats); in one process
    narrowing and widening it again only cost time, and the fits are the same either way."""
    from dnmf_dask import NMF
    from dnmf_dask.parallel import mu

    seen = []
    real = mu._mu_task

    def spy(*args, **kw):
        out = real(*args, **kw)
        seen.append(FLOAT32_EXACT in out[1])
        return out

    monkeypatch.setattr(mu, "_mu_task", spy)
    X = np.random.default_rng(0).random((300, 70)).astype(np.float32)
    m_local = NMF(4, init="nndsvd", max_iter=5, tol=0, random_state=0, scheduler="threads").fit(X)
    assert seen and not any(seen)
    m_cluster = NMF(4, init="nndsvd", max_iter=5, tol=0, random_state=0, scheduler=local_cluster).fit(X)
    np.testing.assert_allclose(m_cluster.components_, m_local.components_, rtol=1e-5, atol=1e-7)
    assert m_cluster.history_["objective"] == pytest.approx(m_local.history_["objective"], rel=1e-6)


def test_known_value_not_traversed():
    value = ({"A": np.ones(2)}, [dask.delayed(1)])  # (a computed value never holds a collection)
    k = mapreduce.known(value)
    assert k.value is value and fetch(k) is value


def test_processes_scheduler_runs_the_raw_pass_and_agrees():
    """dask's multiprocessing scheduler pickles each raw task (its _Call): same outputs and sums."""
    parts = [np.random.default_rng(i).random(6) for i in range(5)]
    per_block = [(dask.delayed(p), [p[:2], "x"]) for p in parts]
    res = {}
    for sched in ("threads", "processes"):
        with dask.config.set(scheduler=sched):
            outs, st = map_reduce(_echo_sum, per_block, scale=2.0)
        res[sched] = ([o.value for o in outs], st)
    for a, b in zip(res["threads"][0], res["processes"][0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(res["threads"][1]["s"], res["processes"][1]["s"])


def _echo_sum(x, pair, *, scale):
    assert pair[1] == "x"
    return x * scale, {"s": np.array([x.sum() + pair[0].sum()])}


def test_fetch_takes_a_persisted_value_from_its_future(local_cluster, monkeypatch):
    """On a Client, a pass's scalars come from the persisted future itself: a ``compute`` would
    send the scheduler a new graph every iteration."""
    with dask.config.set(scheduler=local_cluster):
        (p,) = dask.persist(dask.delayed(sum)([1, 2]))
        monkeypatch.setattr(Delayed, "compute", lambda self, **kw: pytest.fail("computed"))
        assert fetch(p) == 3
        monkeypatch.undo()
        assert fetch(dask.delayed(sum)([3, 4])) == 7  # not persisted: computed


def _types_finish(*parts):
    return [type(p).__name__ for p in parts], None


def test_tree_adds_only_the_stats_of_blocks_spread_over_workers(local_cluster):
    """With X persisted on several workers, the reduction takes each block's stats alone (a
    getitem beside the block): a block task's whole (output, stats) result fetched by the worker
    of the A update carried the block's new S rows with it, every iteration."""
    parts = [np.full(1000, float(i)) for i in range(4)]
    with dask.config.set(scheduler=local_cluster):
        per_block = [(d,) for d in dask.persist(*[dask.delayed(p) for p in parts])]
        _, root, _ = submit_map_reduce(_block, per_block, finish=_types_finish)
        assert fetch(root)[0] == ["dict"] * 4
        # a placement puts each tree node beside its blocks: whole results, no extra tasks
        workers = sorted(local_cluster.scheduler_info()["workers"])
        _, root, _ = submit_map_reduce(_block, per_block, finish=_types_finish, placement=[workers[0]] * 4)
        assert fetch(root)[0] == ["tuple"] * 4
