"""Benchmark: what an NMF iteration costs beyond its arithmetic, per scheduler.

    python pipelines/bench/bench_overhead.py                  # threads, synchronous, LocalCluster 1 and 2 workers
    python pipelines/bench/bench_overhead.py --skip cluster

Fits NMF(k=5, init="random", tol=0) on a tiny sparse matrix (200 x 50, 2 blocks), whose
kernels take microseconds, for ``--iters`` and for 2 iterations (the fastest of 3 fits each)
and prints the difference per iteration: the time the library and dask spend per MU pass
(building and submitting the pass's tasks, running them, the A update, fetching the pass's
scalars). On a cluster it also prints the CPU per iteration of this process (driver and the
LocalCluster's scheduler) and of the workers. A real fit pays this once per iteration on top of
its kernels (``bench_nmf.py``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.sparse as sp


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=200, help="iterations of the long fit (the short one has 2)")
    p.add_argument("--skip", default="", help="comma-separated: local, cluster")
    return p.parse_args(argv)


def per_iteration(fit, iters, cpu=None):
    """(wall, cpu...) per iteration: (fit of ``iters`` − fit of 2) / (iters − 2), fastest of 3 each."""
    fit(3)  # warm-up
    out = {}
    for n in (iters, 2):
        best = None
        for _ in range(3):
            c0 = cpu() if cpu else ()
            t0 = time.perf_counter()
            fit(n)
            run = (time.perf_counter() - t0, *(np.subtract(cpu(), c0) if cpu else ()))
            best = run if best is None or run[0] < best[0] else best
        out[n] = np.asarray(best)
    return (out[iters] - out[2]) / (iters - 2)


def main(argv=None):
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    from dnmf_dask import NMF

    X = sp.random(200, 50, density=0.3, format="csr", dtype=np.float32, random_state=0)

    def fitter(scheduler):
        def fit(n):
            NMF(5, init="random", max_iter=n, tol=0, random_state=0, scheduler=scheduler, chunk_rows=100).fit(X)
        return fit

    print(f"NMF on a {X.shape[0]} x {X.shape[1]} sparse matrix in 2 blocks, k = 5; per iteration, "
          f"(fit of {args.iters} - fit of 2) / {args.iters - 2}")
    if "local" not in skip:
        for sched in ("threads", "synchronous"):
            wall, = per_iteration(fitter(sched), args.iters)
            print(f"  {sched:<24} {wall * 1e3:7.2f} ms")
    if "cluster" not in skip:
        import psutil
        from distributed import Client, LocalCluster

        for n_workers in (1, 2):
            with LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=None,
                              host="127.0.0.1") as cl, Client(cl) as client:
                procs = [psutil.Process(p) for p in client.run(os.getpid).values()]
                me = psutil.Process()

                def cpu():
                    return (sum(me.cpu_times()[:2]), sum(sum(p.cpu_times()[:2]) for p in procs))

                wall, drv, wrk = per_iteration(fitter(client), max(20, args.iters // 4), cpu)
                print(f"  LocalCluster {n_workers} x 1 thread  {wall * 1e3:7.2f} ms   CPU: driver + scheduler "
                      f"{drv * 1e3:.2f} ms, workers {wrk * 1e3:.2f} ms")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
