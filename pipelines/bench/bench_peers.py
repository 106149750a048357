"""Benchmark: our SSNMF against the authors' PyPI package ``ssnmf`` (same data, rank, iterations).

    pip install -e .[bench]        # ssnmf (it imports torch)
    python pipelines/bench/bench_peers.py [--n 5000] [--features 1000] [--k 20] [--iters 100]

Model (the papers' eq. (2), Frobenius data and label terms, ``ssnmf`` modelNum=3):
``||X - S Aᵀ||² + lam ||L ⊙ (Y - S Bᵀ)||²`` in our orientation (rows = samples); ``ssnmf``
factors the transpose (X is features × samples). Both start from uniform random factors of the
same scale and run ``--iters`` multiplicative updates with no early stop; the objective is
recomputed here from each model's final factors with one formula. Our SSNMF runs with
``scheduler="synchronous"`` and ``"threads"`` on in-memory data.

Second part (``--neural``, needs ``neuralnmf``): unsupervised Neural NMF, our ``NeuralNMF``
against the authors' ``neuralnmf`` (``NeuralNMF.Neural_NMF`` + ``train``, projected gradient
descent), same ranks, same number of full-batch epochs, both from random factors, on the
paper's Table 1 problem (87 x 90, ranks 9, 4) and optionally ``--neural-big`` (5000 x 2000,
ranks 20, 10). Reported: seconds per epoch (fit time / epochs), in wall and in CPU time
of the process (``time.process_time``; steadier on a shared machine, and with
``--peer-threads 1`` both sides compute on one core), and the relative
reconstruction error ``||X - S_L (A_1 ... A_L)ᵀ|| / ||X||`` each reaches (their learning rate
and step rules differ from ours, so the errors show each package at its own defaults).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="samples")
    p.add_argument("--features", type=int, default=1000)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--labeled", type=float, default=0.5, help="fraction of labeled samples")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neural", action="store_true", help="also Neural NMF vs neuralnmf")
    p.add_argument("--neural-big", action="store_true", help="add the 5000 x 2000 Neural NMF problem")
    p.add_argument("--epochs", type=int, default=10, help="Neural NMF epochs")
    p.add_argument("--skip-ssnmf", action="store_true")
    p.add_argument("--same-start", action="store_true",
                   help="Neural NMF: ours starts from neuralnmf's initial factors (warm_start), not its own random ones")
    p.add_argument("--peer-threads", type=int, default=0,
                   help="torch threads for neuralnmf (0 = torch's default); with 1 both sides run on "
                        "one core and the CPU-time ratio is the steadiest measure on a shared machine")
    return p.parse_args(argv)


def make_data(n, f, c, k, labeled, seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, c, n)
    centers = rng.random((c, k)) ** 3
    S = centers[y_true] + 0.3 * rng.random((n, k))
    X = S @ rng.random((k, f)) + 0.05 * rng.random((n, f))
    y = np.where(rng.random(n) < labeled, y_true, -1)
    return X, y


def objective(X, y, S, A, B, lam, n_classes):
    Y = np.zeros((len(y), n_classes))
    lab = y >= 0
    Y[np.flatnonzero(lab), y[lab]] = 1
    R = X - S @ A.T
    RY = (Y - S @ B.T) * lab[:, None]
    return float(np.sum(R * R) + lam * np.sum(RY * RY))


def neural_peer(X, ranks, epochs, seed):
    """The authors' Neural NMF (unsupervised, default 'Recon Loss', gd): (seconds, rel. error)."""
    import torch
    from NeuralNMF import Neural_NMF, train

    Xt = torch.from_numpy(np.ascontiguousarray(X.T))  # features x samples
    train(Neural_NMF([X.shape[1], *ranks]), Xt, epoch=1, lr=1000, verbose=False)  # warm-up, untimed
    torch.manual_seed(seed)
    net = Neural_NMF([X.shape[1], *ranks])
    gc.collect()  # (a full collection due from the imports must not land in either clock)
    t0, c0 = time.perf_counter(), time.process_time()
    train(net, Xt, epoch=epochs, lr=1000, verbose=False)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        S = net(Xt)[-1]
        A = net.lsqnonneglst[0].A
        for layer in net.lsqnonneglst[1:]:
            A = A @ layer.A
        err = float(torch.linalg.norm(Xt - A @ S) / torch.linalg.norm(Xt))
    return t, c, err


def peer_start(X, ranks, seed):
    """neuralnmf's initial factors for this seed (what :func:`neural_peer` starts from), as numpy."""
    import torch
    from NeuralNMF import Neural_NMF

    torch.manual_seed(seed)
    net = Neural_NMF([X.shape[1], *ranks])
    return [layer.A.detach().numpy().copy() for layer in net.lsqnonneglst]


