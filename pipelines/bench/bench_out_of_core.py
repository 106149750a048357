"""Benchmark: NMF and NeuralNMF on a corpus store several times larger than the workers' memory.

    python pipelines/bench/bench_out_of_core.py                         # ~4.2 GB decoded corpus, 2 workers x 400 MB
    python pipelines/bench/bench_out_of_core.py --nnz 5e7 --memory-limit 400MB   # quick check (not out of core)
    python pipelines/bench/bench_out_of_core.py --store /work/ooc_store/corpus.zarr --iters 3 --epochs 1   # reuse a written store

What it does, in one process run:

1. Writes a sparse count corpus (log-normal document lengths, Zipf word popularity, float32)
   to a zarr corpus store **block by block** (:func:`dnmf_dask.store.write_corpus` on a lazy
   dask array whose blocks are generated one at a time, so the corpus is never in memory),
   with the library's default blocking (:func:`~dnmf_dask.store.corpus.auto_chunk_rows`).
   An existing store with the same parameters is reused (``--store``).
2. Starts a LocalCluster of ``--workers`` processes x ``--threads`` threads with
   ``memory_limit=--memory-limit`` each, and a sampler thread in this process that reads every
   worker process's RSS (psutil, every ``--sample`` s) for the whole run.
3. Floor (c) on that cluster: one task per stored block that reads and decodes it and returns
   its nnz (nothing else), the same tasks and placement freedom as a fit's read; a first pass
   (perhaps from disk) is reported apart from the median of the passes after it. Then the CPU
   floor: each worker reads its share of the blocks one after the other and gives each one MU
   step, and the process CPU seconds of all of it, summed and divided by the worker threads,
   are what a perfect pipeline would take (reading and computing share the cores, so floor (c)
   alone is not reachable by any fit).
4. Fits ``NMF(init=--init)`` (default "random") for ``--iters`` iterations, then for 1, and
   ``NeuralNMF(init="random", solver="pgd")`` for ``--epochs`` epochs, straight from the store
   (``persist="auto"``: the library decides; it must not load the corpus). NMF's seconds per
   iteration are the marginal cost ``(fit of --iters − fit of 1) / (--iters − 1)`` (the long fit
   runs first and pays the workers' one-time costs: conservative); NeuralNMF's passes over X
   (one per Armijo trial) are timed one by one.
5. Prints, per phase, every worker's peak RSS against its limit, whether any worker paused,
   spilled to disk, logged high unmanaged memory or was restarted (its PID changed), and the
   seconds per iteration against floor (c) and against the CPU floor.

The corpus size is the decoded in-memory size of X (CSR data + indices + indptr), which is
what a worker would hold to persist it; the on-disk (compressed) size is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nnz", type=float, default=9e8, help="nonzeros drawn (about 60%% remain after duplicates are summed)")
    p.add_argument("--per-row", type=float, default=800.0, help="mean draws per row (document length)")
    p.add_argument("--features", type=int, default=20_000)
    p.add_argument("--k", type=int, default=20, help="NMF rank")
    p.add_argument("--init", default="random", choices=["random", "nndsvd", "nndsvda"],
                   help="NMF init ('nndsvda', NMF's default, takes a randomized SVD: 2 x 7 + 2 more passes over X)")
    p.add_argument("--ranks", default="20,10", help="NeuralNMF ranks")
    p.add_argument("--iters", type=int, default=4, help="NMF iterations")
    p.add_argument("--epochs", type=int, default=2, help="NeuralNMF pgd iterations")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory-limit", default="400MB", help="memory_limit of each worker")
    p.add_argument("--store", default="/tmp/dnmf-ooc/corpus.zarr", help="corpus store (reused when its parameters match)")
    p.add_argument("--sample", type=float, default=0.2, help="seconds between RSS samples")
    p.add_argument("--skip", default="", help="comma-separated: nmf,neural")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-ratio", type=float, default=5.0,
                   help="append blocks to the store until its decoded size is this multiple of the workers' total memory_limit (0: never)")
    p.add_argument("--json", default=None, help="write the results here as JSON")

    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# the corpus, generated block by block
# ---------------------------------------------------------------------------------------------
def _gen_block(seed, i, n_rows, n_features, per_row, dtype):
    """Rows of block i: log-normal lengths (mean ``per_row``), Zipf(1) columns, 1 + Poisson(1) counts."""
    import scipy.sparse as sp

    rng = np.random.default_rng([seed, i])
    lengths = np.maximum(1, np.round(rng.lognormal(0.0, 1.0, n_rows) * per_row / np.exp(0.5))).astype(np.int64)
    w = 1.0 / np.arange(1, n_features + 1)
    cdf = np.cumsum(w / w.sum())
    perm = np.random.default_rng(seed).permutation(n_features)  # the same scatter of popular words in every block
    m = int(lengths.sum())
    cols = perm[np.minimum(np.searchsorted(cdf, rng.random(m)), n_features - 1)].astype(np.int32)
    indptr = np.r_[0, np.cumsum(lengths)]
    vals = (1 + rng.poisson(1.0, m)).astype(dtype)
    X = sp.csr_matrix((vals, cols, indptr), shape=(n_rows, n_features))
    X.sum_duplicates()
    X.sort_indices()
    return X


def make_corpus(path, args):
    """Write the corpus store block by block; reuse it when it was made with the same parameters."""
    import dask
    import dask.array as da
    import scipy.sparse as sp

    from dnmf_dask.store.corpus import auto_chunk_rows, open_corpus, write_corpus

    # "blocking": 2 since 2026-12-07: blocks sized from the nonzeros that remain (below), not the draws
    params = {"nnz": args.nnz, "per_row": args.per_row, "features": args.features, "seed": args.seed, "gen": 1,
              "blocking": 2}
    path = Path(path)
    if path.exists():
        try:
            c = open_corpus(path)
            if c.attrs.get("provenance", {}).get("bench_out_of_core") == params:
                print(f"reusing the corpus store {path}")
                return c
        except Exception:
            pass
    n = max(1, int(args.nnz / args.per_row))
    f = args.features
    # the library's default blocking for the nonzeros the corpus will have: the draws less the
    # duplicates summed, estimated from a generated sample block (until 2026-12-07 the draws were
    # used, ~1.7x the nonzeros, which made blocks of ~2.2M nonzeros instead of the default ~4M)
    sample_rows = min(n, 5000)
    kept = _gen_block(args.seed, 0, sample_rows, f, args.per_row, np.float32).nnz / sample_rows
    rows = auto_chunk_rows(n, f, int(kept * n), 4)
    sizes = [rows] * (n // rows) + ([n % rows] if n % rows else [])
    meta = sp.csr_matrix((0, 0), dtype=np.float32)
    parts = [da.from_delayed(dask.delayed(_gen_block, pure=True)(args.seed, i, s, f, args.per_row, np.float32),
                             shape=(s, f), dtype=np.float32, meta=meta) for i, s in enumerate(sizes)]
    X = da.concatenate(parts, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)  # (the default --store's folder is not there on a new machine)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        c = write_corpus(path, X, chunk_rows=rows, attrs={"bench_out_of_core": params}, overwrite=True)
    print(f"wrote {path} ({len(sizes)} blocks of {rows} rows) in {time.perf_counter() - t0:.0f} s")
    return c


def grow_corpus(c, args, min_bytes):
    """Append generated blocks (:func:`dnmf_dask.store.append_corpus`, block by block) until the
    decoded corpus holds at least ``min_bytes``."""
    import dask
    import dask.array as da
    import scipy.sparse as sp

    from dnmf_dask.store.corpus import append_corpus

    decoded, _ = store_sizes(c)
    if decoded >= min_bytes:
        return c
    off = c.row_offsets
    rows, f, first = int(off[1] - off[0]), c.X.shape[1], len(off) - 1
    per_block = decoded / first
    n_new = int(np.ceil((min_bytes - decoded) / per_block)) + 1
    meta = sp.csr_matrix((0, 0), dtype=np.float32)
    parts = [da.from_delayed(dask.delayed(_gen_block, pure=True)(args.seed, first + j, rows, f, args.per_row, np.float32),
                             shape=(rows, f), dtype=np.float32, meta=meta) for j in range(n_new)]
    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        c = append_corpus(c.path, da.concatenate(parts, axis=0), chunk_rows=rows, provenance={"bench_out_of_core": "grow"})
    print(f"appended {n_new} blocks in {time.perf_counter() - t0:.0f} s to reach {min_bytes / 1e9:.2f} GB decoded")
    return c


def store_sizes(c):
    """(decoded bytes of X as CSR float32/int32/int64, bytes on disk)."""
    n, nnz = c.X.shape[0], int(c.attrs["nnz"])
    n_blocks = len(c.row_offsets) - 1
    decoded = nnz * (np.dtype(c.X.dtype).itemsize + 4) + 8 * (n + n_blocks)
    disk = sum(p.stat().st_size for p in Path(c.path).rglob("*") if p.is_file())
    return decoded, disk


# ---------------------------------------------------------------------------------------------
# watching the workers
# ---------------------------------------------------------------------------------------------
class MemoryWatch:
    """Samples every worker process's RSS from this process (psutil) in a background thread."""

    def __init__(self, client, every):
        import psutil

        self.client, self.every = client, every
        self.pids = client.run(os.getpid)  # address -> pid
        self.procs = {a: psutil.Process(p) for a, p in self.pids.items()}
        self.peak = {a: 0 for a in self.pids}
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for a, p in self.procs.items():
                with contextlib.suppress(Exception):
                    self.peak[a] = max(self.peak[a], p.memory_info().rss)
            self.samples += 1
            self._stop.wait(self.every)

    def start(self):
        self._t.start()
        return self

    def reset(self):
        """Peaks since now (returns the previous ones)."""
        old = dict(self.peak)
        self.peak = {a: 0 for a in self.pids}
        return old

    def stop(self):
        self._stop.set()
        self._t.join()


