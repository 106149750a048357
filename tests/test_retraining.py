"""Scheduled retraining: append to a corpus, versioned models, warm starts, no-op reruns, exit codes."""

import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.errors import DNMFValueError
from dnmf_dask.store import append_corpus, corpus_fingerprint
from dnmf_dask.store import corpus as corpus_mod
from dnmf_dask.store.model import load_model


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _files(path):
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = (os.stat(p).st_mtime_ns, open(p, "rb").read())
    return out


@pytest.mark.parametrize("sparse", [False, True])
def test_append_adds_blocks_without_rewriting(tmp_path, sparse):
    rng = np.random.default_rng(0)
    X1, X2 = rng.random((50, 8)), rng.random((23, 8))
    X1[X1 < 0.5] = 0
    X2[X2 < 0.5] = 0
    conv = sp.csr_matrix if sparse else np.asarray
    groups = np.repeat(np.arange(10), 5)
    c = dd.write_corpus(tmp_path / "c.zarr", conv(X1), y=np.repeat([0, 1], 25), groups=groups, chunk_rows=20,
                        sample_ids=[f"s{i}" for i in range(50)])
    fp0 = corpus_fingerprint(c)
    blocks_before = {k: v for k, v in _files(tmp_path / "c.zarr").items() if k.startswith("X")}
    c2 = append_corpus(tmp_path / "c.zarr", conv(X2), groups=np.repeat(np.arange(5), [5, 5, 5, 4, 4]),
                       sample_ids=[f"n{i}" for i in range(23)], chunk_rows=10, provenance={"batch": "2026-11-23"})
    after = _files(tmp_path / "c.zarr")
    for k, v in blocks_before.items():  # the old blocks' files are untouched (same bytes, same mtime)
        assert after[k] == v
    Xb = c2.X.compute()
    Xb = Xb.toarray() if sparse else Xb
    np.testing.assert_array_equal(Xb, np.vstack([X1, X2]))
    assert c2.X.numblocks[0] == 3 + 3 and c2.attrs["row_offsets"][:4] == [0, 20, 40, 50]
    np.testing.assert_array_equal(c2.y, np.r_[np.repeat([0, 1], 25), -np.ones(23, int)])  # new rows unlabeled
    assert c2.groups[49] == 9 and c2.groups[50] == 10 and c2.groups[-1] == 14  # new groups never join old ones
    assert list(c2.sample_ids[-2:]) == ["n21", "n22"] and c2.attrs["appends"][0]["provenance"] == {"batch": "2026-11-23"}
    assert corpus_fingerprint(c2) != fp0 and corpus_fingerprint(dd.open_corpus(tmp_path / "c.zarr")) == corpus_fingerprint(c2)


