"""Tests of dnmf_dask.ingest.text, .bbc and .labels."""

from __future__ import annotations

import math
import os
import re
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.ingest.bbc import bbc_data_dir, bbc_news_corpus, bbc_news_stream, decode_text, load_bbc_news
from dnmf_dask.ingest.labels import mask_labels, n_known_per_class
from dnmf_dask.ingest.text import (
    TOKEN_PATTERN,
    hashing_chunks,
    iter_paragraph_chunks,
    paragraphs_to_matrix,
    split_paragraphs,
)

# ----------------------------------------------------------------------------------------------
# paragraph splitting
# ----------------------------------------------------------------------------------------------


def test_split_paragraphs_blank_lines_crlf_and_title_modes():
    text = "My Title\r\n\r\nFirst body line\nstill first.\r\n   \t\r\nSecond para.\n\n\n\nThird."
    assert split_paragraphs(text) == [
        (0, "My Title"),
        (1, "First body line\nstill first."),
        (2, "Second para."),
        (3, "Third."),
    ]
    assert split_paragraphs(text, title="merge") == [
        (0, "My Title\nFirst body line\nstill first."),
        (1, "Second para."),
        (2, "Third."),
    ]
    assert split_paragraphs(text, title="drop") == [(0, "First body line\nstill first."), (1, "Second para."), (2, "Third.")]
    # short paragraphs are dropped but keep their position numbers for the others
    assert split_paragraphs(text, min_paragraph_chars=10) == [(1, "First body line\nstill first."), (2, "Second para.")]
    assert split_paragraphs("   \n\n  ") == []
    assert split_paragraphs("only a title", title="merge") == [(0, "only a title")]


def test_split_paragraphs_errors():
    with pytest.raises(DNMFValueError, match="title"):
        split_paragraphs("x", title="first")
    with pytest.raises(DNMFTypeError, match="text"):
        split_paragraphs(b"bytes")
    with pytest.raises(DNMFValueError, match="min_paragraph_chars"):
        split_paragraphs("x", min_paragraph_chars=-1)


# ----------------------------------------------------------------------------------------------
# in-memory vectorizing against a hand computation
# ----------------------------------------------------------------------------------------------

DOCS = [
    "Cats chase mice.\n\nThe cats sleep, cats purr.\n\nAnd it is the of.",  # 3rd: only stop words
    "Dogs chase cats and balls.\n\nDogs bark 2004 times.",
    "x\n\nThe of and.",  # nothing usable: document dropped
    "Mice eat cheese. Cheese!",
]
LABELS = ["pets", "dogs", "pets", "pets"]


def _hand_tfidf(paragraphs, vocab):
    """Independent TF-IDF: regex tokens, stop list, smooth idf over paragraphs, l2 rows."""
    toks = [[t for t in re.findall(r"[a-z][a-z0-9_]+", p.lower()) if t not in ENGLISH_STOP_WORDS] for p in paragraphs]
    N = len(paragraphs)
    df = Counter(w for t in toks for w in set(t))
    M = np.zeros((N, len(vocab)))
    for i, t in enumerate(toks):
        for w, c in Counter(t).items():
            M[i, vocab.index(w)] = c * (math.log((1 + N) / (1 + df[w])) + 1)
    norms = np.linalg.norm(M, axis=1, keepdims=True)
    return np.divide(M, norms, out=np.zeros_like(M), where=norms > 0)


def test_paragraphs_to_matrix_matches_hand_computation():
    c = paragraphs_to_matrix(DOCS, LABELS, min_df=1, max_df=1.0, min_paragraph_chars=3)
    # paragraphs after the length filter ("x" dropped), in order
    paras = [
        "Cats chase mice.",
        "The cats sleep, cats purr.",
        "And it is the of.",
        "Dogs chase cats and balls.",
        "Dogs bark 2004 times.",
        "The of and.",
        "Mice eat cheese. Cheese!",
    ]
    vocab = sorted({t for p in paras for t in re.findall(r"[a-z][a-z0-9_]+", p.lower()) if t not in ENGLISH_STOP_WORDS})
    assert c.feature_names.tolist() == vocab
    full = _hand_tfidf(paras, vocab)
    nonzero = np.linalg.norm(full, axis=1) > 0
    np.testing.assert_allclose(c.X.toarray(), full[nonzero], rtol=1e-5, atol=1e-6)
    assert isinstance(c.X, sp.csr_matrix) and c.X.dtype == np.float32
    assert c.groups.tolist() == [0, 0, 1, 1, 3]
    assert c.sample_ids.tolist() == ["0:0", "0:1", "1:0", "1:1", "3:0"]
    assert c.label_names.tolist() == ["dogs", "pets"]
    assert c.y.tolist() == [1, 1, 0, 0, 1]
    assert c.params["n_paragraphs_empty_dropped"] == 2
    assert c.params["n_paragraphs_short_dropped"] == 1
    assert c.params["n_documents_dropped"] == 1 and c.params["dropped_doc_ids"] == ["2"]
    assert c.doc_ids.tolist() == ["0", "1", "2", "3"]
    # the kept vectorizer reproduces the rows
    np.testing.assert_allclose(c.vectorizer.transform([paras[0]]).toarray(), c.X[:1].toarray(), rtol=1e-6)
    assert "2004" not in c.feature_names


