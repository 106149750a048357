"""Estimators (scikit-learn API on dask)."""

from .deep import DeepNMF
from .hierarchical import HierarchicalNMF
from .neural import NeuralNMF
from .nmf import NMF, SSNMF

__all__ = ["NMF", "SSNMF", "HierarchicalNMF", "DeepNMF", "NeuralNMF"]
