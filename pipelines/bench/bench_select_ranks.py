"""Rank selection: how often the true ranks are recovered, and how long it takes.

    python pipelines/bench/bench_select_ranks.py [--seeds 5] [--first-seed 0] [--restarts N] [--no-bbc] [--scheduler threads]

1. The Neural NMF toy hierarchy (``hierarchical_blocks``, 90 x 87, true ranks 9, 4, 2): for each
   seed, ``select_ranks(X, 2..12, n_layers=3)`` with the elbow and the stability methods.
2. A planted rank on a real corpus subset: 600 BBC News articles (TF-IDF, 2,000 words); a rank-6
   NMF of it (scikit-learn) gives real-text topics A and weights S; X = S Aᵀ + 2% noise has rank 6
   planted in real geometry; ``select_ranks(X, 2..12)`` should return 6. The raw TF-IDF subset
   (no planted rank; 5 classes) is reported for information.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--restarts", type=int, default=None, help="default: select_ranks' (8 elbow, 12 stability)")
    p.add_argument("--bbc-restarts", type=int, default=4)
    p.add_argument("--toy", action=argparse.BooleanOptionalAction, default=True, help="run the toy part")
    p.add_argument("--bbc", action=argparse.BooleanOptionalAction, default=True, help="run the BBC part")
    p.add_argument("--methods", default="elbow,stability", help="toy methods, comma-separated")
    p.add_argument("--scheduler", default="threads")
    args = p.parse_args(argv)

    import dnmf_dask as dd
    from dnmf_dask.ingest.synthetic import hierarchical_blocks
    from dnmf_dask.models.selection import _choose

    for method in args.methods.split(",") if args.toy else ():
        ok, t = 0, []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            X, _ = hierarchical_blocks(seed)
            r = dd.select_ranks(X, range(2, 13), method=method, n_layers=3, n_restarts=args.restarts,
                                random_state=seed, scheduler=args.scheduler)
            ok += r.ranks == [9, 4, 2]
            t.append(r.elapsed)
            print(f"toy seed {seed} {method}: ranks {r.ranks} in {r.elapsed:.1f}s", flush=True)
            if method == "stability":
                print(r.to_text(), flush=True)
        print(f"toy {method}: (9, 4, 2) recovered for {ok} of {args.seeds} seeds; median {np.median(t):.1f}s per selection")

    if not args.bbc:
        return
    from sklearn.decomposition import NMF as SKNMF
    from sklearn.feature_extraction.text import TfidfVectorizer

    from dnmf_dask.ingest.bbc import load_bbc_news

    docs, labels, _ = load_bbc_news()
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(docs), 600, replace=False))
    T = TfidfVectorizer(max_features=2000, stop_words="english").fit_transform([docs[i] for i in idx])
    sk = SKNMF(6, init="nndsvda", max_iter=400, random_state=0)
    S = sk.fit_transform(T)
    Xp = S @ sk.components_
    Xp = Xp + 0.02 * Xp.mean() * rng.random(Xp.shape)
    for name, data in ((f"BBC planted rank 6 ({Xp.shape[0]}x{Xp.shape[1]})", Xp),
                       ("BBC raw TF-IDF subset (5 classes, no planted rank)", T)):
        t0 = time.perf_counter()
        r = dd.select_ranks(data, range(2, 13), n_restarts=args.bbc_restarts, max_iter=200, random_state=0,
                            scheduler=args.scheduler)
        stable = _choose(r.table, "stability", r.params["min_silhouette"], None)  # the stability rule, same restarts
        print(f"{name}: elbow {r.ranks[0]}, stability {stable} "
              f"({args.bbc_restarts} restarts, {time.perf_counter() - t0:.1f}s)")
        print(r.to_text())


if __name__ == "__main__":
    main()
