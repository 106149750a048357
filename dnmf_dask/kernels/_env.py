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
