"""WordNet definitions as short documents, labelled by their lexicographer file (for scale).

WordNet's ``data.noun|verb|adj|adv`` files (Debian package ``wordnet-base``:
``/usr/share/wordnet``) hold one synset per line: ``offset lex_filenum ss_type ... | gloss``. The
gloss's definition (the part before its quoted examples) is one document, and ``lex_filenum``
(0-44) names its lexicographer file — ``noun.animal``, ``verb.motion``, ... (lexnames(5WN)) — the
class. About 117k documents in 45 classes. :func:`wordnet_corpus` turns them into the usual
TF-IDF :class:`~dnmf_dask.ingest.text.TextCorpus` (one paragraph per document).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DNMFValueError

__all__ = ["LEXNAMES", "wordnet_definitions", "wordnet_corpus"]

#: lexicographer file names by number (lexnames(5WN))
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_EXAMPLE = re.compile(r';\s*"')


def wordnet_definitions(wordnet_dir, parts=("noun", "verb", "adj", "adv")):
    """``(definitions, lex_filenums, ids)`` of every synset in ``data.<part>`` under ``wordnet_dir``.

    ``ids`` are ``"<part>:<offset>"``; a definition is the gloss up to its first quoted example.
    License header lines (starting with two spaces) are skipped.
    """
    root = Path(wordnet_dir)
    docs, labels, ids = [], [], []
    for part in parts:
        path = root / f"data.{part}"
        if not path.is_file():
            raise DNMFValueError(f"input: expected WordNet's data.{part} in {str(root)!r}, found nothing at {str(path)!r}")
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or "|" not in line:
                    continue
                head, gloss = line.split("|", 1)
                fields = head.split()
                lex = int(fields[1])
                if not 0 <= lex < len(LEXNAMES):
                    raise DNMFValueError(f"input: expected lexicographer file numbers 0-{len(LEXNAMES) - 1}, found {lex} in {path.name}")
                definition = _EXAMPLE.split(gloss, 1)[0].strip()
                docs.append(definition)
                labels.append(lex)
                ids.append(f"{part}:{fields[0]}")
    if not docs:
        raise DNMFValueError(f"input: expected synsets in {str(root)!r}, found none")
    return docs, np.asarray(labels, dtype=np.int64), np.asarray(ids)


def wordnet_corpus(wordnet_dir, parts=("noun", "verb", "adj", "adv"), **vectorizer_kwargs):
    """WordNet definitions → TF-IDF :class:`~dnmf_dask.ingest.text.TextCorpus`, classes = the
    lexicographer files present (codes in ``LEXNAMES`` order). Definitions under
    ``min_paragraph_chars`` (default 10) characters are dropped."""
    from .text import paragraphs_to_matrix

    docs, lex, ids = wordnet_definitions(wordnet_dir, parts)
    present = np.unique(lex)
    codes = np.searchsorted(present, lex)
    vectorizer_kwargs.setdefault("min_paragraph_chars", 10)
    tc = paragraphs_to_matrix(docs, codes, doc_ids=ids, label_names=[LEXNAMES[i] for i in present], title="paragraph",
                              **vectorizer_kwargs)
    tc.params = {"source": "WordNet definitions", "wordnet_dir": str(wordnet_dir), "parts": list(parts), **tc.params}
    return tc
