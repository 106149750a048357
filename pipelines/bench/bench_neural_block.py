"""Benchmark: NeuralNMF's per-block compute (kernels/neural.py) on one large sparse float32 block,
stage by stage, against the time to read and decode the same block from a zarr store (floor (c)
of issue #7).

    python pipelines/bench/bench_neural_block.py                      # 20,000 x 20,000, ~140 nz/row
    python pipelines/bench/bench_neural_block.py --repeats 7 --ranks 20,10
    DNMF_DASK_NUMBA=0 python pipelines/bench/bench_neural_block.py    # numpy/scipy only

The block: CSR float32 counts (``bench_nmf.skewed_sparse``: log-normal row lengths, Zipf(1)
column popularity, values 1 + Poisson(1)), ``--per-row`` nonzeros per row on average. Two sets
of factors (float64, as ``NeuralNMF`` holds them; ``--factor-dtype float32`` for the kernel's
all-float32 path):

* ``random``: ``init="random"``'s scale (|N(0,1)| · sqrt(mean(X) / k0), then 1/sqrt(k0));
* ``trained``: A0 from ``--mu-iters`` MU iterations of NMF(k0) on the block, A1 from as many MU
  iterations of NMF(k1) on ``S0 = q(A0, X)`` (the hierarchical start NeuralNMF refines; its
  supports are sparse, which changes the NNLS's work).

For each set, ``chunk_cost_grad`` (what an out-of-core task calls per block and pass: checks,
forward, cost, gradients, no warm start) is timed ``--repeats`` times after a warm-up, with
``DNMF_DASK_SPMM`` on and off; the kernel's stage timer (``kernels.neural.STAGE_TIMES``) splits
each call's CPU time into stages. ``BlockPass`` (the in-memory path: checks once, warm-started
NNLS) is timed as well, and the dask path's task (``cost_grad_task``) cold and warm-started
from packed supports. Printed: median CPU ns per nonzero per stage and in total, the median
wall time, and the ratio to the read floor measured in the same run: ``_load_block`` of the
block written by ``write_corpus`` (the zarr decode and the CSR build, nothing else). One BLAS
thread (as in a worker). Results: BENCHMARKS.md, "NeuralNMF block kernel on sparse float32".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nmf import skewed_sparse  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--features", type=int, default=20_000)
    p.add_argument("--per-row", type=float, default=140.0)
    p.add_argument("--ranks", default="20,10")
    p.add_argument("--factor-dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--factors", default="random,trained")
    p.add_argument("--mu-iters", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--spmm", default="1,0", help="DNMF_DASK_SPMM values to time, comma-separated")
    p.add_argument("--store", default=None, help="directory for the zarr store (default: a temporary one)")
    p.add_argument("--apart", default="0.01,0.1,0.25",
                   help="warm starts of the task from the supports at factors this far apart (|1 + a z| per entry)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def corpus_block(rows, features, per_row, seed):
    """``skewed_sparse`` with ~``per_row`` nonzeros per row after its duplicates are merged (Zipf
    columns repeat: the draw is scaled once by the merged fraction of a first draw)."""
    target = int(rows * per_row)
    X = skewed_sparse(rows, features, target, np.float32, seed)
    return skewed_sparse(rows, features, int(target * target / X.nnz), np.float32, seed)


def mu_factor(X, k, iters, seed):
    """(n_features, k) A of ``iters`` Frobenius MU iterations of X ≈ S Aᵀ (plain scipy/numpy)."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(X.mean() / k)
    S = scale * rng.random((X.shape[0], k))
    A = scale * rng.random((X.shape[1], k))
    for _ in range(iters):
        S *= np.asarray(X @ A) / np.maximum(S @ (A.T @ A), 1e-12)
        A *= np.asarray(X.T @ S) / np.maximum(A @ (S.T @ S), 1e-12)
    return A


def factor_sets(X, ranks, names, iters, dtype, seed):
    from dnmf_dask.kernels.nnls import nnls

    out = {}
    k0, k1 = ranks
    rng = np.random.default_rng(seed + 1)
    if "random" in names:
        out["random"] = [np.sqrt(X.mean() / k0) * np.abs(rng.standard_normal((X.shape[1], k0))),
                         np.abs(rng.standard_normal((k0, k1))) / np.sqrt(k0)]
    if "trained" in names:
        X64 = X.astype(np.float64)
        A0 = mu_factor(X64, k0, iters, seed)
        S0 = nnls(A0, X64)
        out["trained"] = [A0, mu_factor(S0, k1, iters, seed + 2)]
    return {name: [A.astype(dtype) for A in As] for name, As in out.items()}


def timed_cpu(fn, repeats):
    """Per call after one warm-up: list of (wall s, CPU s, {stage: CPU s})."""
    from dnmf_dask.kernels import neural

    fn()
    runs = []
    for _ in range(repeats):
        neural.STAGE_TIMES = {}
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs.append((wall, cpu, neural.STAGE_TIMES))
        neural.STAGE_TIMES = None
    return runs