def test_paragraphs_to_matrix_options_and_labels():
    c = paragraphs_to_matrix(
        DOCS, [1, 0, 1, -1], doc_ids=["a", "b", "c", "d"], label_names=["dog", "pet"], title="drop", min_df=1, max_df=1.0, min_paragraph_chars=0
    )
    # title="drop" removes the first block of every document; "d" then has nothing left and
    # "c" only stop words
    assert c.sample_ids.tolist() == ["a:0", "b:0"]
    assert c.y.tolist() == [1, 0]
    assert c.params["dropped_doc_ids"] == ["c", "d"]
    assert "cheese" not in set(c.feature_names) and "purr" in set(c.feature_names)
    # max_df prunes words of too many paragraphs ("cats" is in 3)
    c2 = paragraphs_to_matrix(DOCS, LABELS, min_df=1, max_df=2, min_paragraph_chars=3)
    assert "cats" not in c2.feature_names and "chase" in c2.feature_names
    # max_features keeps the most frequent word (cats: 4 occurrences); rows without it vanish
    c3 = paragraphs_to_matrix(DOCS, LABELS, min_df=1, max_df=1.0, max_features=1, min_paragraph_chars=3)
    assert c3.feature_names.tolist() == ["cats"]
    assert c3.sample_ids.tolist() == ["0:0", "0:1", "1:0"]
    np.testing.assert_allclose(c3.X.toarray().ravel(), 1.0)
    c4 = paragraphs_to_matrix(DOCS, LABELS, min_df=1, max_df=1.0, dtype=np.float64, norm=None, sublinear_tf=True)
    assert c4.X.dtype == np.float64 and c4.params["sublinear_tf"] is True


def test_paragraphs_to_matrix_errors():
    with pytest.raises(DNMFTypeError, match="documents"):
        paragraphs_to_matrix("one string")
    with pytest.raises(DNMFTypeError, match=r"documents\[1\]"):
        paragraphs_to_matrix(["fine text here ok", 3])
    with pytest.raises(DNMFValueError, match="doc_labels"):
        paragraphs_to_matrix(DOCS, [0, 1])
    with pytest.raises(DNMFValueError, match="doc_ids"):
        paragraphs_to_matrix(DOCS, doc_ids=["a", "a", "b", "c"])
    with pytest.raises(DNMFValueError, match="label_names"):
        paragraphs_to_matrix(DOCS, [0, 1, 2, 0], label_names=["x", "y"])
    with pytest.raises(DNMFValueError, match="doc_labels"):
        paragraphs_to_matrix(DOCS, ["a", "b", "c", "d"], label_names=["a", "b"])
    with pytest.raises(DNMFTypeError, match="min_df"):
        paragraphs_to_matrix(DOCS, min_df="2")
    with pytest.raises(DNMFValueError, match="max_df"):
        paragraphs_to_matrix(DOCS, max_df=1.5)
    with pytest.raises(DNMFTypeError, match="dtype"):
        paragraphs_to_matrix(DOCS, dtype=np.int32)
    with pytest.raises(DNMFValueError, match="documents"):
        paragraphs_to_matrix([])
    with pytest.raises(DNMFValueError, match="vocabulary"):
        paragraphs_to_matrix(["the and of it is here. " * 3])


# ----------------------------------------------------------------------------------------------
# streaming path
# ----------------------------------------------------------------------------------------------


