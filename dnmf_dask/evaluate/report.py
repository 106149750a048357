"""Evaluate fitted models on a corpus and write a self-contained HTML run report.

:func:`evaluate_model` computes what a person wants to see about one model on one corpus
(accuracy on hidden labels, purity per layer, confusion matrix, B density, reconstruction
error, topics per layer and the topic hierarchy, the §4.5 layer angles); :func:`write_report`
renders one or more such evaluations as one HTML file whose figures are inline base64 PNGs
(matplotlib, Agg backend), so it opens anywhere without network or side files.
:func:`find_models` / :func:`find_corpus` locate the stores of a run folder (``dnmf demo`` and the
pipelines write ``*.zarr`` model stores and a ``corpus.zarr``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from pathlib import Path

import numpy as np

from ..errors import DNMFValueError
from .metrics import accuracy_unlabeled, b_density, confusion, layer_angles, purity
from .topics import hierarchy, layer_topics

__all__ = ["evaluate_model", "write_report", "find_models", "find_corpus", "format_metrics"]


# --------------------------------------------------------------------------------------------
# locating stores
# --------------------------------------------------------------------------------------------
def _store_format(path: Path):
    """``dnmf_format`` of a zarr store folder (``'model'``, ``'corpus'``) or None."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("dnmf_format")
    except (OSError, ValueError):
        return None


def find_models(path) -> list[Path]:
    """Model stores at ``path``: the store itself, or those in the folder and its ``models/``."""
    p = Path(path)
    if not p.exists():
        raise DNMFValueError(f"run: expected a run folder or a model store, found nothing at {str(p)!r}")
    if _store_format(p) == "model":
        return [p]
    found = []
    for folder in (p, p / "models"):
        if folder.is_dir():
            found += sorted(c for c in folder.iterdir() if c.is_dir() and _store_format(c) == "model")
    if not found:
        raise DNMFValueError(f"run: expected model stores (*.zarr written by dnmf fit / demo / a pipeline) in {str(p)!r}, found none")
    return found


def find_corpus(run, corpus=None, models=()):
    """The corpus store to evaluate on: ``corpus`` if given, else ``RUN/corpus.zarr``, else the
    corpus recorded in the first model store's provenance. Returns a Path."""
    if corpus is not None:
        return Path(corpus)
    p = Path(run)
    if p.is_dir() and _store_format(p / "corpus.zarr") == "corpus":
        return p / "corpus.zarr"
    for m in models:
        rec = (getattr(m, "data_info_", None) or {}).get("corpus")
        if rec and _store_format(Path(rec)) == "corpus":
            return Path(rec)
    raise DNMFValueError(f"corpus: expected --corpus, a corpus.zarr in {str(p)!r}, or a model store that records its corpus; found none")


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def _n_layers(model) -> int:
    return len(model.A_)


def _transform(model, corpus, layer):
    if _n_layers(model) == 1:
        return np.asarray(model.transform(corpus))
    return np.asarray(model.transform(corpus, layer=layer))


def _rel_errors(model):
    rel = getattr(model, "layer_rel_error_", None)
    if rel is not None:
        return [float(r) for r in rel]
    h = getattr(model, "history_", None) or {}
    if h.get("rel_error"):
        return [float(h["rel_error"][-1])]
    return []


def _loss_curves(model) -> dict:
    """Named curves (lists of floats) from ``layer_history_`` (per forward layer) and ``history_``."""
    curves = {}
    for l, h in enumerate(getattr(model, "layer_history_", None) or []):
        for key in ("objective", "loss_X"):
            if h.get(key):
                curves[f"layer {l} {key}"] = [float(v) for v in h[key]]
                break
    h = getattr(model, "history_", None) or {}
    layer_curves = [c for c in curves.values()]
    for key in ("objective", "energy", "loss", "rel_error"):
        v = h.get(key)
        if isinstance(v, list) and v and np.isscalar(v[0]) and [float(x) for x in v] not in layer_curves:
            name = "backprop energy" if key == "energy" else key
            curves[name] = [float(x) for x in v]
    return curves


