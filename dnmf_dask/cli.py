"""The ``dnmf`` command line: ingest, fit, predict, evaluate, report, demo.

Bad input prints one line ``dnmf: error: ...`` on stderr and exits with code 2; nothing already
written is damaged (stores are written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .errors import DNMFError

EXIT_BAD_INPUT = 2


def _scheduler_arg(p):
    p.add_argument(
        "--scheduler",
        default=None,
        help="where to run: a scheduler address (tcp://host:8786), 'local' (start a LocalCluster), "
        "'threads' or 'synchronous'. Default: $DASK_SCHEDULER_ADDRESS if set, else 'local'.",
    )
    p.add_argument("--workers", type=int, default=None, help="worker processes of a started LocalCluster (default: one per core)")


def _resolve_scheduler(args):
    return args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or "local"


# -- ingest ------------------------------------------------------------------------------
def cmd_ingest(args):
    from .ingest.labels import mask_labels
    from .store import write_corpus

    if args.source == "bbc":
        from .ingest.bbc import bbc_news_corpus

        tc = bbc_news_corpus()
        X, y_true, groups = tc.X, tc.y, tc.groups
        feature_names, label_names, sample_ids, prov = tc.feature_names, tc.label_names, tc.sample_ids, tc.params
    elif args.source == "wordnet":
        from .ingest.wordnet import wordnet_corpus

        if not args.input:
            from .errors import DNMFValueError

            raise DNMFValueError("input: expected --input DIR (WordNet's data.* files, e.g. /usr/share/wordnet), found none")
        tc = wordnet_corpus(args.input)
        X, y_true, groups = tc.X, tc.y, tc.groups
        feature_names, label_names, sample_ids, prov = tc.feature_names, tc.label_names, tc.sample_ids, tc.params
    elif args.source == "images":
        from .ingest.images import idx_images

        if not args.input:
            from .errors import DNMFValueError

            raise DNMFValueError("input: expected --input IMAGES.idx[.gz] (an IDX image file), found none")
        im = idx_images(args.input, args.labels, limit=args.limit)
        X, y_true, groups, feature_names, sample_ids, prov = im.X, im.y, None, im.feature_names, None, im.params
        label_names = im.label_names
    elif args.source == "audio":
        ac = _load_audio(args)
        X, y_true, groups = ac.X, ac.y, ac.groups
        feature_names, label_names, sample_ids, prov = ac.feature_names, ac.label_names, ac.sample_ids, ac.params
    else:
        X, y_true, groups, feature_names, label_names, sample_ids, prov = _load_array_file(args.input)
    y = y_true
    if y_true is not None and args.label_fraction is not None:
        y = mask_labels(y_true, args.label_fraction, args.seed, by_group=groups)
    prov = {**(prov or {}), "label_fraction": args.label_fraction, "seed": args.seed, "source_kind": args.source}
    c = write_corpus(
        args.out, X, y=y, groups=groups, feature_names=feature_names, chunk_rows=args.chunk_rows,
        label_names=label_names, sample_ids=sample_ids, y_true=y_true, attrs=prov, overwrite=args.overwrite,
    )
    print(f"wrote {c!r}")
    return c


def _load_audio(args):
    """Spectrogram frames of the audio files under ``--input`` (labels from sub-folders or name prefixes)."""
    from .errors import DNMFValueError
    from .ingest.audio import audio_corpus, audio_folder

    if not args.input:
        raise DNMFValueError("input: expected --input DIR (a folder of .wav/.flac/.ogg files), found none")
    classes = args.classes.split(",") if args.classes else None
    files, labels, names = audio_folder(args.input, label_from=args.label_from, classes=classes)

    def progress(i, n, path):
        if i == n or i % max(1, n // 10) == 0:
            print(f"  read {i}/{n} clips ({path.name})", file=sys.stderr, flush=True)

    return audio_corpus(files, labels, label_names=names, sample_rate=args.sample_rate, nperseg=args.nperseg, hop=args.hop,
                        max_freq=args.max_freq, segment_seconds=args.segment_seconds or None, progress=progress)


def _add_audio_ingest_args(pi):
    g = pi.add_argument_group("audio (source 'audio': --input is a folder of .wav/.flac/.ogg clips)")
    g.add_argument("--label-from", default="auto", choices=("auto", "folder", "prefix"),
                   help="class of a clip: its first sub-folder, its file-name prefix before '_', or auto (folder if all "
                   "files sit in sub-folders)")
    g.add_argument("--classes", default=None, help="comma-separated classes to keep (default: all)")
    g.add_argument("--sample-rate", type=int, default=22050, help="common rate the clips are resampled to (Hz)")
    g.add_argument("--nperseg", type=int, default=1024, help="STFT window length (samples); features = nperseg/2+1 frequencies")
    g.add_argument("--hop", type=int, default=512, help="STFT hop between frames (samples)")
    g.add_argument("--max-freq", type=float, default=None, help="keep frequencies up to this (Hz)")
    g.add_argument("--segment-seconds", type=float, default=3.0, help="cut clips into segments of this length; a segment "
                   "is a group (pooling stays inside it); 0 = whole clips")


def _load_array_file(path):
    """npz (keys X or data/indices/indptr/shape, optional y, groups, feature_names) or npy."""
    import scipy.sparse as sp

    from .errors import DNMFValueError

    p = Path(path)
    if not p.exists():
        raise DNMFValueError(f"input: expected an existing .npz or .npy file, found nothing at {str(p)!r}")
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False), None, None, None, None, None, {"file": str(p)}
    if p.suffix != ".npz":
        raise DNMFValueError(f"input: expected a .npz or .npy file, found {p.suffix!r}")
    with np.load(p, allow_pickle=False) as z:
        keys = set(z.files)
        if {"data", "indices", "indptr", "shape"} <= keys:
            X = sp.load_npz(p)
        elif "X" in keys:
            X = z["X"]
        else:
            raise DNMFValueError(f"input: expected arrays 'X' or a scipy.sparse save_npz file, found keys {sorted(keys)}")
        get = lambda k: z[k] if k in keys else None  # noqa: E731
        return X, get("y"), get("groups"), get("feature_names"), get("label_names"), get("sample_ids"), {"file": str(p)}


# -- fit / predict --------------------------------------------------------------------------
MODELS = ("nmf", "ssnmf", "hierarchical", "deep", "neural")


def _ranks(text):
    try:
        ranks = tuple(int(r) for r in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 20,5, found {text!r}") from None
    return ranks


def _make_model(args):
    from . import models

    ranks = args.ranks or (args.rank,)
    common = dict(max_iter=args.max_iter, tol=args.tol, random_state=args.seed)
    if args.model == "nmf":
        return models.NMF(ranks[0], init=args.init, **common)
    if args.model == "ssnmf":
        return models.SSNMF(ranks[0], lam=args.lam, init=args.init, **common)
    if args.model == "hierarchical":
        return models.HierarchicalNMF(ranks, lam=args.lam, init=args.init, **common)
    if args.model == "deep":
        return models.DeepNMF(ranks, lam=args.lam, init=args.init, pool_size=args.pool_size,
                              backprop_iter=args.backprop_iter, **common)
    return models.NeuralNMF(ranks, lam=args.lam, epochs=args.max_iter, tol=args.tol, random_state=args.seed)


def cmd_fit(args):
    from .parallel.scheduler import scheduler_context
    from .store import open_corpus
    from .store.model import save_model

    corpus = open_corpus(args.corpus)
    model = _make_model(args)
    t0 = time.time()
    with scheduler_context(_resolve_scheduler(args), n_workers=args.workers, threads_per_worker=1):
        model.fit(corpus)
    dt = time.time() - t0
    save_model(model, args.out, feature_names=corpus.feature_names, data={"corpus": str(corpus.path), "attrs": corpus.attrs.get("provenance", {})}, overwrite=args.overwrite)
    rel = getattr(model, "layer_rel_error_", None) or model.history_.get("rel_error")
    print(f"fitted {type(model).__name__} in {dt:.1f}s: n_iter_={model.n_iter_} stop_reason_={model.stop_reason_} "
          f"rel_error={rel[-1]:.4f}; wrote {args.out}")
    return model


def cmd_predict(args):
    from .parallel.scheduler import scheduler_context
    from .store import open_corpus
    from .store.model import load_model

    model = load_model(args.model)
    corpus = open_corpus(args.corpus)
    if not hasattr(model, "predict"):
        from .errors import DNMFValueError

        raise DNMFValueError(f"model: expected a classifier (SSNMF, DeepNMF, NeuralNMF), found {type(model).__name__}")
    with scheduler_context(_resolve_scheduler(args), n_workers=args.workers, threads_per_worker=1):
        pred = model.predict(corpus)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    np.savetxt(tmp, np.asarray(pred), fmt="%d")
    os.replace(tmp, out)
    print(f"wrote {len(pred)} predictions to {out}")


# -- demo (the README's main job) --------------------------------------------------------------
def cmd_demo(args):
    from .evaluate.metrics import accuracy_unlabeled, purity
    from .evaluate.topics import format_hierarchy, hierarchy, layer_topics
    from .ingest.bbc import bbc_news_corpus
    from .ingest.labels import mask_labels
    from .models import SSNMF, HierarchicalNMF
    from .parallel.scheduler import scheduler_context
    from .store import write_corpus
    from .store.model import save_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print("dnmf demo: ingesting the BBC News corpus (paragraphs as samples, TF-IDF) ...")
    tc = bbc_news_corpus()
    y = mask_labels(tc.y, args.label_fraction, args.seed, by_group=tc.groups)
    corpus = write_corpus(
        out / "corpus.zarr", tc.X, y=y, groups=tc.groups, feature_names=tc.feature_names, chunk_rows=args.chunk_rows,
        label_names=tc.label_names, sample_ids=tc.sample_ids, y_true=tc.y, attrs=tc.params, overwrite=True,
    )
    print(f"  {corpus!r}")
    results = {"corpus": {"shape": list(corpus.shape), "nnz": corpus.attrs["nnz"], "labeled": int((y >= 0).sum())}}
    with scheduler_context(_resolve_scheduler(args), n_workers=args.workers, threads_per_worker=1):
        models = {
            "SSNMF": SSNMF(args.rank, lam=args.lam, max_iter=args.max_iter, tol=args.tol, random_state=args.seed),
            "HierarchicalNMF": HierarchicalNMF((args.rank, args.top_rank), lam=args.lam, max_iter=args.max_iter,
                                               tol=args.tol, random_state=args.seed),
        }
        for name, m in models.items():
            t = time.time()
            m.fit(corpus)
            pred = m.predict(corpus)
            S = np.asarray(m.transform(corpus))
            res = {
                "fit_seconds": round(time.time() - t, 2),
                "n_iter": m.n_iter_,
                "stop_reason": m.stop_reason_,
                "rel_error": getattr(m, "layer_rel_error_", m.history_["rel_error"])[-1],
                "accuracy_unlabeled": accuracy_unlabeled(corpus.y_true, pred, corpus.y),
                "purity": purity(corpus.y_true, np.argmax(S, axis=1)),
            }
            results[name] = res
            save_model(m, out / f"{name.lower()}.zarr", feature_names=corpus.feature_names, overwrite=True)
            print(f"  {name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))
        _demo_report(out, models, corpus)
    h = models["HierarchicalNMF"]
    words = [lt.words for lt in layer_topics(h.A_, corpus.feature_names, n=8)]
    text = format_hierarchy(hierarchy(h.A_, threshold=0.15), topic_words=words, n_words=6)
    (out / "topics.txt").write_text(text + "\n")
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    print("topic hierarchy (supertopic, then the subtopics that form it with their weights):")
    print(text)
    print(f"dnmf demo: done in {time.time() - t0:.0f}s; results in {out}/ (report.html, metrics.json, topics.txt, *.zarr)")
    return results


# -- evaluate / report ------------------------------------------------------------------------
def _evaluate_run(args):
    """Load the model stores of ``args.run`` and evaluate each on the corpus; returns (evals, corpus)."""
    from .evaluate.report import evaluate_model, find_corpus, find_models
    from .parallel.scheduler import scheduler_context
    from .store import open_corpus
    from .store.model import load_model

    paths = find_models(args.run)
    models = [load_model(p) for p in paths]
    corpus = open_corpus(find_corpus(args.run, args.corpus, models))
    evals = []
    with scheduler_context(args.scheduler or "threads"):
        for i, (p, m) in enumerate(zip(paths, models), 1):
            print(f"dnmf: evaluating [{i}/{len(models)}] {p.name} on {corpus.path.name} ...", file=sys.stderr, flush=True)
            evals.append(evaluate_model(m, corpus, name=p.name, angles=not args.no_angles, max_pairs=args.max_pairs))
    return evals, corpus


def cmd_evaluate(args):
    from .evaluate.report import format_metrics

    evals, corpus = _evaluate_run(args)
    for ev in evals:
        print(format_metrics(ev))
    out = Path(args.out) if args.out else None
    if out is not None:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({ev["name"]: ev["metrics"] for ev in evals}, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return evals


def cmd_report(args):
    from .evaluate.report import write_report

    evals, corpus = _evaluate_run(args)
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() and not (run / "zarr.json").exists() else run.parent) / "report.html"
    info = {"corpus": str(corpus.path), "shape": list(corpus.shape), "labeled": None if corpus.y is None else int((corpus.y >= 0).sum()),
            "provenance": {k: v for k, v in corpus.attrs.get("provenance", {}).items() if k != "non_utf8_files"}}
    write_report(out, evals, title=args.title or f"dnmf report: {run.name}", corpus_info=info)
    print(f"wrote {out}")
    return out


def _add_evaluate_parsers(sub):
    for name, func, what in (("evaluate", cmd_evaluate, "print (and save as JSON) the metrics of stored models on a corpus"),
                             ("report", cmd_report, "write a self-contained HTML report of a run (metrics, loss curves, "
                                                    "topic hierarchy, factor heat maps, confusion matrix, layer angles)")):
        pe = sub.add_parser(name, help=what, description=what)
        pe.add_argument("run", help="a run folder (its *.zarr model stores and models/*.zarr) or one model store")
        pe.add_argument("--corpus", default=None, help="corpus store to evaluate on (default: RUN/corpus.zarr, else the "
                        "corpus recorded in the model store)")
        pe.add_argument("--out", default=None, help="JSON metrics file (evaluate; default: none) or HTML file (report; "
                        "default: RUN/report.html)")
        if name == "report":
            pe.add_argument("--title", default=None, help="title of the report (default: the run folder's name)")
        pe.add_argument("--no-angles", action="store_true", help="skip the layer angle/distance analysis (§4.5)")
        pe.add_argument("--max-pairs", type=int, default=2000, help="sample pairs per class and relation for the layer angles")
        pe.add_argument("--scheduler", default=None, help="dask scheduler for transform/predict (default: threads)")
        pe.set_defaults(func=func)


def _demo_report(out, models, corpus):
    """The demo run's HTML report (metrics, loss curves, topic hierarchy, heat maps, layer angles)."""
    from .evaluate.report import evaluate_model, write_report

    print("dnmf demo: writing the report ...", flush=True)
    evals = [evaluate_model(m, corpus, name=name) for name, m in models.items()]
    write_report(out / "report.html", evals, title="dnmf demo: BBC News", corpus_info={"corpus": str(corpus.path), "shape": list(corpus.shape)})


