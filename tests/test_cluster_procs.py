"""Fits on a real `dask scheduler` + 2 `dask worker` processes (loopback): CLI, lost worker, TLS."""

import shutil
import signal
import warnings

import numpy as np
import pytest

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.parallel import mu as mu_mod
from dnmf_dask.store.model import load_model

from .dask_procs import client_security, dask_cluster, make_tls_files, requires_dask_cli

pytestmark = [requires_dask_cli, pytest.mark.timeout(300)]


def _corpus(tmp_path, n=240, f=16, chunk=80):
    rng = np.random.default_rng(7)
    X = rng.random((n, f)) * (rng.random((n, f)) < 0.6)
    y = np.where(rng.random(n) < 0.4, np.arange(n) % 3, -1)
    return dd.write_corpus(tmp_path / "c.zarr", X, y=y, chunk_rows=chunk)


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_cli_fit_on_scheduler_and_workers(tmp_path, monkeypatch):
    c = _corpus(tmp_path)
    with dask_cluster(2, log_dir=tmp_path) as (addr, _):
        from distributed import Client

        with Client(addr) as client:  # the CLI really uses this cluster: its workers run the tasks
            before = sum(client.run(lambda dask_worker: len(dask_worker.data) + dask_worker.state.executed_count).values())
            # with checkpoints: the workers write their S blocks into the checkpoint store and read them back
            assert main(["fit", str(c.path), str(tmp_path / "m.zarr"), "--model", "ssnmf", "-k", "3", "--max-iter", "8",
                         "--tol", "0", "--scheduler", addr, "--checkpoint-every", "3", "--quiet"]) == 0
            assert not (tmp_path / "m.zarr.checkpoint").exists()  # removed after success
            monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", addr)  # the environment variable works as well
            assert main(["predict", str(tmp_path / "m.zarr"), str(c.path), str(tmp_path / "p.txt"), "--quiet"]) == 0
            after = sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values())
            assert after > before + 8 * c.X.numblocks[0]  # one task per block and iteration at least
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = dd.SSNMF(3, max_iter=8, tol=0, random_state=0, scheduler="threads").fit(c)
    m = load_model(tmp_path / "m.zarr")
    assert _rel(m.A_[0], ref.A_[0]) < 1e-8 and _rel(m.B_, ref.B_) < 1e-8
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "p.txt", dtype=int), ref.predict(c))


def test_cli_started_local_cluster_prints_loopback_dashboard(tmp_path, capsys):
    c = _corpus(tmp_path, n=40, chunk=20)
    assert main(["fit", str(c.path), str(tmp_path / "m.zarr"), "-k", "2", "--max-iter", "2", "--workers", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "started a LocalCluster with 1 workers; dashboard: http://127.0.0.1:" in err


def test_local_cluster_without_dashboard_leaves_port_8787_alone():
    """dashboard_address=None must not reach for distributed's default port 8787 (taken by another
    cluster or by RStudio): no "Port 8787 is already in use" warning, and the cluster works."""
    import socket

    from dnmf_dask.parallel.scheduler import scheduler_context

    holder = socket.socket()
    try:
        holder.bind(("0.0.0.0", 8787))
        holder.listen()
    except OSError:
        pass  # already taken by someone else: the same situation
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with scheduler_context("local", n_workers=1, dashboard_address=None, verbose=False) as client:
                assert client.submit(sum, [1, 2]).result() == 3
        assert not [w for w in caught if "8787" in str(w.message)]
    finally:
        holder.close()


def test_unreachable_scheduler_exit_code_3(tmp_path, capsys):
    import dask

    from .dask_procs import free_port

    c = _corpus(tmp_path, n=40, chunk=20)
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = main(["fit", str(c.path), str(tmp_path / "m.zarr"), "-k", "2", "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--quiet"])
    assert code == 3 and "cannot connect" in capsys.readouterr().err
    assert not (tmp_path / "m.zarr").exists()


@pytest.mark.parametrize("model", ["ssnmf", "neural"])
def test_killed_worker_mid_fit_gives_the_same_model(tmp_path, monkeypatch, model):
    """SIGKILL one of two workers in the middle of a fit: dask recomputes the lost S blocks and
    X blocks from their lineage, and the model equals an undisturbed run."""
    c = _corpus(tmp_path)
    if model == "ssnmf":
        make = lambda sched: dd.SSNMF(3, max_iter=12, tol=0, random_state=0, scheduler=sched)  # noqa: E731
    else:
        make = lambda sched: dd.NeuralNMF((4, 2), epochs=6, tol=0, init="random", random_state=0, scheduler=sched)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = make("threads").fit(c)
    with dask_cluster(2, log_dir=tmp_path) as (addr, workers):
        killed = []
        orig = mu_mod.progress.Progress.update

        target = "SSNMF" if model == "ssnmf" else "NeuralNMF"

        def update(self, i):  # kill a worker at the 3rd iteration of the model's own loop
            if i == 3 and not killed and self.label.startswith(target):
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait(timeout=30)
                killed.append(i)
            return orig(self, i)

        monkeypatch.setattr(mu_mod.progress.Progress, "update", update)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = make(addr).fit(c)
        assert killed and workers[0].poll() is not None and workers[1].poll() is None
    for a, b in zip(m.A_, ref.A_):
        assert _rel(a, b) < 1e-8
    assert _rel(m.B_, ref.B_) < 1e-8 and m.n_iter_ == ref.n_iter_


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command line is needed to make test certificates")
def test_tls_cluster_refuses_client_without_certificate(tmp_path):
    from distributed import Client, Security

    tls = make_tls_files(tmp_path / "tls")
    other = make_tls_files(tmp_path / "other")  # a second CA: its certificate is not trusted by the cluster
    c = _corpus(tmp_path, n=80, chunk=20)
    with dask_cluster(2, tls=tls, log_dir=tmp_path) as (addr, _):
        assert addr.startswith("tls://")
        assert main(["fit", str(c.path), str(tmp_path / "m.zarr"), "-k", "2", "--max-iter", "5", "--scheduler", addr,
                     "--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"], "--quiet"]) == 0
        assert load_model(tmp_path / "m.zarr").A_[0].shape == (16, 2)
        with Client(addr, security=client_security(tls), timeout=20) as ok:  # with the certificate: accepted
            assert len(ok.scheduler_info()["workers"]) == 2
        with pytest.raises((OSError, TimeoutError)):  # plain TCP to the TLS port
            Client(addr.replace("tls://", "tcp://"), timeout=5)
        foreign = Security(tls_ca_file=tls["ca"], tls_client_cert=other["cert"], tls_client_key=other["key"], require_encryption=True)
        with pytest.raises((OSError, TimeoutError)):  # a certificate the cluster's CA did not sign
            Client(addr, security=foreign, timeout=5)
        # the CLI reports the refusal as a cluster error (exit code 3)
        assert main(["fit", str(c.path), str(tmp_path / "m2.zarr"), "-k", "2", "--scheduler", addr, "--tls-ca-file", tls["ca"],
                     "--tls-cert", other["cert"], "--tls-key", other["key"], "--quiet"]) == 3