def evaluate_model(model, corpus, *, name=None, n_words: int = 10, threshold: float = 0.15, angles: bool = True,
                   max_pairs: int = 2000, random_state=0) -> dict:
    """Everything the report shows about ``model`` on ``corpus`` (a :class:`~dnmf_dask.store.Corpus`).

    Returns a dict with JSON-friendly ``metrics`` (accuracy on hidden labels, accuracy on all
    labeled samples, purity of ``argmax S(l)`` per layer, relative reconstruction error per layer,
    B density) and the arrays the figures need (``confusion``, ``A``, ``B``, ``curves``,
    ``topics``: top words per layer, ``hierarchy``, ``angles``: :class:`LayerAngles` or None).
    """
    L = _n_layers(model)
    truth = corpus.y_true if corpus.y_true is not None else corpus.y
    S = [_transform(model, corpus, l) for l in range(L)]
    m = {"model": type(model).__name__, "n_samples": int(corpus.shape[0]), "n_features": int(corpus.shape[1]),
         "ranks": [int(A.shape[1]) for A in model.A_], "n_iter": getattr(model, "n_iter_", None),
         "stop_reason": getattr(model, "stop_reason_", None), "rel_error": _rel_errors(model)}
    out = {"name": name or m["model"], "metrics": m, "A": [np.asarray(A) for A in model.A_], "B": None, "confusion": None,
           "curves": _loss_curves(model), "angles": None,
           "label_names": None if corpus.label_names is None else [str(s) for s in corpus.label_names]}
    if truth is not None and (truth >= 0).any() and S[-1].shape[0] == truth.shape[0]:
        m["purity"] = [purity(truth, np.argmax(s, axis=1)) for s in S if s.shape[0] == truth.shape[0]]
    B = getattr(model, "B_", None)
    if B is not None:
        out["B"] = np.asarray(B)
        pred = np.asarray(model.predict(corpus))
        known = truth is not None and pred.shape[0] == truth.shape[0]
        if known and corpus.y is not None and corpus.y_true is not None and np.any((corpus.y < 0) & (corpus.y_true >= 0)):
            m["accuracy_unlabeled"] = accuracy_unlabeled(corpus.y_true, pred, corpus.y)
            mask = (corpus.y < 0) & (corpus.y_true >= 0)
        else:
            mask = None if truth is None else truth >= 0
        if known:
            ok = truth >= 0
            m["accuracy_all_labeled"] = float(np.mean(pred[ok] == truth[ok]))
            n_cls = max(int(truth.max()) + 1, int(pred.max()) + 1, B.shape[0])
            out["confusion"] = confusion(truth, pred, n_classes=n_cls, mask=mask)
        bd = b_density(B, label_names=out["label_names"])
        m["b_active_topics_per_class"] = [int(v) for v in bd.n_active]
        m["b_density"] = bd.density
    if corpus.feature_names is not None:
        out["topics"] = [lt.words for lt in layer_topics(out["A"], corpus.feature_names, n=n_words)]
    else:
        out["topics"] = None
    out["hierarchy"] = hierarchy(out["A"], threshold=threshold) if L > 1 else []
    if angles and truth is not None and (truth >= 0).any() and all(s.shape[0] == truth.shape[0] for s in S):
        reps = [corpus.X.compute()] + S
        names = ["X"] + [f"S{l}" for l in range(L)]
        out["angles"] = layer_angles(reps, truth, layer_pairs="first_last", max_pairs=max_pairs, layer_names=names,
                                     label_names=out["label_names"], random_state=random_state)
        rows = out["angles"].rows
        for rel in ("within", "between"):
            r = [x["dist_ratio_mean"] for x in rows if x["relation"] == rel]
            m[f"dist_ratio_{rel}"] = float(np.nanmean(r)) if r else None
    return out


