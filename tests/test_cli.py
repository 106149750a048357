import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.errors import StoreError
from dnmf_dask.store.model import load_model, save_model


def _npz(tmp_path, rng):
    X = rng.random((60, 12))
    y = np.repeat([0, 1, 2], 20)
    groups = np.repeat(np.arange(15), 4)
    p = tmp_path / "d.npz"
    np.savez(p, X=X, y=y, groups=groups)
    return p, X, y


def test_ingest_fit_predict(tmp_path, rng, capsys):
    p, X, y = _npz(tmp_path, rng)
    assert main(["ingest", "npz", str(tmp_path / "c.zarr"), "--input", str(p), "--label-fraction", "0.3", "--chunk-rows", "16"]) == 0
    c = dd.open_corpus(tmp_path / "c.zarr")
    assert c.X.shape == (60, 12) and (c.y >= 0).sum() < 60 and np.array_equal(c.y_true, y)
    assert main(["fit", str(tmp_path / "c.zarr"), str(tmp_path / "m.zarr"), "--model", "ssnmf", "-k", "3",
                 "--max-iter", "30", "--scheduler", "threads"]) == 0
    m = load_model(tmp_path / "m.zarr")
    assert type(m).__name__ == "SSNMF" and m.A_[0].shape == (12, 3) and m.n_iter_ >= 1
    assert main(["predict", str(tmp_path / "m.zarr"), str(tmp_path / "c.zarr"), str(tmp_path / "pred.txt"), "--scheduler", "threads"]) == 0
    pred = np.loadtxt(tmp_path / "pred.txt", dtype=int)
    assert pred.shape == (60,)
    np.testing.assert_array_equal(pred, m.predict(c))


def test_bad_input_exits_2_and_keeps_existing(tmp_path, rng, capsys):
    p, X, y = _npz(tmp_path, rng)
    assert main(["ingest", "npz", str(tmp_path / "c.zarr"), "--input", str(p)]) == 0
    before = sorted(os.listdir(tmp_path / "c.zarr"))
    np.savez(tmp_path / "bad.npz", X=-X)
    assert main(["ingest", "npz", str(tmp_path / "c.zarr"), "--input", str(tmp_path / "missing.npz"), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dnmf: error: input:")
    assert main(["ingest", "npz", str(tmp_path / "c.zarr"), "--input", str(p)]) == 2  # exists, no --overwrite
    assert sorted(os.listdir(tmp_path / "c.zarr")) == before
    assert main(["fit", str(tmp_path / "nothing.zarr"), str(tmp_path / "m.zarr"), "--scheduler", "threads"]) == 2
    assert not (tmp_path / "m.zarr").exists()


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "dnmf_dask.cli", "fit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--scheduler" in out.stdout


def test_model_store_round_trip(tmp_path, rng):
    X = rng.random((50, 10))
    y = rng.integers(0, 2, 50)
    for m in (dd.NMF(3, max_iter=20, scheduler="threads", random_state=0).fit(X),
              dd.SSNMF(3, max_iter=20, scheduler="threads", random_state=0).fit(X, y),
              dd.HierarchicalNMF((4, 2), max_iter=20, scheduler="threads", random_state=0).fit(X, y)):
        path = tmp_path / f"{type(m).__name__}.zarr"
        save_model(m, path)
        m2 = load_model(path)
        assert type(m2) is type(m) and m2.get_params() == m.get_params()
        for a, b in zip(m.A_, m2.A_):
            np.testing.assert_array_equal(a, b)
        assert json.dumps(m2.history_) == json.dumps(m.history_) and m2.n_iter_ == m.n_iter_
        np.testing.assert_allclose(np.asarray(m2.transform(X)), np.asarray(m.transform(X)))
        if hasattr(m, "B_"):
            np.testing.assert_array_equal(m2.predict(X), m.predict(X))
    with pytest.raises(StoreError, match="model store"):
        load_model(tmp_path / "nope.zarr")


@pytest.mark.parametrize("model, extra", [("hierarchical", ["--ranks", "4,2"]), ("deep", ["--ranks", "4,2", "--pool-size", "3", "--backprop-iter", "3"]),
                                          ("neural", ["--ranks", "4,2"])])
def test_fit_multilayer_models(tmp_path, rng, model, extra):
    p, X, y = _npz(tmp_path, rng)
    assert main(["ingest", "npz", str(tmp_path / "c.zarr"), "--input", str(p), "--label-fraction", "0.5", "--chunk-rows", "16"]) == 0
    assert main(["fit", str(tmp_path / "c.zarr"), str(tmp_path / "m.zarr"), "--model", model, "--max-iter", "10",
                 "--scheduler", "threads", *extra]) == 0
    m = load_model(tmp_path / "m.zarr")
    assert [A.shape for A in m.A_] == [(12, 4), (4, 2)]
    with pytest.raises(SystemExit) as exc:  # argparse rejects the value: exit code 2, nothing written
        main(["fit", str(tmp_path / "c.zarr"), str(tmp_path / "m2.zarr"), "--model", model, "--ranks", "4,x"])
    assert exc.value.code == 2 and not (tmp_path / "m2.zarr").exists()
