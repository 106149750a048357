"""Where the work runs: dask's current scheduler, a named one, a LocalCluster, or an address.

``scheduler`` values accepted by every estimator's ``fit`` and by the CLI:

* ``None`` — whatever dask uses now: the active ``distributed.Client`` (e.g. in Jupyter) if
  there is one, else the threaded scheduler;
* ``"threads"``, ``"synchronous"``, ``"processes"`` — dask's local schedulers;
* ``"local"`` — start a ``distributed.LocalCluster`` for the duration of the call (dashboard
  bound to 127.0.0.1, its address printed);
* an address ``"tcp://host:port"`` / ``"tls://..."`` — connect a Client to that scheduler;
* a ``distributed.Client`` — use it.

The environment variable ``DASK_SCHEDULER_ADDRESS`` is honoured when ``scheduler`` is None and
no Client is active.
"""

from __future__ import annotations

import contextlib
import os
import sys

import dask

from ..errors import DNMFValueError

LOCAL_SCHEDULERS = ("threads", "threading", "synchronous", "sync", "processes")


class ClusterError(RuntimeError):
    """The scheduler at the given address cannot be reached (or refuses the connection)."""


def local_scheduler() -> bool:
    """True when dask's scheduler in effect is one of dask's own (synchronous, threads,
    processes; None: the collection's default, threads), False on a distributed Client (whose
    ``get`` is a bound method): the tasks run in this process or in its own subprocesses."""
    sched = dask.base.get_scheduler()
    return sched is None or isinstance(sched, type(dask.get))


def _active_client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def scheduler_context(scheduler=None, *, n_workers=None, threads_per_worker=None, memory_limit="auto", verbose=True,
                      security=None, dashboard_address="127.0.0.1:0", connect_timeout=None):
    """Context manager that makes dask run on the chosen scheduler (see module docstring).

    ``security`` (a ``distributed.Security``, e.g. for ``tls://`` addresses) is used to connect
    to an address and by a started LocalCluster; ``None`` takes dask's configuration
    (``distributed.comm.tls.*``, also settable through ``DASK_DISTRIBUTED__COMM__TLS__...``).
    ``dashboard_address`` of a started LocalCluster: loopback by default, ``None`` = no dashboard.
    """
    if scheduler is None:
        addr = os.environ.get("DASK_SCHEDULER_ADDRESS")
        if addr and _active_client() is None:
            scheduler = addr
        else:
            yield None
            return
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        Client = None
    if Client is not None and isinstance(scheduler, Client):
        with scheduler.as_current(), dask.config.set(scheduler=scheduler):
            yield scheduler
        return
    if not isinstance(scheduler, str):
        raise DNMFValueError(
            f"scheduler: expected None, 'threads', 'synchronous', 'processes', 'local', an address or a Client, found {type(scheduler).__name__}"
        )
    if scheduler in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=scheduler):
            yield None
        return
    if scheduler == "local":
        from distributed import LocalCluster

        from .memory import worker_malloc_config

        with worker_malloc_config(memory_limit), LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=dashboard_address,
            host="127.0.0.1",
            # no dashboard: the scheduler still serves HTTP (health, metrics); on a free loopback
            # port instead of distributed's default 8787, which may be taken ("Port 8787 is in use")
            **({"scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"}} if dashboard_address is None else {}),
            **({"security": security} if security is not None else {}),
        ) as cluster, Client(cluster, **({"security": security} if security is not None else {})) as client:
            if verbose:
                dash = client.dashboard_link if dashboard_address is not None else "off"
                print(f"dnmf: started a LocalCluster with {len(cluster.workers)} workers; dashboard: {dash}", file=sys.stderr)
            with dask.config.set(scheduler=client):
                yield client
        return
    if "://" in scheduler or ":" in scheduler:
        kw = {"security": security} if security is not None else {}
        if connect_timeout is not None:
            kw["timeout"] = connect_timeout
        try:
            client = Client(scheduler, **kw)
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"scheduler: cannot connect to {scheduler!r} ({type(e).__name__}: {e})") from e
        with client, dask.config.set(scheduler=client):
            yield client
        return
    raise DNMFValueError(
        f"scheduler: expected None, 'threads', 'synchronous', 'processes', 'local' or an address like 'tcp://host:8786', found {scheduler!r}"
    )