def format_metrics(ev) -> str:
    """One line per metric of an evaluation (for the terminal)."""
    lines = [f"{ev['name']}:"]
    for k, v in ev["metrics"].items():
        if isinstance(v, float):
            v = f"{v:.4f}"
        elif isinstance(v, list) and v and isinstance(v[0], float):
            v = "[" + ", ".join(f"{x:.4f}" for x in v) + "]"
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    """An ``<img>`` tag holding the figure as an inline base64 PNG (the figure is closed)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _fig_curves(curves):
    """One small panel per curve (each on its own scale: objectives and errors differ by orders)."""
    plt = _plt()
    items = list(curves.items())[:9]
    ncol = min(3, len(items))
    nrow = -(-len(items) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.6 * nrow), squeeze=False)
    for ax, (name, v) in zip(axes.ravel(), items):
        v = np.asarray(v, dtype=float)
        ax.plot(np.arange(1, v.size + 1), v, marker="." if v.size < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(items):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _fig_heat(M, title, xlabel, ylabel, yticks=None, annotate=False, xticks=None):
    plt = _plt()
    M = np.asarray(M, dtype=float)
    h, w = M.shape
    fig, ax = plt.subplots(figsize=(min(1.2 + 0.32 * w, 10), min(1.0 + 0.28 * h, 8)))
    im = ax.imshow(M, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if yticks is not None:
        ax.set_yticks(np.arange(h), yticks, fontsize=7)
    if xticks is not None:
        ax.set_xticks(np.arange(w), xticks, fontsize=7, rotation=30)
    if annotate:
        for i in range(h):
            for j in range(w):
                ax.text(j, i, f"{int(M[i, j])}", ha="center", va="center", color="w", fontsize=7)
    return _png(fig)


def _fig_angles(la):
    """Fig. 15/16 of the Deep NMF paper: angle histograms (class 0, first vs last layer) and
    mean distance ratios last/first layer per class, within and between classes."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    keys = sorted(la.angles)
    c0 = keys[0][0] if keys else None
    for rel, color in (("within", "C0"), ("between", "C1")):
        a = la.angles.get((c0, rel))
        if a is not None:
            axes[0].hist(a[:, 0], bins=30, alpha=0.4, color=color, label=f"{rel}, {la.layer_names[0]}")
            axes[0].hist(a[:, -1], bins=30, histtype="step", lw=1.5, color=color, label=f"{rel}, {la.layer_names[-1]}")
    name0 = la.label_names[c0] if c0 is not None and c0 < len(la.label_names) else str(c0)
    axes[0].set_title(f"angles of pairs with class {name0!r} (degrees)", fontsize=9)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    classes = sorted({r["class_name"] for r in la.rows}, key=lambda s: [r["class_name"] for r in la.rows].index(s))
    x = np.arange(len(classes))
    for j, rel in enumerate(("between", "within")):
        v = [next((r["dist_ratio_mean"] for r in la.rows if r["class_name"] == c and r["relation"] == rel), np.nan)
             for c in classes]
        axes[1].bar(x + (j - 0.5) * 0.4, v, 0.4, label=rel)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_xticks(x, classes, fontsize=7, rotation=30)
    axes[1].set_title(f"distance ratio {la.layer_names[-1]} / {la.layer_names[0]} (unit vectors)", fontsize=9)
    axes[1].legend(fontsize=7)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;font-size:13px;text-align:left}
