"""The Deep NMF paper's text study (§4.1-4.2, Fig. 11) on the BBC News corpus.

Paragraphs are the samples, documents the groups (pooling never crosses a document), TF-IDF
features; a stratified, seeded 1% of the documents of every class keep their labels. For every
seed: single-layer SSNMF with rank 20 against Deep NMF with 2 and 3 layers (rank 20 per layer)
and max pooling over {0, 3, 5, 7} consecutive paragraphs, each as the forward pass alone
(multilayered NMF with pooling, ``backprop_iter=0``) and with backpropagation. Scores: accuracy
on the paragraphs whose label was hidden, and purity of the clusters ``argmax S(L)`` (all
paragraphs). The paper reports SSNMF at 46% and deep NMF above it (its Fig. 11 gives the deep
numbers only as bars).

    python pipelines/deep_text.py --seeds 0,1,2 --out runs/deep_text
    python pipelines/deep_text.py --config my.json          # any key of DEFAULTS

Writes into the run folder: ``config.json`` (everything needed to rerun it), ``results.json``
(one row per seed and model), ``table.md`` (mean ± std over seeds), ``fig11.png``, and for the
first seed the fitted models (``models/*.zarr``) and its corpus store, which
``pipelines/layer_angles.py`` reads for the §4.5 analysis.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from _common import save_figure  # first: pins BLAS threads before numpy

import numpy as np

DEFAULTS = {
    "seeds": [0],
    "label_fraction": 0.01,
    "label_unit": "document",  # 'document': whole documents keep labels; 'paragraph': single paragraphs
    "rank": 20,
    "deeper_rank": 20,  # rank of layers 1, 2 (the paper: "rank restriction fixed to 20")
    "layers": [2, 3],
    "pool_sizes": [0, 3, 5, 7],
    "backprop_iters": [0, 20],  # 0 = forward pass only (multilayered NMF with pooling)
    "lam": 1.0,
    "max_iter": 200,
    "tol": 1e-5,
    "init": "nndsvda",
    "scheduler": "threads",
    "chunk_rows": 4000,
    "save_models_seed": "first",  # 'first', 'none' or a seed: which seed's models are written
}
#: what differs between the text and the audio study (pipelines/deep_audio.py passes its own)
STUDY = {"name": "BBC News", "unit": "paragraphs", "figure": "fig11.png", "paper_fig": "Fig. 11", "paper_ssnmf_accuracy": 0.46}


def load_config(path=None, overrides=None, defaults=None) -> dict:
    base = DEFAULTS if defaults is None else defaults
    cfg = dict(base)
    if path:
        user = json.loads(Path(path).read_text())
        unknown = set(user) - set(base)
        if unknown:
            raise SystemExit(f"unknown config keys {sorted(unknown)}; known: {sorted(base)}")
        cfg.update(user)
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cfg


def model_specs(cfg):
    """(name, constructor kwargs) of every model of one seed, SSNMF first."""
    specs = [("SSNMF", {"kind": "ssnmf", "layers": 1, "pool_size": 0, "backprop_iter": 0})]
    for L in cfg["layers"]:
        for pool in cfg["pool_sizes"]:
            for bp in cfg["backprop_iters"]:
                name = f"deep L{L} pool{pool} bp{bp}"
                specs.append((name, {"kind": "deep", "layers": int(L), "pool_size": int(pool), "backprop_iter": int(bp)}))
    return specs


def make_model(spec, cfg, seed):
    from dnmf_dask.models import SSNMF, DeepNMF

    common = dict(lam=cfg["lam"], max_iter=cfg["max_iter"], tol=cfg["tol"], init=cfg["init"], random_state=seed,
                  scheduler=cfg["scheduler"])
    if spec["kind"] == "ssnmf":
        return SSNMF(cfg["rank"], **common)
    ranks = (cfg["rank"],) + (cfg["deeper_rank"],) * (spec["layers"] - 1)
    return DeepNMF(ranks, pool_size=spec["pool_size"], backprop_iter=spec["backprop_iter"], **common)


def score(model, corpus):
    """Accuracy on the hidden labels and purity of argmax of the last layer's S (all samples)."""
    from dnmf_dask.evaluate.metrics import accuracy_unlabeled, purity

    pred = np.asarray(model.predict(corpus))
    S = np.asarray(model.transform(corpus))
    return {
        "accuracy_unlabeled": accuracy_unlabeled(corpus.y_true, pred, corpus.y),
        "purity": purity(corpus.y_true, np.argmax(S, axis=1)),
    }


