"""The ``dnmf`` command line: ingest, fit, predict, evaluate, report, demo.

Bad input prints one line ``dnmf: error: ...`` on stderr and exits with code 2; nothing already
written is damaged (stores are written atomically).

Exit codes (for cron, Airflow, SLURM scripts):

* 0 — done, or nothing to do (the model is up to date with this config and corpus);
* 2 — bad input: arguments, missing or damaged stores, a checkpoint of another fit;
* 3 — the scheduler cannot be reached or refuses the connection (retry later);
* 4 — the computation failed (e.g. workers lost beyond repair); rerun with ``--resume`` to go on
  from the last checkpoint;
* 130 — interrupted (Ctrl-C / SIGINT).
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

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_CLUSTER = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130


def _scheduler_arg(p, default="local"):
    p.add_argument(
        "--scheduler",
        default=None,
        help="where to run: a scheduler address (tcp://host:8786, tls://host:8786), 'local' (start a LocalCluster), "
        f"'threads' or 'synchronous'. Default: $DASK_SCHEDULER_ADDRESS if set, else '{default}'.",
    )
    p.add_argument("--workers", type=int, default=None, help="worker processes of a started LocalCluster (default: one per core)")
    p.add_argument("--dashboard-address", default="127.0.0.1:0",
                   help="dashboard of a started LocalCluster (default: loopback, random port; 'none' = no dashboard)")
    p.add_argument("--tls-ca-file", default=None, help="TLS: CA certificate (PEM) that signed the scheduler's and workers' certificates")
    p.add_argument("--tls-cert", default=None, help="TLS: this client's certificate (PEM)")
    p.add_argument("--tls-key", default=None, help="TLS: this client's private key (PEM; default: in --tls-cert)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr")
    p.set_defaults(scheduler_default=default)


def _resolve_scheduler(args):
    return args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or getattr(args, "scheduler_default", "local")


def _scheduler_kwargs(args) -> dict:
    """Keyword arguments of :func:`scheduler_context` from the CLI's cluster options."""
    security = None
    if args.tls_ca_file or args.tls_cert:
        from distributed import Security

        from .errors import DNMFValueError

        for name in ("tls_ca_file", "tls_cert", "tls_key"):
            v = getattr(args, name)
            if v is not None and not Path(v).is_file():
                raise DNMFValueError(f"--{name.replace('_', '-')}: expected a PEM file, found nothing at {v!r}")
        security = Security(tls_ca_file=args.tls_ca_file, tls_client_cert=args.tls_cert,
                            tls_client_key=args.tls_key or args.tls_cert, tls_scheduler_cert=args.tls_cert,
                            tls_scheduler_key=args.tls_key or args.tls_cert, tls_worker_cert=args.tls_cert,
                            tls_worker_key=args.tls_key or args.tls_cert, require_encryption=True)
    dash = None if str(args.dashboard_address).lower() == "none" else args.dashboard_address
    return dict(n_workers=args.workers, threads_per_worker=1, security=security, dashboard_address=dash)