def _synthetic_docs(n_docs=60, seed=0):
    rng = np.random.RandomState(seed)
    words = [f"w{chr(97 + i)}{chr(97 + j)}" for i in range(8) for j in range(8)]
    docs = []
    for _ in range(n_docs):
        pars = []
        for _ in range(rng.randint(1, 6)):
            pars.append(" ".join(rng.choice(words, size=rng.randint(3, 12))) + " the of and")
        docs.append("\n\n".join(pars))
    return docs, rng.randint(0, 3, size=n_docs)


@pytest.mark.parametrize("chunk_rows", [1, 7, 50, 10_000])
def test_hashing_chunks_match_in_memory(chunk_rows):
    docs, labels = _synthetic_docs()
    ref = paragraphs_to_matrix(docs, labels, min_df=1, max_df=1.0, min_paragraph_chars=5)
    stream = hashing_chunks(docs, labels, min_df=1, max_df=1.0, min_paragraph_chars=5, chunk_rows=chunk_rows, n_features=2**18)
    chunks = list(stream)
    # chunks never split a document and keep at least chunk_rows rows (except the last)
    seen = set()
    for k, ch in enumerate(chunks):
        docs_here = set(np.unique(ch.groups).tolist())
        assert not (docs_here & seen)
        seen |= docs_here
        assert np.all(np.diff(ch.groups) >= 0)
        if k < len(chunks) - 1:
            assert ch.X.shape[0] >= chunk_rows
    X = sp.vstack([c.X for c in chunks]).tocsr()
    groups = np.concatenate([c.groups for c in chunks])
    np.testing.assert_array_equal(groups, ref.groups)
    np.testing.assert_array_equal(np.concatenate([c.sample_ids for c in chunks]), ref.sample_ids)
    np.testing.assert_array_equal(np.concatenate([c.y for c in chunks]), ref.y)
    assert X.shape[0] == ref.X.shape[0]
    # map every vocabulary word to its hash bucket; with no collision the matrices agree exactly
    buckets = stream.hasher.transform(list(ref.feature_names)).indices
    assert np.unique(buckets).size == buckets.size  # 64 words in 2**18 buckets
    P = sp.csr_matrix((np.ones(buckets.size), (np.arange(buckets.size), buckets)), shape=(buckets.size, X.shape[1]))
    M = (ref.X @ P).tocsr()
    M.sort_indices()
    np.testing.assert_array_equal(M.indptr, X.indptr)
    np.testing.assert_array_equal(M.indices, X.indices)
    np.testing.assert_allclose(M.data, X.data, rtol=1e-5, atol=1e-7)
    assert stream.params["n_paragraphs"] == ref.params["n_paragraphs_split"] - ref.params["n_paragraphs_short_dropped"]
    # iterating again gives the same chunks
    again = sp.vstack([c.X for c in stream]).tocsr()
    assert (again != X).nnz == 0


def test_hashing_chunks_callables_pruning_and_errors():
    docs, labels = _synthetic_docs(30, seed=1)
    names = np.array(["x", "y", "z"])[labels]
    stream = hashing_chunks(lambda: iter(docs), lambda: iter(names.tolist()), min_df=3, max_df=0.5, max_features=20, chunk_rows=10)
    X = sp.vstack([c.X for c in stream]).tocsr()
    assert stream.label_names.tolist() == ["x", "y", "z"]
    y = np.concatenate([c.y for c in stream])
    assert set(np.unique(y)) <= {0, 1, 2}
    used = np.unique(X.indices)
    assert used.size <= 20
    assert np.all(stream.df_[used] >= 3) and np.all(stream.df_[used] <= 0.5 * stream.params["n_paragraphs"])
    assert (np.diff(X.indptr) > 0).all() and X.data.min() > 0
    with pytest.raises(DNMFTypeError, match="documents"):
        hashing_chunks(iter(docs))
    with pytest.raises(DNMFValueError, match="same number"):
        list(hashing_chunks(docs, labels[:-1]))
    with pytest.raises(DNMFValueError, match="chunk_rows"):
        iter_paragraph_chunks(docs, chunk_rows=0)


# ----------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------


