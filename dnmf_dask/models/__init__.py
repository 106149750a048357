"""Estimators (scikit-learn API on dask)."""

from .nmf import NMF, SSNMF

__all__ = ["NMF", "SSNMF"]
