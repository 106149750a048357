"""The layer-angle and distance analysis of §4.5 of the Deep NMF paper (its Figs 15-17).

Reads a run folder of ``pipelines/deep_text.py`` (or ``deep_audio.py``): its ``corpus.zarr`` and
the fitted models in ``models/``. For every deep model, pairs of samples are followed from the
input X to the last layer's S(L) (:func:`dnmf_dask.evaluate.metrics.layer_angles`, unit vectors):
within a class (both samples of class a) and between classes (one of class a, one of another).
The paper expects the distance ratio out/in to be > 1 between classes and <= 1 within, and
pooling to be what makes between-class angles grow.

    python pipelines/layer_angles.py runs/deep_text            # writes angles.md, angles.json, fig15_16.png

Writes ``angles.json`` (every row of every model), ``angles.md`` (mean over classes per model)
and ``fig15_16.png`` (angle histograms of class 0 against the others at the input and the output
for no pooling and the largest pool; distance ratios by pool size) into the run folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

from _common import save_figure  # first: pins BLAS threads before numpy

import numpy as np


def _spec(name):
    m = re.search(r"L(\d+)_pool(\d+)_bp(\d+)", name)
    return None if m is None else tuple(int(v) for v in m.groups())


def analyse(run: Path, *, max_pairs=3000, seed=0, scheduler="threads"):
    from dnmf_dask.evaluate.metrics import layer_angles
    from dnmf_dask.parallel.scheduler import scheduler_context
    from dnmf_dask.store import open_corpus
    from dnmf_dask.store.model import load_model

    warnings.simplefilter("ignore")
    corpus = open_corpus(run / "corpus.zarr")
    truth = corpus.y_true if corpus.y_true is not None else corpus.y
    X = corpus.X.compute()
    names = None if corpus.label_names is None else [str(s) for s in corpus.label_names]
    out = {}
    paths = sorted(p for p in (run / "models").glob("*.zarr") if _spec(p.name))
    with scheduler_context(scheduler):
        for i, p in enumerate(paths, 1):
            m = load_model(p)
            L = len(m.A_)
            S = [np.asarray(m.transform(corpus, layer=l)) for l in range(L)]
            la = layer_angles([X] + S, truth, layer_pairs="first_last", max_pairs=max_pairs, random_state=seed,
                              layer_names=["X"] + [f"S{l}" for l in range(L)], label_names=names)
            out[p.name[:-5]] = la
            print(f"  [{i}/{len(paths)}] {p.name}: {len(la.rows)} rows", flush=True)
    return out


def summary(results) -> tuple[list, str]:
    rows, lines = [], ["| model | layers | pool | backprop | within: angle in → out | within: dist ratio | "
                       "between: angle in → out | between: dist ratio |", "|---|---|---|---|---|---|---|---|"]
    for name, la in results.items():
        L, pool, bp = _spec(name)
        rec = {"model": name, "layers": L, "pool_size": pool, "backprop_iter": bp}
        for rel in ("within", "between"):
            r = [x for x in la.rows if x["relation"] == rel]
            for key in ("angle_in_mean", "angle_out_mean", "dist_ratio_mean"):
                rec[f"{rel}_{key}"] = float(np.nanmean([x[key] for x in r]))
        rows.append(rec)
        lines.append(f"| {name} | {L} | {pool} | {bp} | {rec['within_angle_in_mean']:.1f}° → {rec['within_angle_out_mean']:.1f}° | "
                     f"{rec['within_dist_ratio_mean']:.3f} | {rec['between_angle_in_mean']:.1f}° → "
                     f"{rec['between_angle_out_mean']:.1f}° | {rec['between_dist_ratio_mean']:.3f} |")
    return rows, "\n".join(lines)


def plot(results, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deep = [r for r in rows if r["backprop_iter"] == max(x["backprop_iter"] for x in rows)]
    layers = sorted({r["layers"] for r in deep})
    pools = sorted({r["pool_size"] for r in deep})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    L = layers[-1]
    for ax, pool in zip(axes[:2], (pools[0], pools[-1])):
        name = next(r["model"] for r in deep if r["layers"] == L and r["pool_size"] == pool)
        la = results[name]
        c0 = min(k[0] for k in la.angles)
        for rel, color in (("within", "C0"), ("between", "C1")):
            a = la.angles[(c0, rel)]
            ax.hist(a[:, 0], bins=40, range=(0, 90), alpha=0.35, color=color, label=f"{rel}, input X")
            ax.hist(a[:, -1], bins=40, range=(0, 90), histtype="step", lw=1.6, color=color, label=f"{rel}, output S{L - 1}")
        cname = la.label_names[c0] if la.label_names else str(c0)
        ax.set_title(f"{L} layers, pool {pool}: angles of pairs with class {cname!r}", fontsize=9)
        ax.set_xlabel("angle (degrees)")
        ax.set_yscale("log")  # the input's pairs pile up near 90°
        ax.legend(fontsize=7, loc="upper left")
    width = 0.8 / (2 * len(layers))
    for j, (L, rel) in enumerate((L, rel) for L in layers for rel in ("between", "within")):
        v = [next((r[f"{rel}_dist_ratio_mean"] for r in deep if r["layers"] == L and r["pool_size"] == p), np.nan) for p in pools]
        axes[2].bar(np.arange(len(pools)) + (j - (2 * len(layers) - 1) / 2) * width, v, width, label=f"{L} layers, {rel}")
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[2].set_xticks(np.arange(len(pools)), [str(p) for p in pools])
    axes[2].set_xlabel("pool size")
    axes[2].set_title("distance ratio output / input (mean over classes)", fontsize=9)
    axes[2].set_ylim(0, 1.3)
    axes[2].legend(fontsize=7, ncol=2, loc="upper center")
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder of deep_text.py / deep_audio.py (corpus.zarr + models/)")
    p.add_argument("--max-pairs", type=int, default=3000, help="sampled pairs per class and relation")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair sampling")
    p.add_argument("--scheduler", default="threads")
    a = p.parse_args(argv)
    run = Path(a.run)
    print(f"layer_angles: {run}", flush=True)
    results = analyse(run, max_pairs=a.max_pairs, seed=a.seed, scheduler=a.scheduler)
    rows, table = summary(results)
    detail = {name: la.rows for name, la in results.items()}
    (run / "angles.json").write_text(json.dumps({"summary": rows, "rows": detail}, indent=1) + "\n")
    (run / "angles.md").write_text(table + "\n")
    plot(results, rows, run / "fig15_16.png")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