def worker_events(client, pids_before):
    """Pauses, spills, high-unmanaged-memory warnings and restarts seen so far on the workers."""
    logs = client.get_worker_logs()
    nanny_logs = client.get_worker_logs(nanny=True)
    text = lambda L: [m for _, m in L]  # noqa: E731
    out = {"paused": 0, "unmanaged_high": 0, "spilled_bytes": 0, "spill_writes": 0, "restarts": 0, "per_worker": {}}
    for addr, msgs in logs.items():
        w = out["per_worker"].setdefault(addr, {})
        w["paused"] = sum("Pausing worker" in m for m in text(msgs))
        w["unmanaged_high"] = sum("Unmanaged memory use is high" in m for m in text(msgs))
        out["paused"] += w["paused"]
        out["unmanaged_high"] += w["unmanaged_high"]
    for msgs in nanny_logs.values():
        for m in text(msgs):
            out["restarts"] += ("Restarting worker" in m) or ("exceeded" in m and "memory budget" in m)

    def disk_writes(dask_worker):
        c = b = 0
        for key, v in dask_worker.digests_total.items():
            if isinstance(key, tuple) and "disk-write" in key:
                if key[-1] == "count":
                    c += v
                elif key[-1] == "bytes":
                    b += v
        return c, b

    try:
        for addr, (c, b) in client.run(disk_writes).items():
            out["spill_writes"] += int(c)
            out["spilled_bytes"] += int(b)
            out["per_worker"].setdefault(addr, {}).update(spill_writes=int(c), spilled_bytes=int(b))
    except Exception as e:  # pragma: no cover - a worker died
        out["error"] = repr(e)
    pids_now = client.run(os.getpid)
    out["restarts"] += sum(1 for a, p in pids_before.items() if pids_now.get(a) != p) + abs(len(pids_now) - len(pids_before))
    return out


