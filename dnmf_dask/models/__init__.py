"""Estimators (scikit-learn API on dask)."""

from .hierarchical import HierarchicalNMF
from .nmf import NMF, SSNMF

__all__ = ["NMF", "SSNMF", "HierarchicalNMF"]
