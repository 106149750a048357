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


def test_regularisation_flags_stratified_draw_and_update(table1, tmp_path, monkeypatch):
    """Per-row classifier_l2 / unit_topics (defaults and flags) reach the estimator; the
    semi-supervised labels keep round(0.4 n_c) of every class; --update replaces only the rows
    rerun and keeps the others."""
    import numpy as np

    seen = []
    real = table1.dd.NeuralNMF

    def spy(ranks, **kw):
        seen.append((len(ranks), kw["classifier_l2"], kw["unit_topics"], kw["classifier_iter"]))
        return real(ranks, **kw)

    fits = []
    real_fit = real.fit

    def fit_spy(self, X, y=None, **kw):
        fits.append(None if y is None else np.array(y))
        return real_fit(self, X, y, **kw)

    monkeypatch.setattr(table1.dd, "NeuralNMF", spy)
    monkeypatch.setattr(real, "fit", fit_spy)
    old = [{"setting": "supervised", "layers": 1, "seed": 0, "method": "Neural NMF", "rel_error": 0.5, "accuracy": 0.5},
           {"setting": "semisupervised", "layers": 3, "seed": 0, "method": "Neural NMF", "rel_error": 9.0, "accuracy": 0.0}]
    (tmp_path / "results.json").write_text(json.dumps(old))
    base = ["--seeds", "1", "--epochs", "2", "--methods", "Neural NMF", "--settings", "semisupervised",
            "--neural-n-init", "1", "1", "1", "--out", str(tmp_path)]
    table1.main(base + ["--layers", "3", "--update"])
    reg = table1.NEURAL_REGULARISATION[("semisupervised", 3)]
    assert seen == [(3, reg["classifier_l2"], reg["unit_topics"], reg["classifier_iter"])]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows[0] == old[0] and len(rows) == 2
    assert rows[1]["rel_error"] != 9.0 and rows[1]["label_draw"] == "stratified"
    assert rows[1]["classifier_l2"] == reg["classifier_l2"] and rows[1]["unit_topics"] is reg["unit_topics"]
    assert rows[1]["epochs"] == 2 and rows[1]["tol"] == table1.NEURAL_TOL  # --epochs replaces the row's
    _, y = table1.hierarchical_blocks(random_state=0)
    known = np.bincount(fits[0][fits[0] >= 0], minlength=9)
    np.testing.assert_array_equal(known, np.floor(0.4 * np.bincount(y) + 0.5).astype(int))
    seen.clear()
    table1.main(base + ["--layers", "2", "--neural-classifier-l2", "0.5", "--neural-unit-topics"])
    assert seen == [(2, 0.5, True, table1.NEURAL_CLASSIFIER_ITER[2])]
    assert len(json.loads((tmp_path / "results.json").read_text())) == 1  # no --update: overwritten
    seen.clear()
    table1.main(base + ["--layers", "3", "--no-neural-unit-topics", "--neural-classifier-iter", "1", "2", "3"])
    assert seen == [(3, reg["classifier_l2"], False, 3)]