class _Stamps(io.TextIOBase):
    """A stdout stand-in that timestamps the estimators' per-iteration log lines."""

    def __init__(self, word):
        self.word, self.t = word, []

    def write(self, s):
        if self.word in s:
            self.t.append(time.perf_counter())
        return len(s)


def _read_block(path, i, n_rows, n_features, dtype):
    from dnmf_dask.store.corpus import _load_block

    return _load_block(path, i, True, (n_rows, n_features), dtype).nnz


def floor_read_cluster(client, c, repeats=2):
    """Floor (c) on the cluster: every stored block read and decoded by one task, nothing else.

    Returns ``(first, warm)``: the seconds of a first pass, which may read from disk, and the
    median of ``repeats`` passes after it, with the store in the OS page cache as the fit's
    iterations find it. (Until 2026-12-07 the median of 2 passes included the first: floor (c)
    of the 12 GB store then varied 4.96-6.82 s between runs.)"""
    off, f, spath = c.row_offsets, c.X.shape[1], str(Path(c.path).absolute())
    ts = []
    for r in range(repeats + 1):
        futs = [client.submit(_read_block, spath, i, int(off[i + 1] - off[i]), f, c.X.dtype, pure=False)
                for i in range(len(off) - 1)]
        t0 = time.perf_counter()
        total = sum(client.gather(futs))
        ts.append(time.perf_counter() - t0)
        del futs
    assert total == int(c.attrs["nnz"]), (total, c.attrs["nnz"])
    return ts[0], float(np.median(ts[1:]))


