"""Zarr v3 stores for corpora (and models)."""

from .corpus import Corpus, append_corpus, corpus_fingerprint, open_corpus, row_blocks, write_corpus

__all__ = ["Corpus", "append_corpus", "corpus_fingerprint", "open_corpus", "row_blocks", "write_corpus"]