def neural_ours(X, ranks, epochs, seed, start=None):
    """Our fit: (seconds, CPU seconds, rel. error). ``start``: initial factors (our default: own random)."""
    import warnings

    import dnmf_dask as dd

    m = dd.NeuralNMF(tuple(ranks), init="random", epochs=epochs, tol=0, random_state=seed, scheduler="synchronous")
    warm = None
    if start is not None:  # a "fitted" model holding the start, for fit(warm_start=...)
        warm = dd.NeuralNMF(tuple(ranks))
        warm.A_, warm.B_ = [np.asarray(A, dtype=np.float64) for A in start], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm-up, untimed, as for the peer: the first fit of a process imports distributed
        # (scheduler_context) and scans the BLAS libraries (threadpoolctl), seconds on a busy machine
        dd.NeuralNMF(tuple(ranks), init="random", epochs=1, tol=0, random_state=seed, scheduler="synchronous").fit(X)
        gc.collect()  # (a full collection due from the imports took ~0.3 s inside our clock)
        t0, c0 = time.perf_counter(), time.process_time()
        m.fit(X, warm_start=warm)
    return time.perf_counter() - t0, time.process_time() - c0, m.history_["rel_error"][-1]


def neural_section(args):
    from dnmf_dask.ingest.synthetic import hierarchical_blocks

    problems = [("Table 1, 90 x 87", hierarchical_blocks(args.seed)[0], (9, 4))]
    if args.neural_big:
        rng = np.random.default_rng(args.seed)
        Xb = rng.random((5000, 20)) @ rng.random((20, 2000)) + 0.1 * rng.random((5000, 2000))
        problems.append(("5000 x 2000", Xb, (20, 10)))
    if args.peer_threads:
        import torch

        torch.set_num_threads(args.peer_threads)
    print(f"\nNeural NMF, unsupervised, {args.epochs} full-batch epochs (ours: one BLAS thread; "
          f"neuralnmf: torch with {args.peer_threads or 'its default'} threads; "
          f"{'both from neuralnmf' + chr(39) + 's initial factors' if args.same_start else 'each from its own random start'})")
    for name, X, ranks in problems:
        start = peer_start(X, ranks, args.seed) if args.same_start else None
        to, co, eo = neural_ours(X, ranks, args.epochs, args.seed, start)
        tp, cp, ep = neural_peer(X, ranks, args.epochs, args.seed)
        e = args.epochs / 1e3
        print(f"  {name}, ranks {ranks}: ours {to / e:8.2f} ms/epoch ({co / e:.2f} CPU) rel.err {eo:.4f} | "
              f"neuralnmf {tp / e:8.2f} ms/epoch ({cp / e:.2f} CPU) rel.err {ep:.4f} | "
              f"ours {tp / to:5.1f}x faster in wall time, {cp / co:5.1f}x in CPU time")


def main(argv=None):
    args = parse_args(argv)
    import warnings

    import dnmf_dask as dd

    if args.neural:
        neural_section(args)
    if args.skip_ssnmf:
        return 0
    X, y = make_data(args.n, args.features, args.classes, args.k, args.labeled, args.seed)
    c, k = args.classes, args.k
    print(f"X {X.shape}, {c} classes, {np.mean(y >= 0):.0%} labeled, k={k}, lam={args.lam}, {args.iters} iterations")
    res = {}
    for sched in ("synchronous", "threads"):
        m = dd.SSNMF(k, lam=args.lam, init="random", init_B="random", max_iter=args.iters, tol=0,
                     random_state=args.seed, scheduler=sched)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            S = m.fit_transform(X, y)
        t = time.perf_counter() - t0
        res[f"ours ({sched})"] = (t, objective(X, y, S, m.A_[0], m.B_, args.lam, c))

    try:
        from ssnmf import SSNMF as PeerSSNMF
    except ImportError as e:  # pragma: no cover - benchmark-only dependency
        print(f"ssnmf not installed ({e}); pip install -e .[bench]")
        PeerSSNMF = None
    if PeerSSNMF is not None:
        rng = np.random.default_rng(args.seed)
        scale = np.sqrt(X.mean() / k)
        Y = np.zeros((c, len(y)))
        lab = y >= 0
        Y[y[lab], np.flatnonzero(lab)] = 1
        L = np.tile(lab.astype(float), (c, 1))
        peer = PeerSSNMF(X.T.copy(), k, modelNum=3, Y=Y, L=L, lam=args.lam, tol=-np.inf,
                         A=scale * rng.random((X.shape[1], k)), S=scale * rng.random((k, X.shape[0])),
                         B=rng.random((c, k)) / np.sqrt(k))
        t0 = time.perf_counter()
        peer.mult(numiters=args.iters, saveerrs=False)
        t = time.perf_counter() - t0
        res["ssnmf (PyPI)"] = (t, objective(X, y, peer.S.T, peer.A, peer.B, args.lam, c))

    ref_t = res.get("ssnmf (PyPI)", (None,))[0]
    for name, (t, obj) in res.items():
        extra = f"  {ref_t / t:5.2f}x faster than ssnmf" if ref_t and not name.startswith("ssnmf") else ""
        print(f"  {name:22s} {t:8.3f} s  ({t / args.iters * 1e3:7.2f} ms/it)  objective {obj:.6g}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
