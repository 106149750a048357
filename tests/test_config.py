"""``dnmf fit --config FILE.toml``: keys map to the fit options, bad keys/types are clear errors,
command-line flags override the file."""

import numpy as np
import pytest

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.config import load_fit_config
from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.store.model import load_model


def _write(tmp_path, text, name="fit.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_keys_map_to_fit_options(tmp_path):
    p = _write(tmp_path, """
model = "deep"
ranks = [4, 2]
lam = 2          # an integer is a fine number
max_iter = 7
tol = 1e-3
pool-size = 2
backprop_iter = 1
random_state = 3
scheduler = "synchronous"
overwrite = true
""")
    assert load_fit_config(p) == {"model": "deep", "ranks": (4, 2), "lam": 2, "max_iter": 7, "tol": 1e-3, "pool_size": 2,
                                  "backprop_iter": 1, "seed": 3, "scheduler": "synchronous", "overwrite": True}


@pytest.mark.parametrize("text, exc, words", [
    ('max_iters = 10', DNMFValueError, ["key 'max_iters'", "expected one of the fit options", "found an unknown key"]),
    ('max_iter = "10"', DNMFTypeError, ["key 'max_iter'", "expected an integer", "found str '10'"]),
    ('max_iter = 10.0', DNMFTypeError, ["key 'max_iter'", "expected an integer", "found float 10.0"]),
    ('tol = true', DNMFTypeError, ["key 'tol'", "expected a number", "found bool True"]),
    ('ranks = [4, "2"]', DNMFTypeError, ["key 'ranks'", "expected a non-empty list of integers", "found list"]),
    ('ranks = []', DNMFTypeError, ["key 'ranks'", "expected a non-empty list", "found list"]),
    ('ranks = "4,2"', DNMFTypeError, ["key 'ranks'", "expected a non-empty list", "found str"]),
    ('model = "pca"', DNMFValueError, ["key 'model'", "expected one of", "found str 'pca'"]),
    ('overwrite = 1', DNMFTypeError, ["key 'overwrite'", "expected true or false", "found int 1"]),
    ('seed = 1\nrandom_state = 2', DNMFValueError, ["key 'random_state'", "expected once", "found it also as 'seed'"]),
    ('[fit]\nmodel = "nmf"', DNMFValueError, ["key 'fit'", "found an unknown key"]),
    ('max_iter = ', DNMFValueError, ["config: expected a valid TOML file", "found a syntax error"]),
])
def test_bad_config(tmp_path, text, exc, words):
    with pytest.raises(exc, match=".*".join(words)):
        load_fit_config(_write(tmp_path, text))


def test_missing_config(tmp_path):
    with pytest.raises(DNMFValueError, match="config: expected an existing TOML file.*found nothing"):
        load_fit_config(tmp_path / "none.toml")


@pytest.fixture
def corpus(tmp_path, rng):
    X = rng.random((40, 8))
    return dd.write_corpus(tmp_path / "c.zarr", X, y=np.arange(40) % 2, groups=np.repeat(np.arange(10), 4), chunk_rows=12)


def test_cli_fit_with_config_and_override(tmp_path, corpus):
    cfg = _write(tmp_path, 'model = "hierarchical"\nranks = [3, 2]\nlam = 0.5\nmax_iter = 4\ntol = 0\n'
                           'random_state = 5\nscheduler = "synchronous"\n')
    assert main(["fit", str(corpus.path), str(tmp_path / "m.zarr"), "--config", str(cfg)]) == 0
    m = load_model(tmp_path / "m.zarr")
    assert type(m).__name__ == "HierarchicalNMF" and m.ranks == (3, 2) and m.lam == 0.5
    assert m.max_iter == 4 and m.random_state == 5 and m.layer_n_iter_ == [4, 4]
    # flags on the command line win over the file
    assert main(["fit", str(corpus.path), str(tmp_path / "m2.zarr"), "--config", str(cfg), "--max-iter", "2",
                 "--ranks", "2,1", "--model", "deep", "--pool-size", "2"]) == 0
    m2 = load_model(tmp_path / "m2.zarr")
    assert type(m2).__name__ == "DeepNMF" and m2.ranks == (2, 1) and m2.max_iter == 2 and m2.pool_size == 2
    assert m2.lam == 0.5 and m2.random_state == 5  # still from the file


def test_cli_bad_config_exits_2(tmp_path, corpus, capsys):
    cfg = _write(tmp_path, 'model = "ssnmf"\nlearning_rate = 0.1\n')
    assert main(["fit", str(corpus.path), str(tmp_path / "m.zarr"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dnmf: error: config") and "'learning_rate'" in err[0]
    assert not (tmp_path / "m.zarr").exists()
    cfg = _write(tmp_path, 'max_iter = 0\nscheduler = "synchronous"\n', "range.toml")  # range checked by the estimator
    assert main(["fit", str(corpus.path), str(tmp_path / "m.zarr"), "--config", str(cfg)]) == 2
    assert "max_iter: expected an integer >= 1, found 0" in capsys.readouterr().err
