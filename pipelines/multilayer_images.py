"""Wang's multilayer NMF experiment ("Multilayer NMF: An Experiment") on Fashion-MNIST.

A three-layer NMF network (HierarchicalNMF: X ≈ S_l (A0 … Al)ᵀ) on Fashion-MNIST images (pixels as
features, from the Debian package ``dataset-fashion-mnist``), against one-layer NMF at the same
ranks. The paper's observation: the images reconstructed from every layer resemble the originals,
and the deeper the layer, the larger the reconstruction error (information lost in a feed-forward
stack), beyond that of a one-layer NMF of the same rank.

    python pipelines/multilayer_images.py --out runs/multilayer_images

Writes config.json, results.json, table.md and fig_reconstructions.png (originals and their
reconstruction from every layer, and the first features of every layer as images).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from _common import debian_package, save_figure  # first: pins BLAS threads before numpy

import numpy as np

DEFAULTS = {"n_images": 10000, "split": "t10k", "ranks": [64, 32, 16], "max_iter": 300, "tol": 1e-5, "seed": 0,
            "scheduler": "threads", "n_show": 8}


def load(cfg):
    from dnmf_dask.ingest.images import idx_images

    root = debian_package("dataset-fashion-mnist") / "usr" / "share" / "datasets" / "fashion-mnist"
    return idx_images(root / f"{cfg['split']}-images-idx3-ubyte.gz", limit=cfg["n_images"])


def run(cfg, out: Path):
    from dnmf_dask.models import NMF, HierarchicalNMF

    warnings.simplefilter("ignore")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    im = load(cfg)
    print(f"multilayer_images: {im!r}", flush=True)
    X = im.X.astype(np.float64)
    ranks = tuple(int(r) for r in cfg["ranks"])
    common = dict(max_iter=cfg["max_iter"], tol=cfg["tol"], random_state=cfg["seed"], scheduler=cfg["scheduler"])
    t = time.time()
    deep = HierarchicalNMF(ranks, **common).fit(X)
    rows = [{"model": f"multilayer NMF {ranks}", "layer": l, "rank": k, "rel_error": float(e), "seconds": round(time.time() - t, 1)}
            for l, (k, e) in enumerate(zip(ranks, deep.layer_rel_error_))]
    print(f"  multilayer {ranks}: rel errors {[round(r['rel_error'], 4) for r in rows]}", flush=True)
    for k in ranks:
        t = time.time()
        m = NMF(k, **common).fit(X)
        rows.append({"model": "one-layer NMF", "layer": 0, "rank": k, "rel_error": float(m.history_["rel_error"][-1]),
                     "seconds": round(time.time() - t, 1)})
        print(f"  one-layer NMF k={k}: rel error {rows[-1]['rel_error']:.4f}", flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| rank | one-layer NMF rel. error | multilayer NMF: layer | rel. error of X ≈ S_l (A0…Al)ᵀ |", "|---|---|---|---|"]
    for l, k in enumerate(ranks):
        one = next(r for r in rows if r["model"] == "one-layer NMF" and r["rank"] == k)
        ml = next(r for r in rows if r["model"].startswith("multilayer") and r["layer"] == l)
        lines.append(f"| {k} | {one['rel_error']:.4f} | {l} | {ml['rel_error']:.4f} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    plot(deep, X, im, cfg, out / "fig_reconstructions.png")
    print(table)
    return rows


def plot(model, X, im, cfg, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dnmf_dask.evaluate.topics import effective_topics

    h, w = im.image_shape
    n = int(cfg["n_show"])
    idx = np.r_[[np.flatnonzero(im.y == c)[0] for c in range(min(n, int(im.y.max()) + 1))]] if im.y is not None else np.arange(n)
    L = len(model.A_)
    recon = [model.inverse_transform(np.asarray(model.transform(X[idx], layer=l)), layer=l) for l in range(L)]
    eff = effective_topics(model.A_)
    fig, axes = plt.subplots(1 + L + L, len(idx), figsize=(1.3 * len(idx), 1.35 * (1 + 2 * L)))
    for j, i in enumerate(idx):
        axes[0, j].imshow(X[i].reshape(h, w), cmap="gray_r")
        if im.label_names is not None:
            axes[0, j].set_title(str(im.label_names[im.y[i]]), fontsize=7)
        for l in range(L):
            axes[1 + l, j].imshow(recon[l][j].reshape(h, w), cmap="gray_r")
            T = eff[l]
            if j < T.shape[1]:
                axes[1 + L + l, j].imshow(T[:, j].reshape(h, w), cmap="viridis")
    for l in range(L):
        axes[1 + l, 0].set_ylabel(f"layer {l}\nk={model.A_[l].shape[1]}", fontsize=7)
        axes[1 + L + l, 0].set_ylabel(f"features\nlayer {l}", fontsize=7)
    axes[0, 0].set_ylabel("original", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Fashion-MNIST: reconstructions from every layer of a multilayer NMF, and its first features", fontsize=9)
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file with any keys of DEFAULTS")
    p.add_argument("--n-images", type=int, dest="n_images", help=f"images used (default {DEFAULTS['n_images']})")
    p.add_argument("--ranks", type=lambda s: [int(v) for v in s.split(",")], help="ranks of the layers, e.g. 64,32,16")
    p.add_argument("--out", default="runs/multilayer_images")
    a = p.parse_args(argv)
    cfg = dict(DEFAULTS)
    if a.config:
        cfg.update(json.loads(Path(a.config).read_text()))
    cfg.update({k: v for k, v in (("n_images", a.n_images), ("ranks", a.ranks)) if v is not None})
    run(cfg, Path(a.out))


if __name__ == "__main__":
    sys.exit(main())
