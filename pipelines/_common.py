"""Shared by the pipelines: one BLAS thread per dask thread, figures, Debian data sets.

Import it before numpy: on a busy 2-core machine nested BLAS threads made every fit ~10x slower,
so the BLAS thread count is pinned to 1 here unless the caller's environment sets it.
Debian packages are for the pipelines only, never for the tests (CI has no apt).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

CACHE = Path.home() / ".cache" / "dnmf_dask"


def debian_package(package: str, cache: Path = CACHE) -> Path:
    """Download a Debian package once with ``apt-get download`` and unpack it with ``dpkg-deb -x``
    (nothing is installed); returns the unpacked root (``<cache>/<package>``)."""
    root = cache / package
    if not root.exists():
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not list(debs.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
        tmp = cache / f".{package}.tmp"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(root)
    return root


def save_figure(fig, path, dpi=110):
    """Lay out, write and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
