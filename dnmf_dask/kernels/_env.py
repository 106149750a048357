"""Boolean switches read from the environment, and the compiled kernels imported lazily (shared by
the kernels that use :mod:`dnmf_dask.kernels.fused` only on some paths)."""

from __future__ import annotations

import os

#: switches the fused Frobenius sweep of kernels/fused.py on (off by default)
FROBENIUS_ENV = "DNMF_DASK_FUSED_FROBENIUS"


def env_flag(name: str, default: bool) -> bool:
    """True if ``$name`` is 1/true/yes/on, False if it is set to anything else, ``default`` if unset."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


#: set to 0 / false / no / off, no compiled kernel is used (numba is not even imported);
#: parallel/memory.py sets it for the small workers the library starts
NUMBA_ENV = "DNMF_DASK_NUMBA"


def numba_disabled() -> bool:
    """True if ``$DNMF_DASK_NUMBA`` switches the compiled kernels off (unset: on)."""
    return os.environ.get(NUMBA_ENV, "1").strip().lower() in ("0", "false", "no", "off")


_FUSED = None


def fused_module():
    """:mod:`dnmf_dask.kernels.fused`, imported on first use and then held.

    That module imports numba (~50 MB of a worker process, which the Frobenius updates do not
    need), so the kernels import it only when a path needs it; holding it avoids importlib's
    ~15 µs per function-level import, which the NNLS solves of one Neural NMF pass on Table 1
    would pay ~6 times.
    """
    global _FUSED
    if _FUSED is None:
        from . import fused

        _FUSED = fused
    return _FUSED


#: switches the rank-specialised numba kernels of kernels/spmm.py off when set to 0 (on by default)
SPMM_ENV = "DNMF_DASK_SPMM"
#: a CSR block with fewer nonzeros stays on scipy (the kernels' call overhead and, once per
#: process, their load from numba's disk cache are not worth it there)
SPMM_MIN_NNZ = 100_000
#: largest rank the generated kernels are used for (their source is unrolled over k)
SPMM_MAX_K = 64

_SPMM = None


def spmm_module():
    """:mod:`dnmf_dask.kernels.spmm`, imported on first use and then held; None if numba is missing
    or disabled (``DNMF_DASK_NUMBA=0``)."""
    global _SPMM
    if _SPMM is None:
        if numba_disabled():
            _SPMM = False  # (small workers set it, parallel/memory.py)
        else:
            try:
                from . import spmm
            except ImportError:  # pragma: no cover - numba not installed
                _SPMM = False
            else:
                _SPMM = spmm
    return _SPMM or None


def spmm_wanted(X, k, W=None) -> bool:
    """True when :mod:`~dnmf_dask.kernels.spmm` should form the products of a block: X a CSR
    matrix with at least :data:`SPMM_MIN_NNZ` nonzeros, no mask ``W``, ``1 <= k <=``
    :data:`SPMM_MAX_K`, ``$DNMF_DASK_SPMM`` not 0, and numba importable. Read per call, so a
    test or benchmark can flip the environment variable."""
    return (W is None and getattr(X, "format", None) == "csr" and X.nnz >= SPMM_MIN_NNZ
            and 1 <= k <= SPMM_MAX_K and env_flag(SPMM_ENV, True) and spmm_module() is not None)
