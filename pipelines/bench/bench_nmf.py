"""Benchmark: our NMF (MU) against its floors and scikit-learn, in one process, on the same data.

    python pipelines/bench/bench_nmf.py                      # small default, a few minutes
    python pipelines/bench/bench_nmf.py --nnz 20000000       # the issue's >= 2e7 nonzeros case
    python pipelines/bench/bench_nmf.py --skip dense,cluster,scaling,nnls

Sections (each prints seconds *and* ratios measured in this run):

* ``sparse`` - a random sparse count matrix with realistic skew (log-normal document lengths,
  Zipf word popularity), float32, k = 20:
  floors (a) our per-block kernels (:func:`dnmf_dask.kernels.nmf.block_step`,
  :func:`~dnmf_dask.kernels.nmf.update_factor`) in a plain loop, no dask, and (a') the same loop
  with the fused numba sweep of :mod:`dnmf_dask.kernels.fused` switched the other way, and (a'')
  with the rank-specialised kernels of :mod:`dnmf_dask.kernels.spmm` (on by default,
  ``DNMF_DASK_SPMM=0``) switched the other way; the two scipy sparse products of one iteration; (c) reading and decoding X's blocks from a zarr corpus store;
  ours with ``scheduler="threads"``; scikit-learn ``NMF(solver="mu")`` and ``solver="cd"``;
  seconds and ns per nonzero per iteration, and the relative error each reaches in the time our
  threaded fit takes for ``--iters`` iterations;
* ``cluster`` - ours on LocalClusters of 1 worker x 1 thread, 1 x 2 and 2 workers x 1 thread
  (with the library's worker malloc settings), from the corpus store (``persist="auto"``: loaded
  into the workers when it takes at most a quarter of their memory); ratio to floor (a) and the
  throughput of 2 worker processes against 1; and CPU seconds per iteration of the driver (with
  the LocalCluster's scheduler, which runs in this process) and of the workers, against floor
  (a)'s CPU seconds (CPU time moves far less with the machine's load than wall time);
* ``dense`` - a dense nonnegative low-rank + noise matrix: ours vs floor (b), the two skinny
  GEMMs ``X @ A`` and ``X.T @ S`` of one iteration, and vs scikit-learn;
* ``scaling`` - ours (threads) and floor (a) at nnz/4, nnz/2 and nnz; least-squares slope of
  seconds per iteration against nnz and the intercept;
* ``nnls`` - runs ``bench_nnls.py`` (batched NNLS vs a loop of ``scipy.optimize.nnls``) on a
  smaller problem; run that script alone for the full-size numbers.

Our per-iteration time is the marginal cost of an iteration, (fit of ``--iters`` − fit of 2) /
(``--iters`` − 2), so initialisation and the final evaluation pass are not counted (until
2026-12-07 it was the median interval between the per-iteration log lines, which on a cluster
come in bursts because pass t+1 is submitted before pass t ends); the total fit time is printed
as well. scikit-learn's per-iteration time is measured the same way (the fastest of 3 fits of
``--iters`` and of 2 iterations); until 2026-12-07 it was one fit's time over ``n_iter_``, which
also counted the fit's input checks, init and final ``reconstruction_err_`` and varied ±50%.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nnz", type=float, default=4e6, help="nonzeros of the sparse matrix (issue target case: 2e7)")
    p.add_argument("--per-row", type=float, default=100.0, help="mean nonzeros per row (sets n_samples = nnz / per_row)")
    p.add_argument("--features", type=int, default=20_000, help="columns of the sparse matrix")
    p.add_argument("--dense-shape", type=str, default="20000x1000", help="dense matrix shape, ROWSxCOLS")
    p.add_argument("--k", type=int, default=20, help="rank")
    p.add_argument("--iters", type=int, default=10, help="MU iterations timed per method")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per block (default: the library's choice)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: sparse,cluster,dense,scaling,sklearn,nnls")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def skewed_args(p, nnz=3e7, per_row=140.0):
    """The arguments of :func:`skewed_sparse`'s matrix (and the rank and seed) for the benches
    that fit it (``bench_equal_time.py``, ``profile_cluster.py``); defaults: the #7 case."""
    p.add_argument("--nnz", type=float, default=nnz, help="nonzeros drawn (duplicates are summed: ~2/3 remain)")
    p.add_argument("--per-row", type=float, default=per_row, help="mean nonzeros drawn per row")
    p.add_argument("--features", type=int, default=20_000, help="columns")
    p.add_argument("--k", type=int, default=20, help="rank")
    p.add_argument("--seed", type=int, default=0)
    return p


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def skewed_sparse(n_samples, n_features, nnz, dtype, seed=0):
    """Random CSR counts: log-normal row lengths, Zipf(1) column popularity, values 1 + Poisson(1)."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(0.0, 1.0, n_samples)
    lengths = np.maximum(1, np.round(lengths * nnz / lengths.sum())).astype(np.int64)
    rows = np.repeat(np.arange(n_samples, dtype=np.int64), lengths)
    w = 1.0 / np.arange(1, n_features + 1)
    cols = rng.choice(n_features, size=rows.size, p=w / w.sum())
    cols = rng.permutation(n_features)[cols]  # popular words scattered over the columns
    vals = (1 + rng.poisson(1.0, rows.size)).astype(dtype)
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n_samples, n_features), dtype=dtype)
    X.sum_duplicates()
    X.sort_indices()
    return X


def dense_lowrank(n, f, k, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, k), dtype=np.float32) @ rng.random((k, f), dtype=np.float32)
    X += 0.1 * rng.random((n, f), dtype=np.float32)
    return X.astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------------------------
def best_of(fn, repeats=3):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _fit_once(X, k, iters, scheduler, chunk_rows, seed):
    from dnmf_dask import NMF

    m = NMF(k, init="random", max_iter=iters, tol=0, random_state=seed, scheduler=scheduler, chunk_rows=chunk_rows)
    t0 = time.perf_counter()
    m.fit(X() if callable(X) else X)
    return time.perf_counter() - t0, m.history_["rel_error"][-1]


def fit_ours(X, k, iters, scheduler, chunk_rows, seed, pids=None, repeats=3):
    """Fit dnmf_dask.NMF; returns (seconds per iteration, total fit seconds, relative error, cpu).

    Seconds per iteration is the marginal cost of an iteration: (fit of ``iters`` − fit of 2) /
    (``iters`` − 2), each the fastest of ``repeats`` fits after a warm-up fit, so initialisation,
    the first pass and the final evaluation pass cancel out.
    (The intervals between the per-iteration log lines do not measure it: on a cluster pass t+1
    is submitted before pass t ends, and the lines come in bursts.) ``X`` may be a callable that
    returns the input (a corpus is opened anew for each fit). ``cpu`` is None, or with ``pids``
    (worker processes) the CPU seconds per iteration ``(driver + scheduler, workers)`` by the same
    difference (a LocalCluster's scheduler runs in this process).
    """
    iters = max(int(iters), 3)
    _fit_once(X, k, 2, scheduler, chunk_rows, seed)  # warm-up (kernels, thread pools, workers' imports)
    out = []
    for n in (2, iters):
        best = None
        for _ in range(repeats):  # the fastest of ``repeats`` fits (a single difference is noisy)
            d0, w0 = time.process_time(), (_cpu_seconds(pids) if pids else 0.0)
            t, rel = _fit_once(X, k, n, scheduler, chunk_rows, seed)
            run = (t, rel, time.process_time() - d0, (_cpu_seconds(pids) - w0) if pids else 0.0)
            best = run if best is None or run[0] < best[0] else best
        out.append(best)
    m = iters - 2
    per_it = (out[1][0] - out[0][0]) / m
    cpu = ((out[1][2] - out[0][2]) / m, (out[1][3] - out[0][3]) / m) if pids else None
    return per_it, out[1][0], out[1][1], cpu


def fit_sklearn(X, k, iters, solver, seed):
    import warnings

    from sklearn.decomposition import NMF as SkNMF
    from sklearn.exceptions import ConvergenceWarning

    m = SkNMF(k, init="random", solver=solver, max_iter=max(1, iters), tol=0, random_state=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(X)
    total = time.perf_counter() - t0
    return total / max(m.n_iter_, 1), total, m.reconstruction_err_


def sklearn_per_iteration(X, k, iters, solver, seed, repeats=3):
    """scikit-learn's seconds per iteration measured as ours (:func:`fit_ours`): (fit of ``iters``
    − fit of 2) / (``iters`` − 2), each the fastest of ``repeats``. A fit's own total / n_iter_
    also carries its start (input checks, init) and its final ``reconstruction_err_`` (a whole
    S Aᵀ for dense X), and one fit varied ±50% between runs."""
    iters = max(int(iters), 3)
    best = {n: min(fit_sklearn(X, k, n, solver, seed)[1] for _ in range(repeats)) for n in (2, iters)}
    return (best[iters] - best[2]) / (iters - 2)


def norm_of(X):
    return float(np.sqrt(X.multiply(X).sum(dtype=np.float64))) if sp.issparse(X) else float(np.linalg.norm(X))


# ---------------------------------------------------------------------------------------------
# floors
# ---------------------------------------------------------------------------------------------
def floor_kernels(X, k, iters, chunk_rows, seed):
    """Floor (a): the faster of :func:`_kernel_loop` with one BLAS thread and with BLAS's default."""
    from threadpoolctl import threadpool_limits

    t_default, nb = _kernel_loop(X, k, iters, chunk_rows, seed)
    with threadpool_limits(limits=1, user_api="blas"):
        t_one, _ = _kernel_loop(X, k, iters, chunk_rows, seed)
    return min(t_default, t_one), nb, ("1 BLAS thread" if t_one < t_default else "default BLAS threads")


