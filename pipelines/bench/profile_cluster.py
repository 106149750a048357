"""Profile: where an NMF iteration's time goes on a LocalCluster, per worker count.

    python pipelines/bench/profile_cluster.py                       # 2.06e7 nonzeros, 1 and 2 workers x 1 thread, ~1 min
    python pipelines/bench/profile_cluster.py --nnz 9e7 --workers 1,2

For each cluster it fits NMF(k, init="random", tol=0) on the skewed sparse count matrix of
``bench_nmf.py`` (written to a corpus store, ``persist="auto"``) for ``--iters`` and for
``--iters`` − 30 iterations, and prints the differences per iteration, so that initialisation
and the last pass cancel out:

* wall time; the workers' CPU (user + system, and system alone) and the driver + scheduler's
  (a LocalCluster's scheduler runs in this process), from psutil;
* distributed's task stream, summed per task prefix and action (``compute``, ``transfer``, ...).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHORT = 30  # iterations of the shorter fit


def _by_prefix(task_stream):
    acc = collections.defaultdict(lambda: [0.0, 0])
    for t in task_stream:
        key = t["key"][0] if isinstance(t["key"], tuple) else t["key"]
        prefix = key.rsplit("-", 1)[0] if "-" in key else key
        for ss in t["startstops"]:
            acc[(prefix[:40], ss["action"])][0] += ss["stop"] - ss["start"]
            acc[(prefix[:40], ss["action"])][1] += 1
    return acc


def profile(store, n_workers, iters, k, seed):
    import psutil
    from distributed import Client, LocalCluster, get_task_stream

    from dnmf_dask import NMF, open_corpus
    from dnmf_dask.parallel.memory import worker_malloc_config

    with worker_malloc_config(), LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=None,
                                              host="127.0.0.1") as cl, Client(cl) as client:
        procs = [psutil.Process(p) for p in client.run(os.getpid).values()]
        me = psutil.Process()

        def cpu():
            return np.array([sum(sum(p.cpu_times()[:2]) for p in procs), sum(me.cpu_times()[:2]),
                             sum(p.cpu_times()[1] for p in procs)])

        def fit(n):
            return NMF(k, init="random", max_iter=n, tol=0, random_state=seed, scheduler=client).fit(open_corpus(store))

        fit(2)  # warm-up: imports, compiled kernels, the persisted corpus's first load
        res = {}
        for n in (iters, iters - SHORT):
            c0, t0 = cpu(), time.perf_counter()
            with get_task_stream(client) as ts:
                fit(n)
            res[n] = (time.perf_counter() - t0, cpu() - c0, _by_prefix(ts.data))
    (w1, c1, a), (w0, c0, b) = res[iters], res[iters - SHORT]
    wall, (cw, cd, cs) = (w1 - w0) / SHORT, (c1 - c0) / SHORT
    print(f"== {n_workers} worker(s) x 1 thread: wall {wall * 1e3:.1f} ms/it; workers' CPU {cw * 1e3:.1f} ms "
          f"(system {cs * 1e3:.1f}); driver + scheduler CPU {cd * 1e3:.1f} ms")
    for key in sorted(set(a) | set(b), key=lambda key: -(a[key][0] - b[key][0])):
        v, n = (a[key][0] - b[key][0]) / SHORT, (a[key][1] - b[key][1]) / SHORT
        if abs(v) > 2e-4 or n:
            print(f"  {key[0]:42s} {key[1]:10s} {v * 1e3:8.2f} ms/it  {n:5.1f} per it")
    return wall


def main(argv=None):
    from bench_nmf import skewed_args, skewed_sparse
    from dnmf_dask.store.corpus import write_corpus

    p = skewed_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--iters", type=int, default=40, help=f"iterations of the longer fit (> {SHORT})")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = p.parse_args(argv)
    if args.iters <= SHORT:
        p.error(f"--iters: expected more than {SHORT}, found {args.iters}")

    X = skewed_sparse(int(args.nnz / args.per_row), args.features, int(args.nnz), np.dtype("float32"), args.seed)
    print(f"X {X.shape[0]:,} x {X.shape[1]:,}, {X.nnz:,} nonzeros, k = {args.k}; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="dnmf-profile-") as tmp:
        store = Path(tmp) / "corpus.zarr"
        write_corpus(store, X)
        del X
        walls = {int(n): profile(store, int(n), args.iters, args.k, args.seed) for n in args.workers.split(",")}
    if 1 in walls:
        for n, w in walls.items():
            if n != 1:
                print(f"{n} workers vs 1: {walls[1] / w:.2f}x the throughput")
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
