"""Boolean switches read from the environment (shared by the kernels that are imported lazily)."""

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