def test_mask_labels_per_sample():
    rng = np.random.RandomState(3)
    y = rng.randint(0, 4, size=1000)
    y[:5] = -1
    m = mask_labels(y, 0.05, 7)
    known = m >= 0
    assert np.all(m[known] == y[known])
    assert np.all(m[:5] == -1)
    for c in range(4):
        n_c = int((y == c).sum())
        assert int((m == c).sum()) == max(1, round(0.05 * n_c))
    np.testing.assert_array_equal(m, mask_labels(y, 0.05, 7))
    assert not np.array_equal(m, mask_labels(y, 0.05, 8))
    # tiny fraction: still one per class; fraction 1: everything known
    np.testing.assert_array_equal(n_known_per_class(mask_labels(y, 1e-6, 0), 4), [1, 1, 1, 1])
    np.testing.assert_array_equal(mask_labels(y, 1.0, 0), y)
    assert mask_labels(y, 0.05, np.random.default_rng(1)).shape == y.shape


def test_mask_labels_by_group():
    rng = np.random.RandomState(0)
    sizes = rng.randint(1, 8, size=200)
    groups = np.repeat(np.arange(200), sizes)
    doc_cls = rng.randint(0, 3, size=200)
    y = doc_cls[groups]
    m = mask_labels(y, 0.1, 0, by_group=groups)
    chosen = np.unique(groups[m >= 0])
    # whole documents: every paragraph of a chosen document keeps its label, others none
    assert np.all(m[np.isin(groups, chosen)] == y[np.isin(groups, chosen)])
    assert np.all(m[~np.isin(groups, chosen)] == -1)
    for c in range(3):
        n_docs = int((doc_cls == c).sum())
        assert int(np.sum(doc_cls[chosen] == c)) == max(1, round(0.1 * n_docs))
    bad = y.copy()
    bad[0] = (bad[0] + 1) % 3
    if sizes[0] > 1:
        with pytest.raises(DNMFValueError, match="one class per group"):
            mask_labels(bad, 0.1, 0, by_group=groups)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(y=[0, 1], fraction=0.0), DNMFValueError, "fraction"),
        (dict(y=[0, 1], fraction=1.5), DNMFValueError, "fraction"),
        (dict(y=[0, 1], fraction="half"), DNMFTypeError, "fraction"),
        (dict(y=[0.0, 1.0], fraction=0.5), DNMFTypeError, "y"),
        (dict(y=[[0, 1]], fraction=0.5), DNMFValueError, "y"),
        (dict(y=[0, -2], fraction=0.5), DNMFValueError, "y"),
        (dict(y=[-1, -1], fraction=0.5), DNMFValueError, "y"),
        (dict(y=[0, 1], fraction=0.5, by_group=[0]), DNMFValueError, "by_group"),
        (dict(y=[0, 1], fraction=0.5, random_state="seed"), DNMFTypeError, "random_state"),
    ],
)
def test_mask_labels_errors(kwargs, exc, match):
    y = kwargs.pop("y")
    fraction = kwargs.pop("fraction")
    with pytest.raises(exc, match=match):
        mask_labels(y, fraction, **kwargs)


# ----------------------------------------------------------------------------------------------
# the real BBC corpus (built once per module)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bbc():
    return bbc_news_corpus()


def _files_per_class():
    d = str(bbc_data_dir())
    return {c: sorted(f for f in os.listdir(os.path.join(d, c)) if f.endswith(".txt")) for c in sorted(os.listdir(d)) if os.path.isdir(os.path.join(d, c)) and not c.startswith("_")}