def _kernel_loop(X, k, iters, chunk_rows, seed):
    """block_step over the row blocks + update_factor, a plain Python loop; median s/iteration."""
    from dnmf_dask.kernels.nmf import block_step, update_factor
    from dnmf_dask.store.corpus import auto_chunk_rows, row_blocks

    n, f = X.shape
    if chunk_rows is None:
        chunk_rows = auto_chunk_rows(n, f, X.nnz if sp.issparse(X) else None, X.dtype.itemsize)
    off = row_blocks(n, chunk_rows)
    blocks = [X[off[i]:off[i + 1]] for i in range(len(off) - 1)]
    rng = np.random.default_rng(seed)
    S = [rng.random((b.shape[0], k)).astype(X.dtype) for b in blocks]
    A = rng.random((f, k)).astype(X.dtype)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        AtA = A.T @ A
        XtS, StS = 0, 0
        for i, b in enumerate(blocks):
            S[i], st = block_step(b, S[i], A, AtA=AtA)
            XtS = XtS + st["XtS"]
            StS = StS + st["StS"]
        A = update_factor(A, XtS, den_gram=StS)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), len(blocks)


def floor_kernels_cpu(X, k, iters, chunk_rows, seed):
    """CPU seconds (this process) per iteration of :func:`_kernel_loop` with one BLAS thread: floor (a)
    as CPU time, which the machine's load changes far less than wall time."""
    from threadpoolctl import threadpool_limits

    cpu = []
    with threadpool_limits(limits=1, user_api="blas"):
        for n in (1, iters):
            c0 = time.process_time()
            _kernel_loop(X, k, n, chunk_rows, seed)
            cpu.append(time.process_time() - c0)
    return (cpu[1] - cpu[0]) / max(iters - 1, 1)


