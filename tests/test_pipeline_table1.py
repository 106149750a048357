"""pipelines/table1.py passes its per-depth Neural NMF settings to the estimator."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table1():
    spec = importlib.util.spec_from_file_location("table1_pipeline", ROOT / "pipelines" / "table1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_classifier_iter_per_depth_reaches_the_estimator(table1, tmp_path, monkeypatch):
    seen = []
    real = table1.dd.NeuralNMF

    def spy(ranks, **kw):
        seen.append((len(ranks), kw["classifier_iter"], kw["lam"], kw["n_init"]))
        return real(ranks, **kw)

    monkeypatch.setattr(table1.dd, "NeuralNMF", spy)
    table1.main(["--seeds", "1", "--epochs", "2", "--methods", "Neural NMF", "--settings", "supervised",
                 "--layers", "1", "--neural-classifier-iter", "3", "4", "5", "--neural-lam", "7",
                 "--neural-n-init", "2", "1", "1",
                 "--out", str(tmp_path)])
    assert seen == [(1, 3, 7.0, 2)]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["layers"], r["method"]) for r in rows] == [(1, "Neural NMF")]
    seen.clear()
    table1.main(["--seeds", "1", "--epochs", "2", "--methods", "Neural NMF", "--settings", "supervised",
                 "--layers", "2", "--out", str(tmp_path)])  # the pipeline's defaults
    assert seen == [(2, table1.NEURAL_CLASSIFIER_ITER[2], table1.NEURAL_LAM, table1.NEURAL_N_INIT[2])]