th{background:#eee}h2{border-bottom:2px solid #ccc;margin-top:2em}pre{background:#f6f6f6;padding:.6em;font-size:12px;overflow-x:auto}
img{max-width:100%}.small{color:#666;font-size:12px}.wide{overflow-x:auto}"""


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list) and v and isinstance(v[0], float):
        return ", ".join(f"{x:.4f}" for x in v)
    return html.escape(str(v))


def _metrics_table(evals) -> str:
    keys = list(dict.fromkeys(k for ev in evals for k in ev["metrics"]))
    head = "<tr><th>metric</th>" + "".join(f"<th>{html.escape(ev['name'])}</th>" for ev in evals) + "</tr>"
    rows = [f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{_fmt(ev['metrics'].get(k, ''))}</td>" for ev in evals) + "</tr>"
            for k in keys]
    return '<div class="wide"><table>' + head + "".join(rows) + "</table></div>"


def _topics_html(ev) -> str:
    if not ev["topics"]:
        return "<p>no feature names in the corpus: no topic words</p>"
    parts = []
    for l, words in enumerate(ev["topics"]):
        rows = "".join(f"<tr><td>L{l}.{j}</td><td>{html.escape(', '.join(w))}</td></tr>" for j, w in enumerate(words))
        parts.append(f"<h4>layer {l} (effective topics A0…A{l})</h4><table><tr><th>topic</th><th>top words</th></tr>{rows}</table>")
    for level in reversed(ev["hierarchy"]):
        items = []
        for node in level:
            l, j = node["layer"], node["topic"]
            kids = "".join(
                f"<li>{w:.2f} · L{l - 1}.{i} [{html.escape(', '.join(ev['topics'][l - 1][i][:6]))}]</li>" for i, w in node["children"]
            )
            items.append(f"<li><b>L{l}.{j}</b> [{html.escape(', '.join(ev['topics'][l][j][:6]))}]<ul>{kids}</ul></li>")
        parts.append(f"<h4>supertopics of layer {level[0]['layer']} and the subtopics that form them (share of the "
                     f"column of A{level[0]['layer']})</h4><ul>{''.join(items)}</ul>")
    return "".join(parts)


def _angles_html(la) -> str:
    head = ("<tr><th>class</th><th>relation</th><th>layers</th><th>pairs</th><th>angle in</th><th>angle out</th>"
            "<th>angle ratio</th><th>distance ratio</th></tr>")
    rows = "".join(
        f"<tr><td>{html.escape(r['class_name'])}</td><td>{r['relation']}</td><td>{r['layer_in']}→{r['layer_out']}</td>"
        f"<td>{r['n_pairs']}</td><td>{r['angle_in_mean']:.1f}</td><td>{r['angle_out_mean']:.1f}</td>"
        f"<td>{r['angle_ratio_mean']:.3f}</td><td>{r['dist_ratio_mean']:.3f}</td></tr>" for r in la.rows)
    return "<table>" + head + rows + "</table>" + _fig_angles(la)


def _model_section(ev, i) -> str:
    out = [f'<h2 id="model-{i}">{html.escape(ev["name"])}</h2>']
    out.append('<h3 class="loss">Loss curves</h3>')
    out.append(_fig_curves(ev["curves"]) if ev["curves"] else "<p>no history stored</p>")
    out.append('<h3 class="topics">Topic hierarchy</h3>' + _topics_html(ev))
    out.append('<h3 class="factors">Factor matrices</h3>')
    for l, A in enumerate(ev["A"][1:], 1):
        out.append(_fig_heat(A.T, f"A{l}ᵀ: supertopics (rows) over layer-{l - 1} topics", f"layer-{l - 1} topic", f"layer-{l} topic"))
    if ev["B"] is not None:
        out.append(_fig_heat(ev["B"], "B: classes over last-layer topics", "last-layer topic", "class", yticks=ev["label_names"]))
    if ev["confusion"] is not None:
        out.append('<h3 class="confusion">Confusion matrix</h3><p class="small">rows: true class, columns: predicted; '
                   "hidden labels only when the corpus keeps the truth</p>")
        names = ev["label_names"][: ev["confusion"].shape[0]] if ev["label_names"] else None
        out.append(_fig_heat(ev["confusion"], "confusion", "predicted class", "true class", yticks=names, xticks=names,
                             annotate=True))
    if ev["angles"] is not None:
        out.append('<h3 class="angles">Layer angles and distances (§4.5)</h3>' + _angles_html(ev["angles"]))
    return "\n".join(out)


def write_report(path, evals, *, title="dnmf run report", corpus_info=None) -> Path:
    """Write the HTML report of the evaluations ``evals`` (from :func:`evaluate_model`) to ``path``.

    One file, no external assets: figures are inline base64 PNGs and the style sheet is inline.
    Written to a temporary file and renamed into place.
    """
    import os

    if not evals:
        raise DNMFValueError("evals: expected at least one model evaluation, found none")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    toc = "".join(f'<li><a href="#model-{i}">{html.escape(ev["name"])}</a></li>' for i, ev in enumerate(evals))
    info = f"<pre>{html.escape(json.dumps(corpus_info, indent=1, default=str))}</pre>" if corpus_info else ""
    body = [f"<h1>{html.escape(title)}</h1><p class='small'>written {when}</p>", '<h2 id="metrics">Metrics</h2>',
            _metrics_table(evals), info, f"<ul>{toc}</ul>"]
    body += [_model_section(ev, i) for i, ev in enumerate(evals)]
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style>"
           f"</head><body>{''.join(body)}</body></html>\n")
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, p)
    return p
