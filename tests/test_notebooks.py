"""The notebooks in notebooks/: committed without outputs, and executed top to bottom (CPU, no downloads).

01 and 02 use the shipped demo model (or, while this checkout has no trained weights, the random-weight fallback that
``notebooks/nbhelpers.load_demo`` picks and labels); 03 runs its CPU cells and skips the GPU / download / Hub ones.
Each notebook runs in its own Jupyter kernel started from this interpreter (``ipykernel``), single-threaded: on a
loaded 2-core machine torch's multi-threaded small ops stall each other.
"""

import json
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
EXECUTED = ["01_quickstart.ipynb", "02_distillation.ipynb", "03_your_model.ipynb"]
CELL_TIMEOUT_S = 600


def test_the_three_notebooks_exist():
    assert ALL == EXECUTED


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_committed_without_outputs(name):
    nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    dirty = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (
        f"{name}: code cells {dirty} have outputs or execution counts; clear them before committing "
        f"(Jupyter: Edit > Clear Outputs of All Cells; or `jupyter nbconvert --clear-output --inplace {name}`)"
    )
    assert not nb["metadata"].get("widgets"), f"{name}: remove the saved widget state from the metadata"


@pytest.mark.slow  # runs by default; deselect with -m "not slow"
@pytest.mark.parametrize("name", EXECUTED)
def test_notebook_runs_top_to_bottom(name, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    # the kernel inherits this environment: one torch thread, offline, no downloads, no Hub upload
    monkeypatch.setenv("EVDIT_NOTEBOOK_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    for var in ("EVDIT_NOTEBOOK_MODEL", "EVDIT_ALLOW_DOWNLOADS", "EVDIT_HUB_REPO", "HF_TOKEN", "EVDIT_MODEL"):
        monkeypatch.delenv(var, raising=False)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on the first failing cell
    elapsed = time.perf_counter() - start
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    if name != "03_your_model.ipynb":
        assert "demo model" in text or "FALLBACK" in text  # load_demo says which model ran
        images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
                  if "image/gif" in out.get("data", {}) or "image/png" in out.get("data", {})]
        assert images, f"{name} displayed no figure or video"
    else:
        assert "SKIPPED" in text  # GPU / download / Hub cells skip themselves here
    print(f"{name}: {elapsed:.1f} s")
