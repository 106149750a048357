"""Losses and solvers vs scikit-learn: time per iteration and final objective, same start.

    python pipelines/bench/bench_solvers.py [--n 20000] [--features 5000] [--density 0.01] [--k 20] [--iter 30]

Sparse random X (CSR), k components, the same random (W, H) start for both; each pair runs a fixed
number of iterations (tol=0). Ours runs on the threaded scheduler with the default row blocks.
Printed: seconds per iteration of each, the ratio sklearn/ours (> 1: ours faster) and the relative
difference of the final factors (the algorithms are the same, so it should be ~1e-10).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scipy.sparse as sp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--features", type=int, default=5000)
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--iter", type=int, default=30)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    from sklearn.decomposition import NMF as SKNMF

    import dnmf_dask as dd

    rng = np.random.default_rng(0)
    X = sp.random(args.n, args.features, density=args.density, format="csr", random_state=1)
    W0, H0 = rng.random((args.n, args.k)), rng.random((args.k, args.features))
    cases = [("frobenius MU", dict(solver="mu"), dict(solver="mu")),
             ("KL MU", dict(solver="mu", beta_loss="kullback-leibler"), dict(beta_loss="kl")),
             ("HALS / cd", dict(solver="cd"), dict(solver="hals")),
             ("frobenius MU + L1/L2", dict(solver="mu", alpha_W=1e-6, l1_ratio=0.5), dict(alpha_W=1e-6, l1_ratio=0.5))]
    dd.NMF(args.k, max_iter=2, tol=0, scheduler="threads").fit(X)  # warm-up (thread pool, imports)
    print(f"X {args.n} x {args.features}, nnz {X.nnz}, k={args.k}, {args.iter} iterations")
    print("| case | sklearn s/iter | ours s/iter | sklearn/ours | max rel diff of A |")
    print("|---|---|---|---|---|")
    for name, skw, ours in cases:
        t = time.perf_counter()
        sk = SKNMF(args.k, init="custom", max_iter=args.iter, tol=0, **skw)
        sk.fit_transform(X, W=W0.copy(), H=H0.copy())
        t_sk = (time.perf_counter() - t) / args.iter
        t = time.perf_counter()
        m = dd.NMF(args.k, init="custom", max_iter=args.iter, tol=0, scheduler="threads", **ours)
        m.fit(X, W=W0, H=H0)
        t_dd = (time.perf_counter() - t) / args.iter
        diff = np.abs(m.components_ - sk.components_).max() / np.abs(sk.components_).max()
        print(f"| {name} | {t_sk:.3f} | {t_dd:.3f} | {t_sk / t_dd:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
