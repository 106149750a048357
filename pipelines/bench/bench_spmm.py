"""Benchmark: the rank-specialised sparse kernels (dnmf_dask.kernels.spmm) alone against scipy.

    python pipelines/bench/bench_spmm.py                       # 4e6 nonzeros, k = 20, float32
    python pipelines/bench/bench_spmm.py --nnz 2e7 --k 1,7,20,64

On one CSR matrix (the skewed counts of ``bench_nmf.py``: log-normal row lengths, Zipf column
popularity), per rank k, in one process: ``X @ A``, ``Xᵀ @ S`` and one whole MU step of the
rows (``X A``, the update of S, ``Xᵀ S_new``) with scipy/numpy and with the kernels. Prints the
median wall time and the median CPU time of this process per call, both in ns per nonzero, and
the ratio scipy / kernels of each (CPU time moves less with the machine's load than wall time).
One BLAS thread (the MU step's ``S AᵀA`` is a small GEMM, as in a worker).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nmf import skewed_sparse  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nnz", type=float, default=4e6)
    p.add_argument("--per-row", type=float, default=100.0)
    p.add_argument("--features", type=int, default=20_000)
    p.add_argument("--k", default="20", help="comma-separated ranks")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def timed(fn, repeats):
    """(median wall seconds, median CPU seconds of this process) of ``fn()`` over ``repeats`` calls."""
    fn()  # warm-up (and the kernels' compile or cache load)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def main(argv=None):
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    from dnmf_dask.kernels import spmm
    from dnmf_dask.kernels.nmf import EPS

    dtype = np.dtype(args.dtype)
    nnz = int(args.nnz)
    X = skewed_sparse(max(1, int(nnz / args.per_row)), args.features, nnz, dtype, args.seed)
    print(f"X {X.shape[0]} x {X.shape[1]}, nnz {X.nnz:,}, {dtype}; load average {os.getloadavg()}")
    print(f"{'k':>3s}  {'product':<10s} {'scipy ns/nz':>18s} {'kernel ns/nz':>18s} {'ratio':>12s}")
    print(f"{'':>3s}  {'':<10s} {'wall':>8s} {'CPU':>9s} {'wall':>8s} {'CPU':>9s} {'wall':>5s} {'CPU':>6s}")
    rng = np.random.default_rng(args.seed)
    with threadpool_limits(limits=1, user_api="blas"):
        for k in (int(v) for v in args.k.split(",")):
            A = rng.random((X.shape[1], k)).astype(dtype)
            S = rng.random((X.shape[0], k)).astype(dtype)
            den = S @ (A.T @ A)

            def scipy_step():
                XA = X @ A
                S_new = S * XA / np.where(den == 0, EPS, den)
                return S_new, X.T @ S_new, float(np.einsum("ij,ij->", S, XA, dtype=np.float64))

            cases = (("X @ A", lambda: X @ A, lambda: spmm.csr_dense(X, A)),
                     ("X.T @ S", lambda: X.T @ S, lambda: spmm.csr_t_dense(X, S)),
                     ("MU step", scipy_step, lambda: spmm.mu_step(X, S, A, den)))
            for name, ref, ker in cases:
                (rw, rc), (kw, kc) = timed(ref, args.repeats), timed(ker, args.repeats)
                ns = 1e9 / X.nnz
                print(f"{k:>3d}  {name:<10s} {rw * ns:8.2f} {rc * ns:9.2f} {kw * ns:8.2f} {kc * ns:9.2f} "
                      f"{rw / kw:5.2f} {rc / max(kc, 1e-12):6.2f}")
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