def write_seed_corpus(tc, cfg, seed, path):
    from dnmf_dask.ingest.labels import mask_labels
    from dnmf_dask.store import write_corpus

    by_group = tc.groups if cfg["label_unit"] in ("document", "group") else None
    y = mask_labels(tc.y, cfg["label_fraction"], seed, by_group=by_group)
    attrs = {**tc.params, "label_fraction": cfg["label_fraction"], "label_unit": cfg["label_unit"], "seed": seed}
    return write_corpus(path, tc.X, y=y, groups=tc.groups, feature_names=tc.feature_names, chunk_rows=cfg["chunk_rows"],
                        label_names=tc.label_names, sample_ids=tc.sample_ids, y_true=tc.y, attrs=attrs, overwrite=True)


def bbc_source(cfg):
    from dnmf_dask.ingest.bbc import bbc_news_corpus

    print("deep_text: ingesting BBC News (paragraphs, TF-IDF) ...", flush=True)
    return bbc_news_corpus()


def run(cfg, out: Path, source=bbc_source, study=STUDY):
    """Fit every model of :func:`model_specs` for every seed on ``source(cfg)`` (an object with X, y,
    groups, feature_names, label_names, sample_ids, params); write the run folder."""
    from dnmf_dask.store.model import save_model

    warnings.simplefilter("ignore")  # ConvergenceWarning of layers that reach max_iter is recorded in stop_reason
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tc = source(cfg)
    seeds = [int(s) for s in cfg["seeds"]]
    keep = cfg["save_models_seed"]
    save_seed = seeds[0] if keep == "first" else (None if keep == "none" else int(keep))
    results = []
    specs = model_specs(cfg)
    t_all = time.time()
    for seed in seeds:
        cpath = out / "corpus.zarr" if seed == save_seed else out / f".corpus-seed{seed}.zarr"
        corpus = write_seed_corpus(tc, cfg, seed, cpath)
        for i, (name, spec) in enumerate(specs, 1):
            model = make_model(spec, cfg, seed)
            t = time.time()
            model.fit(corpus)
            fit_s = time.time() - t
            row = {"seed": seed, "model": name, **spec, "fit_seconds": round(fit_s, 2), "n_iter": int(model.n_iter_),
                   "stop_reason": model.stop_reason_, "labeled": int((corpus.y >= 0).sum()), **score(model, corpus)}
            if hasattr(model, "layer_n_iter_"):
                row["layer_n_iter"] = [int(n) for n in model.layer_n_iter_]
            results.append(row)
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")  # partial results survive a stop
            print(f"  seed {seed} [{i}/{len(specs)}] {name}: acc={row['accuracy_unlabeled']:.3f} "
                  f"purity={row['purity']:.3f} ({fit_s:.0f}s)", flush=True)
            if seed == save_seed:
                save_model(model, out / "models" / f"{name.replace(' ', '_')}.zarr", feature_names=corpus.feature_names,
                           data={"corpus": str(cpath), "seed": seed}, overwrite=True)
        if seed != save_seed:
            import shutil

            shutil.rmtree(cpath, ignore_errors=True)
    print(f"{study['name']}: {len(results)} fits in {time.time() - t_all:.0f}s", flush=True)
    table = summary_table(results, cfg, study)
    (out / "table.md").write_text(table + "\n")
    plot_fig11(results, cfg, out / study["figure"], study)
    print(table)
    return results


def _agg(rows, key):
    v = np.array([r[key] for r in rows], dtype=float)
    return float(v.mean()), float(v.std())


