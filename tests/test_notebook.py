"""Executes pipelines/bbc_walkthrough.ipynb (on a subset of BBC News) so that the notebook cannot rot."""

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "pipelines" / "bbc_walkthrough.ipynb"


def _outputs(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        parts.append(o.get("text", "") if o.get("output_type") == "stream" else o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)


@pytest.mark.timeout(300)
def test_bbc_walkthrough_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    # as papermill does: a cell after the parameter cell overrides them (a subset of documents, few iterations)
    run = tmp_path / "run"
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(
        f"N_DOCS = 150\nMAX_FEATURES = 800\nLABEL_FRACTION = 0.1\nRANKS = (8, 5)\nMAX_ITER = 5\nBACKPROP_ITER = 1\nN_WORKERS = 1\n"
        f"CHUNK_ROWS = 400\nRUN = {json.dumps(str(run))}\nimport sys; print('kernel:', sys.executable)"))
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(_outputs(c) for c in nb.cells if c.cell_type == "code")

    # the kernel is this interpreter's environment (the one the package and its extras are installed in)
    kernel_python = re.search(r"kernel: (\S+)", text).group(1)
    assert Path(kernel_python).parent == Path(sys.executable).parent
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/status", text)
    assert "150 documents" in text
    for name in ("ssnmf", "deep"):
        m = re.search(rf"^{name}: accuracy_hidden=(\S+) purity=(\S+)", text, re.M)
        assert m, f"no accuracy line of {name} in:\n{text}"
        acc, pur = float(m.group(1)), float(m.group(2))
        assert 0.0 <= acc <= 1.0 and 0.0 < pur <= 1.0
        assert (run / f"{name}.zarr").is_dir()
    assert re.search(r"^L1\.0 \[", text, re.M)  # the topic hierarchy: supertopic lines with their words
    report = run / "report.html"
    assert report.is_file() and "BBC News walkthrough" in report.read_text()
