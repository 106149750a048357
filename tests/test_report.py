"""`dnmf evaluate` / `dnmf report` on a tiny fitted run: the metrics are the ones computed by hand,
and the HTML has every section and no external asset."""

import base64
import json
import re

import numpy as np
import pytest

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.evaluate.metrics import accuracy_unlabeled, purity
from dnmf_dask.ingest.labels import mask_labels
from dnmf_dask.ingest.synthetic import hierarchical_blocks
from dnmf_dask.models import DeepNMF
from dnmf_dask.store.model import load_model, save_model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    X, y = hierarchical_blocks(random_state=0)  # 90 x 87, samples sorted by class (9 classes)
    pos = np.arange(y.size) - np.searchsorted(y, y)  # position of a sample inside its class
    groups = np.unique(y * 100 + pos // 3, return_inverse=True)[1]  # documents of 3 samples, one class each
    ym = mask_labels(y, 0.4, 0, by_group=groups)
    names = np.array([f"w{j}" for j in range(X.shape[1])])
    run = tmp_path / "run"
    run.mkdir()
    corpus = dd.write_corpus(run / "corpus.zarr", X, y=ym, y_true=y, groups=groups, feature_names=names,
                             label_names=np.array([f"class{c}" for c in range(y.max() + 1)]), chunk_rows=40)
    m = DeepNMF((6, 3), pool_size=3, backprop_iter=3, max_iter=20, random_state=0, scheduler="synchronous").fit(corpus)
    save_model(m, run / "deep.zarr", feature_names=names, data={"corpus": str(run / "corpus.zarr")})
    return run, corpus, m


def test_report_sections_and_self_contained(tiny_run):
    run, corpus, m = tiny_run
    assert main(["report", str(run), "--scheduler", "synchronous", "--max-pairs", "200"]) == 0
    text = (run / "report.html").read_text()
    for section in ('id="metrics"', 'class="loss"', 'class="topics"', 'class="factors"', 'class="confusion"', 'class="angles"'):
        assert section in text, section
    # self-contained: no src/href to anything but inline data or in-page anchors, no external CSS/JS
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', text)
    assert refs and all(r.startswith("data:image/png;base64,") or r.startswith("#") for r in refs), refs
    assert "<script" not in text and "@import" not in text and "url(" not in text
    imgs = [r for r in refs if r.startswith("data:")]
    assert len(imgs) >= 4  # loss curves, A1, B, confusion, angles
    for r in imgs:
        assert base64.b64decode(r.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the topic hierarchy lists the top words of the model's topics and the supertopics of layer 1
    top0 = names_top(m, corpus, 0, 0)
    assert f"L0.0</td><td>{', '.join(top0)}" in text
    assert "<b>L1.0</b>" in text
    # the metrics are the model's own
    pred = np.asarray(m.predict(corpus))
    acc = accuracy_unlabeled(corpus.y_true, pred, corpus.y)
    assert f"{acc:.4f}" in text


def names_top(m, corpus, layer, topic, n=10):
    col = m.A_[0][:, topic] if layer == 0 else None
    order = np.argsort(-col, kind="stable")[:n]
    return [str(corpus.feature_names[i]) for i in order if col[i] > 0]


def test_evaluate_writes_metrics(tiny_run, capsys):
    run, corpus, m = tiny_run
    out = run / "metrics.json"
    assert main(["evaluate", str(run / "deep.zarr"), "--corpus", str(run / "corpus.zarr"), "--out", str(out),
                 "--scheduler", "synchronous", "--no-angles"]) == 0
    got = json.loads(out.read_text())["deep.zarr"]
    S = [np.asarray(m.transform(corpus, layer=l)) for l in range(2)]
    np.testing.assert_allclose(got["purity"], [purity(corpus.y_true, s.argmax(1)) for s in S])
    pred = np.asarray(m.predict(corpus))
    assert got["accuracy_unlabeled"] == pytest.approx(accuracy_unlabeled(corpus.y_true, pred, corpus.y))
    # the stored model keeps its per-layer records (loss curves for the report)
    loaded = load_model(run / "deep.zarr")
    assert len(loaded.layer_history_) == 2 and loaded.layer_rel_error_ == pytest.approx(list(m.layer_rel_error_))


def test_report_bad_run_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dnmf: error: run:")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert not (tmp_path / "empty" / "report.html").exists()


@pytest.mark.parametrize("command", ["ingest", "predict", "evaluate", "report", "demo"])
def test_every_option_has_help(command):
    from dnmf_dask.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"dnmf {command}: option {action.option_strings or action.dest} has no help"
