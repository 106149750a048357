"""dnmf-dask: distributed, out-of-core (hierarchical) nonnegative matrix factorization.

Rows are samples (scikit-learn's orientation); see DESIGN.md §1 for the map to the papers.

The public names below are imported on first use (PEP 562): a dask worker that unpickles a task
function from :mod:`dnmf_dask.kernels` or :mod:`dnmf_dask.parallel` imports this package, and
with eager imports every worker process would also load the estimators and scikit-learn
(~55 MB of a worker's memory that no task uses; BENCHMARKS.md, "Out of core").
"""

__version__ = "0.1.0"

import importlib

from .errors import DNMFError, DNMFTypeError, DNMFValueError, StoreError  # noqa: E402

#: public name -> the submodule that defines it
_LAZY = {
    "NMF": "models",
    "SSNMF": "models",
    "HierarchicalNMF": "models",
    "DeepNMF": "models",
    "NeuralNMF": "models",
    "RankSelection": "models.selection",
    "select_ranks": "models.selection",
    "scheduler_context": "parallel.scheduler",
    "progress_bar": "progress",
    "Corpus": "store",
    "open_corpus": "store",
    "write_corpus": "store",
}
_SUBPACKAGES = ("cli", "config", "evaluate", "ingest", "kernels", "models", "parallel", "progress", "store")


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))


__all__ = [
    "NMF",
    "SSNMF",
    "HierarchicalNMF",
    "DeepNMF",
    "NeuralNMF",
    "Corpus",
    "open_corpus",
    "write_corpus",
    "scheduler_context",
    "progress_bar",
    "select_ranks",
    "RankSelection",
    "DNMFError",
    "DNMFValueError",
    "DNMFTypeError",
    "StoreError",
]
