import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def local_cluster():
    """A real multi-process distributed cluster (2 worker processes, 1 thread each) on loopback."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                      memory_limit="2GiB") as cluster, Client(cluster) as client:
        yield client


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