def _env_flag_now(name):
    from dnmf_dask.kernels._env import env_flag

    return env_flag(name, True)


@contextlib.contextmanager
def _env_set(name, value):
    """``$name`` set to ``value`` inside the block (the kernels read their switches per call)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def floor_products(X, k, seed):
    """The two products of one MU iteration, X @ A and X.T @ S (floor (b) for dense X)."""
    rng = np.random.default_rng(seed)
    A = rng.random((X.shape[1], k)).astype(X.dtype)
    S = rng.random((X.shape[0], k)).astype(X.dtype)
    return best_of(lambda: (X @ A, X.T @ S))


def floor_read(path):
    """Floor (c): read and decode every block of the corpus store, nothing else."""
    from dnmf_dask.store.corpus import _load_block, open_corpus

    c = open_corpus(path)
    off, dt, sparse = c.row_offsets, c.X.dtype, bool(c.attrs.get("sparse"))
    f = c.X.shape[1]

    def read():
        for i in range(len(off) - 1):
            _load_block(str(path), i, sparse, (int(off[i + 1] - off[i]), f), dt)

    return best_of(read), len(off) - 1


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
def row(name, sec, nnz=None, ref=None, extra=""):
    s = f"  {name:<44s} {sec:9.4f} s/it"
    if nnz:
        s += f"  {sec / nnz * 1e9:7.2f} ns/nz"
    if ref:
        s += f"  {sec / ref:6.2f}x floor(a)"
    print(s + ("  " + extra if extra else ""))


def equal_time(X, k, budget, per_it, solver, seed):
    """Relative error scikit-learn reaches in ``budget`` seconds (iterations = budget / per_it)."""
    n_it = max(1, int(budget / per_it))
    _, t, err = fit_sklearn(X, k, n_it, solver, seed)
    return n_it, t, err


def section_matrix(label, X, args, skip, store=None):
    """Floors, ours (threads), scikit-learn on one matrix; returns a dict of results."""
    k, iters, seed = args.k, args.iters, args.seed
    nnz = X.nnz if sp.issparse(X) else X.size
    normX = norm_of(X)
    res = {}
    print(f"\n== {label}: {X.shape[0]} x {X.shape[1]}, nnz {nnz:,}, {X.dtype}, k={k}, {iters} iterations ==")
    fa, nb, how = floor_kernels(X, k, min(iters, 5), args.chunk_rows, seed)
    res["floor_a"] = fa
    res["floor_a_cpu"] = floor_kernels_cpu(X, k, min(iters, 5), args.chunk_rows, seed)
    spmm_state = "" if not sp.issparse(X) else (", spmm on" if _env_flag_now("DNMF_DASK_SPMM") else ", spmm off")
    row(f"floor (a) kernels, plain loop ({nb} blocks{spmm_state})", fa, nnz,
        extra=f"{how}; CPU {res['floor_a_cpu']:.4f} s/it = {res['floor_a_cpu'] / nnz * 1e9:.2f} ns/nz")
    if sp.issparse(X):
        from dnmf_dask.kernels import fused

        if fused.AVAILABLE:  # the same loop with the fused numba sweep (off by default in block_step)
            was, fused.FROBENIUS = fused.FROBENIUS, not fused.FROBENIUS
            try:
                fs, _, how_s = floor_kernels(X, k, min(iters, 5), args.chunk_rows, seed)
            finally:
                fused.FROBENIUS = was
            res["floor_a_other"] = fs
            row(f"floor (a') the same, fused numba sweep {'off' if was else 'on'}", fs, nnz, fa, extra=how_s)
        # the same loop with the rank-specialised kernels of kernels/spmm.py switched the other way
        spmm_on = _env_flag_now("DNMF_DASK_SPMM")
        with _env_set("DNMF_DASK_SPMM", "0" if spmm_on else "1"):
            fo, _, how_o = floor_kernels(X, k, min(iters, 5), args.chunk_rows, seed)
            fo_cpu = floor_kernels_cpu(X, k, min(iters, 5), args.chunk_rows, seed)
        res["floor_a_spmm_other"], res["floor_a_spmm_other_cpu"] = fo, fo_cpu
        row(f"floor (a'') the same, spmm kernels {'off (scipy)' if spmm_on else 'on'}", fo, nnz, fa,
            extra=f"{how_o}; CPU {fo_cpu:.4f} s/it = {fo_cpu / nnz * 1e9:.2f} ns/nz, "
                  f"{fo_cpu / res['floor_a_cpu']:.2f}x floor (a) CPU")
    fb = floor_products(X, k, seed)
    res["floor_b"] = fb
    row("floor (b) X@A + X.T@S" + (" (scipy)" if sp.issparse(X) else " (GEMMs)"), fb, nnz)
    if store is not None:
        fc, nbs = floor_read(store)
        res["floor_c"] = fc
        row(f"floor (c) read+decode corpus ({nbs} blocks)", fc, nnz)
    per_it, total, rel, _ = fit_ours(X, k, iters, "threads", args.chunk_rows, seed)
    res["ours"] = per_it
    row("ours NMF (threads)", per_it, nnz, fa,
        f"{per_it / fb:5.2f}x floor(b)  fit {total:.2f} s, rel.err {rel:.4f}")
    if "sklearn" not in skip:
        print(f"  equal time budget = our threaded fit, {total:.2f} s:")
        for solver in ("mu", "cd"):
            sk_it = sklearn_per_iteration(X, k, iters, solver, seed)
            res[f"sk_{solver}"] = sk_it
            n_it, t, err = equal_time(X, k, total, sk_it, solver, seed)
            row(f"sklearn NMF(solver={solver!r})", sk_it, nnz, fa,
                f"ours is {sk_it / per_it:5.2f}x faster/it; in {t:.2f} s ({n_it} it) rel.err {err / normX:.4f}")
    return res


def _cpu_seconds(pids):
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def section_cluster(store, nnz, args, floor_a=None, floor_a_cpu=None):
    from distributed import Client, LocalCluster

    from dnmf_dask import open_corpus
    from dnmf_dask.parallel.memory import worker_malloc_config

    print("\n== ours on a LocalCluster, from the corpus store (persist=\"auto\": loaded into the workers when it takes at most a quarter of their memory) ==")
    out = {}
    for n_workers, threads in ((1, 1), (1, 2), (2, 1)):
        # the workers' malloc settings the library's own LocalCluster uses (dnmf_dask.parallel.memory)
        with worker_malloc_config(), LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=True,
                                                  dashboard_address=None, host="127.0.0.1") as cl, Client(cl) as client:
            pids = list(client.run(os.getpid).values())
            per_it, total, rel, (cpu_d, cpu_w) = fit_ours(lambda: open_corpus(store), args.k, args.iters, client, None,
                                                          args.seed, pids=pids)
        out[(n_workers, threads)] = per_it
        cpu = f"CPU/it driver+scheduler {cpu_d:.4f} s, workers {cpu_w:.4f} s"
        if floor_a_cpu:
            cpu += f" ({cpu_w / floor_a_cpu:.2f}x floor (a) CPU)"
        row(f"ours NMF, {n_workers} worker(s) x {threads} thread(s)", per_it, nnz, floor_a,
            extra=f"{per_it * n_workers * threads / nnz * 1e9:6.2f} ns/nz per core  fit {total:.2f} s, rel.err {rel:.4f}"
                  f"  load {os.getloadavg()[0]:.1f}; {cpu}")
    print(f"  2 workers x 1 thread vs 1 worker x 1 thread: {out[(1, 1)] / out[(2, 1)]:.2f}x the throughput; "
          f"vs 1 worker x 2 threads: {out[(1, 2)] / out[(2, 1)]:.2f}x")
    return out


def section_scaling(args, dtype):
    print("\n== growth of time per iteration with nnz (ours, threads; floor (a)) ==")
    sizes, ours, fa = [], [], []
    for frac in (0.25, 0.5, 1.0):
        nnz = int(args.nnz * frac)
        X = skewed_sparse(max(1, int(nnz / args.per_row)), args.features, nnz, dtype, args.seed)
        a, _, _ = floor_kernels(X, args.k, 3, args.chunk_rows, args.seed)
        o, _, _, _ = fit_ours(X, args.k, max(4, args.iters), "threads", args.chunk_rows, args.seed)
        sizes.append(X.nnz)
        ours.append(o)
        fa.append(a)
        print(f"  nnz {X.nnz:>12,}  rows {X.shape[0]:>9,}  ours {o:8.4f} s/it ({o / X.nnz * 1e9:6.2f} ns/nz)  "
              f"floor (a) {a:8.4f} s/it")
    x = np.asarray(sizes, float)
    for name, y in (("ours", ours), ("floor (a)", fa)):
        slope, icpt = np.polyfit(x, np.asarray(y), 1)
        pred = slope * x + icpt
        r2 = 1 - np.sum((y - pred) ** 2) / max(np.sum((y - np.mean(y)) ** 2), 1e-300)
        print(f"  {name}: slope {slope * 1e9:.2f} ns per nonzero, intercept {icpt * 1e3:.1f} ms, R^2 {r2:.3f}; "
              f"time ratio largest/smallest {y[-1] / y[0]:.2f} for nnz ratio {x[-1] / x[0]:.2f}")


def main(argv=None):
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    dtype = np.dtype(args.dtype)
    import dask

    import dnmf_dask
    from dnmf_dask.store.corpus import write_corpus

    print(f"dnmf_dask {dnmf_dask.__file__}; {os.cpu_count()} cores; load average {os.getloadavg()}")
    print(f"numpy {np.__version__}, dask {dask.__version__}")
    with tempfile.TemporaryDirectory(prefix="dnmf-bench-") as tmp:
        if not {"sparse", "cluster"} <= skip:
            nnz = int(args.nnz)
            t0 = time.perf_counter()
            X = skewed_sparse(max(1, int(nnz / args.per_row)), args.features, nnz, dtype, args.seed)
            store = Path(tmp) / "sparse.zarr"
            write_corpus(store, X, chunk_rows=args.chunk_rows)
            print(f"(made and stored the sparse corpus in {time.perf_counter() - t0:.1f} s)")
            res = {}
            if "sparse" not in skip:
                res = section_matrix("sparse", X, args, skip, store)
            if "cluster" not in skip:
                section_cluster(store, X.nnz, args, res.get("floor_a"), res.get("floor_a_cpu"))
            del X
        if "dense" not in skip:
            n, f = (int(v) for v in args.dense_shape.lower().split("x"))
            Xd = dense_lowrank(n, f, args.k, dtype, args.seed)
            store = Path(tmp) / "dense.zarr"
            write_corpus(store, Xd, chunk_rows=args.chunk_rows)
            section_matrix("dense", Xd, args, skip, store)
            del Xd
    if "scaling" not in skip:
        section_scaling(args, dtype)
    if "nnls" not in skip:
        print("\n== batched NNLS vs a loop of scipy.optimize.nnls (pipelines/bench/bench_nnls.py, n = 2000) ==")
        sys.path.insert(0, str(HERE))
        import bench_nnls

        bench_nnls.main(["--n", "2000", "--repeats", "3"])
    print(f"\nload average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