def _running(args):
    """The scheduler context of a command, with a progress line on stderr unless --quiet."""
    import contextlib

    from .parallel.scheduler import scheduler_context
    from .progress import progress_bar

    stack = contextlib.ExitStack()
    stack.enter_context(scheduler_context(_resolve_scheduler(args), **_scheduler_kwargs(args)))
    if not args.quiet:
        stack.enter_context(progress_bar())
    return stack


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
    elif args.source == "h5ad":
        from .ingest.tabular import read_h5ad

        if not args.input:
            from .errors import DNMFValueError

            raise DNMFValueError("input: expected --input FILE.h5ad, found none")
        ad = read_h5ad(args.input, label_key=args.label_key, group_key=args.group_key)
        X, y_true, groups = ad.X, ad.y, ad.groups
        feature_names, label_names, sample_ids, prov = ad.feature_names, ad.label_names, ad.sample_ids, ad.params
    else:
        X, y_true, groups, feature_names, label_names, sample_ids, prov = _load_array_file(args.input)
    y = y_true
    if y_true is not None and args.label_fraction is not None:
        y = mask_labels(y_true, args.label_fraction, args.seed, by_group=groups)
    prov = {**(prov or {}), "label_fraction": args.label_fraction, "seed": args.seed, "source_kind": args.source}
    with _running(args):
        if args.append:
            from .store import append_corpus

            c = append_corpus(args.out, X, y=y, groups=groups, sample_ids=sample_ids, y_true=y_true,
                              chunk_rows=args.chunk_rows, provenance=prov)
            print(f"appended {X.shape[0]} samples: {c!r}")
            return c
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
    from .errors import DNMFValueError

    p = Path(path)
    if not p.exists():
        raise DNMFValueError(f"input: expected an existing .npz or .npy file, found nothing at {str(p)!r}")
    if p.suffix not in (".npz", ".npy"):
        raise DNMFValueError(f"input: expected a .npz or .npy file, found {p.suffix!r}")
    import zipfile

    try:
        return _read_array_file(p)
    except DNMFError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # object arrays, truncated or foreign files
        raise DNMFValueError(
            f"input: expected a readable {p.suffix} file of numeric arrays (no pickled objects), found {type(e).__name__}: {e}"
        ) from None


def _read_array_file(p):
    import scipy.sparse as sp

    from .errors import DNMFValueError

    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False), None, None, None, None, None, {"file": str(p)}
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
from .config import (BACKPROP_SOLVER_CHOICES, BETA_LOSS_CHOICES, INITS, LABEL_LOSS_CHOICES, MODELS,  # noqa: E402
                     SOLVER_CHOICES)