# -- parser ------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(prog="dnmf", description="Distributed hierarchical NMF topic models on dask.")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("ingest", help="turn a data set into a corpus store (zarr)")
    pi.add_argument("source", choices=("bbc", "npz", "npy", "audio", "images", "wordnet"),
                    help="bbc: the BBC News corpus shipped by pip; npz/npy: an array file; audio: a folder of sound clips; "
                    "images: an IDX image file (MNIST / Fashion-MNIST), pixels as features; wordnet: WordNet's definitions "
                    "labelled by lexicographer file (Debian wordnet-base: --input /usr/share/wordnet)")
    pi.add_argument("out", help="corpus store to write (a folder, e.g. bbc.zarr)")
    pi.add_argument("--input", help="the .npz/.npy file (npz/npy), the folder of clips (audio), the IDX image file (images) "
                    "or WordNet's folder (wordnet)")
    pi.add_argument("--labels", default=None, help="images: IDX label file (default: the sibling *labels-idx1* file)")
    pi.add_argument("--limit", type=int, default=None, help="images: keep the first N images")
    pi.add_argument("--label-fraction", type=float, default=None, help="keep this stratified fraction of labels known (e.g. 0.01); the truth is kept as y_true")
    pi.add_argument("--seed", type=int, default=0, help="seed of the label choice")
    pi.add_argument("--chunk-rows", type=int, default=None, help="rows per block (default: from the data size)")
    pi.add_argument("--overwrite", action="store_true", help="replace an existing store (atomically)")
    _add_audio_ingest_args(pi)
    pi.set_defaults(func=cmd_ingest)

    pf = sub.add_parser("fit", help="fit a model on a corpus store and write the model store")
    pf.add_argument("corpus", help="corpus store (from dnmf ingest)")
    pf.add_argument("out", help="model store to write (a folder, e.g. model.zarr)")
    pf.add_argument("--model", choices=MODELS, default="ssnmf")
    pf.add_argument("--rank", "-k", type=int, default=20, help="number of topics k (one-layer models)")
    pf.add_argument("--ranks", type=_ranks, default=None, help="topics per layer, e.g. 20,5 (hierarchical, deep, neural)")
    pf.add_argument("--pool-size", type=int, default=0, help="deep: max pooling window over consecutive samples of a group (0 = none)")
    pf.add_argument("--backprop-iter", type=int, default=0, help="deep: backpropagation iterations after the forward pass")
    pf.add_argument("--lam", type=float, default=1.0, help="weight of the label term (SSNMF)")
    pf.add_argument("--init", default="nndsvda", choices=("random", "nndsvd", "nndsvda"))
    pf.add_argument("--max-iter", type=int, default=200, help="iterations (per layer; neural: epochs)")
    pf.add_argument("--tol", type=float, default=1e-4)
    pf.add_argument("--seed", type=int, default=0)
    pf.add_argument("--overwrite", action="store_true")
    _scheduler_arg(pf)
    pf.set_defaults(func=cmd_fit)

    pp = sub.add_parser("predict", help="predict classes of a corpus with a stored classifier")
    pp.add_argument("model", help="model store")
    pp.add_argument("corpus", help="corpus store")
    pp.add_argument("out", help="text file of predicted labels, one per line")
    _scheduler_arg(pp)
    pp.set_defaults(func=cmd_predict)

    pd = sub.add_parser("demo", help="the main job: BBC News -> corpus store -> model on a LocalCluster -> metrics and topics")
    pd.add_argument("--out", default="runs/bbc-demo", help="run folder (default runs/bbc-demo)")
    pd.add_argument("--rank", "-k", type=int, default=20, help="topics of the first layer")
    pd.add_argument("--top-rank", type=int, default=5, help="supertopics of the second layer")
    pd.add_argument("--lam", type=float, default=1.0, help="weight of the label term (default 1)")
    pd.add_argument("--label-fraction", type=float, default=0.01, help="fraction of the documents of each class whose labels "
                    "are known (default 0.01); the rest are scored")
    pd.add_argument("--max-iter", type=int, default=200, help="iterations per layer (default 200)")
    pd.add_argument("--tol", type=float, default=1e-4, help="stop when the objective's relative decrease is below this")
    pd.add_argument("--seed", type=int, default=0, help="seed of the label choice and of the models")
    pd.add_argument("--chunk-rows", type=int, default=4000, help="rows per block of the corpus store")
    _scheduler_arg(pd)
    pd.set_defaults(func=cmd_demo)
    _add_evaluate_parsers(sub)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except DNMFError as e:
        print(f"dnmf: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("dnmf: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