def _read_and_step(path, shares, offsets, n_features, dtype, k, dask_worker=None):
    """On a worker (``client.run``): its share of the stored blocks one after the other, each
    read + decoded and then given one MU step (``block_step``, one BLAS thread, random S and A of
    rank ``k``). Returns the process CPU seconds of the reads and of the steps: zarr decodes in
    its own threads, so the calling thread's CPU time would miss the reads."""
    from threadpoolctl import threadpool_limits

    from dnmf_dask.kernels.nmf import block_step
    from dnmf_dask.parallel.memory import _glibc
    from dnmf_dask.store.corpus import _load_block

    read = step = 0.0
    with threadpool_limits(1):
        for i in shares[dask_worker.address]:
            n_rows = int(offsets[i + 1] - offsets[i])
            t0 = time.process_time()
            X = _load_block(path, i, True, (n_rows, n_features), dtype)
            read += time.process_time() - t0
            rng = np.random.default_rng(i)
            S = rng.random((n_rows, k), dtype=np.float32)
            A = rng.random((n_features, k), dtype=np.float32)
            t0 = time.process_time()
            block_step(X, S, A)
            step += time.process_time() - t0
            del X, S, A
    libc = _glibc()  # hand the blocks' freed heap back, so that the phases after this one start as before it
    if libc is not None:
        libc.malloc_trim(0)
    return read, step


def cpu_floor_cluster(client, c, k, threads):
    """The CPU a pass needs on this cluster's workers, perfectly packed on ``threads`` threads:
    ``(read + decode, read + decode + MU step)``, each the CPU seconds the workers measured over
    every block (:func:`_read_and_step`, the blocks dealt out to the workers in turn), over
    ``threads``."""
    workers = sorted(client.scheduler_info()["workers"])
    n_blocks = len(c.row_offsets) - 1
    shares = {w: list(range(j, n_blocks, len(workers))) for j, w in enumerate(workers)}
    out = client.run(_read_and_step, str(Path(c.path).absolute()), shares, np.asarray(c.row_offsets),
                     c.X.shape[1], c.X.dtype, k)
    read, step = np.asarray(list(out.values())).sum(axis=0)
    return float(read / threads), float((read + step) / threads)


def timed_fit(model, X, word):
    stamps = _Stamps(word)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(stamps):
        model.fit(X)
    total = time.perf_counter() - t0
    d = np.diff(stamps.t)  # from the end of iteration 1 on: no start-up passes inside
    return (float(np.median(d)) if d.size else float("nan")), total, d.tolist()


@contextlib.contextmanager
def timed_passes(module):
    """Seconds of every ``map_reduce`` pass the estimator in ``module`` runs (a NeuralNMF epoch is
    one pass per Armijo trial: the comparable unit to floor (c))."""
    real, times = module.map_reduce, []

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            times.append(time.perf_counter() - t0)

    module.map_reduce = timed
    try:
        yield times
    finally:
        module.map_reduce = real


