"""Benchmark: relative error reached in a time budget by our MU and HALS and scikit-learn's cd.

    python pipelines/bench/bench_equal_time.py                 # 2.06e7 nonzeros (the #7 case), ~1 min
    python pipelines/bench/bench_equal_time.py --nnz 4e6

Each row is one fit of ``n`` iterations from the same random start (``init="random"``,
``tol=0``) on the skewed sparse count matrix of ``bench_nmf.py``, threads scheduler; it prints
the fit's seconds and the relative error ``||X - S A^T||_F / ||X||_F`` it reached.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    from sklearn.decomposition import NMF as SkNMF

    from bench_nmf import skewed_args, skewed_sparse

    args = skewed_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    from dnmf_dask import NMF

    X = skewed_sparse(int(args.nnz / args.per_row), args.features, int(args.nnz), np.dtype("float32"), args.seed)
    norm = float(np.sqrt((X.data.astype(np.float64) ** 2).sum()))
    print(f"X {X.shape[0]:,} x {X.shape[1]:,}, {X.nnz:,} nonzeros, k = {args.k}")
    for solver, iters in (("mu", (2, 4, 8)), ("hals", (2, 4, 8))):
        for n in iters:
            m = NMF(args.k, init="random", solver=solver, max_iter=n, tol=0, random_state=args.seed, scheduler="threads")
            t0 = time.perf_counter()
            m.fit(X)
            print(f"  ours {solver:4s} {n} it: {time.perf_counter() - t0:6.2f} s  rel.err {m.history_['rel_error'][-1]:.4f}")
    for n in (1, 2, 3):
        t0 = time.perf_counter()
        sk = SkNMF(args.k, init="random", solver="cd", max_iter=n, tol=0, random_state=args.seed).fit(X)
        print(f"  scikit-learn cd {n} it: {time.perf_counter() - t0:6.2f} s  rel.err {sk.reconstruction_err_ / norm:.4f}")
    return 0


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")  # scikit-learn's and our max_iter ConvergenceWarnings
    sys.exit(main())