def read_floor(X, store, repeats):
    """Median (wall, CPU) seconds of ``_load_block`` of X written as one block."""
    from dnmf_dask.store import write_corpus
    from dnmf_dask.store.corpus import _load_block

    path = os.path.join(store, "neural_block.zarr")
    write_corpus(path, X, chunk_rows=X.shape[0], overwrite=True)
    _load_block(path, 0, True, X.shape, X.dtype)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        Xb = _load_block(path, 0, True, X.shape, X.dtype)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert Xb.nnz == X.nnz
    return float(np.median(wall)), float(np.median(cpu))


def task_rows(X, As, args, ns):
    """The dask path's block task (``parallel.tasks.cost_grad_task``: chunk_cost_grad without the
    layer energies, the statistics, the supports packed) cold and warm-started from the packed
    supports of a pass at the same factors and at factors ``--apart`` apart (|1 + a z| per entry,
    z ~ N(0, 1); a PGD step moves each factor by 0.00625-0.25 of its norm)."""
    from dnmf_dask.parallel.tasks import cost_grad_task

    kw = dict(B=None, lam=0.0, cost="reconstruction", label_loss="frobenius")
    rng = np.random.default_rng(args.seed + 7)
    starts = {"cold": None, "warm (same factors)": cost_grad_task(X, None, None, As=As, **kw)[0]}
    for a in (float(v) for v in args.apart.split(",") if v):
        near = [A * np.abs(1.0 + a * rng.standard_normal(A.shape)) for A in As]
        starts[f"warm (factors {a:g} apart)"] = cost_grad_task(X, None, None, As=near, **kw)[0]
    for name, warm in starts.items():
        runs = timed_cpu(lambda: cost_grad_task(X, None, warm, As=As, **kw), args.repeats)
        cpu = float(np.median([r[1] for r in runs]))
        nn = {s: float(np.median([r[2].get(s, 0.0) for r in runs])) for s in runs[0][2] if s.startswith("nnls")}
        extra = "" if warm is None else f"; supports {warm.nbytes / X.shape[0] * 1000 / 1024:.1f} KB per 1,000 rows"
        print(f"  cost_grad_task {name:<27s} {cpu * ns:5.1f} ns/nz CPU; "
              + ", ".join(f"{s} {v * ns:.2f}" for s, v in nn.items()) + extra)


def main(argv=None):
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    from dnmf_dask.kernels import neural

    ranks = tuple(int(v) for v in args.ranks.split(","))
    X = corpus_block(args.rows, args.features, args.per_row, args.seed)
    nnz = X.nnz
    print(f"X {X.shape[0]} x {X.shape[1]}, nnz {nnz:,} ({nnz / X.shape[0]:.0f} per row), float32; "
          f"ranks {ranks}, factors {args.factor_dtype}; DNMF_DASK_NUMBA={os.environ.get('DNMF_DASK_NUMBA', '(unset)')}; "
          f"load average {os.getloadavg()}")
    ns = 1e9 / nnz
    with threadpool_limits(limits=1, user_api="blas"), tempfile.TemporaryDirectory() as tmp:
        fw, fc = read_floor(X, args.store or tmp, max(args.repeats, 5))
        print(f"read floor (c): _load_block {fw * ns:.1f} ns/nz wall, {fc * ns:.1f} ns/nz CPU")
        sets = factor_sets(X, ranks, args.factors.split(","), args.mu_iters, np.dtype(args.factor_dtype), args.seed)
        for name, As in sets.items():
            S = neural.forward(X, As)
            zeros = ", ".join(f"{np.mean(s == 0):.2f}" for s in S)
            print(f"\nfactors {name}: zero fraction of S per layer {zeros}")
            for spmm in args.spmm.split(","):
                os.environ["DNMF_DASK_SPMM"] = spmm
                runs = timed_cpu(lambda: neural.chunk_cost_grad(X, As), args.repeats)
                bp = neural.BlockPass(X, layer_energies=False)
                bp_runs = timed_cpu(lambda: bp(As), args.repeats)
                stages = list(runs[0][2])
                med = {s: float(np.median([r[2].get(s, 0.0) for r in runs])) for s in stages}
                cpu = float(np.median([r[1] for r in runs]))
                wall = float(np.median([r[0] for r in runs]))
                print(f"  DNMF_DASK_SPMM={spmm}: chunk_cost_grad {cpu * ns:.1f} ns/nz CPU "
                      f"({wall * ns:.1f} wall) = {cpu / fc:.2f}x the read's CPU; BlockPass "
                      f"{np.median([r[1] for r in bp_runs]) * ns:.1f} ns/nz CPU")
                for s in stages:
                    print(f"    {s:<28s} {med[s] * ns:6.2f} ns/nz")
                print(f"    {'(checks, dtype, rest)':<28s} {(cpu - sum(med.values())) * ns:6.2f} ns/nz")
                if spmm == "1":
                    task_rows(X, As, args, ns)
    os.environ.pop("DNMF_DASK_SPMM", None)


if __name__ == "__main__":
    main()
