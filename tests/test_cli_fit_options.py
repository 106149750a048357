"""``dnmf fit``: every option is explained, and an option the chosen model would ignore is an error."""

import numpy as np
import pytest

from dnmf_dask.cli import FIT_OPTION_MODELS, build_parser, main
from dnmf_dask.config import MODELS
from dnmf_dask.store.model import load_model


def _fit_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["fit"]


def test_every_fit_option_has_help():
    missing = [a.option_strings or a.dest for a in _fit_parser()._actions if not (a.help or "").strip()]
    assert missing == []


# (model, flags that the model would silently ignore)
IGNORED = [
    ("neural", ["--init", "random"]),
    ("neural", ["--pool-size", "3"]),
    ("neural", ["--backprop-iter", "5"]),
    ("neural", ["--solver", "hals"]),
    ("ssnmf", ["--pool-size", "2"]),
    ("hierarchical", ["--backprop-iter", "1"]),
    ("nmf", ["--lam", "2"]),
    ("nmf", ["--label-loss", "kl"]),
    ("deep", ["--beta-loss", "kl"]),
]


@pytest.mark.parametrize("model,flags", IGNORED)
def test_inapplicable_option_exits_2_naming_option_and_model(tmp_path, capsys, model, flags):
    out = tmp_path / "m.zarr"
    assert main(["fit", str(tmp_path / "none.zarr"), str(out), "--model", model, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dnmf: error: {flags[0]}: does not apply to --model {model}")
    assert flags[1] in err[0] and not out.exists()


def test_option_table_matches_the_models():
    """Each option applies to at least one model and to a real parameter of its estimator."""
    from dnmf_dask import models as M

    est = {"nmf": M.NMF(), "ssnmf": M.SSNMF(), "hierarchical": M.HierarchicalNMF(), "deep": M.DeepNMF(), "neural": M.NeuralNMF()}
    for dest, ms in FIT_OPTION_MODELS.items():
        assert set(ms) <= set(MODELS) and ms
        for m in ms:
            assert dest in est[m].get_params(), (dest, m)


@pytest.mark.parametrize("flags,msg", [(["--model", "nmf", "--ranks", "4,2"], "--ranks: expected one rank"),
                                       (["--model", "deep", "-k", "3", "--ranks", "4,2"], "--rank: expected either")])
def test_rank_conflicts(tmp_path, capsys, flags, msg):
    assert main(["fit", str(tmp_path / "none.zarr"), str(tmp_path / "m.zarr"), *flags]) == 2
    assert capsys.readouterr().err.startswith(f"dnmf: error: {msg}")


def test_applicable_defaults_and_values_pass(tmp_path, rng):
    """Default values of inapplicable options are fine; deep gets its pool size and backprop iterations."""
    X = rng.random((40, 10))
    np.savez(tmp_path / "d.npz", X=X, y=np.repeat([0, 1], 20), groups=np.repeat(np.arange(10), 4))
    assert main(["ingest", "npz", str(tmp_path / "c.zarr"), "--input", str(tmp_path / "d.npz"), "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "c.zarr"), str(tmp_path / "n.zarr"), "--model", "neural", "--ranks", "3,2",
                 "--max-iter", "2", "--pool-size", "0", "--init", "nndsvda", "--scheduler", "threads", "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "c.zarr"), str(tmp_path / "d.zarr"), "--model", "deep", "--ranks", "3,2",
                 "--max-iter", "3", "--pool-size", "2", "--backprop-iter", "1", "--scheduler", "threads", "--quiet"]) == 0
    m = load_model(tmp_path / "d.zarr")
    assert (m.pool_size, m.backprop_iter) == (2, 1)