def summary_table(results, cfg, study=STUDY) -> str:
    seeds = sorted({r["seed"] for r in results})
    lines = [f"Seeds {seeds}; mean ± std over seeds. Paper ({study['paper_fig']}): SSNMF accuracy "
             f"{study['paper_ssnmf_accuracy']:.2f}; deep NMF higher.", "",
             "| model | layers | pool | backprop iters | accuracy (hidden labels) | purity | fit s |",
             "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        (am, asd), (pm, psd), (tm, _) = _agg(rows, "accuracy_unlabeled"), _agg(rows, "purity"), _agg(rows, "fit_seconds")
        r0 = rows[0]
        lines.append(f"| {'SSNMF' if r0['kind'] == 'ssnmf' else 'Deep NMF'} | {r0['layers']} | {r0['pool_size']} | "
                     f"{r0['backprop_iter']} | {am:.3f} ± {asd:.3f} | {pm:.3f} ± {psd:.3f} | {tm:.0f} |")
    return "\n".join(lines)


def plot_fig11(results, cfg, path, study=STUDY):
    """Accuracy and purity by pool size, one bar per (layers, backprop); SSNMF and the paper's SSNMF as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = [int(p) for p in cfg["pool_sizes"]]
    series = [(int(L), int(bp)) for L in cfg["layers"] for bp in cfg["backprop_iters"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    width = 0.8 / max(len(series), 1)
    ss = [r for r in results if r["kind"] == "ssnmf"]
    for ax, key, title in zip(axes, ("accuracy_unlabeled", "purity"), ("accuracy on hidden labels", "purity of argmax S(L)")):
        for j, (L, bp) in enumerate(series):
            m, s = [], []
            for p in pools:
                rows = [r for r in results if r["kind"] == "deep" and r["layers"] == L and r["pool_size"] == p
                        and r["backprop_iter"] == bp]
                mu, sd = _agg(rows, key) if rows else (np.nan, 0.0)
                m.append(mu)
                s.append(sd)
            x = np.arange(len(pools)) + (j - (len(series) - 1) / 2) * width
            ax.bar(x, m, width, yerr=s, capsize=2, label=f"{L} layers, {'backprop ' + str(bp) if bp else 'forward only'}")
        if ss:
            ax.axhline(_agg(ss, key)[0], color="k", lw=1.2, label="SSNMF (ours)")
        if key == "accuracy_unlabeled":
            ax.axhline(study["paper_ssnmf_accuracy"], color="k", ls="--", lw=1, label="SSNMF (paper)")
        ax.set_xticks(np.arange(len(pools)), [str(p) for p in pools])
        ax.set_xlabel(f"pool size ({study['unit']})")
        ax.set_title(title)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7, loc="lower right")
    n_seeds = len({r["seed"] for r in results})
    fig.suptitle(f"{study['name']}, {cfg['label_fraction']:.0%} labels, rank {cfg['rank']}: deep NMF vs SSNMF ({n_seeds} seed(s))")
    save_figure(fig, path)


def _int_list(text):
    return [int(t) for t in str(text).split(",") if t.strip()]


def main(argv=None, *, doc=__doc__, defaults_out="runs/deep_text", source=bbc_source, study=STUDY, defaults=None):
    """The command line of a study (deep_audio.py calls it with its own source, study and defaults)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file with any keys of the defaults (flags below override it)")
    p.add_argument("--seeds", type=_int_list, help="comma-separated seeds of the label choice and of the models")
    p.add_argument("--pool-sizes", type=_int_list, dest="pool_sizes", help="pool windows to compare, e.g. 0,3,5,7")
    p.add_argument("--layers", type=_int_list, help="numbers of layers of the deep models, e.g. 2,3")
    p.add_argument("--backprop-iters", type=_int_list, dest="backprop_iters", help="e.g. 0,20 (0 = forward pass only)")
    p.add_argument("--scheduler", help="threads (default), synchronous, local or a scheduler address")
    p.add_argument("--out", default=defaults_out, help=f"run folder (default {defaults_out})")
    p.add_argument("--summarize", action="store_true", help="only redo table.md and the figure from the run's results.json "
                   "and config.json (e.g. of a stopped run)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.summarize:
        cfg, results = json.loads((out / "config.json").read_text()), json.loads((out / "results.json").read_text())
        n_models = len(model_specs(cfg))
        complete = {s for s in {r["seed"] for r in results} if sum(r["seed"] == s for r in results) == n_models}
        results = [r for r in results if r["seed"] in complete]  # a stopped run: only the seeds with every model
        (out / "table.md").write_text(summary_table(results, cfg, study) + "\n")
        plot_fig11(results, cfg, out / study["figure"], study)
        print(summary_table(results, cfg, study))
        return
    overrides = {k: getattr(a, k) for k in ("seeds", "pool_sizes", "layers", "backprop_iters", "scheduler")}
    run(load_config(a.config, overrides, defaults), out, source=source, study=study)


if __name__ == "__main__":
    sys.exit(main())
