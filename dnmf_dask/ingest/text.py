"""Text ingestion: documents -> paragraphs (samples) -> stop-word-free TF-IDF bag of words.

This follows §4.1 of Flenner & Hunter, *A Deep Non-Negative Matrix Factorization Neural
Network*: every document is broken into paragraphs, every paragraph becomes one sample (one
column of the paper's X, one **row** of ours), stop words are removed and the counts are
weighted by TF-IDF. The document a paragraph came from is kept in ``groups`` so deep NMF can
pool across the paragraphs of one document and never across two documents (§4.2).

Two paths share the same paragraph splitting and the same token rules:

* :func:`paragraphs_to_matrix` — everything in memory, scikit-learn's ``TfidfVectorizer`` with a
  real vocabulary (``feature_names`` are words).
* :func:`hashing_chunks` — corpora that do not fit in memory. Two passes over the documents with
  scikit-learn's ``HashingVectorizer``: the first pass accumulates paragraph (document)
  frequencies per hash bucket, from which a ``TfidfTransformer``'s IDF is set; the second pass
  yields CSR row chunks that always hold whole documents. There is no vocabulary (columns are
  hash buckets).

Paragraph rules (both paths, :func:`split_paragraphs`)
-----------------------------------------------------
* Line ends are normalised (``\\r\\n``/``\\r`` -> ``\\n``); a paragraph ends at a blank line (a line
  holding only whitespace). Single newlines inside a paragraph are kept (the tokenizer ignores
  them).
* ``title``: what to do with the first block when it is a title (BBC articles start with a title
  line followed by a blank line): ``"paragraph"`` keeps it as a paragraph of its own (no special
  treatment, the generic default), ``"merge"`` prepends it to the first body paragraph (used for
  BBC: a title is short — ~30 characters — but carries the most topical words, and as a sample
  of its own it would be a near-empty row), ``"drop"`` removes it.
* Paragraphs shorter than ``min_paragraph_chars`` characters (after stripping, after the title
  rule) are dropped — in BBC sport pages these are fragments such as ``"1,375"``, ``"2000 GMT"``
  or a single broken-off word.
* Paragraphs that are all-zero after vectorizing (only stop words / pruned words) are dropped;
  their number is reported in ``params``. A document left with no paragraph is absent from the
  result (reported too).

Vectorizing rules
-----------------
* scikit-learn's tokenizer with ``token_pattern`` :data:`TOKEN_PATTERN` (tokens of >= 2 word
  characters starting with a letter, so numbers and amounts such as ``2004``, ``1,375`` or
  ``10bn`` are not words but ``mp3`` is), lower-cased, scikit-learn's English stop-word list.
* TF-IDF with scikit-learn's defaults (smooth IDF ``ln((1+N)/(1+df)) + 1``, ``l2`` row norm, so
  every sample lies on the unit sphere as §4.5 of the paper assumes). The "documents" of the IDF
  are the samples, i.e. paragraphs (``N`` = number of paragraphs that passed the length filter,
  ``df`` = number of those paragraphs holding the word); vocabulary pruning (``min_df``,
  ``max_df``, ``max_features``) counts paragraphs too.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import DNMFTypeError, DNMFValueError

__all__ = [
    "TOKEN_PATTERN",
    "TITLE_MODES",
    "TextCorpus",
    "ParagraphChunk",
    "TextChunk",
    "HashingTextStream",
    "split_paragraphs",
    "paragraphs_to_matrix",
    "iter_paragraph_chunks",
    "hashing_chunks",
]

#: Tokens of at least two word characters starting with a letter (``mp3`` yes; ``2004``,
#: ``10bn``, ``000m`` no).
TOKEN_PATTERN = r"(?u)\b[^\W\d_]\w+\b"
#: Allowed values of ``title``.
TITLE_MODES = ("paragraph", "merge", "drop")

_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


# --------------------------------------------------------------------------------------------
# result containers
# --------------------------------------------------------------------------------------------
@dataclass
class TextCorpus:
    """A vectorized text corpus: one row per paragraph.

    Attributes
    ----------
    X : scipy.sparse.csr_matrix (n_paragraphs, n_words), float32 by default
        TF-IDF, nonnegative, rows l2-normalised (with the default ``norm``), no all-zero row.
    y : ndarray of int64 (n_paragraphs,)
        Class of the paragraph's document (``-1`` if the document had no label). These are the
        *true* labels; hide some with :func:`dnmf_dask.ingest.labels.mask_labels`.
    groups : ndarray of int64 (n_paragraphs,)
        Index of the paragraph's document in the input ``documents`` (so ``doc_ids[groups]`` is
        the document id of every row). Paragraphs of a document are contiguous and in text
        order; documents appear in input order. A dropped document leaves a gap in the ids.
    feature_names : ndarray of str (n_words,)
        The vocabulary, column by column.
    label_names : ndarray of str (n_classes,)
        Class names; ``y == c`` means class ``label_names[c]``.
    doc_ids : ndarray of str (n_documents_in,)
        Id of every *input* document (including dropped ones).
    sample_ids : ndarray of str (n_paragraphs,)
        ``"<doc_id>:<p>"`` with ``p`` the paragraph's position in its document after the title
        rule and before any dropping.
    params : dict
        JSON-serialisable description of the ingest (all parameters, library versions, counts of
        what was dropped) for the store's provenance attributes.
    vectorizer : sklearn TfidfVectorizer or None
        The fitted vectorizer; ``vectorizer.transform(paragraph_texts)`` reproduces rows of X
        (used to transform new text). Its large ``stop_words_`` attribute is removed.
    """

    X: sp.csr_matrix
    y: np.ndarray
    groups: np.ndarray
    feature_names: np.ndarray
    label_names: np.ndarray
    doc_ids: np.ndarray
    sample_ids: np.ndarray
    params: dict
    vectorizer: Any = field(default=None, repr=False, compare=False)

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def documents_present(self) -> np.ndarray:
        """Sorted indices (into ``doc_ids``) of the documents that have at least one row."""
        return np.unique(self.groups)

    def __repr__(self) -> str:
        return (
            f"TextCorpus({self.n_samples} paragraphs x {self.n_features} words, "
            f"{self.documents_present.size} documents, {len(self.label_names)} classes, "
            f"nnz={self.X.nnz})"
        )


@dataclass
class ParagraphChunk:
    """Paragraph texts of whole consecutive documents (the output of :func:`iter_paragraph_chunks`).

    ``groups`` holds the document index (position in the input) of each paragraph, ``labels``
    the *raw* label of the paragraph's document (``None`` entries when no labels were given).
    """

    texts: list
    groups: np.ndarray
    sample_ids: list
    labels: list


@dataclass
class TextChunk:
    """A vectorized row chunk of :class:`HashingTextStream` (whole documents only)."""

    X: sp.csr_matrix
    y: np.ndarray
    groups: np.ndarray
    sample_ids: np.ndarray


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _check_title(title) -> str:
    if title not in TITLE_MODES:
        raise DNMFValueError(f"title: expected one of {TITLE_MODES}, found {title!r}")
    return title


def _check_nonneg_int(value, name) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DNMFTypeError(f"{name}: expected a nonnegative integer, found {type(value).__name__} {value!r}")
    if value < 0:
        raise DNMFValueError(f"{name}: expected a nonnegative integer, found {value}")
    return int(value)


def _check_df(value, name):
    """min_df / max_df: an int >= 1 (paragraph count) or a float in [0, 1] (fraction)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DNMFTypeError(f"{name}: expected an int (paragraph count) or a float in [0, 1], found {type(value).__name__} {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise DNMFValueError(f"{name}: expected an int >= 1 (paragraph count) or a float in [0, 1], found {value}")
        return int(value)
    if not 0.0 <= float(value) <= 1.0:
        raise DNMFValueError(f"{name}: expected a float in [0, 1] (fraction of paragraphs) or an int >= 1, found {value}")
    return float(value)


def _check_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise DNMFTypeError(f"dtype: expected float32 or float64, found {dt}")
    return dt.type


def _check_text(doc, i) -> str:
    if not isinstance(doc, str):
        raise DNMFTypeError(f"documents[{i}]: expected a str, found {type(doc).__name__}")
    return doc


def _encode_labels(doc_labels, n_docs: int, label_names):
    """Raw per-document labels -> (int64 codes with -1 = unlabeled, label_names as str array)."""
    if doc_labels is None:
        names = np.asarray([] if label_names is None else list(label_names), dtype=str)
        return np.full(n_docs, -1, dtype=np.int64), names
    if isinstance(doc_labels, str):
        raise DNMFTypeError("doc_labels: expected a sequence with one label per document, found a str")
    lab = np.asarray(list(doc_labels) if not isinstance(doc_labels, np.ndarray) else doc_labels)
    if lab.ndim != 1 or lab.shape[0] != n_docs:
        raise DNMFValueError(f"doc_labels: expected {n_docs} labels (one per document), found shape {lab.shape}")
    if lab.dtype.kind in "iu":
        codes = lab.astype(np.int64)
        if codes.size and codes.min() < -1:
            raise DNMFValueError(f"doc_labels: expected integer class codes >= 0 (or -1 = unlabeled), found {codes.min()}")
        n_cls = int(codes.max()) + 1 if codes.size else 0
        if label_names is None:
            names = np.asarray([str(c) for c in range(n_cls)], dtype=str)
        else:
            names = np.asarray(list(label_names), dtype=str)
            if names.ndim != 1 or names.size < n_cls:
                raise DNMFValueError(f"label_names: expected at least {n_cls} names (max code + 1), found {names.size}")
        return codes, names
    if lab.dtype.kind in "USO":
        if lab.dtype.kind == "O" and not all(isinstance(v, str) for v in lab):
            bad = next(v for v in lab if not isinstance(v, str))
            raise DNMFTypeError(f"doc_labels: expected all int or all str labels, found a {type(bad).__name__} ({bad!r})")
        lab = lab.astype(str)
        names = np.unique(lab) if label_names is None else np.asarray(list(label_names), dtype=str)
        if names.ndim != 1 or np.unique(names).size != names.size:
            raise DNMFValueError(f"label_names: expected distinct names, found {names.tolist()}")
        index = {n: i for i, n in enumerate(names.tolist())}
        missing = sorted(set(lab.tolist()) - set(index))
        if missing:
            raise DNMFValueError(f"doc_labels: labels {missing[:5]} are not in label_names {names.tolist()}")
        return np.fromiter((index[v] for v in lab.tolist()), dtype=np.int64, count=lab.size), names
    raise DNMFTypeError(f"doc_labels: expected integer codes or strings, found dtype {lab.dtype}")


def _check_doc_ids(doc_ids, n_docs: int) -> np.ndarray:
    if doc_ids is None:
        return np.asarray([str(i) for i in range(n_docs)], dtype=str)
    ids = np.asarray(list(doc_ids)).astype(str)
    if ids.ndim != 1 or ids.shape[0] != n_docs:
        raise DNMFValueError(f"doc_ids: expected {n_docs} ids (one per document), found shape {ids.shape}")
    if np.unique(ids).size != ids.size:
        raise DNMFValueError("doc_ids: expected distinct ids, found duplicates")
    return ids


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


# --------------------------------------------------------------------------------------------
# paragraphs
# --------------------------------------------------------------------------------------------
def split_paragraphs(text: str, *, title: str = "paragraph", min_paragraph_chars: int = 0) -> list[tuple[int, str]]:
    """Split one document into paragraphs at blank lines.

    Returns ``[(p, paragraph_text), ...]`` in text order, where ``p`` is the paragraph's position
    after the ``title`` rule and before dropping short paragraphs (so ids stay stable when
    ``min_paragraph_chars`` changes). See the module docstring for the rules.

    >>> split_paragraphs("Title\\n\\nBody one.\\n  \\nBody two.", title="merge")
    [(0, 'Title\\nBody one.'), (1, 'Body two.')]
    """
    if not isinstance(text, str):
        raise DNMFTypeError(f"text: expected a str, found {type(text).__name__}")
    _check_title(title)
    min_chars = _check_nonneg_int(min_paragraph_chars, "min_paragraph_chars")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = [b.strip() for b in _BLANK_LINE.split(text)]
    blocks = [b for b in blocks if b]
    if blocks and title == "merge" and len(blocks) > 1:
        blocks = [blocks[0] + "\n" + blocks[1]] + blocks[2:]
    elif blocks and title == "drop":
        blocks = blocks[1:]
    return [(p, b) for p, b in enumerate(blocks) if len(b) >= max(min_chars, 1)]


def _resolve_iterable(obj, name):
    """A re-iterable: a sequence/array, or a zero-argument callable giving a fresh iterable."""
    if obj is None:
        return None
    if callable(obj) and not isinstance(obj, (str, bytes)):
        return obj
    if isinstance(obj, (str, bytes)):
        raise DNMFTypeError(f"{name}: expected a sequence (one item per document) or a callable returning an iterable, found {type(obj).__name__}")
    if isinstance(obj, Iterator) or not isinstance(obj, Iterable):
        raise DNMFTypeError(
            f"{name}: expected a sequence or a zero-argument callable returning a fresh iterable "
            f"(the streaming path reads the documents twice), found {type(obj).__name__}"
        )
    return lambda: obj


def iter_paragraph_chunks(
    documents: Sequence[str] | Callable[[], Iterable[str]],
    doc_labels=None,
    *,
    doc_ids=None,
    chunk_rows: int = 4096,
    title: str = "paragraph",
    min_paragraph_chars: int = 20,
) -> Iterator[ParagraphChunk]:
    """Yield the corpus's paragraphs in chunks of whole consecutive documents.

    Documents are accumulated until a chunk holds at least ``chunk_rows`` paragraphs, then the
    chunk is yielded (so a chunk may exceed ``chunk_rows`` by less than one document and never
    splits a document). ``documents`` / ``doc_labels`` / ``doc_ids`` are sequences or zero-argument
    callables returning a fresh iterable (for text that is read from disk on the fly); they must
    have the same length. Text only — vectorizing is left to the caller
    (:func:`hashing_chunks`).
    """
    docs_fn = _resolve_iterable(documents, "documents")
    labels_fn = _resolve_iterable(doc_labels, "doc_labels")
    ids_fn = _resolve_iterable(doc_ids, "doc_ids")
    if docs_fn is None:
        raise DNMFTypeError("documents: expected a sequence of str or a callable, found None")
    chunk_rows = _check_nonneg_int(chunk_rows, "chunk_rows")
    if chunk_rows < 1:
        raise DNMFValueError(f"chunk_rows: expected an integer >= 1, found {chunk_rows}")
    _check_title(title)
    _check_nonneg_int(min_paragraph_chars, "min_paragraph_chars")

    return _paragraph_chunks(docs_fn, labels_fn, ids_fn, chunk_rows, title, min_paragraph_chars)


def _paragraph_chunks(docs_fn, labels_fn, ids_fn, chunk_rows, title, min_paragraph_chars):
    docs_it = iter(docs_fn())
    labels_it = iter(labels_fn()) if labels_fn is not None else None
    ids_it = iter(ids_fn()) if ids_fn is not None else None
    texts, groups, sids, labs = [], [], [], []
    _end = object()
    i = 0
    while True:
        doc = next(docs_it, _end)
        lab = next(labels_it, _end) if labels_it is not None else None
        did = next(ids_it, _end) if ids_it is not None else str(i)
        ends = [doc is _end]
        if labels_it is not None:
            ends.append(lab is _end)
        if ids_it is not None:
            ends.append(did is _end)
        if any(ends):
            if not all(ends):
                raise DNMFValueError(
                    "documents, doc_labels, doc_ids: expected the same number of items, "
                    f"found one of them exhausted after {i} documents and another not"
                )
            break
        _check_text(doc, i)
        for p, par in split_paragraphs(doc, title=title, min_paragraph_chars=min_paragraph_chars):
            texts.append(par)
            groups.append(i)
            sids.append(f"{did}:{p}")
            labs.append(lab)
        i += 1
        if len(texts) >= chunk_rows:
            yield ParagraphChunk(texts, np.asarray(groups, dtype=np.int64), sids, labs)
            texts, groups, sids, labs = [], [], [], []
    if texts:
        yield ParagraphChunk(texts, np.asarray(groups, dtype=np.int64), sids, labs)


# --------------------------------------------------------------------------------------------
# in-memory path
# --------------------------------------------------------------------------------------------
def paragraphs_to_matrix(
    documents: Sequence[str],
    doc_labels=None,
    *,
    doc_ids=None,
    label_names=None,
    title: str = "paragraph",
    min_paragraph_chars: int = 20,
    min_df: int | float = 2,
    max_df: int | float = 0.5,
    max_features: int | None = None,
    sublinear_tf: bool = False,
    norm: str | None = "l2",
    stop_words: str | list | None = "english",
    token_pattern: str = TOKEN_PATTERN,
    dtype=np.float32,
) -> TextCorpus:
    """Documents -> paragraph-by-word TF-IDF matrix (§4.1 of the deep NMF paper), in memory.

    Parameters
    ----------
    documents : sequence of str
        The documents, in the order the rows should follow.
    doc_labels : sequence of int or str, optional
        One label per document (ints: class codes, -1 = unlabeled; strs: class names, coded in
        sorted order unless ``label_names`` gives the order). Every paragraph gets its
        document's label.
    doc_ids : sequence of str, optional
        Distinct document ids (default ``"0", "1", ...``), used in ``sample_ids``.
    label_names : sequence of str, optional
        Class names (order = codes).
    title : {"paragraph", "merge", "drop"}
        How the first block of every document is treated (see module docstring).
    min_paragraph_chars : int
        Paragraphs shorter than this (characters, stripped) are dropped.
    min_df, max_df, max_features, sublinear_tf, norm, stop_words, token_pattern, dtype
        Passed to ``sklearn.feature_extraction.text.TfidfVectorizer`` (documents = paragraphs).

    Returns
    -------
    TextCorpus
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence) and not isinstance(documents, np.ndarray):
        raise DNMFTypeError(f"documents: expected a sequence of str, found {type(documents).__name__}")
    n_docs = len(documents)
    if n_docs == 0:
        raise DNMFValueError("documents: expected at least one document, found 0")
    _check_title(title)
    min_chars = _check_nonneg_int(min_paragraph_chars, "min_paragraph_chars")
    min_df = _check_df(min_df, "min_df")
    max_df = _check_df(max_df, "max_df")
    if max_features is not None:
        max_features = _check_nonneg_int(max_features, "max_features")
        if max_features < 1:
            raise DNMFValueError(f"max_features: expected None or an integer >= 1, found {max_features}")
    dtype = _check_dtype(dtype)
    codes, names = _encode_labels(doc_labels, n_docs, label_names)
    ids = _check_doc_ids(doc_ids, n_docs)

    texts, groups, sids = [], [], []
    n_split = 0
    for i, doc in enumerate(documents):
        _check_text(doc, i)
        pars = split_paragraphs(doc, title=title, min_paragraph_chars=0)
        n_split += len(pars)
        for p, par in pars:
            if len(par) >= max(min_chars, 1):
                texts.append(par)
                groups.append(i)
                sids.append(f"{ids[i]}:{p}")
    if not texts:
        raise DNMFValueError(f"documents: expected text with paragraphs of >= {min_chars} characters, found none")
    n_short = n_split - len(texts)

    vec = TfidfVectorizer(
        lowercase=True,
        stop_words=stop_words,
        token_pattern=token_pattern,
        min_df=min_df,
        max_df=max_df,
        max_features=max_features,
        sublinear_tf=bool(sublinear_tf),
        norm=norm,
        dtype=dtype,
    )
    try:
        X = vec.fit_transform(texts)
    except ValueError as e:  # empty vocabulary, max_df < min_df, ...
        raise DNMFValueError(f"min_df/max_df/stop_words: vectorizing found no usable vocabulary ({e})") from None
    if hasattr(vec, "stop_words_"):
        vec.stop_words_ = None  # large set of pruned terms; not needed to transform
    X = sp.csr_matrix(X, dtype=dtype)
    X.sort_indices()
    keep = np.diff(X.indptr) > 0
    groups = np.asarray(groups, dtype=np.int64)
    sids = np.asarray(sids, dtype=str)
    n_zero = int((~keep).sum())
    if n_zero:
        X = X[keep]
        groups = groups[keep]
        sids = sids[keep]
    present = np.unique(groups)
    dropped_docs = np.setdiff1d(np.arange(n_docs), present)
    params = {
        "ingest": "dnmf_dask.ingest.text.paragraphs_to_matrix",
        "vectorizer": "sklearn.feature_extraction.text.TfidfVectorizer",
        "sklearn_version": _sklearn_version(),
        "sample_unit": "paragraph",
        "idf_unit": "paragraph",
        "paragraph_split": "blank line",
        "title": title,
        "min_paragraph_chars": min_chars,
        "lowercase": True,
        "stop_words": stop_words if isinstance(stop_words, (str, type(None))) else sorted(stop_words),
        "token_pattern": token_pattern,
        "min_df": min_df,
        "max_df": max_df,
        "max_features": max_features,
        "sublinear_tf": bool(sublinear_tf),
        "use_idf": True,
        "smooth_idf": True,
        "norm": norm,
        "dtype": np.dtype(dtype).name,
        "n_documents": n_docs,
        "n_documents_kept": int(present.size),
        "n_documents_dropped": int(dropped_docs.size),
        "dropped_doc_ids": ids[dropped_docs].tolist(),
        "n_paragraphs_split": n_split,
        "n_paragraphs_short_dropped": n_short,
        "n_paragraphs_empty_dropped": n_zero,
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "nnz": int(X.nnz),
        "n_classes": int(names.size),
    }
    return TextCorpus(
        X=X,
        y=codes[groups],
        groups=groups,
        feature_names=np.asarray(vec.get_feature_names_out(), dtype=str),
        label_names=names,
        doc_ids=ids,
        sample_ids=sids,
        params=params,
        vectorizer=vec,
    )


# --------------------------------------------------------------------------------------------
# streaming path (two passes, hashing)
# --------------------------------------------------------------------------------------------
class HashingTextStream:
    """Two-pass out-of-core TF-IDF over paragraphs; iterate it to get :class:`TextChunk` s.

    Pass 1 (:meth:`fit`, run automatically by the first iteration) streams the paragraphs once
    through ``HashingVectorizer`` (raw counts, ``alternate_sign=False``) and accumulates, per
    hash bucket, the number of paragraphs holding it (``df_``) and its total count, plus the
    number of paragraphs ``N`` and the label set. Pruning then follows scikit-learn's
    ``CountVectorizer`` rules on buckets (``min_df``/``max_df`` as counts or fractions of ``N``,
    then the ``max_features`` buckets of largest total count), and the IDF
    ``ln((1+N)/(1+df)) + 1`` (smooth, as ``TfidfTransformer``) is set on a
    ``TfidfTransformer``, with IDF 0 for pruned buckets so they vanish. Pass 2 (``__iter__``)
    re-reads the documents and yields CSR chunks of whole documents, all-zero rows dropped
    (``n_paragraphs_empty_dropped`` in :attr:`params` after a full iteration).

    With ``min_df=1, max_df=1.0`` and no hash collision between vocabulary words, the rows equal
    those of :func:`paragraphs_to_matrix` with the same parameters, up to the column order.
    Columns are hash buckets: there are no ``feature_names``.
    """

    def __init__(
        self,
        documents,
        doc_labels=None,
        *,
        doc_ids=None,
        label_names=None,
        n_features: int = 2**20,
        chunk_rows: int = 4096,
        title: str = "paragraph",
        min_paragraph_chars: int = 20,
        min_df: int | float = 2,
        max_df: int | float = 0.5,
        max_features: int | None = None,
        sublinear_tf: bool = False,
        norm: str | None = "l2",
        stop_words: str | list | None = "english",
        token_pattern: str = TOKEN_PATTERN,
        dtype=np.float32,
    ):
        from sklearn.feature_extraction.text import HashingVectorizer

        self._docs = _resolve_iterable(documents, "documents")
        if self._docs is None:
            raise DNMFTypeError("documents: expected a sequence of str or a callable, found None")
        self._labels = _resolve_iterable(doc_labels, "doc_labels")
        self._ids = _resolve_iterable(doc_ids, "doc_ids")
        self.label_names_given = None if label_names is None else np.asarray(list(label_names), dtype=str)
        n_features = _check_nonneg_int(n_features, "n_features")
        if n_features < 1:
            raise DNMFValueError(f"n_features: expected an integer >= 1, found {n_features}")
        self.n_features = n_features
        self.chunk_rows = _check_nonneg_int(chunk_rows, "chunk_rows")
        if self.chunk_rows < 1:
            raise DNMFValueError(f"chunk_rows: expected an integer >= 1, found {chunk_rows}")
        self.title = _check_title(title)
        self.min_paragraph_chars = _check_nonneg_int(min_paragraph_chars, "min_paragraph_chars")
        self.min_df = _check_df(min_df, "min_df")
        self.max_df = _check_df(max_df, "max_df")
        if max_features is not None:
            max_features = _check_nonneg_int(max_features, "max_features")
            if max_features < 1:
                raise DNMFValueError(f"max_features: expected None or an integer >= 1, found {max_features}")
        self.max_features = max_features
        self.sublinear_tf = bool(sublinear_tf)
        self.norm = norm
        self.stop_words = stop_words
        self.token_pattern = token_pattern
        self.dtype = _check_dtype(dtype)
        self.hasher = HashingVectorizer(
            n_features=n_features,
            lowercase=True,
            stop_words=stop_words,
            token_pattern=token_pattern,
            alternate_sign=False,
            norm=None,
            dtype=np.float64,
        )
        self.transformer = None
        self.df_ = None
        self.idf_ = None
        self.label_names = None
        self.params: dict = {}
        self._fitted = False

    # -- helpers
    def _chunks(self):
        return iter_paragraph_chunks(
            self._docs,
            self._labels,
            doc_ids=self._ids,
            chunk_rows=self.chunk_rows,
            title=self.title,
            min_paragraph_chars=self.min_paragraph_chars,
        )

    def _counts(self, texts):
        return sp.csr_matrix(self.hasher.transform(texts))

    # -- pass 1
    def fit(self) -> "HashingTextStream":
        """First pass: paragraph frequencies per bucket, labels, IDF. Returns self."""
        from sklearn.feature_extraction.text import TfidfTransformer

        df = np.zeros(self.n_features, dtype=np.int64)
        tf = np.zeros(self.n_features, dtype=np.float64)
        n_par = 0
        n_docs_seen = set()
        raw_labels = set()
        int_labels = None
        for ch in self._chunks():
            C = self._counts(ch.texts)
            df += np.bincount(C.indices, minlength=self.n_features)
            tf += np.bincount(C.indices, weights=C.data, minlength=self.n_features)
            n_par += C.shape[0]
            n_docs_seen.update(np.unique(ch.groups).tolist())
            if self._labels is not None:
                for v in ch.labels:
                    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, str)):
                        raise DNMFTypeError(f"doc_labels: expected int or str labels, found {type(v).__name__} ({v!r})")
                    is_int = isinstance(v, numbers.Integral)
                    if int_labels is None:
                        int_labels = is_int
                    elif int_labels != is_int:
                        raise DNMFTypeError("doc_labels: expected all int or all str labels, found a mix")
                    raw_labels.add(int(v) if is_int else v)
        if n_par == 0:
            raise DNMFValueError(
                f"documents: expected text with paragraphs of >= {self.min_paragraph_chars} characters, found none"
            )
        # label coding (same rules as the in-memory path)
        if self._labels is None or not raw_labels:
            self.label_names = self.label_names_given if self.label_names_given is not None else np.asarray([], dtype=str)
            self._code = None
        elif int_labels:
            if min(raw_labels) < -1:
                raise DNMFValueError(f"doc_labels: expected integer class codes >= 0 (or -1 = unlabeled), found {min(raw_labels)}")
            n_cls = max(raw_labels) + 1
            if self.label_names_given is not None:
                if self.label_names_given.size < n_cls:
                    raise DNMFValueError(f"label_names: expected at least {n_cls} names (max code + 1), found {self.label_names_given.size}")
                self.label_names = self.label_names_given
            else:
                self.label_names = np.asarray([str(c) for c in range(n_cls)], dtype=str)
            self._code = int
        else:
            names = self.label_names_given if self.label_names_given is not None else np.asarray(sorted(raw_labels), dtype=str)
            index = {n: i for i, n in enumerate(names.tolist())}
            missing = sorted(raw_labels - set(index))
            if missing:
                raise DNMFValueError(f"doc_labels: labels {missing[:5]} are not in label_names {names.tolist()}")
            self.label_names = names
            self._code = index.__getitem__
        # pruning, as sklearn's CountVectorizer
        max_count = self.max_df if isinstance(self.max_df, int) else self.max_df * n_par
        min_count = self.min_df if isinstance(self.min_df, int) else self.min_df * n_par
        if max_count < min_count:
            raise DNMFValueError(f"max_df: expected max_df to correspond to >= min_df paragraphs, found {max_count} < {min_count}")
        keep = (df >= min_count) & (df <= max_count) & (df > 0)
        if self.max_features is not None and keep.sum() > self.max_features:
            order = np.flatnonzero(keep)[np.argsort(-tf[keep], kind="stable")]
            keep = np.zeros_like(keep)
            keep[order[: self.max_features]] = True
        if not keep.any():
            raise DNMFValueError("min_df/max_df/stop_words: vectorizing found no usable vocabulary (every bucket pruned)")
        idf = np.log((1.0 + n_par) / (1.0 + df)) + 1.0
        idf[~keep] = 0.0
        tr = TfidfTransformer(norm=self.norm, use_idf=True, smooth_idf=True, sublinear_tf=self.sublinear_tf)
        tr.fit(sp.csr_matrix((1, self.n_features), dtype=np.float64))  # sets n_features_in_ ...
        tr.idf_ = idf  # ... and the IDF from the accumulated frequencies replaces the dummy one
        self.transformer = tr
        self.df_ = df
        self.idf_ = idf
        self.keep_ = keep
        self.params = {
            "ingest": "dnmf_dask.ingest.text.hashing_chunks",
            "vectorizer": "sklearn HashingVectorizer(alternate_sign=False, norm=None) + TfidfTransformer (two passes)",
            "sklearn_version": _sklearn_version(),
            "sample_unit": "paragraph",
            "idf_unit": "paragraph",
            "paragraph_split": "blank line",
            "title": self.title,
            "min_paragraph_chars": self.min_paragraph_chars,
            "lowercase": True,
            "stop_words": self.stop_words if isinstance(self.stop_words, (str, type(None))) else sorted(self.stop_words),
            "token_pattern": self.token_pattern,
            "n_features": self.n_features,
            "hash_function": "sklearn murmurhash3_32 (HashingVectorizer)",
            "min_df": self.min_df,
            "max_df": self.max_df,
            "max_features": self.max_features,
            "sublinear_tf": self.sublinear_tf,
            "use_idf": True,
            "smooth_idf": True,
            "norm": self.norm,
            "dtype": np.dtype(self.dtype).name,
            "chunk_rows": self.chunk_rows,
            "n_documents_with_paragraphs": len(n_docs_seen),
            "n_paragraphs": int(n_par),
            "n_buckets_kept": int(keep.sum()),
            "n_classes": int(self.label_names.size),
        }
        self._fitted = True
        return self

    # -- pass 2
    def __iter__(self) -> Iterator[TextChunk]:
        if not self._fitted:
            self.fit()
        n_zero = 0
        n_rows = 0
        for ch in self._chunks():
            C = self._counts(ch.texts)
            X = sp.csr_matrix(self.transformer.transform(C), dtype=self.dtype)
            X.eliminate_zeros()
            X.sort_indices()
            keep = np.diff(X.indptr) > 0
            sids = np.asarray(ch.sample_ids, dtype=str)
            if self._code is None:
                y = np.full(len(ch.texts), -1, dtype=np.int64)
            else:
                y = np.fromiter((self._code(v) for v in ch.labels), dtype=np.int64, count=len(ch.labels))
            groups = ch.groups
            if not keep.all():
                n_zero += int((~keep).sum())
                X, y, groups, sids = X[keep], y[keep], groups[keep], sids[keep]
            if X.shape[0] == 0:
                continue
            n_rows += X.shape[0]
            yield TextChunk(X=X, y=y, groups=groups, sample_ids=sids)
        self.params["n_paragraphs_empty_dropped"] = n_zero
        self.params["n_samples"] = n_rows


def hashing_chunks(documents, doc_labels=None, **kwargs) -> HashingTextStream:
    """Streaming TF-IDF for corpora that do not fit in memory (two passes, hashed words).

    ``documents`` (and ``doc_labels``, ``doc_ids``) are sequences or zero-argument callables
    returning a fresh iterable (e.g. a generator function reading files), because the documents
    are read twice. Keyword arguments: those of :func:`paragraphs_to_matrix` (except
    ``max_features`` counts buckets) plus ``n_features`` (hash space, default 2**20) and
    ``chunk_rows`` (target paragraphs per chunk; chunks hold whole documents). Returns a
    :class:`HashingTextStream`; iterate it (any number of times) to get :class:`TextChunk` s::

        stream = hashing_chunks(read_docs, read_labels, chunk_rows=8192)
        for chunk in stream:          # first iteration runs pass 1, then streams pass 2
            write(chunk.X, chunk.y, chunk.groups, chunk.sample_ids)
        stream.params                 # provenance
    """
    return HashingTextStream(documents, doc_labels, **kwargs)
