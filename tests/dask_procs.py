"""Real `dask scheduler` / `dask worker` processes on loopback for tests (always torn down)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

START_TIMEOUT = 90  # seconds: the machine may be busy


def dask_cli():
    """Path of the `dask` command of this interpreter's environment, or None."""
    cand = Path(sys.executable).parent / "dask"
    if cand.exists():
        return str(cand)
    return shutil.which("dask")


requires_dask_cli = pytest.mark.skipif(dask_cli() is None, reason="the `dask` command line (distributed) is not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(timeout=10)


@contextlib.contextmanager
def dask_cluster(n_workers=2, *, tls=None, log_dir=None):
    """Start a scheduler and ``n_workers`` single-thread workers (no nanny) on 127.0.0.1.

    ``tls``: dict with ``ca``, ``cert``, ``key`` PEM paths to run everything over TLS.
    Yields ``(address, worker_processes)``.
    """
    exe = dask_cli()
    port = free_port()
    proto = "tls" if tls else "tcp"
    addr = f"{proto}://127.0.0.1:{port}"
    tls_args = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]] if tls else []
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "30s", "PYTHONWARNINGS": "ignore"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    procs, logs = [], []

    def spawn(args, name):
        out = open(Path(log_dir) / f"{name}.log", "w") if log_dir else subprocess.DEVNULL
        if log_dir:
            logs.append(out)
        p = subprocess.Popen([exe, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(p)
        return p

    try:
        spawn(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--protocol", proto, "--no-dashboard",
               "--idle-timeout", "600", *tls_args], "scheduler")
        workers = [
            spawn(["worker", addr, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", "--no-dashboard",
                   "--memory-limit", "1GiB", "--death-timeout", "60", *tls_args], f"worker{i}")
            for i in range(n_workers)
        ]
        _wait_for_workers(addr, n_workers, tls, procs)
        yield addr, workers
    finally:
        _stop(procs)
        for f in logs:
            f.close()


def client_security(tls):
    from distributed import Security

    return Security(tls_ca_file=tls["ca"], tls_client_cert=tls["cert"], tls_client_key=tls["key"], require_encryption=True)


def _wait_for_workers(addr, n, tls, procs):
    from distributed import Client

    kw = {"security": client_security(tls)} if tls else {}
    deadline = time.monotonic() + START_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        dead = [p.args[1] for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"dask process(es) exited during start-up: {dead}")
        try:
            with Client(addr, timeout=10, **kw) as c:
                c.wait_for_workers(n, timeout=max(1, deadline - time.monotonic()))
                return
        except Exception as e:  # scheduler not up yet
            last = e
            time.sleep(0.5)
    raise RuntimeError(f"the test cluster at {addr} did not start in {START_TIMEOUT}s: {last}")


def make_tls_files(folder) -> dict:
    """CA, and a certificate + key signed by it, made with the cluster/make-tls-certs.sh recipe."""
    script = Path(__file__).resolve().parents[1] / "cluster" / "make-tls-certs.sh"
    subprocess.run(["bash", str(script), str(folder)], check=True, capture_output=True, timeout=120)
    folder = Path(folder)
    return {"ca": str(folder / "ca.pem"), "cert": str(folder / "dask.pem"), "key": str(folder / "dask-key.pem")}