def test_load_bbc_news_order_and_encoding():
    docs, labels, names, ids = load_bbc_news(return_ids=True)
    files = _files_per_class()
    assert names.tolist() == sorted(files)
    assert len(docs) == sum(len(v) for v in files.values()) == labels.size
    np.testing.assert_array_equal(np.bincount(labels), [len(files[c]) for c in names])
    assert ids.tolist() == [f"{c}/{f[:-4]}" for c in sorted(files) for f in files[c]]
    # every file decoded to its bytes' text
    d = bbc_data_dir()
    for k in (0, len(docs) // 2, len(docs) - 1):
        raw = d.joinpath(ids[k] + ".txt").read_bytes()
        assert docs[k] == decode_text(raw)[0]
    assert decode_text("£5".encode("latin-1")) == ("£5", "cp1252")
    assert decode_text(b"\x81") == ("\x81", "latin-1")


def test_bbc_corpus_shape_and_invariants(bbc):
    docs, labels, names = load_bbc_news()
    X = bbc.X
    n, f = X.shape
    assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32
    assert n > 3 * len(docs) and f > 5000
    assert bbc.feature_names.shape == (f,) and bbc.y.shape == bbc.groups.shape == bbc.sample_ids.shape == (n,)
    assert bbc.label_names.tolist() == names.tolist() and len(names) == 5
    # every document present, in order, contiguous
    np.testing.assert_array_equal(np.unique(bbc.groups), np.arange(len(docs)))
    assert np.all(np.diff(bbc.groups) >= 0)
    # paragraphs carry their document's class; all classes present
    np.testing.assert_array_equal(bbc.y, labels[bbc.groups])
    assert set(np.unique(bbc.y)) == set(range(5))
    # nonnegative, no all-zero row, unit rows
    assert X.data.min() > 0
    assert (np.diff(X.indptr) > 0).all()
    np.testing.assert_allclose(np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel()), 1.0, rtol=1e-5)
    assert len(set(bbc.sample_ids.tolist())) == n
    assert not any(w in ENGLISH_STOP_WORDS for w in bbc.feature_names[:: max(1, f // 2000)])
    assert all(re.fullmatch(TOKEN_PATTERN, w) for w in bbc.feature_names[:: max(1, f // 500)])
    # the paragraph count agrees with an independent split of the raw text
    n_blocks = sum(len([b for b in re.split(r"\n\s*\n", t.replace("\r", "")) if b.strip()]) - 1 for t in docs)  # title merged
    p = bbc.params
    assert p["n_paragraphs_split"] == n_blocks
    assert n == n_blocks - p["n_paragraphs_short_dropped"] - p["n_paragraphs_empty_dropped"]
    assert p["n_samples"] == n and p["n_features"] == f and p["source"].startswith("BBC")


def test_bbc_corpus_deterministic(bbc):
    docs, labels, names, ids = load_bbc_news(return_ids=True)
    again = paragraphs_to_matrix(docs, labels, doc_ids=ids, label_names=names, title="merge", min_paragraph_chars=20)
    assert (again.X != bbc.X).nnz == 0
    np.testing.assert_array_equal(again.feature_names, bbc.feature_names)
    np.testing.assert_array_equal(again.sample_ids, bbc.sample_ids)


def test_bbc_stream_matches_in_memory_rows(bbc):
    stream = bbc_news_stream(chunk_rows=3000)
    chunks = list(stream)
    groups = np.concatenate([c.groups for c in chunks])
    np.testing.assert_array_equal(groups, bbc.groups)
    np.testing.assert_array_equal(np.concatenate([c.sample_ids for c in chunks]), bbc.sample_ids)
    np.testing.assert_array_equal(np.concatenate([c.y for c in chunks]), bbc.y)
    for a, b in zip(chunks[:-1], chunks[1:]):
        assert a.groups[-1] < b.groups[0]  # no document split across chunks
    X = sp.vstack([c.X for c in chunks]).tocsr()
    assert X.shape[0] == bbc.X.shape[0] and X.data.min() > 0 and (np.diff(X.indptr) > 0).all()


def test_bbc_stream_values_match_in_memory_without_collisions():
    """With no pruning, rows whose words have no hash collision are identical after mapping."""
    docs, labels, names, ids = load_bbc_news(return_ids=True)
    ref = paragraphs_to_matrix(docs, labels, doc_ids=ids, label_names=names, title="merge", min_df=1, max_df=1.0)
    stream = bbc_news_stream(chunk_rows=3000, min_df=1, max_df=1.0)
    X = sp.vstack([c.X for c in stream]).tocsr()
    np.testing.assert_array_equal(np.concatenate([c.sample_ids for c in stream]), ref.sample_ids)
    buckets = stream.hasher.transform(list(ref.feature_names)).indices
    assert buckets.size == ref.X.shape[1]
    u, cnt = np.unique(buckets, return_counts=True)
    collided = np.isin(buckets, u[cnt > 1])
    P = sp.csr_matrix((np.ones(buckets.size), (np.arange(buckets.size), buckets)), shape=(buckets.size, X.shape[1]))
    M = (ref.X @ P).tocsr()
    clean = np.asarray(ref.X[:, collided].sum(axis=1)).ravel() == 0
    assert clean.sum() > 0.2 * X.shape[0]
    np.testing.assert_array_equal(np.diff(M[clean].indptr), np.diff(X[clean].indptr))
    diff = abs(M[clean] - X[clean])
    assert diff.nnz == 0 or diff.max() < 1e-5
    # and the collided rows do differ somewhere (the check above is not vacuous)
    assert abs(M[~clean] - X[~clean]).max() > 1e-4