def report_phase(name, watch, limit, client, pids, res):
    peaks = watch.reset()
    ev = worker_events(client, pids)
    mx = max(peaks.values())
    res[name].update({"peak_rss": peaks, "peak_frac": mx / limit, "events": ev, "load": os.getloadavg()})
    print(f"  load average {os.getloadavg()}")
    for a, p in peaks.items():
        w = ev["per_worker"].get(a, {})
        print(f"  worker {a}: peak RSS {p / 1e6:.0f} MB ({p / limit:.0%} of {limit / 1e6:.0f} MB); so far paused "
              f"{w.get('paused', '?')}x, spilled {w.get('spilled_bytes', 0) / 1e6:.1f} MB in {w.get('spill_writes', 0)} writes, "
              f"high-unmanaged warnings {w.get('unmanaged_high', '?')}")
    print(f"  worker events so far (all workers): { {k: v for k, v in ev.items() if k != 'per_worker'} }")


def main(argv=None):
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    import dnmf_dask
    from dnmf_dask import NMF, NeuralNMF, open_corpus

    print(f"dnmf_dask {dnmf_dask.__file__}; {os.cpu_count()} cores; load average {os.getloadavg()}")
    limit = parse_bytes(args.memory_limit)
    total_limit = limit * args.workers
    c = make_corpus(args.store, args)
    if args.min_ratio:
        c = grow_corpus(c, args, args.min_ratio * total_limit)
    decoded, disk = store_sizes(c)
    nnz = int(c.attrs["nnz"])
    res = {"args": vars(args), "n_samples": int(c.X.shape[0]), "n_features": int(c.X.shape[1]), "nnz": nnz,
           "blocks": len(c.row_offsets) - 1, "decoded_bytes": decoded, "disk_bytes": disk,
           "memory_limit": limit, "workers": args.workers, "threads": args.threads}
    print(f"corpus {c.X.shape[0]:,} x {c.X.shape[1]:,}, {nnz:,} nonzeros in {res['blocks']} blocks; "
          f"decoded {decoded / 1e9:.2f} GB, on disk {disk / 1e9:.2f} GB; workers' total memory_limit "
          f"{total_limit / 1e9:.2f} GB -> corpus = {decoded / total_limit:.1f}x")
    from dnmf_dask.parallel.memory import worker_malloc_config

    # the library's choice of the workers' malloc settings for this memory_limit
    with worker_malloc_config(limit), LocalCluster(n_workers=args.workers, threads_per_worker=args.threads, processes=True, memory_limit=limit,
                      dashboard_address=None, host="127.0.0.1") as cl, Client(cl) as client:
        # import cost out of the timings: what the fits' tasks import (the task functions and the
        # store's block reader), not the estimators (scikit-learn), which workers never need
        client.run(lambda: [__import__(m) for m in ("dnmf_dask.parallel.tasks", "dnmf_dask.parallel.mu", "dnmf_dask.store.corpus")])
        res["worker_rss_start"] = client.run(lambda: __import__("psutil").Process().memory_info().rss)
        print("worker RSS after imports: " + ", ".join(f"{r / 1e6:.0f} MB" for r in res["worker_rss_start"].values()))
        watch = MemoryWatch(client, args.sample).start()
        pids = dict(watch.pids)
        try:
            print(f"\n== floor (c): read + decode every block on the cluster ({args.workers} x {args.threads}) ==  "
                  f"load {os.getloadavg()[0]:.2f}")
            first, fc = floor_read_cluster(client, c)
            res["floor_c"] = {"s": fc, "first_s": first}
            print(f"  {fc:.2f} s per pass ({fc / nnz * 1e9:.2f} ns/nz wall), median of 2 after a first pass of {first:.2f} s")
            report_phase("floor_c", watch, limit, client, pids, res)
            # the CPU floor of an iteration: reading and the MU step cost CPU on the same cores, so
            # no pipeline beats their sum over the worker threads (floor (c) is the first term alone)
            cpu_c, cpu_ac = cpu_floor_cluster(client, c, args.k, args.workers * args.threads)
            res["floor_cpu"] = {"read_s": cpu_c, "read_step_s": cpu_ac}
            print(f"  CPU floor, perfectly packed on {args.workers * args.threads} thread(s): read + decode {cpu_c:.2f} s, "
                  f"read + decode + MU step (k={args.k}) {cpu_ac:.2f} s per pass ({(cpu_ac - cpu_c) / nnz * 1e9 * args.workers * args.threads:.2f} "
                  f"ns/nz of MU step, {cpu_c / nnz * 1e9 * args.workers * args.threads:.2f} of read, per core)")
            if "nmf" not in skip:
                print(f"\n== NMF(k={args.k}, init={args.init!r}), {args.iters} iterations from the store ==  load {os.getloadavg()[0]:.2f}")
                # seconds per iteration = the marginal cost of an iteration: (fit of n - fit of 1) / (n - 1).
                # Start-up (summary, init) and the final evaluation pass cancel out; the log lines'
                # intervals do not measure it (pass t+1 is submitted before pass t ends, so the lines
                # come in bursts). The long fit runs first: it also pays the workers' one-time costs
                # (kernels for this rank), which then count against the iterations (conservative).
                m = NMF(args.k, init=args.init, max_iter=args.iters, tol=0, random_state=args.seed, scheduler=client, verbose=1)
                _, total, its = timed_fit(m, open_corpus(c.path), "iteration")
                m1 = NMF(args.k, init=args.init, max_iter=1, tol=0, random_state=args.seed, scheduler=client)
                _, total1, _ = timed_fit(m1, open_corpus(c.path), "iteration")
                per_it = (total - total1) / max(args.iters - 1, 1)
                res["nmf"] = {"s_per_iter": per_it, "fit_s": total, "fit_1_s": total1, "intervals": its,
                              "rel_error": m.history_["rel_error"][-1], "n_iter": m.n_iter_}
                print(f"  {per_it:.2f} s/iteration ((fit of {args.iters}: {total:.1f} s - fit of 1: {total1:.1f} s) / "
                      f"{max(args.iters - 1, 1)}) = {per_it / fc:.2f}x floor (c), {per_it / cpu_ac:.2f}x the CPU floor of read + MU step; "
                      f"rel.err {m.history_['rel_error'][-1]:.4f}")
                report_phase("nmf", watch, limit, client, pids, res)
            if "neural" not in skip:
                ranks = tuple(int(r) for r in args.ranks.split(","))
                print(f"\n== NeuralNMF(ranks={ranks}, init='random', pgd), {args.epochs} epochs from the store ==  "
                      f"load {os.getloadavg()[0]:.2f}")
                nn = NeuralNMF(ranks, init="random", epochs=args.epochs, tol=0, random_state=args.seed, scheduler=client,
                               verbose=1)
                import dnmf_dask.parallel.neural as neural_module  # where NeuralNMF's passes call map_reduce

                with timed_passes(neural_module) as passes:
                    per_ep, total, eps = timed_fit(nn, open_corpus(c.path), "NeuralNMF")
                h = nn.history_
                per_pass = float(np.median(passes)) if passes else float("nan")
                res["neural"] = {"s_per_epoch": per_ep, "fit_s": total, "intervals": eps, "cost": h["cost"],
                                 "step": h["step"], "passes_s": passes, "s_per_pass": per_pass,
                                 "rel_error": h["rel_error"][-1], "n_iter": nn.n_iter_, "stop_reason": nn.stop_reason_}
                print(f"  {len(passes)} passes over X (initial evaluation + Armijo trials), median {per_pass:.1f} s = "
                      f"{per_pass / fc:.1f}x floor (c) per pass; steps {h['step']}")
                print(f"  {per_ep:.1f} s/epoch (intervals {['%.1f' % t for t in eps]}) = {per_ep / fc:.1f}x floor (c); fit {total:.1f} s; rel.err {h['rel_error'][0]:.4f} -> "
                      f"{h['rel_error'][-1]:.4f}; stop {nn.stop_reason_}")
                report_phase("neural", watch, limit, client, pids, res)
        finally:
            watch.stop()
    res["load_end"] = os.getloadavg()
    print(f"\nload average at the end {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
