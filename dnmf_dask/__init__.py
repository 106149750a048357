"""dnmf-dask: distributed, out-of-core (hierarchical) nonnegative matrix factorization."""

__version__ = "0.1.0"
