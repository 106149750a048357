"""Zarr v3 stores for corpora (and models)."""

from .corpus import Corpus, open_corpus, row_blocks, write_corpus

__all__ = ["Corpus", "open_corpus", "row_blocks", "write_corpus"]
