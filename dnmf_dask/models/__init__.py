"""Estimators (scikit-learn API on dask)."""

from .hierarchical import HierarchicalNMF
from .neural import NeuralNMF
from .nmf import NMF, SSNMF

__all__ = ["NMF", "SSNMF", "HierarchicalNMF", "NeuralNMF"]
