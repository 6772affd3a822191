"""The tutorial notebook (notebooks/facedetect.ipynb) runs from top to bottom as a user's Jupyter would run it."""

import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "facedetect.ipynb"


@pytest.mark.slow
def test_tutorial_notebook_runs_every_step_and_shows_the_report(smoke_pipeline, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root, _, _ = smoke_pipeline  # its pipeline cells then rerun a finished pipeline: they print the report's path
    monkeypatch.setenv("GRIDFACE_ROOT", str(root))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    print(f"notebook: {time.perf_counter() - start:.0f} s (its pipeline stages already done)")
    nbformat.write(notebook, tmp_path / "facedetect.executed.ipynb")

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    for step in ("gridface.train", "gridface.prune", "gridface.export", "gridface.evaluate", "gridface.infer",
                 "gridface.pipeline"):
        assert f"$ python -m {step}" in text
    assert "parameters kept:" in text and "best_int8.onnx" in text and "nothing to do" in text
    shown = [o for o in outputs if o.output_type == "display_data"]
    assert sum("image/png" in o.data or "image/jpeg" in o.data for o in shown) >= 4  # samples, chart, grid
    tables = [o.data["text/markdown"] for o in shown if "text/markdown" in o.data]
    assert tables and "| onnx_int8 | ONNX Runtime INT8 |" in tables[0]
    for folder in ("train", "prune", "retrain", "export", "evaluate", "infer"):
        assert (root / "outputs" / "notebook" / folder).is_dir()