def test_failed_append_leaves_corpus_as_it_was(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    c = dd.write_corpus(tmp_path / "c.zarr", rng.random((30, 5)), y=np.zeros(30, int), chunk_rows=10)
    orig = corpus_mod._write_ints

    def boom(g, name, values):  # dies after the new X blocks are written, before the switch
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(corpus_mod, "_write_ints", boom)
    with pytest.raises(OSError):
        append_corpus(tmp_path / "c.zarr", rng.random((12, 5)), y=np.ones(12, int))
    monkeypatch.setattr(corpus_mod, "_write_ints", orig)
    c1 = dd.open_corpus(tmp_path / "c.zarr")
    assert c1.X.shape == (30, 5) and corpus_fingerprint(c1) == corpus_fingerprint(c)
    np.testing.assert_array_equal(c1.X.compute(), c.X.compute())
    c2 = append_corpus(tmp_path / "c.zarr", rng.random((12, 5)), y=np.ones(12, int))  # and a retry works
    assert c2.X.shape == (42, 5) and (c2.y[30:] == 1).all()
    with pytest.raises(DNMFValueError, match="X: expected at least one row of 5 features"):
        append_corpus(tmp_path / "c.zarr", rng.random((3, 4)))


def test_scheduled_retraining_cli(tmp_path, capsys):
    rng = np.random.default_rng(2)
    X = rng.random((90, 12)) * (rng.random((90, 12)) < 0.7)
    y = np.repeat([0, 1, 2], 30)
    np.savez(tmp_path / "a.npz", X=X[:60], y=y[:60])
    np.savez(tmp_path / "b.npz", X=X[60:], y=y[60:])
    corpus, models = str(tmp_path / "c.zarr"), tmp_path / "models"
    fit = ["fit", corpus, str(models), "--versioned", "--model", "ssnmf", "-k", "3", "--max-iter", "30", "--scheduler", "threads", "--quiet"]
    assert main(["ingest", "npz", corpus, "--input", str(tmp_path / "a.npz"), "--chunk-rows", "20", "--quiet"]) == 0
    assert main(fit) == 0
    v1 = models / "v0001"
    before = _files(v1)
    m1 = load_model(v1)
    capsys.readouterr()
    assert main(fit) == 0 and "up to date" in capsys.readouterr().out  # same config, same data: no-op
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == ["v0001"]
    # new documents arrive: append, then retrain from the last model
    assert main(["ingest", "npz", corpus, "--input", str(tmp_path / "b.npz"), "--append", "--chunk-rows", "20", "--quiet"]) == 0
    assert dd.open_corpus(corpus).X.shape == (90, 12)
    assert main([*fit, "--warm-start", str(models)]) == 0
    v2 = models / "v0002"
    m2 = load_model(v2)
    assert _files(v1) == before  # the old version is intact
    assert m2.data_info_["warm_start"] == str(v1) and m2.A_[0].shape == (12, 3)
    assert not np.allclose(m2.A_[0], m1.A_[0])
    # the warm start begins at the stored model: its first objective is below a cold start's
    cold = dd.SSNMF(3, max_iter=30, tol=1e-4, random_state=0, scheduler="threads").fit(dd.open_corpus(corpus))
    assert m2.history_["objective"][0] < cold.history_["objective"][0]
    assert main(fit) == 0 and "up to date" in capsys.readouterr().out
    assert main([*fit, "--force"]) == 0 and (models / "v0003").exists()
    # a change of config is not a no-op
    assert main([*fit[:-5], "--max-iter", "31", "--scheduler", "threads", "--quiet"]) == 0 and (models / "v0004").exists()
    # bad input: exit 2, nothing written
    assert main([*fit, "--force", "--warm-start", str(tmp_path / "nothing.zarr")]) == 2
    assert main(["ingest", "npz", corpus, "--input", str(tmp_path / "a.npz"), "--append", "--quiet"]) == 0
    np.savez(tmp_path / "bad.npz", X=X[:5, :7])
    assert main(["ingest", "npz", corpus, "--input", str(tmp_path / "bad.npz"), "--append", "--quiet"]) == 2
    assert not (models / "v0005").exists()


def test_warm_start_neural_and_model_mismatch(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.random((60, 10))
    y = np.repeat([0, 1], 30)
    m1 = dd.NeuralNMF((4, 2), epochs=5, init_max_iter=10, random_state=0, scheduler="threads").fit(X, y)
    m2 = dd.NeuralNMF((4, 2), epochs=1, tol=0, random_state=0, scheduler="threads").fit(X, y, warm_start=m1)
    assert m2.history_["cost"][0] == pytest.approx(m1.history_["cost"][-1], rel=1e-10)  # starts where m1 ended
    with pytest.raises(DNMFValueError, match="warm_start: expected a model with ranks"):
        dd.NeuralNMF((5, 2), epochs=1, scheduler="threads").fit(X, y, warm_start=m1)
    with pytest.raises(DNMFValueError, match="warm_start: expected a fitted NMF"):
        dd.NMF(4, scheduler="threads").fit(X, warm_start=m1)