def _ranks(text):
    try:
        ranks = tuple(int(r) for r in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 20,5, found {text!r}") from None
    return ranks


#: fit options -> the models they apply to (given with another model and a non-default value: an error)
FIT_OPTION_MODELS = {
    "lam": ("ssnmf", "hierarchical", "deep", "neural"),
    "init": ("nmf", "ssnmf", "hierarchical", "deep"),
    "pool_size": ("deep",),
    "backprop_iter": ("deep",),
    "backprop_solver": ("deep",),
    "solver": ("nmf", "ssnmf", "hierarchical", "deep"),
    "beta_loss": ("nmf", "ssnmf", "hierarchical"),
    "label_loss": ("ssnmf", "hierarchical", "deep", "neural"),
}


def _check_fit_options(args):
    """One clear error for a fit option that the chosen model would ignore (nothing is silent)."""
    from .errors import DNMFValueError

    defaults = vars(build_parser().parse_args(["fit", "CORPUS", "OUT"]))  # the flags' defaults, not a config file's
    for dest, models in FIT_OPTION_MODELS.items():
        value = getattr(args, dest)
        if args.model not in models and value != defaults[dest]:
            raise DNMFValueError(f"--{dest.replace('_', '-')}: does not apply to --model {args.model} (only to "
                                 f"{', '.join(models)}); expected the default {defaults[dest]!r}, found {value!r}")
    if args.ranks is not None and args.model in ("nmf", "ssnmf") and len(args.ranks) != 1:
        raise DNMFValueError(f"--ranks: expected one rank for the one-layer --model {args.model} (or use -k), "
                             f"found {','.join(map(str, args.ranks))}")
    if args.ranks is not None and args.rank != defaults["rank"] and (args.rank,) != tuple(args.ranks):
        raise DNMFValueError(f"--rank: expected either --rank or --ranks, found both (--rank {args.rank}, "
                             f"--ranks {','.join(map(str, args.ranks))})")


def _make_model(args):
    from . import models

    _check_fit_options(args)
    ranks = args.ranks or (args.rank,)
    common = dict(max_iter=args.max_iter, tol=args.tol, random_state=args.seed)
    losses = dict(solver=args.solver, beta_loss=args.beta_loss)
    if args.model == "nmf":
        return models.NMF(ranks[0], init=args.init, **losses, **common)
    if args.model == "ssnmf":
        return models.SSNMF(ranks[0], lam=args.lam, init=args.init, label_loss=args.label_loss, **losses, **common)
    if args.model == "hierarchical":
        return models.HierarchicalNMF(ranks, lam=args.lam, init=args.init, label_loss=args.label_loss, **losses, **common)
    if args.model == "deep":
        return models.DeepNMF(ranks, lam=args.lam, init=args.init, pool_size=args.pool_size,
                              backprop_iter=args.backprop_iter, label_loss=args.label_loss, solver=args.solver,
                              backprop_solver=args.backprop_solver,
                              **common)
    # Neural NMF has its own optimiser (epochs) and a Frobenius data term; its label term may be either
    return models.NeuralNMF(ranks, lam=args.lam, label_loss=args.label_loss, epochs=args.max_iter, tol=args.tol,
                            random_state=args.seed)


#: models whose fit can start from a stored model (every model checkpoints)
WARM_STARTABLE = ("NMF", "SSNMF", "NeuralNMF")


def _fit_config(model) -> dict:
    """The result-relevant configuration of a fit (estimator class and parameters), as JSON."""
    from .store.checkpoint import OPERATIONAL_PARAMS, _json_norm

    params = {k: v for k, v in model.get_params().items() if k not in OPERATIONAL_PARAMS}
    return _json_norm({"class": type(model).__name__, "params": params})


def _resolve_model_path(path):
    """A model store, or the newest version of a versioned model folder."""
    from .store.versions import latest_version

    p = Path(path)
    if p.is_dir() and not (p / "zarr.json").exists():
        v = latest_version(p)
        if v is not None:
            return v
    return p


def cmd_fit(args):
    from .errors import DNMFValueError
    from .store import corpus_fingerprint, open_corpus
    from .store.checkpoint import Checkpointer
    from .store.model import load_model, save_model
    from .store.versions import latest_version, next_version, up_to_date

    model = _make_model(args)  # bad options fail before any data is read
    corpus = open_corpus(args.corpus)
    config = _fit_config(model)
    fingerprint = corpus_fingerprint(corpus)
    out = Path(args.out)
    current = latest_version(out) if args.versioned else (out if out.exists() else None)
    if current is not None and not args.force and up_to_date(current, config, fingerprint):
        print(f"dnmf: up to date: {current} holds this config fitted on this corpus; nothing to do (--force refits)")
        return model
    if not args.versioned and out.exists() and not (args.overwrite or args.force):
        raise DNMFValueError(f"out: expected a new location (or --overwrite / --force), found existing {str(out)!r}")
    if args.warm_start and type(model).__name__ not in WARM_STARTABLE:
        raise DNMFValueError(f"--model: expected one of nmf, ssnmf, neural with --warm-start, found {args.model}")
    run = {}
    ck_dir = Path(args.checkpoint) if args.checkpoint else (out / ".checkpoint" if args.versioned else out.with_name(out.name + ".checkpoint"))
    if args.checkpoint_every or args.resume:
        run.update(checkpoint=ck_dir, checkpoint_every=args.checkpoint_every, resume=args.resume)
        if args.versioned:
            out.mkdir(exist_ok=True)
    warm_from = None
    if args.warm_start:
        warm_from = _resolve_model_path(args.warm_start)
        run["warm_start"] = load_model(warm_from)
    t0 = time.time()
    with _running(args):
        if args.resume and Checkpointer(ck_dir, 1, None)._existing():
            print(f"dnmf: resuming from the newest checkpoint in {ck_dir}", file=sys.stderr)
        model.fit(corpus, **run)
    dt = time.time() - t0
    target = next_version(out) if args.versioned else out
    data = {"corpus": str(corpus.path), "attrs": corpus.attrs.get("provenance", {}),
            "warm_start": None if warm_from is None else str(warm_from)}
    save_model(model, target, feature_names=corpus.feature_names, data=data, overwrite=not args.versioned,
               config=config, corpus_fingerprint=fingerprint)
    if run.get("checkpoint") is not None:
        Checkpointer(ck_dir, 1, None).remove()
    rel = getattr(model, "layer_rel_error_", None) or model.history_.get("rel_error")
    print(f"fitted {type(model).__name__} in {dt:.1f}s: n_iter_={model.n_iter_} stop_reason_={model.stop_reason_} "
          f"rel_error={rel[-1]:.4f}; wrote {target}")
    return model


def cmd_predict(args):
    from .store import open_corpus
    from .store.model import load_model

    model = load_model(_resolve_model_path(args.model))
    corpus = open_corpus(args.corpus)
    if not hasattr(model, "predict"):
        from .errors import DNMFValueError

        raise DNMFValueError(f"model: expected a classifier (SSNMF, DeepNMF, NeuralNMF), found {type(model).__name__}")
    with _running(args):
        pred = model.predict(corpus)
    from .store.atomic import atomic_file

    out = Path(args.out)
    with atomic_file(out) as tmp:
        np.savetxt(tmp, np.asarray(pred), fmt="%d")
    print(f"wrote {len(pred)} predictions to {out}")


# -- demo (the README's main job) --------------------------------------------------------------
def cmd_demo(args):
    from .evaluate.metrics import accuracy_unlabeled, purity
    from .evaluate.topics import format_hierarchy, hierarchy, layer_topics
    from .ingest.bbc import bbc_news_corpus
    from .ingest.labels import mask_labels
    from .models import SSNMF, DeepNMF, HierarchicalNMF
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
    with _running(args):
        models = {
            "SSNMF": SSNMF(args.rank, lam=args.lam, max_iter=args.max_iter, tol=args.tol, random_state=args.seed),
            "HierarchicalNMF": HierarchicalNMF((args.rank, args.top_rank), lam=args.lam, max_iter=args.max_iter,
                                               tol=args.tol, random_state=args.seed),
            # the Deep NMF paper's model: max pooling over 3 consecutive paragraphs of a document
            "DeepNMF": DeepNMF((args.rank, args.top_rank), lam=args.lam, pool_size=3, backprop_iter=10,
                               max_iter=args.max_iter, tol=args.tol, random_state=args.seed),
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
                "rel_error": (m.layer_rel_error_ if hasattr(m, "layer_rel_error_") else m.history_["rel_error"])[-1],
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


def _candidates(text):
    """'2-12' or '2,4,8' -> list of ints (argparse type)."""
    try:
        if "-" in text:
            lo, hi = (int(t) for t in text.split("-", 1))
            return list(range(lo, hi + 1))
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a range like 2-12 or a list like 2,4,8, found {text!r}") from None


def cmd_select_ranks(args):
    from .models.selection import select_ranks
    from .parallel.scheduler import scheduler_context
    from .store import open_corpus

    corpus = open_corpus(args.corpus)
    with scheduler_context(_resolve_scheduler(args), n_workers=args.workers, threads_per_worker=1):
        res = select_ranks(corpus, args.candidates, method=args.method, n_layers=args.layers, n_restarts=args.restarts,
                           random_state=args.seed, max_iter=args.max_iter, max_samples=args.max_samples,
                           min_silhouette=args.min_silhouette, max_error=args.max_error)
    print(res.to_text())
    for path, write in ((args.csv, res.to_csv), (args.plot, res.plot)):
        if path:
            out = Path(path)
            tmp = out.with_name(f".tmp-{out.name}")  # keeps the suffix (matplotlib picks the format from it)
            write(tmp)
            os.replace(tmp, out)
    print(f"selected ranks: {','.join(map(str, res.ranks))} ({res.method}, {res.elapsed:.1f}s)")
    return res


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
def build_parser(fit_defaults=None):
    """The argument parser; ``fit_defaults`` (from a config file) replace the defaults of ``dnmf fit``."""
    p = argparse.ArgumentParser(prog="dnmf", description="Distributed hierarchical NMF topic models on dask.")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("ingest", help="turn a data set into a corpus store (zarr)")
    pi.add_argument("source", choices=("bbc", "npz", "npy", "h5ad", "audio", "images", "wordnet"),
                    help="bbc: the BBC News corpus shipped by pip; npz/npy: an array file; h5ad: an AnnData file "
                    "(X dense or sparse, var index as feature names); audio: a folder of sound clips; "
                    "images: an IDX image file (MNIST / Fashion-MNIST), pixels as features; wordnet: WordNet's definitions "
                    "labelled by lexicographer file (Debian wordnet-base: --input /usr/share/wordnet)")
    pi.add_argument("out", help="corpus store to write (a folder, e.g. bbc.zarr)")
    pi.add_argument("--input", help="the .npz/.npy file (npz/npy), the .h5ad file (h5ad), the folder of clips (audio), "
                    "the IDX image file (images) "
                    "or WordNet's folder (wordnet)")
    pi.add_argument("--labels", default=None, help="images: IDX label file (default: the sibling *labels-idx1* file)")
    pi.add_argument("--label-key", default=None, help="h5ad: the obs column holding each sample's class")
    pi.add_argument("--group-key", default=None, help="h5ad: the obs column holding each sample's group (contiguous)")
    pi.add_argument("--limit", type=int, default=None, help="images: keep the first N images")
    pi.add_argument("--label-fraction", type=float, default=None, help="keep this stratified fraction of labels known (e.g. 0.01); the truth is kept as y_true")
    pi.add_argument("--seed", type=int, default=0, help="seed of the label choice")
    pi.add_argument("--chunk-rows", type=int, default=None, help="rows per block (default: from the data size)")
    pi.add_argument("--overwrite", action="store_true", help="replace an existing store (atomically)")
    pi.add_argument("--append", action="store_true",
                    help="add the samples to the existing corpus OUT as new row blocks (existing blocks are not rewritten)")
    _scheduler_arg(pi, default="threads")
    _add_audio_ingest_args(pi)
    pi.set_defaults(func=cmd_ingest)

    pf = sub.add_parser("fit", help="fit a model on a corpus store and write the model store")
    pf.add_argument("corpus", help="corpus store (from dnmf ingest)")
    pf.add_argument("out", help="model store to write (a folder, e.g. model.zarr)")
    pf.add_argument("--model", choices=MODELS, default="ssnmf",
                    help="nmf: plain NMF; ssnmf: semi-supervised NMF (topics + label classifier B, default); "
                    "hierarchical: multilayer NMF, each layer factorizes the previous codes; deep: Deep NMF "
                    "(Flenner-Hunter: pooling within groups, backpropagation); neural: Neural NMF (Gao, Haddock et al.). "
                    "Options that do not apply to the chosen model are an error")
    pf.add_argument("--rank", "-k", type=int, default=20, help="number of topics k of a one-layer model (default 20)")
    pf.add_argument("--ranks", type=_ranks, default=None,
                    help="topics per layer, e.g. 20,5 (hierarchical, deep, neural; default: the one layer of --rank)")
    pf.add_argument("--pool-size", type=int, default=0,
                    help="deep: max-pooling window over consecutive samples (paragraphs, frames) of a group (0 = none)")
    pf.add_argument("--backprop-iter", type=int, default=0,
                    help="deep: iterations of backpropagation (eq. 4) through all layers after the forward pass (default 0)")
    pf.add_argument("--backprop-solver", default="mu", choices=BACKPROP_SOLVER_CHOICES,
                    help="deep: update rule of the backpropagation, the paper's multiplicative updates (mu, default) or "
                    "HALS with the pooling Jacobian frozen (squared-error label loss, no missing data)")
    pf.add_argument("--lam", type=float, default=1.0,
                    help="weight of the label term against the data term (ssnmf, hierarchical, deep, neural; default 1)")
    pf.add_argument("--init", default="nndsvda", choices=INITS,
                    help="start of the factors: nndsvd(a) (SVD based, deterministic) or random (seeded by --seed); "
                    "nmf, ssnmf, hierarchical, deep (default nndsvda)")
    pf.add_argument("--solver", default="mu", choices=SOLVER_CHOICES,
                    help="update rule: multiplicative (mu, default), HALS, or exact NNLS (anls); nmf, ssnmf, hierarchical, "
                    "deep (its forward layers)")
    pf.add_argument("--beta-loss", default="frobenius", choices=BETA_LOSS_CHOICES,
                    help="data term: squared Frobenius (default) or generalized Kullback-Leibler; nmf, ssnmf, hierarchical")
    pf.add_argument("--label-loss", default="frobenius", choices=LABEL_LOSS_CHOICES,
                    help="label term: squared error (default), KL, or softmax cross-entropy; ssnmf, hierarchical, deep "
                    "(forward pass and backpropagation), neural")
    pf.add_argument("--max-iter", type=int, default=200, help="maximum iterations (per layer; neural: epochs; default 200)")
    pf.add_argument("--tol", type=float, default=1e-4,
                    help="stop when the objective's relative decrease over one iteration is below this (default 1e-4)")
    pf.add_argument("--seed", type=int, default=0, help="random seed of the initialisation (results are reproducible; default 0)")
    pf.add_argument("--overwrite", action="store_true", help="replace an existing model store OUT (atomically)")
    pf.add_argument("--config", default=None, metavar="FILE.toml",
                    help="fit options from a TOML file (keys as the flags: model, ranks, lam, max_iter, tol, pool_size, "
                    "backprop_iter, random_state, scheduler, ...); flags given here override it")
    pf.add_argument("--checkpoint-every", type=int, default=None,
                    help="write the fit's state every N iterations (epochs; per layer for hierarchical/deep) to the checkpoint folder")
    pf.add_argument("--checkpoint", default=None,
                    help="checkpoint folder (default OUT.checkpoint, or OUT/.checkpoint with --versioned); removed after success")
    pf.add_argument("--resume", action="store_true", help="continue from the newest checkpoint (start afresh when there is none)")
    pf.add_argument("--warm-start", default=None, metavar="MODEL",
                    help="start from a stored model of the same kind (a model store or a versioned folder: its newest version)")
    pf.add_argument("--versioned", action="store_true",
                    help="OUT is a folder of versions: write OUT/v0001, v0002, ... (older versions are kept)")
    pf.add_argument("--force", action="store_true",
                    help="fit even when OUT (its newest version) already holds this config fitted on this corpus")
    _scheduler_arg(pf)
    pf.set_defaults(func=cmd_fit, **(fit_defaults or {}))

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

    pr = sub.add_parser("select-ranks", help="choose the rank of each layer (reconstruction elbow or restart stability)")
    pr.add_argument("corpus", help="corpus store")
    pr.add_argument("--candidates", type=_candidates, default=list(range(2, 11)), help="ranks to try, e.g. 2-12 or 5,10,20")
    pr.add_argument("--method", choices=("elbow", "stability"), default="elbow")
    pr.add_argument("--layers", type=int, default=1, help="layers of a hierarchy to select (each on the previous S)")
    pr.add_argument("--restarts", type=int, default=None,
                    help="seeded restarts per candidate (parallel tasks; default 8 for elbow, 12 for stability)")
    pr.add_argument("--min-silhouette", type=float, default=0.2,
                    help="stability: the largest rank whose least reproducible component has at least this mean "
                    "silhouette (NMFk; default 0.2)")
    pr.add_argument("--max-error", type=float, default=None,
                    help="stability: also require a relative error of at most this")
    pr.add_argument("--max-iter", type=int, default=300)
    pr.add_argument("--max-samples", type=int, default=None, help="use a random subset of rows")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--csv", default=None, help="write the table here")
    pr.add_argument("--plot", default=None, help="write the figure here (.png)")
    _scheduler_arg(pr)
    pr.set_defaults(func=cmd_select_ranks)
    _add_evaluate_parsers(sub)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from .parallel.scheduler import ClusterError

    try:
        if getattr(args, "config", None):
            from .config import load_fit_config

            # the file's values become the defaults, so flags on the command line still win
            args = build_parser(fit_defaults=load_fit_config(args.config)).parse_args(argv)
        args.func(args)
    except DNMFError as e:
        print(f"dnmf: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ClusterError as e:
        print(f"dnmf: cluster error: {e}", file=sys.stderr)
        return EXIT_CLUSTER
    except KeyboardInterrupt:
        print("dnmf: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # the computation itself failed: say so in one line, keep the traceback
        import traceback

        traceback.print_exc()
        print(f"dnmf: failed: {type(e).__name__}: {e} (with --checkpoint-every, --resume continues from the last checkpoint)",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
