"""Fit a dnmf-dask model on a SLURM (or PBS) cluster through dask-jobqueue.

NOT RUN where this was written: that machine has no batch system (and no dask-jobqueue). The
code follows dask-jobqueue's documented API (``SLURMCluster`` / ``PBSCluster`` with ``cores``,
``processes``, ``memory``, ``walltime``, ``queue``, ``account``, ``job_extra_directives``,
``scheduler_options``); adapt queue, account and resources to your site. What it runs on the
cluster is the ordinary ``dnmf fit`` command line (``dnmf_dask.cli.main``), so its exit code is
the documented one (0 ok / up to date, 2 bad input, 3 cluster unreachable, 4 failed).

Run it on a login node (or inside an allocation), with dnmf-dask and dask-jobqueue installed
in an environment the compute nodes see, and the corpus on a shared file system::

    pip install dnmf-dask dask-jobqueue
    python cluster/slurm_jobqueue.py /shared/corpus.zarr /shared/models --jobs 8 -- --model ssnmf -k 50

Every worker job runs one single-threaded worker process; the fit checkpoints every 20
iterations into ``/shared/models/.checkpoint``, so a run that dies with its wall time is
continued by the next invocation (``--resume``); a rerun on unchanged data is a no-op.
"""

from __future__ import annotations

import argparse
import sys


def make_cluster(kind: str, jobs: int, memory: str, walltime: str, queue: str | None, account: str | None):
    import dask_jobqueue

    common = dict(
        cores=1,                 # one thread per worker: the per-block kernels use BLAS themselves
        processes=1,
        memory=memory,
        walltime=walltime,
        queue=queue,
        account=account,
        # the dashboard stays on the login node's loopback; tunnel with ssh -L 8787:127.0.0.1:8787
        scheduler_options={"dashboard_address": "127.0.0.1:8787"},
        local_directory="$TMPDIR",
    )
    if kind == "slurm":
        cluster = dask_jobqueue.SLURMCluster(job_extra_directives=["--requeue"], **common)
    elif kind == "pbs":
        cluster = dask_jobqueue.PBSCluster(**common)
    else:
        raise SystemExit(f"--kind: expected slurm or pbs, found {kind!r}")
    print(cluster.job_script(), file=sys.stderr)  # what is submitted, for the log
    cluster.scale(jobs=jobs)
    return cluster


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus")
    p.add_argument("models", help="versioned model folder (MODELS/v0001, v0002, ...)")
    p.add_argument("--kind", default="slurm", choices=("slurm", "pbs"))
    p.add_argument("--jobs", type=int, default=4, help="worker jobs (one worker each)")
    p.add_argument("--memory", default="8GiB")
    p.add_argument("--walltime", default="02:00:00")
    p.add_argument("--queue", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("fit_args", nargs=argparse.REMAINDER, help="after --: more `dnmf fit` options")
    a = p.parse_args(argv)
    extra = [x for x in a.fit_args if x != "--"]

    from distributed import Client

    from dnmf_dask.cli import main as dnmf

    with make_cluster(a.kind, a.jobs, a.memory, a.walltime, a.queue, a.account) as cluster:
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=3600)  # the queue decides when jobs start
            return dnmf(["fit", a.corpus, a.models, "--versioned", "--checkpoint-every", "20", "--resume",
                         "--scheduler", cluster.scheduler_address, *extra])


if __name__ == "__main__":
    sys.exit(main())
