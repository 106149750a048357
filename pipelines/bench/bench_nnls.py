"""Benchmark: batched block-principal-pivoting NNLS vs a Python loop of scipy.optimize.nnls.

    python pipelines/bench/bench_nnls.py [--n 10000] [--k 20] [--features 200] [--threads 1]

Ours is the compiled per-row pivoting of :func:`dnmf_dask.kernels.fused.bpp_rows` when numba is
importable (the batched numpy pivoting is timed as well, for reference), else the numpy one.

Problem: random nonnegative A (n_features x k), X = S_true A^T + noise with S_true
nonnegative; two scenarios by default:

* ``dense``  - S_true uniform(0, 1) everywhere: few active constraints at the optimum;
* ``sparse`` - half of S_true's entries are 0: about 30% of the optimal S is 0, and almost
  every sample has its own passive set (the hard case for grouping by passive set).

Both solvers must agree to ~1e-8 (max abs difference relative to max |S|).  Timings are the
best of ``--repeats`` runs for the batched solver (which includes forming X @ A and A^T A) and
one full loop for scipy, in CPU time of the process (``time.process_time``: on a machine
shared with other jobs a single-threaded run's CPU time is much steadier than its wall time;
the wall-clock ratio is printed too).  BLAS threads are limited to ``--threads`` (default 1, so
the comparison is single-core, like the scipy loop; CPU time then equals busy time on one core).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="number of samples (rows of X)")
    p.add_argument("--k", type=int, default=20, help="number of components")
    p.add_argument("--features", type=int, default=200, help="number of features")
    p.add_argument("--noise", type=float, default=0.01, help="std of the Gaussian noise")
    p.add_argument(
        "--scenario", choices=["dense", "sparse", "both"], default="both",
        help="zero pattern of S_true (see the module docstring)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timing repeats of the batched solver")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (0 = library default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np
    from scipy.optimize import nnls as scipy_nnls

    from dnmf_dask.kernels import fused
    from dnmf_dask.kernels.nnls import nnls

    try:  # also limit the BLAS pools directly, in case numpy was imported before
        from threadpoolctl import threadpool_limits

        if args.threads > 0:
            threadpool_limits(limits=args.threads)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass

    scenarios = ["dense", "sparse"] if args.scenario == "both" else [args.scenario]
    print(f"n={args.n} samples, k={args.k}, n_features={args.features}, noise={args.noise}, "
          f"BLAS threads={args.threads or 'default'}")
    ok = True
    ratios = {}
    for scenario in scenarios:
        rng = np.random.default_rng(args.seed)
        A = rng.random((args.features, args.k))
        S_true = rng.random((args.n, args.k))
        if scenario == "sparse":
            S_true *= rng.random((args.n, args.k)) < 0.5
        X = S_true @ A.T + args.noise * rng.standard_normal((args.n, args.features))

        nnls(A, X[:100])  # warm-up
        times, walls = [], []
        for _ in range(max(1, args.repeats)):
            t0, w0 = time.process_time(), time.perf_counter()
            S, info = nnls(A, X, return_info=True)
            times.append(time.process_time() - t0)
            walls.append(time.perf_counter() - w0)
        t_ours, w_ours = min(times), min(walls)

        t_numpy = None
        if fused.AVAILABLE:  # the batched numpy pivoting, which the compiled per-row kernel replaces
            fused.AVAILABLE = False
            try:
                tn = []
                for _ in range(max(1, args.repeats)):
                    t0 = time.process_time()
                    nnls(A, X)
                    tn.append(time.process_time() - t0)
                t_numpy = min(tn)
            finally:
                fused.AVAILABLE = True

        t0, w0 = time.process_time(), time.perf_counter()
        R = np.empty_like(S)
        for i in range(args.n):
            R[i] = scipy_nnls(A, X[i])[0]
        t_scipy, w_scipy = time.process_time() - t0, time.perf_counter() - w0

        diff = float(np.max(np.abs(S - R)) / max(1.0, float(np.max(np.abs(R)))))
        same = diff <= 1e-8
        ok &= same
        ratio = t_scipy / t_ours
        ratios[scenario] = ratio
        print(f"\n[{scenario}] zeros in S: {np.mean(S == 0):.1%}, BPP iterations: {info['n_iter']}, "
              f"backup-rule rows: {info['n_backup']}, fallback rows: {info['n_fallback']}")
        how = "compiled per-row BPP (numba)" if fused.AVAILABLE else "batched numpy BPP"
        print(f"  ours         : {t_ours:.4f} s CPU  (best of {len(times)}; median {np.median(times):.4f} s; {how})")
        if t_numpy is not None:
            print(f"  batched numpy BPP (no numba): {t_numpy:.4f} s CPU  ({t_scipy / t_numpy:.1f}x the scipy loop)")
        print(f"  scipy loop   : {t_scipy:.4f} s CPU")
        print(f"  speed ratio  : {ratio:.1f}x in CPU time  ({w_scipy / w_ours:.1f}x in wall time: "
              f"{w_ours:.4f} s vs {w_scipy:.4f} s)")
        print(f"  max |S - S_scipy| / max(1, max|S|) = {diff:.2e}  ({'OK' if same else 'MISMATCH'})")
    print("\nsummary (CPU time): " + ", ".join(f"{s}: {r:.1f}x" for s, r in ratios.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
