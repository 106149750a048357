"""dnmf-dask: distributed, out-of-core (hierarchical) nonnegative matrix factorization.

Rows are samples (scikit-learn's orientation); see DESIGN.md §1 for the map to the papers.
"""

__version__ = "0.1.0"

from .errors import DNMFError, DNMFTypeError, DNMFValueError, StoreError  # noqa: E402
from .models import NMF, SSNMF, DeepNMF, HierarchicalNMF, NeuralNMF  # noqa: E402
from .models.selection import RankSelection, select_ranks  # noqa: E402
from .parallel.scheduler import scheduler_context  # noqa: E402
from .progress import progress_bar  # noqa: E402
from .store import Corpus, open_corpus, write_corpus  # noqa: E402

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
